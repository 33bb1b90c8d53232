//! The Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`) for `spec.gateway`: one rule
//! sending every path to the garretd Service, attached to the Gateways the spec names, with
//! timeouts long enough for a NAR upload (one long request, then garretd's answer).
//!
//! k8s-openapi has no Gateway API types, and the `gateway-api` crate is built against another
//! kube and k8s-openapi release than this workspace, so the few fields the operator writes are
//! declared here. Unknown fields of a route read back (status, server defaults) are ignored.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

use super::ingress::PROXY_TIMEOUT_SECS;
use super::validate::Validated;
use crate::error::InvalidSpec;
use crate::types::{GatewaySpec, GatewayTimeouts};

/// API group of the Gateway API kinds.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The part of an `HTTPRoute` the operator writes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    plural = "httproutes",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<HTTPRouteRule>,
}

/// A Gateway (group and kind left to their defaults) or one of its listeners.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteRule {
    #[serde(default)]
    pub matches: Vec<HTTPRouteMatch>,
    #[serde(default)]
    pub backend_refs: Vec<HTTPBackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HTTPRouteTimeouts>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HTTPRouteMatch {
    pub path: HTTPPathMatch,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HTTPPathMatch {
    #[serde(rename = "type")]
    pub type_: String,
    pub value: String,
}

/// A Service in the route's namespace (group and kind left to their defaults).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HTTPBackendRef {
    pub name: String,
    pub port: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteTimeouts {
    pub request: String,
    pub backend_request: String,
}

/// The Service port the route sends to (`workload::service`'s `http` port).
pub const SERVICE_PORT: i32 = 80;

/// The timeout an unset one gets: the Ingress's proxy timeout.
pub fn default_timeout() -> String {
    format!("{PROXY_TIMEOUT_SECS}s")
}

/// The `(request, backendRequest)` timeouts to render: each defaults to the other, and both
/// to [`default_timeout`], so defaults never make the backend's longer than the request's.
pub fn timeouts(t: &GatewayTimeouts) -> (String, String) {
    let request = t
        .request
        .clone()
        .or_else(|| t.backend_request.clone())
        .unwrap_or_else(default_timeout);
    let backend = t.backend_request.clone().unwrap_or_else(|| request.clone());
    (request, backend)
}

/// The HTTPRoute, or `None` when the spec asks for none (an owned one is then deleted).
pub fn http_route(v: &Validated) -> Option<HTTPRoute> {
    let spec = v.spec.gateway.as_ref()?;
    let name = v.names().workload();
    let (request, backend_request) = timeouts(&spec.timeouts);
    let rule = HTTPRouteRule {
        matches: vec![HTTPRouteMatch {
            path: HTTPPathMatch {
                type_: "PathPrefix".into(),
                value: "/".into(),
            },
        }],
        backend_refs: vec![HTTPBackendRef {
            name: name.clone(),
            port: SERVICE_PORT,
        }],
        timeouts: Some(HTTPRouteTimeouts {
            request,
            backend_request,
        }),
    };
    let parent_refs = spec
        .parent_refs
        .iter()
        .map(|p| ParentReference {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            section_name: p.section_name.clone(),
        })
        .collect();
    Some(HTTPRoute {
        metadata: v.child_meta(name, true),
        spec: HTTPRouteSpec {
            parent_refs,
            hostnames: spec.hostnames.clone(),
            rules: vec![rule],
        },
    })
}

/// The host clients reach through the route: its first hostname without a wildcard.
pub fn endpoint_host(spec: &GatewaySpec) -> Option<&str> {
    spec.hostnames
        .iter()
        .map(String::as_str)
        .find(|h| !h.starts_with('*'))
}

/// What the CRD's rules refuse in `spec.gateway`, for objects stored before they existed.
pub fn check(spec: &GatewaySpec) -> Result<(), InvalidSpec> {
    let invalid = |m: String| Err(InvalidSpec(m));
    if spec.parent_refs.is_empty() {
        return invalid("gateway.parentRefs must name at least one Gateway".into());
    }
    if let Some(p) = spec.parent_refs.iter().find(|p| p.name.trim().is_empty()) {
        return invalid(format!("gateway.parentRefs: empty Gateway name in {p:?}"));
    }
    if let Some(h) = spec.hostnames.iter().find(|h| !is_hostname(h)) {
        return invalid(format!(
            "gateway.hostnames: {h:?} is not a DNS name (lower case, an optional leading `*.`, no port)"
        ));
    }
    let parse = |field: &str, value: &Option<String>| {
        match value {
        None => Ok(None),
        Some(text) => parse_duration_ms(text).map(Some).ok_or_else(|| {
            InvalidSpec(format!(
                "gateway.timeouts.{field}: {text:?} is not a Gateway API duration such as 3600s, 1h or 90m"
            ))
        }),
    }
    };
    let request = parse("request", &spec.timeouts.request)?;
    let backend = parse("backendRequest", &spec.timeouts.backend_request)?;
    if let (Some(r), Some(b)) = (request, backend) {
        if r != 0 && b > r {
            return invalid(
                "timeouts.backendRequest must not be longer than timeouts.request".into(),
            );
        }
    }
    Ok(())
}

/// Gateway API's hostname grammar (`types::GATEWAY_HOSTNAME_PATTERN`).
fn is_hostname(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    h.len() <= 253 && name.split('.').all(label_ok)
}

/// A Gateway API duration (GEP-2257: one to four `<1-5 digits><h|m|s|ms>` terms) in
/// milliseconds, or `None` when it is not one.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let mut rest = text;
    let mut total: u64 = 0;
    let mut terms = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=5).contains(&digits) {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += value * unit_ms;
        terms += 1;
    }
    (1..=4).contains(&terms).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::fixtures::*;
    use serde_json::json;

    fn with_gateway(gateway: &str) -> String {
        format!(
            "apiVersion: garret.dev/v1alpha1\nkind: BinaryCache\nmetadata: {{name: main}}\nspec: {{gateway: {gateway}}}"
        )
    }

    fn route(gateway: &str) -> HTTPRoute {
        let v =
            crate::desired::validate(&parse_binary_cache(&with_gateway(gateway))).expect("valid");
        http_route(&v).expect("route")
    }

    #[test]
    fn no_route_unless_asked() {
        assert!(http_route(&validated(MINIMAL)).is_none());
        assert!(http_route(&validated(FULL)).is_none());
    }

    #[test]
    fn route_attaches_to_the_gateways_and_sends_everything_to_the_service() {
        let r = route(
            "{parentRefs: [{name: public, namespace: gateways, sectionName: https}, {name: internal}], hostnames: [cache.example.org, '*.cache.example.org']}",
        );
        let value = serde_json::to_value(&r).expect("json");
        assert_eq!(value["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(value["kind"], "HTTPRoute");
        assert_eq!(value["metadata"]["name"], "main");
        assert_eq!(value["metadata"]["namespace"], "ns");
        let owner = &value["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "BinaryCache");
        assert_eq!(owner["controller"], true);
        assert_eq!(
            value["spec"],
            json!({
                "parentRefs": [
                    {"name": "public", "namespace": "gateways", "sectionName": "https"},
                    {"name": "internal"},
                ],
                "hostnames": ["cache.example.org", "*.cache.example.org"],
                "rules": [{
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [{"name": "main", "port": 80}],
                    "timeouts": {"request": "3600s", "backendRequest": "3600s"},
                }],
            })
        );
    }

    #[test]
    fn route_port_is_the_services() {
        let v = validated(MINIMAL);
        let svc = crate::desired::workload::service(&v);
        let port = svc.spec.and_then(|s| s.ports).expect("ports")[0].port;
        assert_eq!(port, SERVICE_PORT);
    }

    #[test]
    fn timeouts_default_to_each_other_then_to_an_hour() {
        let t = |request: Option<&str>, backend: Option<&str>| {
            timeouts(&GatewayTimeouts {
                request: request.map(Into::into),
                backend_request: backend.map(Into::into),
            })
        };
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(t(None, None), pair("3600s", "3600s"));
        assert_eq!(t(Some("2h"), None), pair("2h", "2h"));
        assert_eq!(t(None, Some("2h")), pair("2h", "2h"));
        assert_eq!(t(Some("0s"), Some("30m")), pair("0s", "30m"));
        let r = route("{parentRefs: [{name: gw}], timeouts: {request: 90m}}");
        assert_eq!(
            r.spec.rules[0].timeouts,
            Some(HTTPRouteTimeouts {
                request: "90m".into(),
                backend_request: "90m".into()
            })
        );
    }

    #[test]
    fn no_hostnames_renders_none() {
        let r = route("{parentRefs: [{name: gw}]}");
        assert!(r.spec.hostnames.is_empty());
        let value = serde_json::to_value(&r).expect("json");
        assert!(value["spec"].get("hostnames").is_none());
    }

    #[test]
    fn durations_follow_gateway_api() {
        for (text, ms) in [
            ("3600s", 3_600_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("500ms", 500),
            ("0s", 0),
            ("1h1m1s1ms", 3_661_001),
        ] {
            assert_eq!(parse_duration_ms(text), Some(ms), "{text}");
        }
        for bad in [
            "",
            "1",
            "1d",
            "1 h",
            "123456s",
            "-1s",
            "1h1m1s1ms1h",
            "1.5h",
            "h",
        ] {
            assert_eq!(parse_duration_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn check_refuses_what_the_crd_refuses() {
        let cases = [
            ("{parentRefs: []}", "at least one Gateway"),
            ("{parentRefs: [{name: ''}]}", "empty Gateway name"),
            (
                "{parentRefs: [{name: gw}], hostnames: ['Cache.example.org']}",
                "not a DNS name",
            ),
            (
                "{parentRefs: [{name: gw}], hostnames: ['cache.example.org:443']}",
                "not a DNS name",
            ),
            (
                "{parentRefs: [{name: gw}], hostnames: ['a.*.example.org']}",
                "not a DNS name",
            ),
            (
                "{parentRefs: [{name: gw}], timeouts: {request: 1d}}",
                "timeouts.request",
            ),
            (
                "{parentRefs: [{name: gw}], timeouts: {backendRequest: '1 h'}}",
                "timeouts.backendRequest",
            ),
            (
                "{parentRefs: [{name: gw}], timeouts: {request: 10m, backendRequest: 1h}}",
                "must not be longer",
            ),
        ];
        for (gateway, needle) in cases {
            let bc = parse_binary_cache(&with_gateway(gateway));
            let err = crate::desired::validate(&bc)
                .expect_err(gateway)
                .to_string();
            assert!(err.contains(needle), "{gateway}: {err}");
        }
        // Zero disables the request timeout, so any backend timeout fits under it.
        let bc = parse_binary_cache(&with_gateway(
            "{parentRefs: [{name: gw}], hostnames: ['*.example.org'], timeouts: {request: 0s, backendRequest: 1h}}",
        ));
        crate::desired::validate(&bc).expect("valid");
    }

    #[test]
    fn endpoint_host_skips_wildcards() {
        let bc = parse_binary_cache(&with_gateway(
            "{parentRefs: [{name: gw}], hostnames: ['*.example.org', cache.example.org]}",
        ));
        let spec = bc.spec.gateway.expect("gateway");
        assert_eq!(endpoint_host(&spec), Some("cache.example.org"));
    }

    #[test]
    fn endpoint_is_the_routes_host_unless_an_ingress_or_a_pin_says_otherwise() {
        let endpoint = |gateway: &str, extra: &str| {
            let yaml = format!(
                "apiVersion: garret.dev/v1alpha1\nkind: BinaryCache\nmetadata: {{name: main}}\nspec: {{gateway: {gateway}{extra}}}"
            );
            crate::desired::config::endpoint(&parse_binary_cache(&yaml))
        };
        let gw = "{parentRefs: [{name: gw}], hostnames: ['*.example.org', cache.example.org]}";
        assert_eq!(endpoint(gw, ""), "https://cache.example.org/");
        let plain = "{parentRefs: [{name: gw}], hostnames: [cache.example.org], tls: false}";
        assert_eq!(endpoint(plain, ""), "http://cache.example.org/");
        let wild = "{parentRefs: [{name: gw}], hostnames: ['*.example.org']}";
        assert_eq!(endpoint(wild, ""), "http://main.ns.svc/");
        assert_eq!(
            endpoint(gw, ", ingress: {host: other.example.org}"),
            "http://other.example.org/"
        );
        assert_eq!(
            endpoint(gw, ", apiEndpoint: 'https://pinned.example.org'"),
            "https://pinned.example.org/"
        );
    }
}
