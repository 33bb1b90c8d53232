//! `CacheToken`: a scoped JWT for one BinaryCache, minted into a Secret and renewed before it
//! expires (modelled on cert-manager's `Certificate`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    add_rule_at, conditions_schema, duration_rule, optional_time_schema, positive_duration_rule,
    unobserved_by_default, CACHE_PATTERN_PATTERN, DNS_SUBDOMAIN_PATTERN,
};

fn default_validity() -> String {
    "30 days".into()
}

/// Desired token.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "garret.dev",
    version = "v1alpha1",
    kind = "CacheToken",
    namespaced,
    status = "CacheTokenStatus",
    shortname = "ct",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Subject","type":"string","jsonPath":".spec.subject"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".spec.secretName"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","description":"expiry of the current token (RFC 3339)","jsonPath":".status.notAfter"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Renews","type":"string","priority":1,"description":"when the next token is issued (RFC 3339)","jsonPath":".status.renewalTime"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = some_permission)]
pub struct CacheTokenSpec {
    /// The BinaryCache (same namespace) whose key signs the token.
    pub binary_cache_ref: BinaryCacheRef,
    /// `sub` claim: who the token is for (shows in server logs and revocation lists).
    #[schemars(length(min = 1))]
    pub subject: String,
    /// Lifetime of each issued token, e.g. `30d`, `12 hours`.
    #[serde(default = "default_validity")]
    #[schemars(transform = positive_duration_rule)]
    pub validity: String,
    /// Renew this long before expiry; default: when 2/3 of the lifetime has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = duration_rule)]
    pub renew_before: Option<String>,
    /// Cache-name patterns (`*` wildcards) per permission; at least one pattern in all.
    #[serde(default)]
    pub permissions: TokenPermissions,
    /// Secret to write (keys `token`, `endpoint`, `netrc`, `nix.conf`, `config.toml`); owned
    /// by this CacheToken.
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(max = 253))]
    pub secret_name: String,
    /// How long the token replaced by a routine renewal stays valid, so jobs that read it
    /// before the renewal finish; then it is revoked. `0s` revokes it at once. Default
    /// `1h`. (A changed subject, narrowed permissions or a deleted CacheToken revoke the old
    /// token at once, whatever this says.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = duration_rule)]
    pub previous_token_grace_period: Option<String>,
}

/// Reference to a BinaryCache by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BinaryCacheRef {
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(max = 253))]
    pub name: String,
}

/// On the spec, not on `permissions`: the API server checks a field's default against the
/// field's own rules, and the default (no patterns) is what this rule refuses.
fn some_permission(schema: &mut schemars::Schema) {
    add_rule_at(
        schema,
        "has(self.permissions) && self.permissions.pull.size() + self.permissions.push.size() + self.permissions.delete.size() + self.permissions.createCache.size() + self.permissions.configureCache.size() + self.permissions.configureCacheRetention.size() + self.permissions.destroyCache.size() > 0",
        "grant at least one permission (a cache-name pattern under pull, push, delete, createCache, configureCache, configureCacheRetention or destroyCache)",
        ".permissions",
    );
}

/// Attic's permission letters, each a list of cache-name patterns.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenPermissions {
    #[serde(default)]
    #[schemars(inner(regex(pattern = CACHE_PATTERN_PATTERN)))]
    pub pull: Vec<String>,
    #[serde(default)]
    #[schemars(inner(regex(pattern = CACHE_PATTERN_PATTERN)))]
    pub push: Vec<String>,
    #[serde(default)]
    #[schemars(inner(regex(pattern = CACHE_PATTERN_PATTERN)))]
    pub delete: Vec<String>,
    #[serde(default)]
    #[schemars(inner(regex(pattern = CACHE_PATTERN_PATTERN)))]
    pub create_cache: Vec<String>,
    #[serde(default)]
    #[schemars(inner(regex(pattern = CACHE_PATTERN_PATTERN)))]
    pub configure_cache: Vec<String>,
    #[serde(default)]
    #[schemars(inner(regex(pattern = CACHE_PATTERN_PATTERN)))]
    pub configure_cache_retention: Vec<String>,
    #[serde(default)]
    #[schemars(inner(regex(pattern = CACHE_PATTERN_PATTERN)))]
    pub destroy_cache: Vec<String>,
}

/// Observed state of the current token.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = unobserved_by_default)]
pub struct CacheTokenStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Issuing`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_time_schema")]
    pub not_before: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_time_schema")]
    pub not_after: Option<Time>,
    /// When the operator will issue the next token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_time_schema")]
    pub renewal_time: Option<Time>,
    /// Number of tokens issued so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// `jti` of the current token, for revocation lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Tokens replaced by a renewal, still valid until `revokeAt` (the grace period).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_tokens: Vec<PreviousToken>,
    /// Tokens of this CacheToken on the BinaryCache's revocation list, until they expire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_tokens: Vec<RevokedToken>,
}

/// A replaced token in its grace period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousToken {
    pub token_id: String,
    /// Its expiry.
    #[schemars(schema_with = "optional_time_schema")]
    pub not_after: Option<Time>,
    /// When it goes on the revocation list.
    #[schemars(schema_with = "optional_time_schema")]
    pub revoke_at: Option<Time>,
}

/// A token on the revocation list.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokedToken {
    pub token_id: String,
    /// Its expiry; the entry leaves the list (and this status) then.
    #[schemars(schema_with = "optional_time_schema")]
    pub not_after: Option<Time>,
    #[schemars(schema_with = "optional_time_schema")]
    pub revoked_at: Option<Time>,
    /// `Renewed`, `SubjectChanged`, `PermissionsNarrowed`, `BinaryCacheChanged`.
    pub reason: String,
}
