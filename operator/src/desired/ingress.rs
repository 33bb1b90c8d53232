//! The Ingress, with proxy limits raised for Nix uploads: a NAR upload is one long request,
//! and garretd may take a while after the last byte before it answers.
//!
//! Annotations are rendered for ingress-nginx (`nginx.ingress.kubernetes.io/*`: body size,
//! request buffering off, read/send timeouts), for F5 NGINX Ingress Controller (`nginx.org/*`:
//! body size, read/send timeouts) and for the HAProxy Kubernetes Ingress Controller
//! (`haproxy.org/timeout-server`: HAProxy has no body limit, but waits only 50 s by default
//! for garretd's answer after the last byte). Traefik needs none per Ingress (no body limit),
//! but its entrypoint's `respondingTimeouts.readTimeout` (60 s by default in v3) must be raised
//! in its static config; see docs/operator.md.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};

use super::validate::Validated;

/// Seconds a proxy waits on an upload or for garretd's answer.
pub const PROXY_TIMEOUT_SECS: u32 = 3600;

/// Default annotations; `spec.ingress.annotations` overrides any of them.
pub fn default_annotations() -> BTreeMap<String, String> {
    let t = PROXY_TIMEOUT_SECS.to_string();
    BTreeMap::from([
        (
            "nginx.ingress.kubernetes.io/proxy-body-size".into(),
            "0".into(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-request-buffering".into(),
            "off".into(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-buffering".into(),
            "off".into(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-read-timeout".into(),
            t.clone(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-send-timeout".into(),
            t.clone(),
        ),
        ("nginx.org/client-max-body-size".into(), "0".into()),
        ("nginx.org/proxy-read-timeout".into(), format!("{t}s")),
        ("nginx.org/proxy-send-timeout".into(), format!("{t}s")),
        ("haproxy.org/timeout-server".into(), format!("{t}s")),
    ])
}

/// The Ingress, or `None` when the spec asks for none.
pub fn ingress(v: &Validated) -> Option<Ingress> {
    let spec = v.spec.ingress.as_ref()?;
    let name = v.names().workload();
    let mut meta = v.child_meta(name.clone(), true);
    let mut annotations = default_annotations();
    annotations.extend(spec.annotations.clone());
    meta.annotations = Some(annotations);
    let path = HTTPIngressPath {
        path: Some("/".into()),
        path_type: "Prefix".into(),
        backend: IngressBackend {
            service: Some(IngressServiceBackend {
                name,
                port: Some(ServiceBackendPort {
                    name: Some("http".into()),
                    number: None,
                }),
            }),
            ..IngressBackend::default()
        },
    };
    Some(Ingress {
        metadata: meta,
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue { paths: vec![path] }),
            }]),
            tls: spec.tls_secret_name.as_ref().map(|tls| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(tls.clone()),
                }]
            }),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::fixtures::*;

    #[test]
    fn no_ingress_unless_asked() {
        assert!(ingress(&validated(MINIMAL)).is_none());
    }

    #[test]
    fn ingress_raises_limits_and_user_annotations_win() {
        let ing = ingress(&validated(FULL)).expect("ingress");
        let ann = ing.metadata.annotations.clone().expect("annotations");
        assert_eq!(ann["nginx.ingress.kubernetes.io/proxy-body-size"], "50g");
        assert_eq!(
            ann["nginx.ingress.kubernetes.io/proxy-request-buffering"],
            "off"
        );
        assert_eq!(
            ann["nginx.ingress.kubernetes.io/proxy-read-timeout"],
            "3600"
        );
        assert_eq!(ann["nginx.org/client-max-body-size"], "0");
        assert_eq!(ann["haproxy.org/timeout-server"], "3600s");
        let spec = ing.spec.expect("spec");
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let tls = spec.tls.expect("tls");
        assert_eq!(tls[0].secret_name.as_deref(), Some("cache-tls"));
        let rule = &spec.rules.expect("rules")[0];
        assert_eq!(rule.host.as_deref(), Some("cache.example.org"));
        let backend = rule.http.as_ref().expect("http").paths[0]
            .backend
            .service
            .clone()
            .expect("svc");
        assert_eq!(backend.name, "big");
    }
}
