//! `BinaryCache`: one `garretd` deployment with its storage, database, declared caches and
//! exposure.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    add_rule, add_rule_at, conditions_schema, duration_rule, unobserved_by_default, SecretKeyRef,
    SecretRef, CACHE_NAME_PATTERN, CACHE_PATTERN_PATTERN, DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN,
    GATEWAY_DURATION_PATTERN, GATEWAY_HOSTNAME_PATTERN, NO_SPACE_PATTERN, URL_PATTERN,
};

/// Image used when the spec names none: the server release matching this operator.
pub fn default_image() -> String {
    format!("ghcr.io/garret-dev/garretd:{}", env!("CARGO_PKG_VERSION"))
}

fn one() -> i32 {
    1
}

/// Desired state of a Garret binary cache server.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "garret.dev",
    version = "v1alpha1",
    kind = "BinaryCache",
    namespaced,
    status = "BinaryCacheStatus",
    shortname = "bc",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"string","description":"ready/desired garretd pods","jsonPath":".status.replicaStatus"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = spec_rules)]
pub struct BinaryCacheSpec {
    /// Container image of garretd.
    #[serde(default = "default_image")]
    #[schemars(regex(pattern = NO_SPACE_PATTERN))]
    pub image: String,
    /// Pod replicas. More than one needs S3 storage and PostgreSQL (a volume is ReadWriteOnce).
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Where chunks live. Default: a 10Gi PersistentVolumeClaim.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Where metadata lives. Default: SQLite on the data volume.
    #[serde(default)]
    pub database: DatabaseSpec,
    /// Caches declared in server.toml; garretd creates and updates them without a restart.
    #[serde(default)]
    #[schemars(transform = unique_cache_names)]
    pub caches: Vec<CacheSpec>,
    /// Expose the server through an Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// Expose the server through a Gateway API `HTTPRoute` (may be set with `ingress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySpec>,
    /// Pin garretd's `api-endpoint` (the URL clients switch to for uploads), e.g.
    /// `https://cache.example.org/`. Unset (the default), garretd answers with the URL each
    /// request came in on (Host, `X-Forwarded-Proto`), so pushing works through
    /// `kubectl port-forward`, the Service and the Ingress alike. Also the `endpoint` of
    /// token Secrets when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = URL_PATTERN))]
    pub api_endpoint: Option<String>,
    /// Container resource requests and limits (quantities such as `500m`, `1Gi`).
    #[serde(default)]
    pub resources: Resources,
    /// Garbage collection settings (`[garbage-collection]`).
    #[serde(default)]
    pub garbage_collection: GcSpec,
    /// What happens to the data volume and the generated keys when this object is deleted.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
    /// ServiceAccounts of this cluster that may pull or push with their own projected token
    /// (audience `garret.dev/<namespace>/<name>`), so CI needs no token Secret. garretd then
    /// trusts the cluster's ServiceAccount issuer (docs/keyless-push.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub service_account_access: Vec<ServiceAccountAccess>,
}

/// One ServiceAccount's rights on caches of this BinaryCache.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountAccess {
    /// Name of the ServiceAccount.
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub service_account: String,
    /// Its namespace; the BinaryCache's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Cache names or patterns (`team-*`) it gets `access` on.
    #[schemars(length(min = 1, max = 32), inner(regex(pattern = CACHE_PATTERN_PATTERN)))]
    pub caches: Vec<String>,
    /// `Pull` (read) or `Push` (read and upload; the default).
    #[serde(default)]
    pub access: Access,
}

/// What a ServiceAccount may do on its caches.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Access {
    Pull,
    #[default]
    Push,
}

/// `Retain` keeps the PVC and key Secrets (the cache can be recreated with its data and
/// signatures); `Delete` removes them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReclaimPolicy {
    #[default]
    Retain,
    Delete,
}

/// Chunk storage: a volume (default) or S3. Setting `s3` moves chunks to the bucket.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// The data volume (chunks when `s3` is unset, and the SQLite file when no PostgreSQL).
    #[serde(default)]
    pub volume: VolumeSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Spec>,
}

/// PersistentVolumeClaim settings of the data volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// Requested size, e.g. `50Gi`.
    #[serde(default = "default_size")]
    pub size: String,
    /// Storage class; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_size() -> String {
    "10Gi".into()
}

impl Default for VolumeSpec {
    fn default() -> Self {
        VolumeSpec {
            size: default_size(),
            storage_class_name: None,
        }
    }
}

/// An S3 bucket for chunks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    pub bucket: String,
    pub region: String,
    /// Endpoint for S3-compatible stores (MinIO, R2, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// A Secret with keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`; unset = ambient
    /// credentials (e.g. IRSA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// Metadata database: embedded SQLite unless `postgres` is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// A Secret key holding a `postgres://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<SecretKeyRef>,
}

/// One declared cache (`[[caches]]` in server.toml).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Attic's cache names: 1-50 of `A-Z a-z 0-9 _ + -`, starting with a letter or digit.
    #[schemars(regex(pattern = CACHE_NAME_PATTERN), length(max = 50))]
    pub name: String,
    /// Readable without a token.
    #[serde(default)]
    pub public: bool,
    /// Substituter priority; garretd's default (41) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// e.g. `30 days`; the global default when unset, `0` keeps forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = duration_rule)]
    pub retention_period: Option<String>,
    /// Paths signed by these keys are not stored; garretd's default (cache.nixos.org-1) when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_cache_key_names: Option<Vec<String>>,
    /// Upstream caches a miss is fetched from, verified against their keys and stored here
    /// (pull-through, docs/pull-through.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub upstreams: Vec<UpstreamSpec>,
}

/// One upstream binary cache of a pull-through cache.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamSpec {
    /// Base URL, e.g. `https://cache.nixos.org`.
    #[schemars(regex(pattern = URL_PATTERN))]
    pub url: String,
    /// `name:base64` keys; an upstream answer must be signed by one of them.
    #[schemars(length(min = 1, max = 16), inner(regex(pattern = NO_SPACE_PATTERN)))]
    pub public_keys: Vec<String>,
    /// Lower is asked first; garretd's default (50) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

/// Ingress exposure. The rendered annotations raise body size and timeouts for Nix
/// uploads (see `desired::ingress` for the controllers covered).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    #[schemars(regex(pattern = NO_SPACE_PATTERN))]
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// TLS certificate Secret; the endpoint is `https://` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// Extra annotations; they override the rendered defaults.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// Gateway API exposure: an `HTTPRoute` (`gateway.networking.k8s.io/v1`) named like the
/// BinaryCache, routing every path to its Service. The Gateways themselves belong to the
/// platform team; their listeners must allow routes from this namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The Gateways (or listeners of them) the route attaches to.
    #[schemars(length(min = 1, max = 32))]
    pub parent_refs: Vec<GatewayParentRef>,
    /// Hostnames the route answers for (`*.example.org` wildcards allowed); empty: every
    /// hostname the listener accepts. The first one without a wildcard is the endpoint when
    /// there is no Ingress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(regex(pattern = GATEWAY_HOSTNAME_PATTERN), length(min = 1, max = 253))
    )]
    pub hostnames: Vec<String>,
    /// The listener terminates TLS, so the endpoint is `https://` (default `true`).
    #[serde(default = "yes")]
    pub tls: bool,
    /// Route timeouts; unset ones get defaults long enough for large uploads.
    #[serde(default)]
    pub timeouts: GatewayTimeouts,
}

fn yes() -> bool {
    true
}

/// A Gateway the route attaches to (Gateway API's `ParentReference` for kind Gateway).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayParentRef {
    /// Name of the Gateway.
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace; the BinaryCache's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// One listener of the Gateway, by name; all of them when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub section_name: Option<String>,
}

/// `HTTPRoute` rule timeouts in Gateway API's duration format (`3600s`, `1h`, `90m`, `0s`
/// for none). Envoy-based Gateways cut a request after 15 s unless the route says otherwise,
/// which no NAR upload survives.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = backend_within_request)]
pub struct GatewayTimeouts {
    /// The whole exchange, client's first byte to response's last (default: the
    /// backendRequest timeout when only that is set, else `3600s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GATEWAY_DURATION_PATTERN))]
    pub request: Option<String>,
    /// One attempt from the Gateway to garretd (default: the request timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GATEWAY_DURATION_PATTERN))]
    pub backend_request: Option<String>,
}

/// The rule Gateway API's own CRD enforces on the rendered route, at the BinaryCache already.
fn backend_within_request(schema: &mut schemars::Schema) {
    add_rule(
        schema,
        "!(has(self.request) && has(self.backendRequest) && duration(self.request) != duration('0s') && duration(self.backendRequest) > duration(self.request))",
        "timeouts.backendRequest must not be longer than timeouts.request",
    );
}

/// Container resources as quantity strings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

/// `[garbage-collection]` settings; garretd's defaults where unset.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcSpec {
    /// How often GC runs, e.g. `12 hours`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = duration_rule)]
    pub interval: Option<String>,
    /// Retention for caches that set none, e.g. `90 days`; `0` keeps forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = duration_rule)]
    pub default_retention_period: Option<String>,
}

/// Most declared caches one BinaryCache takes (bounds the cost of its CEL rules).
pub const MAX_CACHES: u64 = 128;

/// Rules across fields of the spec.
fn spec_rules(schema: &mut schemars::Schema) {
    add_rule_at(
        schema,
        "self.replicas <= 1 || (has(self.storage) && has(self.storage.s3) && has(self.database) && has(self.database.postgres))",
        "more than one replica needs storage.s3 and database.postgres (the data volume is ReadWriteOnce)",
        ".replicas",
    );
}

fn unique_cache_names(schema: &mut schemars::Schema) {
    schema.insert("maxItems".into(), MAX_CACHES.into());
    add_rule(
        schema,
        "self.all(c, self.exists_one(d, d.name == c.name))",
        "each cache name may be declared once",
    );
}

/// Observed state, in the kstatus convention that Flux, Helm 4, Argo CD and `kubectl wait`
/// read: `observedGeneration` plus the `Ready`, `Reconciling` and `Stalled` conditions
/// (`Reconciling`/`Stalled` are abnormal-true: present and `False` when all is well).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = unobserved_by_default)]
pub struct BinaryCacheStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (all replicas available and every declared cache served), `Reconciling` (a
    /// rollout or a retry is under way, or a declared cache is not served yet),
    /// `Stalled` (an invalid spec or a failed rollout: needs a change).
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Desired garretd pods (the Deployment's `spec.replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Pods passing `/readyz` (the Deployment's `status.readyReplicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// `ready/desired`, e.g. `1/2` (the Replicas column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_status: Option<String>,
    /// Base URL clients use (the Ingress host, else the in-cluster Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Per declared cache, what nix.conf needs: its substituter URL and public key, and
    /// whether garretd serves it yet (`served`).
    #[serde(default)]
    pub caches: Vec<CacheEndpoint>,
}

/// A declared cache's public signing key, as `desired` derives it from the key Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheStatus {
    pub name: String,
    /// `name:base64`, ready for nix.conf.
    pub public_key: String,
}

/// A declared cache as clients need to know it (`status.caches`):
/// `kubectl get bc main -o jsonpath='{range .status.caches[*]}extra-substituters = {.substituter}{"\n"}extra-trusted-public-keys = {.publicKey}{"\n"}{end}'`
/// prints the nix.conf lines.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheEndpoint {
    pub name: String,
    /// The cache's URL for `substituters` (the endpoint followed by the cache name).
    pub substituter: String,
    /// `name:base64`, for `trusted-public-keys`.
    pub public_key: String,
    /// garretd answers for this cache with this public key (asked through its API with a
    /// token the operator signs): until then the substituter URL and key are not usable.
    #[serde(default)]
    pub served: bool,
}
