//! CRD types (`garret.dev/v1alpha1`). The Rust types are the source of truth; `crdgen`
//! renders them into `crds/`.

mod binary_cache;
mod cache_token;

pub use binary_cache::*;
pub use cache_token::*;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every Garret kind.
pub const GROUP: &str = "garret.dev";

/// A reference to a key in a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// A reference to a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    pub name: String,
}

/// Conditions as a JSON list; `Condition` itself has no JsonSchema here, so the schema is
/// spelled out (the API server validates the real shape).
pub(crate) fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"type": "string"},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "observedGeneration": {"type": "integer", "format": "int64"},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "reason": {"type": "string"},
                "message": {"type": "string"}
            }
        },
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"]
    })
}

pub(crate) fn optional_time_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "format": "date-time", "nullable": true})
}

// Apply-time validation. The API server refuses, with these messages, what the operator's own
// checks (`desired::validate`, `token::validate`) would refuse after the fact; the operator
// keeps its checks for objects stored before a rule existed.

/// Attic's cache names (`garret_core::cache_name`).
pub const CACHE_NAME_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9_+-]{0,49}$";
/// Cache-name patterns in token permissions (`garret_core::token::CachePattern`).
pub const CACHE_PATTERN_PATTERN: &str = r"^[A-Za-z0-9*][A-Za-z0-9_+*-]{0,49}$";
/// A DNS-1123 subdomain: what Kubernetes accepts as a Secret or BinaryCache name.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A DNS-1123 label: what Kubernetes accepts as a namespace name.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Gateway API's `Hostname`: a lower-case DNS name, optionally with one leading `*.`
/// wildcard label, no port.
pub const GATEWAY_HOSTNAME_PATTERN: &str =
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Gateway API's `Duration` (GEP-2257): one to four `<1-5 digits><h|m|s|ms>` terms.
pub const GATEWAY_DURATION_PATTERN: &str = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$";
/// An `http://` or `https://` URL with a host and no whitespace (`spec.apiEndpoint`).
pub const URL_PATTERN: &str = r"^https?://[^/\s]\S*$";
/// One non-empty token without whitespace (images, hosts).
pub const NO_SPACE_PATTERN: &str = r"^\S+$";

/// The duration grammar of `garret_core::duration::parse_duration` (seconds as a bare
/// number, or humantime's `<number>[.<fraction>] <unit>` terms) as an RE2 expression inside a
/// CEL string (no backslashes: CEL would read them as escapes).
pub const DURATION_RE: &str = "^[[:space:]]*([0-9]+|([0-9]+([.][0-9]+)?[[:space:]]*(nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)[[:space:]]*)+)$";
const DURATION_MESSAGE: &str =
    "must be a duration: seconds, or terms such as '30 days', '12h', '1h 30m'";

/// A status the operator has not written yet reads as `observedGeneration: 0`: the API
/// server applies this default when it serves an object, so kstatus (which takes an object
/// without `observedGeneration` as Current) and Argo CD see a new object as in progress from
/// its first moment, not only once the operator has written status.
pub(crate) fn unobserved_by_default(schema: &mut schemars::Schema) {
    schema.insert(
        "default".into(),
        serde_json::json!({"observedGeneration": 0}),
    );
}

/// Add a CEL rule (`x-kubernetes-validations`) to `schema`.
pub(crate) fn add_rule(schema: &mut schemars::Schema, rule: &str, message: &str) {
    push_rule(
        schema,
        serde_json::json!({"rule": rule, "message": message}),
    );
}

/// Add a CEL rule whose failure the API server reports at `field_path` (e.g. `.replicas`).
pub(crate) fn add_rule_at(
    schema: &mut schemars::Schema,
    rule: &str,
    message: &str,
    field_path: &str,
) {
    push_rule(
        schema,
        serde_json::json!({"rule": rule, "message": message, "fieldPath": field_path}),
    );
}

fn push_rule(schema: &mut schemars::Schema, entry: serde_json::Value) {
    let obj = schema.ensure_object();
    match obj.get_mut("x-kubernetes-validations") {
        Some(serde_json::Value::Array(rules)) => rules.push(entry),
        _ => {
            obj.insert(
                "x-kubernetes-validations".into(),
                serde_json::json!([entry]),
            );
        }
    }
}

/// A duration field (`0` allowed: "keep forever" where it applies).
pub(crate) fn duration_rule(schema: &mut schemars::Schema) {
    schema.insert("maxLength".into(), 64.into());
    add_rule(
        schema,
        &format!("self.matches('{DURATION_RE}')"),
        DURATION_MESSAGE,
    );
}

/// A duration that must be longer than zero (a token's validity).
pub(crate) fn positive_duration_rule(schema: &mut schemars::Schema) {
    duration_rule(schema);
    add_rule(
        schema,
        // Only for durations (digits present), so a malformed one gets one message.
        "self.matches('[1-9]') || !self.matches('[0-9]')",
        "must be longer than zero",
    );
}

/// Shared shape so both kinds list conditions the same way.
pub type Conditions = Vec<Condition>;
