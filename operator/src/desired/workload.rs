//! Deployment, Service and data PVC for garretd.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use serde_json::{json, Value};

use super::config::restart_hash;
use super::{
    child_meta, labels, Names, CACHE_KEYS_DIR, CONFIG_DIR, DATA_DIR, HTTP_PORT, TOKEN_KEY_FIELD,
};
use crate::types::BinaryCache;
use crate::{Error, Result};

/// UID/GID garretd runs as (the distroless `nonroot` user).
pub const RUN_AS: i64 = 65532;

fn typed<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::Serialize(format!("{what}: {e}")))
}

fn name_of(bc: &BinaryCache) -> String {
    bc.metadata.name.clone().unwrap_or_default()
}

/// Whether the pod needs the data volume: for SQLite or local chunks.
pub fn needs_volume(bc: &BinaryCache) -> bool {
    bc.spec.storage.s3.is_none() || bc.spec.database.postgres.is_none()
}

fn secret_env(var: &str, secret: &str, key: &str) -> Value {
    json!({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
}

/// The garretd Deployment: non-root, read-only root filesystem, no capabilities; probes on
/// `/healthz` (process alive) and `/readyz` (database reachable).
pub fn deployment(bc: &BinaryCache) -> Result<Deployment> {
    let spec = &bc.spec;
    let names = Names(&name_of(bc));
    let labels = labels(bc);

    let mut env = vec![secret_env(
        "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64",
        &names.token_key(),
        TOKEN_KEY_FIELD,
    )];
    if let Some(pg) = &spec.database.postgres {
        env.push(secret_env("ATTIC_SERVER_DATABASE_URL", &pg.name, &pg.key));
    }
    if let Some(creds) = spec
        .storage
        .s3
        .as_ref()
        .and_then(|s| s.credentials_secret_ref.as_ref())
    {
        env.push(secret_env(
            "AWS_ACCESS_KEY_ID",
            &creds.name,
            "AWS_ACCESS_KEY_ID",
        ));
        env.push(secret_env(
            "AWS_SECRET_ACCESS_KEY",
            &creds.name,
            "AWS_SECRET_ACCESS_KEY",
        ));
    }

    let mut mounts = vec![
        json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}),
        json!({"name": "cache-keys", "mountPath": CACHE_KEYS_DIR, "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    let mut volumes = vec![
        json!({"name": "config", "configMap": {"name": names.config()}}),
        // Optional: a BinaryCache without declared caches has no keys yet.
        json!({"name": "cache-keys", "secret": {"secretName": names.cache_keys(), "defaultMode": 0o440, "optional": true}}),
        json!({"name": "tmp", "emptyDir": {}}),
    ];
    if needs_volume(bc) {
        mounts.push(json!({"name": "data", "mountPath": DATA_DIR}));
        volumes.push(json!({"name": "data", "persistentVolumeClaim": {"claimName": names.data()}}));
    }

    let probe = |path: &str, period: i32| json!({"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": 3});
    // A ReadWriteOnce volume cannot be attached to the old and new pod at once.
    let strategy = if needs_volume(bc) {
        "Recreate"
    } else {
        "RollingUpdate"
    };

    typed(
        "Deployment",
        json!({
            "metadata": child_meta(bc, names.workload(), true)?,
            "spec": {
                "replicas": spec.replicas,
                "selector": {"matchLabels": labels},
                "strategy": {"type": strategy},
                "template": {
                    "metadata": {
                        "labels": labels,
                        "annotations": {"garret.dev/restart-hash": restart_hash(bc)?}
                    },
                    "spec": {
                        "automountServiceAccountToken": false,
                        "securityContext": {
                            "runAsNonRoot": true,
                            "runAsUser": RUN_AS,
                            "runAsGroup": RUN_AS,
                            "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"}
                        },
                        "containers": [{
                            "name": "garretd",
                            "image": spec.image,
                            "args": ["--config", format!("{CONFIG_DIR}/server.toml"), "--log-format", "json", "serve"],
                            "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
                            "env": env,
                            "volumeMounts": mounts,
                            "resources": {"requests": spec.resources.requests, "limits": spec.resources.limits},
                            "livenessProbe": probe("/healthz", 10),
                            "readinessProbe": probe("/readyz", 5),
                            "securityContext": {
                                "readOnlyRootFilesystem": true,
                                "allowPrivilegeEscalation": false,
                                "capabilities": {"drop": ["ALL"]}
                            }
                        }],
                        "volumes": volumes
                    }
                }
            }
        }),
    )
}

/// ClusterIP Service on port 80.
pub fn service(bc: &BinaryCache) -> Result<Service> {
    typed(
        "Service",
        json!({
            "metadata": child_meta(bc, Names(&name_of(bc)).workload(), true)?,
            "spec": {
                "selector": labels(bc),
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
            }
        }),
    )
}

/// The data volume, or `None` when S3 and PostgreSQL make it unnecessary.
pub fn data_pvc(bc: &BinaryCache) -> Result<Option<PersistentVolumeClaim>> {
    if !needs_volume(bc) {
        return Ok(None);
    }
    let vol = &bc.spec.storage.volume;
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": vol.size}}
    });
    if let Some(class) = &vol.storage_class_name {
        spec["storageClassName"] = json!(class);
    }
    typed(
        "PersistentVolumeClaim",
        json!({"metadata": child_meta(bc, Names(&name_of(bc)).data(), false)?, "spec": spec}),
    )
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::*;

    fn env_names(d: &Deployment) -> Vec<String> {
        let c = &d
            .spec
            .as_ref()
            .expect("spec")
            .template
            .spec
            .as_ref()
            .expect("pod")
            .containers[0];
        c.env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.name)
            .collect()
    }

    #[test]
    fn minimal_deployment_is_locked_down_with_volume() {
        let d = deployment(&binary_cache(MINIMAL)).expect("deployment");
        let spec = d.spec.clone().expect("spec");
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(
            spec.strategy.and_then(|s| s.type_).as_deref(),
            Some("Recreate")
        );
        let pod = spec.template.spec.expect("pod");
        let psc = pod.security_context.expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(RUN_AS));
        let c = &pod.containers[0];
        assert!(c
            .image
            .as_deref()
            .is_some_and(|i| i.starts_with("ghcr.io/garret-dev/garretd:")));
        let csc = c
            .security_context
            .clone()
            .expect("container security context");
        assert_eq!(csc.read_only_root_filesystem, Some(true));
        assert_eq!(csc.allow_privilege_escalation, Some(false));
        let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(
            env_names(&d),
            vec!["ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64"]
        );
        let vols: Vec<_> = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(vols, vec!["config", "cache-keys", "tmp", "data"]);
        assert!(data_pvc(&binary_cache(MINIMAL)).expect("pvc").is_some());
    }

    #[test]
    fn s3_and_postgres_need_no_volume_and_wire_secrets() {
        let bc = binary_cache(FULL);
        let d = deployment(&bc).expect("deployment");
        assert_eq!(
            env_names(&d),
            vec![
                "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64",
                "ATTIC_SERVER_DATABASE_URL",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY"
            ]
        );
        let spec = d.spec.expect("spec");
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(
            spec.strategy.and_then(|s| s.type_).as_deref(),
            Some("RollingUpdate")
        );
        let c = &spec.template.spec.expect("pod").containers[0];
        assert_eq!(c.image.as_deref(), Some("example.org/garretd:dev"));
        let requests = c
            .resources
            .clone()
            .and_then(|r| r.requests)
            .expect("requests");
        assert_eq!(requests.get("cpu").map(|q| q.0.as_str()), Some("500m"));
        assert!(data_pvc(&bc).expect("pvc").is_none());
    }

    #[test]
    fn service_selects_the_pods() {
        let bc = binary_cache(MINIMAL);
        let svc = service(&bc).expect("service");
        let d = deployment(&bc).expect("deployment");
        assert_eq!(
            svc.spec.and_then(|s| s.selector),
            d.spec.and_then(|s| s.selector.match_labels)
        );
    }
}
