//! The desired child objects of a BinaryCache, as pure functions. The pipeline:
//!
//! 1. [`validate`]: the object in, a [`Validated`] spec (or the [`InvalidSpec`] message
//!    for status) out; after this nothing about the spec can fail.
//! 2. [`desired`]: `Validated` and what the controller [`Observed`] in, every child object
//!    and the status it implies ([`Children`]) out. Infallible and free of I/O.
//! 3. `controller::binary_cache` applies the children, then writes [`status`].
//!
//! Key generation needs randomness (and seconds of CPU for RSA), so it is not done here: the
//! controller reads the existing key Secrets, asks [`secrets::caches_missing_keys`] what is
//! missing, generates exactly that and passes it in through [`Observed`]. `desired` then only
//! places keys, so the same inputs always give the same objects.

pub mod config;
pub mod gateway;
pub mod ingress;
pub mod meta;
pub mod oidc;
pub mod secrets;
pub mod status;
pub mod validate;
pub mod workload;

#[cfg(test)]
pub(crate) mod fixtures;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

pub use crate::error::InvalidSpec;
use crate::types::CacheStatus;
pub use meta::{Names, Note};
pub use validate::{validate, Validated};

/// Port garretd listens on inside the pod.
pub const HTTP_PORT: i32 = 8080;
/// Where the rendered server.toml is mounted.
pub const CONFIG_DIR: &str = "/etc/garret";
/// Where per-cache signing keys are mounted, one file per cache.
pub const CACHE_KEYS_DIR: &str = "/run/garret/cache-keys";
/// Where the revocation list ConfigMap is mounted.
pub const REVOCATIONS_DIR: &str = "/run/garret/revocations";
/// Its one key (the file garretd reads as `[jwt] revocation-list`).
pub const REVOCATION_FILE: &str = "revoked";
/// The data volume (SQLite file, local chunks).
pub const DATA_DIR: &str = "/var/lib/garret";
/// Key of the token-signing Secret holding `ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64`.
pub const TOKEN_KEY_FIELD: &str = "token-rs256-secret-base64";

/// What the controller read from the cluster and generated before [`desired`].
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The cache-keys Secret as read, if it exists.
    pub cache_keys: Option<Secret>,
    /// A freshly generated token-signing key (the Secret's value); set only when no
    /// token-key Secret exists.
    pub new_token_key: Option<String>,
    /// Freshly generated keypairs (canonical text) for the caches that had none, by name.
    pub new_cache_keys: BTreeMap<String, String>,
}

/// Every child of a BinaryCache, in the order they are applied, and what status they imply.
#[derive(Clone, Debug)]
pub struct Children {
    /// A new token-signing Secret (created once, never updated) and the Event announcing it.
    pub token_key: Option<(Secret, Note)>,
    /// The cache-keys Secret with new keypairs added; `None` when nothing is new. Replaced
    /// with its `resourceVersion` when set, created otherwise.
    pub cache_keys: Option<Secret>,
    pub config_map: ConfigMap,
    /// The revocation list: created once (empty), then edited by CacheTokens only.
    pub revocations: ConfigMap,
    /// Created once: most of a claim's spec is immutable, and resizing is deliberate.
    pub data_pvc: Option<PersistentVolumeClaim>,
    pub deployment: Deployment,
    pub service: Service,
    /// `None`: an Ingress this BinaryCache owns is deleted.
    pub ingress: Option<Ingress>,
    /// With `spec.gateway`; `None`: an HTTPRoute this BinaryCache owns is deleted.
    pub http_route: Option<gateway::HTTPRoute>,
    /// With `replicas > 1`; `None`: a budget this BinaryCache owns is deleted.
    pub disruption_budget: Option<PodDisruptionBudget>,
    /// For status: the URL clients use.
    pub endpoint: String,
    /// For status: the public key of every declared cache.
    pub caches: Vec<CacheStatus>,
}

/// The children of `v`, given what was observed.
pub fn desired(v: &Validated, o: &Observed) -> Children {
    let existing = o.cache_keys.as_ref();
    let all_keys = secrets::cache_keys_data(existing, &o.new_cache_keys);
    let name = v.names().token_key();
    Children {
        token_key: o.new_token_key.as_deref().map(|value| {
            let note = format!("token-signing key stored in Secret {name}");
            (
                secrets::token_key_secret(v, value),
                meta::normal_event("KeyGenerated", "GenerateKey", note),
            )
        }),
        cache_keys: secrets::cache_keys_secret(v, existing, &o.new_cache_keys),
        config_map: config::config_map(v),
        revocations: config::revocations_config_map(v),
        data_pvc: workload::data_pvc(v),
        deployment: workload::deployment(v),
        service: workload::service(v),
        ingress: ingress::ingress(v),
        http_route: gateway::http_route(v),
        disruption_budget: workload::disruption_budget(v),
        endpoint: v.endpoint.clone(),
        caches: secrets::public_keys(v, &all_keys),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use k8s_openapi::ByteString;
    use serde_json::{json, Value};

    /// A fixture input: the BinaryCache and, in plain strings, what was observed.
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Input {
        binary_cache: crate::types::BinaryCache,
        observed: ObservedInput,
    }

    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ObservedInput {
        cache_keys: Option<BTreeMap<String, String>>,
        cache_keys_resource_version: Option<String>,
        new_token_key: Option<String>,
        #[serde(default)]
        new_cache_keys: BTreeMap<String, String>,
    }

    fn observed(o: ObservedInput) -> Observed {
        Observed {
            cache_keys: o.cache_keys.map(|data| Secret {
                metadata: ObjectMeta {
                    resource_version: o.cache_keys_resource_version,
                    ..ObjectMeta::default()
                },
                data: Some(
                    data.into_iter()
                        .map(|(k, v)| (k, ByteString(v.into_bytes())))
                        .collect(),
                ),
                ..Secret::default()
            }),
            new_token_key: o.new_token_key,
            new_cache_keys: o.new_cache_keys,
        }
    }

    /// Children as data, in apply order, for comparison with the expected fixture.
    fn as_value(c: &Children) -> Value {
        let mut children = vec![];
        let mut events = vec![];
        if let Some((secret, event)) = &c.token_key {
            children.push(json!(secret));
            events
                .push(json!({"reason": event.reason, "action": event.action, "note": event.note}));
        }
        children.extend(c.cache_keys.iter().map(|s| json!(s)));
        children.push(json!(c.config_map));
        children.push(json!(c.revocations));
        children.extend(c.data_pvc.iter().map(|p| json!(p)));
        children.push(json!(c.deployment));
        children.push(json!(c.service));
        children.extend(c.ingress.iter().map(|i| json!(i)));
        children.extend(c.http_route.iter().map(|r| json!(r)));
        children.extend(c.disruption_budget.iter().map(|p| json!(p)));
        json!({
            "children": children,
            "events": events,
            "status": {"endpoint": c.endpoint, "caches": c.caches},
        })
    }

    fn check(case: &str) -> Children {
        let input: Input = fixtures::read(&format!("{case}.input.yaml"));
        let v = validate(&input.binary_cache).expect("fixture is valid");
        let children = desired(&v, &observed(input.observed));
        fixtures::assert_expected(&format!("{case}.expected.yaml"), &as_value(&children));
        children
    }

    #[test]
    fn local_binary_cache_children_match_the_fixture() {
        let c = check("binary-cache");
        // The points the fixture exists for, spelled out so a careless re-bless shows.
        assert!(c.token_key.is_some(), "a generated key is stored");
        let keys = c.cache_keys.expect("new keypair added");
        assert_eq!(keys.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(keys.data.map(|d| d.len()), Some(2));
        assert!(c.data_pvc.is_some() && c.ingress.is_some());
        assert!(c.disruption_budget.is_none(), "one replica: no budget");
        assert_eq!(c.endpoint, "https://cache.example.org/");
        assert_eq!(c.caches.len(), 2);
    }

    #[test]
    fn s3_binary_cache_children_match_the_fixture() {
        let c = check("binary-cache-s3");
        assert!(
            c.token_key.is_none() && c.cache_keys.is_none(),
            "keys exist"
        );
        assert!(c.data_pvc.is_none() && c.ingress.is_none());
        let pdb = c
            .disruption_budget
            .expect("several replicas get a disruption budget");
        let spec = pdb.spec.expect("spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        let pod = c.deployment.spec.expect("spec").template.spec.expect("pod");
        assert_eq!(
            pod.topology_spread_constraints
                .map(|t| t[0].topology_key.clone()),
            Some("kubernetes.io/hostname".to_string())
        );
        assert_eq!(c.endpoint, "http://big.ns.svc/");
        assert_eq!(c.caches.len(), 1);
    }

    #[test]
    fn same_inputs_same_children() {
        let input: Input = fixtures::read("binary-cache.input.yaml");
        let v = validate(&input.binary_cache).expect("valid");
        let o = observed(input.observed);
        assert_eq!(as_value(&desired(&v, &o)), as_value(&desired(&v, &o)));
    }
}
