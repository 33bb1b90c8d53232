//! Health as Flux/Helm (kstatus) and Argo CD read it, with their real evaluators: the
//! `health-check` program (`tools/health-check/`: `sigs.k8s.io/cli-utils/pkg/kstatus/status`
//! and the Argo CD `health.lua` scripts run in gopher-lua as Argo CD runs them), fed objects
//! read back from a real kube-apiserver with the operator's controllers running in-process.
//!
//! No kubelet runs here, so a garretd pod never becomes ready on its own: that is the
//! InProgress/Progressing case. Readiness is then simulated by writing the Deployment's status
//! subresource as the Deployment controller would (the operator watches its Deployments), and
//! a rollout past its deadline the same way. An invalid CacheToken spec (one the CRD rules
//! cannot catch: `renewBefore` longer than `validity`) is the Failed/Degraded case.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use garret_e2e::{wait_for, ControlPlane, Options};
use garret_operator::controller::{self, Settings};
use garret_operator::types::{BinaryCache, CacheToken};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(90);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn argocd_dir() -> PathBuf {
    root().join("charts/garret-operator/argocd")
}

/// The health-check binary, built by its script on first use (seconds when cached).
fn health_check() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root().join("tools/health-check/build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run tools/health-check/build.sh");
        assert!(out.status.success(), "tools/health-check/build.sh failed");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// What kstatus and Argo CD say about `obj`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Health {
    kstatus: String,
    kstatus_message: String,
    argocd: String,
    argocd_message: String,
}

fn evaluate(obj: &Value) -> Health {
    let mut child = Command::new(health_check())
        .arg("-lua-dir")
        .arg(argocd_dir().join("resource_customizations"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start health-check");
    let input = serde_json::to_vec(obj).expect("json");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("write object");
    let out = child.wait_with_output().expect("health-check output");
    assert!(
        out.status.success(),
        "health-check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("health-check JSON");
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    Health {
        kstatus: s("/kstatus/status"),
        kstatus_message: s("/kstatus/message"),
        argocd: s("/argocd/status"),
        argocd_message: s("/argocd/message"),
    }
}

#[test]
fn argocd_health_test_cases_pass_in_argocds_lua_vm() {
    let out = Command::new(health_check())
        .arg("-test")
        .arg(argocd_dir())
        .output()
        .expect("run health-check -test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.lines().filter(|l| l.starts_with("ok ")).count() >= 10);
}

async fn setup(prefix: &str, operator: bool) -> (Client, String, Option<Operator>) {
    let cp = ControlPlane::shared(Options::new())
        .await
        .expect("control plane");
    let client = cp.admin_client().await.expect("client");
    garret_e2e::install_garret_crds(&client, T)
        .await
        .expect("install CRDs");
    let ns = cp.create_namespace(prefix).await.expect("namespace");
    let op = operator.then(|| {
        let settings = Settings {
            namespace: Some(ns.clone()),
            rsa_bits: 2048,
            ..Settings::default()
        };
        Operator(tokio::spawn(controller::run(client.clone(), settings)))
    });
    (client, ns, op)
}

/// The operator's controllers for one namespace; stopped when dropped.
struct Operator(tokio::task::JoinHandle<()>);

impl Drop for Operator {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn dynamic<K>(client: &Client, ns: &str) -> Api<DynamicObject>
where
    K: kube::Resource<DynamicType = ()>,
{
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<K>(&()))
}

async fn apply(api: &Api<DynamicObject>, obj: Value) {
    let name = obj["metadata"]["name"].as_str().expect("name").to_string();
    api.patch(
        &name,
        &PatchParams::apply("e2e-user").force(),
        &Patch::Apply(&obj),
    )
    .await
    .expect("apply");
}

/// Read `name` back until the evaluators give `kstatus`/`argocd` (and, if given, the
/// operator has written status for the current generation), then return what they said.
async fn wait_health(
    api: &Api<DynamicObject>,
    name: &str,
    kstatus: &str,
    argocd: &str,
    observed: bool,
) -> (Value, Health) {
    let what = format!("{name} to read as {kstatus}/{argocd}");
    let found = wait_for(T, &what, || async {
        let obj = serde_json::to_value(api.get(name).await?).expect("json");
        let seen = obj["status"]["observedGeneration"] == obj["metadata"]["generation"];
        let h = evaluate(&obj);
        let done = h.kstatus == kstatus && h.argocd == argocd && (seen || !observed);
        Ok(done.then_some((obj, h)))
    })
    .await;
    match found {
        Ok(v) => v,
        Err(e) => {
            let obj = serde_json::to_value(api.get(name).await.expect("get")).expect("json");
            panic!("{e}; last read: {:?}\n{obj:#}", evaluate(&obj))
        }
    }
}

fn binary_cache(name: &str) -> Value {
    json!({"apiVersion": "garret.dev/v1alpha1", "kind": "BinaryCache", "metadata": {"name": name},
           "spec": {"caches": [{"name": "team"}]}})
}

fn cache_token(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "garret.dev/v1alpha1", "kind": "CacheToken", "metadata": {"name": name}, "spec": spec})
}

/// Write the Deployment's status as the Deployment controller would for `ready` ready pods
/// (plus `extra` fields).
async fn set_deployment_status(client: &Client, ns: &str, name: &str, ready: i32, extra: Value) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = api.get(name).await.expect("Deployment");
    let mut status = json!({
        "observedGeneration": d.metadata.generation,
        "replicas": 1, "updatedReplicas": 1,
        "readyReplicas": ready, "availableReplicas": ready,
        "unavailableReplicas": 1 - ready,
    });
    if let (Some(s), Some(e)) = (status.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .expect("Deployment status");
}

#[tokio::test]
async fn new_objects_read_in_progress_before_the_operator_writes_anything() {
    let (client, ns, _) = setup("health-new", false).await;
    let caches = dynamic::<BinaryCache>(&client, &ns);
    let tokens = dynamic::<CacheToken>(&client, &ns);
    apply(&caches, binary_cache("main")).await;
    let spec = json!({"binaryCacheRef": {"name": "main"}, "subject": "ci",
                      "permissions": {"pull": ["team"]}, "secretName": "ci-token"});
    apply(&tokens, cache_token("ci", spec)).await;
    for (api, name) in [(&caches, "main"), (&tokens, "ci")] {
        let obj = serde_json::to_value(api.get(name).await.expect("get")).expect("json");
        // The CRD's status default: not observed yet, whoever reads it.
        assert_eq!(obj["status"]["observedGeneration"], json!(0), "{obj}");
        let h = evaluate(&obj);
        assert_eq!(
            (h.kstatus.as_str(), h.argocd.as_str()),
            ("InProgress", "Progressing"),
            "{name}: {h:?}"
        );
    }
}

#[tokio::test]
async fn binary_cache_and_token_read_current_only_when_ready_and_minted() {
    let (client, ns, _op) = setup("health-ready", true).await;
    let caches = dynamic::<BinaryCache>(&client, &ns);
    let tokens = dynamic::<CacheToken>(&client, &ns);
    apply(&caches, binary_cache("main")).await;
    let spec = json!({"binaryCacheRef": {"name": "main"}, "subject": "ci", "validity": "1 day",
                      "permissions": {"pull": ["team"], "push": ["team"]}, "secretName": "ci-token"});
    apply(&tokens, cache_token("ci", spec)).await;

    // No kubelet: the Deployment never gets a ready pod.
    let (obj, h) = wait_health(&caches, "main", "InProgress", "Progressing", true).await;
    println!("BinaryCache, pods not ready: {h:?}");
    assert_eq!(h.argocd_message, "0/1 replicas available");
    assert_eq!(obj["status"]["replicaStatus"], "0/1");
    let conditions = obj["status"]["conditions"].as_array().expect("conditions");
    let reconciling = conditions
        .iter()
        .find(|c| c["type"] == "Reconciling")
        .expect("Reconciling");
    assert_eq!(reconciling["status"], "True");

    // The token is minted as soon as the key exists, whatever the pods do.
    let (tok, h) = wait_health(&tokens, "ci", "Current", "Healthy", true).await;
    println!("CacheToken, minted: {h:?}");
    assert!(tok["status"]["tokenId"].is_string(), "{tok}");

    // The Deployment controller's accounting of one ready pod (simulated): the operator sees
    // the Deployment change, but no garretd answers for the cache (no kube-proxy here to
    // reach the Service), so it stays InProgress/Progressing, saying why. (Current/Healthy
    // once garretd serves it: tests/served.rs.)
    set_deployment_status(&client, &ns, "main", 1, json!({})).await;
    let obj = wait_for(T, "the pod counted, the cache not served", || async {
        let obj = serde_json::to_value(caches.get("main").await?).expect("json");
        let reasons = obj["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let waiting = reasons.iter().any(|c| c["reason"] == "CachesNotServed");
        Ok((obj["status"]["replicaStatus"] == "1/1" && waiting).then_some(obj))
    })
    .await
    .expect("not served");
    let h = evaluate(&obj);
    println!("BinaryCache, pod ready, cache not served: {h:?}");
    assert_eq!(
        (h.kstatus.as_str(), h.argocd.as_str()),
        ("InProgress", "Progressing")
    );
    assert!(
        h.argocd_message
            .starts_with("1/1 replicas available; waiting for garretd to serve team ("),
        "{h:?}"
    );
    assert_eq!(obj["status"]["readyReplicas"], 1);
    let team = &obj["status"]["caches"][0];
    assert_eq!(team["substituter"], format!("http://main.{ns}.svc/team"));
    assert_eq!(team["served"], false);
    assert!(team["publicKey"]
        .as_str()
        .is_some_and(|k| k.starts_with("team:")));

    // A pod lost: back to InProgress.
    set_deployment_status(&client, &ns, "main", 0, json!({})).await;
    wait_health(&caches, "main", "InProgress", "Progressing", true).await;

    // A rollout the Deployment controller gave up on: Failed/Degraded until the spec changes.
    let deadline = json!({"conditions": [{"type": "Progressing", "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet \"main-1\" has timed out progressing.",
        "lastUpdateTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    set_deployment_status(&client, &ns, "main", 0, deadline).await;
    let (_, h) = wait_health(&caches, "main", "Failed", "Degraded", true).await;
    println!("BinaryCache, rollout stalled: {h:?}");
    assert!(h.argocd_message.contains("timed out progressing"), "{h:?}");
}

#[tokio::test]
async fn an_invalid_spec_reads_failed_and_degraded() {
    let (client, ns, _op) = setup("health-invalid", true).await;
    let caches = dynamic::<BinaryCache>(&client, &ns);
    let tokens = dynamic::<CacheToken>(&client, &ns);
    apply(&caches, binary_cache("main")).await;
    // Valid for the CRD, refused by the operator: renewBefore must be shorter than validity.
    let spec = json!({"binaryCacheRef": {"name": "main"}, "subject": "ci", "validity": "1h",
                      "renewBefore": "2h", "permissions": {"pull": ["team"]}, "secretName": "ci-token"});
    apply(&tokens, cache_token("ci", spec)).await;
    let (obj, h) = wait_health(&tokens, "ci", "Failed", "Degraded", true).await;
    println!("CacheToken, invalid spec: {h:?}");
    assert!(h.argocd_message.contains("renewBefore"), "{h:?}");
    assert!(h.kstatus_message.contains("renewBefore"), "{h:?}");
    let conditions = obj["status"]["conditions"].as_array().expect("conditions");
    let get = |t: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == t)
            .map(|c| c["status"].clone())
    };
    assert_eq!(get("Stalled"), Some(json!("True")));
    assert_eq!(get("Reconciling"), Some(json!("False")));
    assert_eq!(get("Issuing"), Some(json!("False")));

    // Fixed: Current/Healthy once minted.
    let spec = json!({"binaryCacheRef": {"name": "main"}, "subject": "ci", "validity": "1h",
                      "renewBefore": "10m", "permissions": {"pull": ["team"]}, "secretName": "ci-token"});
    apply(&tokens, cache_token("ci", spec)).await;
    wait_health(&tokens, "ci", "Current", "Healthy", true).await;
}

/// `garret_operator_queue_depth` counts tokens that wait to reconcile: many applied at once
/// (the controller runs a few at a time, and they wait for their BinaryCache's key) show up
/// in it, and it is back to zero once every token is minted and nothing is due.
#[tokio::test]
async fn queue_depth_rises_with_a_burst_of_tokens_and_drains() {
    use garret_operator::metrics;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const TOKENS: usize = 40;
    let (client, ns, _op) = setup("health-queue", true).await;
    let caches = dynamic::<BinaryCache>(&client, &ns);
    let tokens = dynamic::<CacheToken>(&client, &ns);
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(
                    metrics::global().queue_depth("CacheToken"),
                    Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    apply(&caches, binary_cache("main")).await;
    for i in 0..TOKENS {
        let spec = json!({"binaryCacheRef": {"name": "main"}, "subject": format!("ci-{i}"),
                          "permissions": {"pull": ["team"]}, "secretName": format!("q{i}-token")});
        apply(&tokens, cache_token(&format!("q{i}"), spec)).await;
    }
    let typed: Api<CacheToken> = Api::namespaced(client.clone(), &ns);
    wait_for(T, "every token minted", || async {
        let list = typed.list(&Default::default()).await?;
        let minted = list
            .items
            .iter()
            .filter(|t| {
                t.status
                    .as_ref()
                    .and_then(|s| s.token_id.as_ref())
                    .is_some()
            })
            .count();
        Ok((minted == TOKENS).then_some(()))
    })
    .await
    .expect("minted");
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed);
    println!("queue depth peaked at {peak} for {TOKENS} tokens");
    assert!(peak > 0, "the burst never showed in the queue depth");
    // Minted tokens wait for nothing (their renewal is hours away): the queue drains.
    wait_for(T, "the queue to drain", || async {
        let text = metrics::global().render();
        Ok(text
            .contains(r#"garret_operator_queue_depth{kind="CacheToken"} 0"#)
            .then_some(()))
    })
    .await
    .expect("queue drained");
}
