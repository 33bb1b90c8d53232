//! Revocation end to end: the operator on a real kube-apiserver, and a real `garretd` process
//! started from what the operator rendered — `server.toml` from the config ConfigMap, the
//! key Secrets, and the revocation list ConfigMap, laid out on disk the way the kubelet
//! mounts them (paths re-rooted under a temp dir; ConfigMap updates arrive by the kubelet's
//! atomic `..data` symlink swap, synced here every second). A token works; its CacheToken is
//! deleted (or its subject changes, or it is renewed and its grace period ends); the same
//! request gets 401 within the bound: the operator's write (< 1 s) + the kubelet's sync (1 s
//! here; see docs/operator.md for a real kubelet) + garretd's poll (2 s).
//!
//! Needs the garretd binary: `cargo build -p garretd --bins` (same profile).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use garret_e2e::{rerooted, start_rendered_garretd, wait_for, ControlPlane};
use garret_operator::controller::{self, Settings};
use garret_operator::desired::{CACHE_KEYS_DIR, REVOCATIONS_DIR};
use garret_operator::types::CacheToken;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::Client;
use serde_json::json;

const T: Duration = Duration::from_secs(60);
/// What this test asserts: delete (or re-issue) to 401.
const BOUND: Duration = Duration::from_secs(10);

async fn operator_in_namespace(prefix: &str) -> (Client, String, tokio::task::JoinHandle<()>) {
    let options = garret_e2e::operator_options();
    let cp = ControlPlane::shared(options).await.expect("control plane");
    let client = garret_e2e::admin_with_crds(cp, T)
        .await
        .expect("admin client and CRDs");
    let ns = cp.create_namespace(prefix).await.expect("namespace");
    let settings = Settings {
        namespace: Some(ns.clone()),
        rsa_bits: 2048,
        resync: Duration::from_secs(300),
        ..Settings::default()
    };
    let op = tokio::spawn(controller::run(client.clone(), settings));
    (client, ns, op)
}

async fn apply<K>(api: &Api<K>, name: &str, value: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply("e2e-user").force(),
        &Patch::Apply(value),
    )
    .await
    .expect("apply");
}

fn token_spec(subject: &str, secret: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "binaryCacheRef": {"name": "main"},
        "subject": subject,
        "validity": "1h",
        "permissions": {"pull": ["team"], "push": ["team"]},
        "secretName": secret,
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    spec
}

fn cache_token(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "garret.dev/v1alpha1", "kind": "CacheToken", "metadata": {"name": name}, "spec": spec})
}

/// The token in Secret `name` once its `garret.dev/token-id` differs from `not`.
async fn token_in(secrets: &Api<Secret>, name: &str, not: Option<&str>) -> (String, String) {
    wait_for(T, "a token in the Secret", || async {
        let Some(s) = secrets.get_opt(name).await? else {
            return Ok(None);
        };
        let id = s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("garret.dev/token-id"))
            .cloned()
            .unwrap_or_default();
        Ok((!id.is_empty() && Some(id.as_str()) != not)
            .then(|| (garret_e2e::secret_text(&s, "token"), id)))
    })
    .await
    .expect("token minted")
}

/// A ConfigMap volume as the kubelet writes it: `<dir>/..<ts>/<key>` files, `..data` a
/// symlink to the current one swapped atomically, and `<key>` → `..data/<key>`.
struct ConfigMapVolume {
    dir: PathBuf,
    generation: u32,
}

impl ConfigMapVolume {
    fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).expect("volume dir");
        ConfigMapVolume { dir, generation: 0 }
    }

    fn write(&mut self, files: &BTreeMap<String, String>) {
        self.generation += 1;
        let ts = format!("..2026_12_01_00_00_00.{}", self.generation);
        let new = self.dir.join(&ts);
        std::fs::create_dir(&new).expect("timestamped dir");
        for (k, v) in files {
            std::fs::write(new.join(k), v).expect("file");
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&ts, &tmp).expect("symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        for k in files.keys() {
            let link = self.dir.join(k);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{k}"), &link).expect("key link");
            }
        }
    }
}

/// The kubelet's part: copy the revocation ConfigMap into its volume whenever it changes.
fn sync_revocations(
    api: Api<ConfigMap>,
    mut volume: ConfigMapVolume,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = None;
        loop {
            if let Ok(cm) = api.get("main-revocations").await {
                let files = cm.data.unwrap_or_default();
                if last.as_ref() != Some(&files) {
                    volume.write(&files);
                    last = Some(files);
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// HTTP status of GET cache-config with `token` (curl: no HTTP client in this crate).
fn status(url: &str, token: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("{url}/_api/v1/cache-config/team"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Seconds until `token` gets 401, polling every 100 ms; panics after [`BOUND`] * 3.
async fn until_401(url: &str, token: &str, since: Instant) -> Duration {
    loop {
        if status(url, token) == 401 {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < BOUND * 3,
            "token still accepted after {:?}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn revocation_text(cm: &ConfigMap) -> String {
    cm.data
        .as_ref()
        .and_then(|d| d.get("revoked"))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn deleted_renamed_and_renewed_tokens_are_refused_by_a_real_garretd() {
    let (client, ns, op) = operator_in_namespace("op-revoke").await;
    let caches: Api<garret_operator::types::BinaryCache> = Api::namespaced(client.clone(), &ns);
    let tokens: Api<CacheToken> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    apply(
        &caches,
        "main",
        json!({"apiVersion": "garret.dev/v1alpha1", "kind": "BinaryCache",
               "metadata": {"name": "main"}, "spec": {"caches": [{"name": "team"}]}}),
    )
    .await;
    apply(
        &tokens,
        "ci",
        cache_token("ci", token_spec("ci", "ci-token", json!({}))),
    )
    .await;
    apply(
        &tokens,
        "other",
        cache_token("other", token_spec("other", "other-token", json!({}))),
    )
    .await;
    apply(
        &tokens,
        "renamed",
        cache_token("renamed", token_spec("alice", "renamed-token", json!({}))),
    )
    .await;

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
    assert!(
        server_toml.contains("revocation-list = \"/run/garret/revocations/revoked\""),
        "{server_toml}"
    );
    assert!(
        !server_toml.contains("api-endpoint"),
        "not pinned: {server_toml}"
    );
    let root = tempfile::tempdir().expect("tmp");
    let at = |p: &str| rerooted(root.path(), p);
    std::fs::create_dir_all(at(CACHE_KEYS_DIR)).expect("keys dir");
    for (name, value) in cache_keys.data.clone().unwrap_or_default() {
        std::fs::write(at(CACHE_KEYS_DIR).join(name), value.0).expect("key file");
    }
    let mut volume = ConfigMapVolume::new(at(REVOCATIONS_DIR));
    volume.write(&revocations.data.clone().unwrap_or_default());
    let kubelet = sync_revocations(config_maps.clone(), volume);
    let g = start_rendered_garretd(
        root.path(),
        &server_toml,
        &garret_e2e::secret_text(&key, "token-rs256-secret-base64"),
    );

    let (ci, ci_id) = token_in(&secrets, "ci-token", None).await;
    let (other, _) = token_in(&secrets, "other-token", None).await;
    let (alice, alice_id) = token_in(&secrets, "renamed-token", None).await;
    // The declared cache appears once garretd applied server.toml.
    wait_for(T, "the token works", || async {
        Ok((status(&g.url, &ci) == 200).then_some(()))
    })
    .await
    .expect("ci token accepted");
    for t in [&other, &alice] {
        assert_eq!(status(&g.url, t), 200);
    }

    // 1. Deleting the CacheToken revokes its token.
    let since = Instant::now();
    tokens
        .delete("ci", &DeleteParams::default())
        .await
        .expect("delete");
    let took = until_401(&g.url, &ci, since).await;
    eprintln!("revocation bound: CacheToken deleted -> 401 in {took:?}");
    assert!(took < BOUND, "took {took:?}");
    assert_eq!(status(&g.url, &other), 200, "only that token is revoked");
    let list = revocation_text(&config_maps.get("main-revocations").await.expect("list"));
    assert!(
        list.contains(&ci_id) && list.contains(&format!("{ns}/ci Deleted")),
        "{list}"
    );
    wait_for(T, "the finalizer lets the CacheToken go", || async {
        Ok(tokens.get_opt("ci").await?.is_none().then_some(()))
    })
    .await
    .expect("deleted");

    // 2. A changed subject re-issues and revokes the old token at once.
    let since = Instant::now();
    apply(
        &tokens,
        "renamed",
        cache_token("renamed", token_spec("bob", "renamed-token", json!({}))),
    )
    .await;
    let took = until_401(&g.url, &alice, since).await;
    eprintln!("revocation bound: subject changed -> 401 in {took:?}");
    assert!(took < BOUND, "took {took:?}");
    let (bob, _) = token_in(&secrets, "renamed-token", Some(&alice_id)).await;
    assert_eq!(status(&g.url, &bob), 200, "the new token works");
    wait_for(T, "status shows what was revoked and when", || async {
        let ct = tokens.get("renamed").await?;
        let revoked = ct.status.map(|s| s.revoked_tokens).unwrap_or_default();
        Ok(revoked
            .iter()
            .any(|r| {
                r.token_id == alice_id && r.reason == "SubjectChanged" && r.revoked_at.is_some()
            })
            .then_some(()))
    })
    .await
    .expect("revokedTokens in status");

    // 3. A routine renewal keeps the old token for the grace period, then revokes it.
    apply(
        &tokens,
        "short",
        cache_token(
            "short",
            token_spec(
                "short",
                "short-token",
                json!({"validity": "60s", "renewBefore": "50s", "previousTokenGracePeriod": "3s"}),
            ),
        ),
    )
    .await;
    let (first, first_id) = token_in(&secrets, "short-token", None).await;
    // Renewed 10 s after issue (and again 10 s later, which the checks below stay clear of).
    let (second, _) = token_in(&secrets, "short-token", Some(&first_id)).await;
    let renewed = Instant::now();
    assert_eq!(
        status(&g.url, &first),
        200,
        "still valid in its grace period"
    );
    assert_eq!(status(&g.url, &second), 200);
    wait_for(T, "status shows the pending revocation", || async {
        let ct = tokens.get("short").await?;
        Ok(ct
            .status
            .as_ref()
            .is_some_and(|s| s.previous_tokens.iter().any(|p| p.token_id == first_id))
            .then_some(()))
    })
    .await
    .expect("previousTokens in status");
    let took = until_401(&g.url, &first, renewed).await;
    eprintln!("revocation bound: renewal -> 401 in {took:?} (grace 3 s)");
    assert!(
        took >= Duration::from_secs(2),
        "not before the grace period: {took:?}"
    );
    assert!(took < BOUND + Duration::from_secs(3), "took {took:?}");
    assert_eq!(status(&g.url, &second), 200, "the new token stays valid");

    kubelet.abort();
    op.abort();
}
