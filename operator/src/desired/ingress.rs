//! The Ingress, with proxy limits raised for Nix uploads: a NAR upload is one long request,
//! and garretd may take a while after the last byte before it answers.
//!
//! Annotations are rendered for ingress-nginx (`nginx.ingress.kubernetes.io/*`: body size,
//! request buffering off, read/send timeouts) and for F5 NGINX Ingress Controller
//! (`nginx.org/*`: body size, read/send timeouts). Traefik, HAProxy, Gateway API and cloud load
//! balancers set these limits elsewhere (entrypoint config, policies); they are not covered.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::Ingress;
use serde_json::json;

use super::{child_meta, Names};
use crate::types::BinaryCache;
use crate::{Error, Result};

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
    ])
}

/// The Ingress, or `None` when the spec asks for none.
pub fn ingress(bc: &BinaryCache) -> Result<Option<Ingress>> {
    let Some(spec) = &bc.spec.ingress else {
        return Ok(None);
    };
    let name = Names(&bc.metadata.name.clone().unwrap_or_default()).workload();
    let mut meta = child_meta(bc, name.clone(), true)?;
    let mut annotations = default_annotations();
    annotations.extend(spec.annotations.clone());
    meta.annotations = Some(annotations);
    let mut ing = json!({
        "metadata": meta,
        "spec": {
            "rules": [{
                "host": spec.host,
                "http": {"paths": [{
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": name, "port": {"name": "http"}}}
                }]}
            }]
        }
    });
    if let Some(class) = &spec.class_name {
        ing["spec"]["ingressClassName"] = json!(class);
    }
    if let Some(tls) = &spec.tls_secret_name {
        ing["spec"]["tls"] = json!([{"hosts": [spec.host], "secretName": tls}]);
    }
    serde_json::from_value(ing)
        .map(Some)
        .map_err(|e| Error::Serialize(format!("Ingress: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::*;

    #[test]
    fn no_ingress_unless_asked() {
        assert!(ingress(&binary_cache(MINIMAL)).expect("build").is_none());
    }

    #[test]
    fn ingress_raises_limits_and_user_annotations_win() {
        let ing = ingress(&binary_cache(FULL))
            .expect("build")
            .expect("ingress");
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
