//! "Ready" means served, end to end: the operator on a real kube-apiserver and a real
//! `garretd` process started from what the operator rendered (`server.toml` from the config
//! ConfigMap, the key Secrets as files, paths re-rooted under a temp dir). The operator runs
//! here, outside any cluster, so it reaches garretd through `Settings::garretd_url` — a local
//! port that forwards to garretd once it runs and refuses the connection before.
//!
//! 1. No garretd: the Deployment reports its pod available (the kubelet's part, written here
//!    as the Deployment controller would), but no cache is served: `Reconciling`, not Ready.
//! 2. garretd runs with one declared cache's key file missing (the kubelet syncs volumes
//!    independently): that cache is not served and the BinaryCache is still not Ready.
//! 3. The key file lands: garretd applies it on its own, the operator sees it through
//!    garretd's API, and the BinaryCache is Ready with every cache `served`.
//!
//! Needs the garretd binary: `cargo build -p garretd --bins` (same profile).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use garret_e2e::{rerooted, start_rendered_garretd, wait_for, ControlPlane};
use garret_operator::controller::{self, Settings};
use garret_operator::desired::{CACHE_KEYS_DIR, REVOCATIONS_DIR};
use garret_operator::types::{BinaryCache, BinaryCacheStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

/// A local port that forwards each connection to `target` once it is set, and closes
/// connections before: garretd "not running yet" as a client sees it.
struct Forwarder {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start() -> Forwarder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let to = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let dest = *to.lock().unwrap_or_else(|p| p.into_inner());
                let Some(dest) = dest else {
                    drop(inbound);
                    continue;
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(dest).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Forwarder { addr, target, task }
    }

    fn point_at(&self, url: &str) {
        let addr: SocketAddr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("garretd address");
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn data(secret: &Secret, key: &str) -> Vec<u8> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .unwrap_or_default()
}

/// `(status, reason, message)` of condition `type_`.
fn condition(s: &BinaryCacheStatus, type_: &str) -> Option<(String, String, String)> {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn served(s: &BinaryCacheStatus, cache: &str) -> Option<bool> {
    s.caches.iter().find(|c| c.name == cache).map(|c| c.served)
}

/// Write the Deployment's status as the Deployment controller would for one available pod.
async fn one_pod_available(deployments: &Api<Deployment>, name: &str) {
    let d = deployments.get(name).await.expect("Deployment");
    let status = json!({"status": {
        "observedGeneration": d.metadata.generation,
        "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
    }});
    deployments
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("Deployment status");
}

/// The BinaryCache's status once `check` accepts it (with the generation observed).
async fn status_where(
    caches: &Api<BinaryCache>,
    what: &str,
    check: impl Fn(&BinaryCacheStatus) -> bool,
) -> BinaryCacheStatus {
    let found = wait_for(T, what, || async {
        let bc = caches.get("main").await?;
        Ok(bc
            .status
            .filter(|s| s.observed_generation == bc.metadata.generation && check(s)))
    })
    .await;
    match found {
        Ok(s) => s,
        Err(e) => {
            let now = caches.get("main").await.ok().and_then(|bc| bc.status);
            panic!("{e}; status now: {now:#?}");
        }
    }
}

#[tokio::test]
async fn a_binary_cache_is_ready_only_once_garretd_serves_its_caches() {
    let options = garret_e2e::operator_options();
    let cp = ControlPlane::shared(options).await.expect("control plane");
    let client = garret_e2e::admin_with_crds(cp, T)
        .await
        .expect("admin client and CRDs");
    let ns = cp.create_namespace("op-served").await.expect("namespace");
    let forwarder = Forwarder::start().await;
    let settings = Settings {
        namespace: Some(ns.clone()),
        rsa_bits: 2048,
        garretd_url: Some(format!("http://{}", forwarder.addr)),
        ..Settings::default()
    };
    let op = tokio::spawn(controller::run(client.clone(), settings));

    let caches: Api<BinaryCache> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    caches
        .patch(
            "main",
            &PatchParams::apply("e2e-user").force(),
            &Patch::Apply(
                json!({"apiVersion": "garret.dev/v1alpha1", "kind": "BinaryCache",
                "metadata": {"name": "main"},
                "spec": {"caches": [{"name": "team"}, {"name": "ci"}]}}),
            ),
        )
        .await
        .expect("apply BinaryCache");

    // What the pod would mount, read from the API server.
    let rendered = wait_for(T, "the rendered config and keys", || async {
        let (Some(cm), Some(rev), Some(key), Some(cache_keys)) = (
            config_maps.get_opt("main-config").await?,
            config_maps.get_opt("main-revocations").await?,
            secrets.get_opt("main-token-key").await?,
            secrets.get_opt("main-cache-keys").await?,
        ) else {
            return Ok(None);
        };
        Ok(Some((cm, rev, key, cache_keys)))
    })
    .await
    .expect("rendered");
    let (config, revocations, key, cache_keys) = rendered;
    let server_toml = config
        .data
        .as_ref()
        .and_then(|d| d.get("server.toml"))
        .cloned()
        .expect("server.toml");
    wait_for(T, "the Deployment", || async {
        Ok(deployments.get_opt("main").await?.map(drop))
    })
    .await
    .expect("Deployment");

    // 1. A pod available, no garretd answering: listed in status, not served, not Ready.
    one_pod_available(&deployments, "main").await;
    let s = status_where(&caches, "the probe's first answer", |s| {
        condition(s, "Reconciling").is_some_and(|(_, reason, _)| reason == "CachesNotServed")
    })
    .await;
    println!("no garretd: {:?}", condition(&s, "Ready"));
    assert_eq!(s.caches.len(), 2, "{s:#?}");
    assert_eq!(
        (served(&s, "team"), served(&s, "ci")),
        (Some(false), Some(false))
    );
    let (ready, _, msg) = condition(&s, "Ready").expect("Ready");
    assert_eq!(ready, "False");
    assert_eq!(condition(&s, "Reconciling").expect("Reconciling").0, "True");
    assert!(
        msg.contains("team (garretd unreachable") && msg.contains("ci ("),
        "{msg}"
    );

    // 2. garretd runs, but team's key file has not landed yet.
    let root = tempfile::tempdir().expect("tmp");
    let keys_dir = rerooted(root.path(), CACHE_KEYS_DIR);
    std::fs::create_dir_all(&keys_dir).expect("keys dir");
    let key_files = cache_keys.data.clone().unwrap_or_default();
    assert_eq!(key_files.len(), 2, "one key file per cache: {key_files:?}");
    let (team_file, team_key) = key_files
        .iter()
        .find(|(name, _)| name.starts_with("team"))
        .expect("team's key file");
    for (name, value) in &key_files {
        if name != team_file {
            std::fs::write(keys_dir.join(name), &value.0).expect("key file");
        }
    }
    let revocations_dir = rerooted(root.path(), REVOCATIONS_DIR);
    std::fs::create_dir_all(&revocations_dir).expect("revocations dir");
    for (name, text) in revocations.data.clone().unwrap_or_default() {
        std::fs::write(revocations_dir.join(name), text).expect("revocation list");
    }
    let token_key = String::from_utf8(data(&key, "token-rs256-secret-base64")).expect("utf-8");
    let g = start_rendered_garretd(root.path(), &server_toml, &token_key);
    forwarder.point_at(&g.url);
    let s = status_where(&caches, "garretd answering, team not served", |s| {
        condition(s, "Ready")
            .is_some_and(|(_, _, msg)| msg.contains("team (") && !msg.contains("unreachable"))
    })
    .await;
    println!("team's key file missing: {:?}", condition(&s, "Ready"));
    assert_eq!(
        (served(&s, "team"), served(&s, "ci")),
        (Some(false), Some(true)),
        "ci's key is there, so garretd serves it: {s:#?}"
    );
    let (_, _, msg) = condition(&s, "Ready").expect("Ready");
    assert!(!msg.contains("ci ("), "only team is waited for: {msg}");
    assert_eq!(condition(&s, "Ready").expect("Ready").0, "False");
    assert_eq!(condition(&s, "Reconciling").expect("Reconciling").0, "True");

    // 3. The key file lands: garretd applies it and the BinaryCache becomes Ready.
    std::fs::write(keys_dir.join(team_file), &team_key.0).expect("team's key file");
    let s = status_where(&caches, "Ready", |s| {
        condition(s, "Ready").is_some_and(|(status, _, _)| status == "True")
    })
    .await;
    println!("served: {:?}", condition(&s, "Ready"));
    assert_eq!(
        (served(&s, "team"), served(&s, "ci")),
        (Some(true), Some(true))
    );
    assert_eq!(
        condition(&s, "Reconciling").expect("Reconciling").0,
        "False"
    );
    assert_eq!(condition(&s, "Stalled").expect("Stalled").0, "False");
    let public_keys: Vec<&str> = s.caches.iter().map(|c| c.public_key.as_str()).collect();
    assert!(
        public_keys
            .iter()
            .all(|k| k.starts_with("team:") || k.starts_with("ci:")),
        "{public_keys:?}"
    );

    op.abort();
}
