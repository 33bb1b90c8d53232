//! Deployment, Service and data PVC for garretd, built as typed objects so nothing can fail
//! after validation.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, SleepAction,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::restart_hash;
use super::validate::Validated;
use super::{CACHE_KEYS_DIR, CONFIG_DIR, DATA_DIR, HTTP_PORT, REVOCATIONS_DIR, TOKEN_KEY_FIELD};

/// UID/GID garretd runs as (the distroless `nonroot` user).
pub const RUN_AS: i64 = 65532;

/// Seconds a terminating garretd pod keeps serving before it gets SIGTERM (well inside the
/// pod's default 30 s grace period, which also covers garretd's own drain).
pub const PRE_STOP_SLEEP_SECONDS: i64 = 5;

fn secret_env(var: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: var.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn env(v: &Validated) -> Vec<EnvVar> {
    let spec = &v.spec;
    let mut env = vec![secret_env(
        "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64",
        &v.names().token_key(),
        TOKEN_KEY_FIELD,
    )];
    if let Some(pg) = &spec.database.postgres {
        env.push(secret_env("ATTIC_SERVER_DATABASE_URL", &pg.name, &pg.key));
    }
    let creds = spec
        .storage
        .s3
        .as_ref()
        .and_then(|s| s.credentials_secret_ref.as_ref());
    if let Some(creds) = creds {
        for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            env.push(secret_env(var, &creds.name, var));
        }
    }
    env
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn mounts_and_volumes(v: &Validated) -> (Vec<VolumeMount>, Vec<Volume>) {
    let names = v.names();
    let mut mounts = vec![
        mount("config", CONFIG_DIR, true),
        mount("cache-keys", CACHE_KEYS_DIR, true),
        mount("revocations", REVOCATIONS_DIR, true),
        mount("tmp", "/tmp", false),
    ];
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        // Optional: a BinaryCache without declared caches has no keys yet.
        Volume {
            name: "cache-keys".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names.cache_keys()),
                default_mode: Some(0o440),
                optional: Some(true),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        // Not optional: garretd refuses to start without its revocation list, and the
        // operator creates this ConfigMap before the Deployment. Updates reach the file by
        // the kubelet's symlink swap; garretd polls it.
        Volume {
            name: "revocations".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.revocations(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    if v.needs_volume() {
        mounts.push(mount("data", DATA_DIR, false));
        volumes.push(Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: names.data(),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    (mounts, volumes)
}

fn probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

fn quantities(m: &BTreeMap<String, String>) -> BTreeMap<String, Quantity> {
    m.iter()
        .map(|(k, q)| (k.clone(), Quantity(q.clone())))
        .collect()
}

/// The garretd container: non-root, read-only root filesystem, no capabilities; probes on
/// `/healthz` (process alive) and `/readyz` (database reachable).
fn container(v: &Validated, mounts: Vec<VolumeMount>) -> Container {
    let resources = &v.spec.resources;
    Container {
        name: "garretd".into(),
        image: Some(v.spec.image.clone()),
        args: Some(
            [
                "--config",
                &format!("{CONFIG_DIR}/server.toml"),
                "--log-format",
                "json",
                "serve",
            ]
            .map(String::from)
            .to_vec(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(env(v)),
        volume_mounts: Some(mounts),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&resources.requests)),
            limits: Some(quantities(&resources.limits)),
            ..ResourceRequirements::default()
        }),
        liveness_probe: Some(probe("/healthz", 10)),
        readiness_probe: Some(probe("/readyz", 5)),
        // The endpoints controller and kube-proxy need a moment to stop sending new
        // connections to a terminating pod; garretd stops accepting at SIGTERM, so it gets
        // SIGTERM only after this pause (the kubelet's own sleep: the image has no shell).
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SLEEP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(SecurityContext {
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The garretd Deployment; the pod template carries the restart hash of the config.
pub fn deployment(v: &Validated) -> Deployment {
    let labels = v.labels();
    let (mounts, volumes) = mounts_and_volumes(v);
    // A ReadWriteOnce volume cannot be attached to the old and new pod at once.
    let strategy = if v.needs_volume() {
        "Recreate"
    } else {
        "RollingUpdate"
    };
    let pod = PodSpec {
        automount_service_account_token: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        // The pause above, then garretd's 30 s drain of requests in flight, then a margin.
        termination_grace_period_seconds: Some(PRE_STOP_SLEEP_SECONDS + 35),
        containers: vec![container(v, mounts)],
        topology_spread_constraints: spread(v),
        volumes: Some(volumes),
        ..PodSpec::default()
    };
    Deployment {
        metadata: v.child_meta(v.names().workload(), true),
        spec: Some(DeploymentSpec {
            replicas: Some(v.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some(strategy.into()),
                // Surge first: a new pod is Ready before an old one stops serving.
                rolling_update: (strategy == "RollingUpdate").then_some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(
                        "garret.dev/restart-hash".to_string(),
                        restart_hash(v),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// Several replicas go to different nodes where the cluster has them (never blocking
/// scheduling where it has not), so one node's loss leaves a replica serving.
fn spread(v: &Validated) -> Option<Vec<TopologySpreadConstraint>> {
    (v.spec.replicas > 1).then(|| {
        vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(v.labels()),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        }]
    })
}

/// With several replicas, a voluntary disruption (a node drain) takes at most one at a time;
/// `None` for one replica (a budget there would block every drain).
pub fn disruption_budget(v: &Validated) -> Option<PodDisruptionBudget> {
    (v.spec.replicas > 1).then(|| PodDisruptionBudget {
        metadata: v.child_meta(v.names().workload(), true),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(v.labels()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// ClusterIP Service on port 80.
pub fn service(v: &Validated) -> Service {
    Service {
        metadata: v.child_meta(v.names().workload(), true),
        spec: Some(ServiceSpec {
            selector: Some(v.labels()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The data volume, or `None` when S3 and PostgreSQL make it unnecessary.
pub fn data_pvc(v: &Validated) -> Option<PersistentVolumeClaim> {
    if !v.needs_volume() {
        return None;
    }
    let vol = &v.spec.storage.volume;
    Some(PersistentVolumeClaim {
        metadata: v.child_meta(v.names().data(), false),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(vol.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            storage_class_name: vol.storage_class_name.clone(),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::fixtures::*;

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
        let d = deployment(&validated(MINIMAL));
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
        assert_eq!(
            vols,
            vec!["config", "cache-keys", "revocations", "tmp", "data"]
        );
        assert!(data_pvc(&validated(MINIMAL)).is_some());
    }

    #[test]
    fn s3_and_postgres_need_no_volume_and_wire_secrets() {
        let bc = validated(FULL);
        let d = deployment(&bc);
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
        assert!(data_pvc(&bc).is_none());
    }

    #[test]
    fn service_selects_the_pods() {
        let bc = validated(MINIMAL);
        let svc = service(&bc);
        let d = deployment(&bc);
        assert_eq!(
            svc.spec.and_then(|s| s.selector),
            d.spec.and_then(|s| s.selector.match_labels)
        );
    }
}
