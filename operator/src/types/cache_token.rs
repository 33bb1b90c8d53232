//! `CacheToken`: a scoped JWT for one BinaryCache, minted into a Secret and renewed before it
//! expires (modelled on cert-manager's `Certificate`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{conditions_schema, optional_time_schema};

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
    printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".status.notAfter"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CacheTokenSpec {
    /// The BinaryCache (same namespace) whose key signs the token.
    pub binary_cache_ref: BinaryCacheRef,
    /// `sub` claim: who the token is for (shows in server logs and revocation lists).
    pub subject: String,
    /// Lifetime of each issued token, e.g. `30d`, `12 hours`.
    #[serde(default = "default_validity")]
    pub validity: String,
    /// Renew this long before expiry; default: when 2/3 of the lifetime has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    /// Cache-name patterns (`*` wildcards) per permission.
    #[serde(default)]
    pub permissions: TokenPermissions,
    /// Secret to write (key `token`); owned by this CacheToken.
    pub secret_name: String,
}

/// Reference to a BinaryCache by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BinaryCacheRef {
    pub name: String,
}

/// Attic's permission letters, each a list of cache-name patterns.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenPermissions {
    #[serde(default)]
    pub pull: Vec<String>,
    #[serde(default)]
    pub push: Vec<String>,
    #[serde(default)]
    pub delete: Vec<String>,
    #[serde(default)]
    pub create_cache: Vec<String>,
    #[serde(default)]
    pub configure_cache: Vec<String>,
    #[serde(default)]
    pub configure_cache_retention: Vec<String>,
    #[serde(default)]
    pub destroy_cache: Vec<String>,
}

/// Observed state of the current token.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
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
}
