//! Validation at apply time, on a real kube-apiserver with the committed CRDs: every spec the
//! operator would refuse after the fact (`desired::validate`, `token::validate`) is refused by
//! the API server's schema patterns and CEL rules (`x-kubernetes-validations`) with a message
//! naming the field and the rule; good specs are accepted. Then the printer columns, read with
//! the real `kubectl get` (the testbin's, same release as the control plane). No operator runs here: status is written by the test through the
//! status subresource, as the operator would.

use std::process::{Command, Stdio};
use std::time::Duration;

use garret_e2e::{ControlPlane, Options};
use garret_operator::types::{BinaryCache, CacheToken};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> (&'static ControlPlane, Client, String) {
    let cp = ControlPlane::shared(Options::new())
        .await
        .expect("control plane");
    let client = cp.admin_client().await.expect("client");
    garret_e2e::install_garret_crds(&client, T)
        .await
        .expect("install CRDs");
    let ns = cp.create_namespace(prefix).await.expect("namespace");
    (cp, client, ns)
}

fn bc(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "garret.dev/v1alpha1", "kind": "BinaryCache", "metadata": {"name": name}, "spec": spec})
}

fn ct(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "garret.dev/v1alpha1", "kind": "CacheToken", "metadata": {"name": name}, "spec": spec})
}

/// A valid CacheToken spec with `patch` merged over it (top-level keys; `null` removes one).
fn token_spec(patch: Value) -> Value {
    let mut spec = json!({
        "binaryCacheRef": {"name": "main"},
        "subject": "ci",
        "validity": "30 days",
        "permissions": {"pull": ["team"], "push": ["team-*"]},
        "secretName": "ci-token",
    });
    if let (Some(s), Some(p)) = (spec.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            if v.is_null() {
                s.remove(k);
            } else {
                s.insert(k.clone(), v.clone());
            }
        }
    }
    spec
}

/// Server-side apply `obj`; the API server's error message when refused.
async fn apply<K>(api: &Api<K>, obj: &Value) -> Result<K, String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj["metadata"]["name"].as_str().expect("name");
    api.patch(name, &PatchParams::apply("e2e-user"), &Patch::Apply(obj))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) => {
                assert_eq!(
                    s.code, 422,
                    "refusal is Unprocessable Entity: {}",
                    s.message
                );
                s.message
            }
            e => panic!("apply failed other than by validation: {e}"),
        })
}

/// Whether the operator's own check refuses the object the API server answered.
fn operator_refuses_bc(applied: &Value, ns: &str) -> bool {
    let mut obj = applied.clone();
    obj["metadata"]["namespace"] = json!(ns);
    obj["metadata"]["uid"] = json!("0000-uid");
    let bc: BinaryCache = serde_json::from_value(obj).expect("BinaryCache");
    garret_operator::desired::validate(&bc).is_err()
}

fn operator_refuses_ct(applied: &Value, ns: &str) -> bool {
    let mut obj = applied.clone();
    obj["metadata"]["namespace"] = json!(ns);
    obj["metadata"]["uid"] = json!("0000-uid");
    let ct: CacheToken = serde_json::from_value(obj).expect("CacheToken");
    garret_operator::token::validate(&ct).is_err()
}

#[tokio::test]
async fn bad_binary_caches_are_refused_with_the_rule_and_good_ones_accepted() {
    let (_, client, ns) = setup("validation-bc").await;
    let api: Api<BinaryCache> = Api::namespaced(client, &ns);
    let s3 = json!({"s3": {"bucket": "b", "region": "r"}});
    let pg = json!({"postgres": {"name": "db", "key": "url"}});
    let one_replica_msg = "more than one replica needs storage.s3 and database.postgres";
    let bad = [
        (json!({"replicas": 2}), one_replica_msg),
        (json!({"replicas": 3, "storage": s3}), one_replica_msg),
        (json!({"replicas": 2, "database": pg}), one_replica_msg),
        (
            json!({"replicas": -1}),
            "spec.replicas in body should be greater than or equal to 0",
        ),
        (
            json!({"caches": [{"name": "bad name!"}]}),
            "spec.caches[0].name in body should match",
        ),
        (
            json!({"caches": [{"name": "_api"}]}),
            "spec.caches[0].name in body should match",
        ),
        (
            json!({"caches": [{"name": &"x".repeat(51)}]}),
            "spec.caches[0].name: Too long: may not be more than 50 bytes",
        ),
        (
            json!({"caches": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}),
            "each cache name may be declared once",
        ),
        (
            json!({"caches": [{"name": "a", "retentionPeriod": "forever"}]}),
            "spec.caches[0].retentionPeriod: Invalid value: \"forever\": must be a duration",
        ),
        (
            json!({"garbageCollection": {"interval": "soon"}}),
            "spec.garbageCollection.interval: Invalid value: \"soon\": must be a duration",
        ),
        (
            json!({"garbageCollection": {"defaultRetentionPeriod": "12 fortnights"}}),
            "spec.garbageCollection.defaultRetentionPeriod: Invalid value: \"12 fortnights\": must be a duration",
        ),
        (
            json!({"ingress": {"host": " "}}),
            "spec.ingress.host in body should match",
        ),
        (json!({"image": ""}), "spec.image in body should match"),
        (
            json!({"apiEndpoint": "cache.example.org"}),
            "spec.apiEndpoint in body should match",
        ),
        (
            json!({"apiEndpoint": "https:///path"}),
            "spec.apiEndpoint in body should match",
        ),
    ];
    for (i, (spec, needle)) in bad.iter().enumerate() {
        let obj = bc(&format!("bad-{i}"), spec.clone());
        let msg = apply(&api, &obj)
            .await
            .expect_err(&format!("{spec} must be refused"));
        assert!(msg.contains(needle), "{spec}: {msg}");
        // What the API server refuses, the operator refuses too (the rules add nothing new).
        let as_stored = json!({"apiVersion": "garret.dev/v1alpha1", "kind": "BinaryCache",
            "metadata": {"name": "x"}, "spec": spec});
        assert!(
            operator_refuses_bc(&as_stored, &ns),
            "{spec}: the operator would accept it"
        );
        println!("refused {spec}: {msg}");
    }
    let good = [
        json!({}),
        json!({"replicas": 0}),
        json!({"replicas": 2, "storage": s3, "database": pg}),
        json!({"caches": [{"name": "team"}, {"name": "oss", "public": true, "retentionPeriod": "0"}, {"name": "A-1_x+y", "retentionPeriod": "30 days"}]}),
        json!({"garbageCollection": {"interval": "12 hours", "defaultRetentionPeriod": "90d"}}),
        json!({"garbageCollection": {"interval": "1h 30m", "defaultRetentionPeriod": "3600"}}),
        json!({"garbageCollection": {"interval": "1.5h", "defaultRetentionPeriod": "2 weeks"}}),
        json!({"ingress": {"host": "cache.example.org", "tlsSecretName": "tls"}}),
        json!({"apiEndpoint": "https://cache.example.org/"}),
        json!({"apiEndpoint": "http://127.0.0.1:8080"}),
    ];
    for (i, spec) in good.iter().enumerate() {
        let obj = bc(&format!("good-{i}"), spec.clone());
        let applied = apply(&api, &obj)
            .await
            .unwrap_or_else(|m| panic!("{spec} must be accepted: {m}"));
        let stored = serde_json::to_value(&applied).expect("json");
        assert!(
            !operator_refuses_bc(&stored, &ns),
            "{spec}: accepted by the API server but refused by the operator"
        );
    }
}

#[tokio::test]
async fn bad_cache_tokens_are_refused_with_the_rule_and_good_ones_accepted() {
    let (_, client, ns) = setup("validation-ct").await;
    let api: Api<CacheToken> = Api::namespaced(client, &ns);
    let no_permission = "grant at least one permission";
    // (patch, message, does the operator refuse it too?)
    let bad = [
        (json!({"permissions": {}}), no_permission, false),
        (json!({"permissions": null}), no_permission, false),
        (
            json!({"permissions": {"pull": [], "push": []}}),
            no_permission,
            false,
        ),
        (
            json!({"validity": "forever"}),
            "spec.validity: Invalid value: \"forever\": must be a duration",
            true,
        ),
        (
            json!({"validity": "0s"}),
            "spec.validity: Invalid value: \"0s\": must be longer than zero",
            true,
        ),
        (
            json!({"validity": "0"}),
            "spec.validity: Invalid value: \"0\": must be longer than zero",
            true,
        ),
        (
            json!({"renewBefore": "a bit early"}),
            "spec.renewBefore: Invalid value: \"a bit early\": must be a duration",
            true,
        ),
        (
            json!({"permissions": {"pull": ["team ci"]}}),
            "spec.permissions.pull[0] in body should match",
            true,
        ),
        (
            json!({"permissions": {"push": ["-team"]}}),
            "spec.permissions.push[0] in body should match",
            true,
        ),
        (
            json!({"previousTokenGracePeriod": "a while"}),
            "spec.previousTokenGracePeriod: Invalid value: \"a while\": must be a duration",
            true,
        ),
        (
            json!({"secretName": "Bad_Name"}),
            "spec.secretName in body should match",
            false,
        ),
        (
            json!({"subject": ""}),
            "spec.subject in body should be at least 1 chars long",
            false,
        ),
        (
            json!({"binaryCacheRef": {"name": "Main Cache"}}),
            "spec.binaryCacheRef.name in body should match",
            false,
        ),
    ];
    for (i, (patch, needle, operator_too)) in bad.iter().enumerate() {
        let obj = ct(&format!("bad-{i}"), token_spec(patch.clone()));
        let msg = apply(&api, &obj)
            .await
            .expect_err(&format!("{patch} must be refused"));
        assert!(msg.contains(needle), "{patch}: {msg}");
        assert!(!msg.starts_with('['), "one message per mistake: {msg}");
        if *operator_too {
            assert!(operator_refuses_ct(&obj, &ns), "{patch}: operator accepts");
        }
        println!("refused {patch}: {msg}");
    }
    let good = [
        json!({}),
        json!({"validity": "30d", "renewBefore": "7d"}),
        json!({"validity": "12 hours", "renewBefore": "1h 30m"}),
        json!({"validity": "3600"}),
        json!({"validity": "1.5h"}),
        json!({"permissions": {"pull": ["*"]}}),
        json!({"permissions": {"destroyCache": ["team-*"]}}),
        json!({"secretName": "ci.token-1"}),
        json!({"previousTokenGracePeriod": "0s"}),
        json!({"previousTokenGracePeriod": "2 hours"}),
    ];
    for (i, patch) in good.iter().enumerate() {
        let obj = ct(&format!("good-{i}"), token_spec(patch.clone()));
        let applied = apply(&api, &obj)
            .await
            .unwrap_or_else(|m| panic!("{patch} must be accepted: {m}"));
        let stored = serde_json::to_value(&applied).expect("json");
        assert!(
            !operator_refuses_ct(&stored, &ns),
            "{patch}: accepted by the API server but refused by the operator"
        );
    }
}

fn kubectl(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(garret_e2e::kubectl());
    cmd.arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run kubectl");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes()).expect("kubectl stdin");
    }
    let out = child.wait_with_output().expect("kubectl output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn kubectl_apply_names_the_rule() {
    let (cp, _, ns) = setup("validation-kubectl").await;
    let yaml = "apiVersion: garret.dev/v1alpha1\nkind: BinaryCache\nmetadata: {name: main}\nspec: {replicas: 2}\n";
    for extra in [&[][..], &["--server-side"][..]] {
        let mut args = vec!["apply", "-n", &ns, "-f", "-"];
        args.extend_from_slice(extra);
        let (ok, _, err) = kubectl(cp, &args, Some(yaml));
        assert!(!ok, "kubectl apply {extra:?} must fail");
        assert!(
            err.contains("more than one replica needs storage.s3 and database.postgres (the data volume is ReadWriteOnce)"),
            "{err}"
        );
        println!("kubectl apply {extra:?}: {err}");
    }
    let token = "apiVersion: garret.dev/v1alpha1\nkind: CacheToken\nmetadata: {name: ci}\nspec: {binaryCacheRef: {name: main}, subject: ci, validity: 30 dayz, permissions: {pull: [team]}, secretName: ci-token}\n";
    let (ok, _, err) = kubectl(cp, &["apply", "-n", &ns, "-f", "-"], Some(token));
    assert!(!ok);
    assert!(
        err.contains("spec.validity") && err.contains("must be a duration"),
        "{err}"
    );
}

#[tokio::test]
async fn kubectl_get_columns_read_right() {
    let (cp, client, ns) = setup("validation-columns").await;
    let caches: Api<BinaryCache> = Api::namespaced(client.clone(), &ns);
    let tokens: Api<CacheToken> = Api::namespaced(client, &ns);
    apply(&caches, &bc("main", json!({"caches": [{"name": "team"}]})))
        .await
        .expect("BinaryCache");
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let rfc3339 = |unix: i64| {
        k8s_openapi::jiff::Timestamp::from_second(unix)
            .expect("time")
            .to_string()
    };
    let cond = |t: &str, s: &str| {
        json!({"type": t, "status": s, "reason": "Issued", "message": "m",
               "lastTransitionTime": rfc3339(now), "observedGeneration": 1})
    };
    let ready = |s: &str| {
        json!([
            cond("Ready", s),
            cond("Reconciling", "False"),
            cond("Stalled", "False")
        ])
    };
    let status = json!({"status": {"observedGeneration": 1, "conditions": ready("True"),
        "replicas": 2, "readyReplicas": 1, "replicaStatus": "1/2", "endpoint": "http://main.ns.svc/"}});
    caches
        .patch_status("main", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("BinaryCache status");
    // Valid for a month, expiring in an hour, expired an hour ago.
    let cases = [
        ("valid", now + 30 * 86400, "True"),
        ("expiring", now + 3600, "True"),
        ("expired", now - 3600, "False"),
    ];
    for (name, exp, r) in cases {
        let spec = token_spec(
            json!({"subject": format!("sub-{name}"), "secretName": format!("{name}-token")}),
        );
        apply(&tokens, &ct(name, spec)).await.expect("CacheToken");
        let status = json!({"status": {"observedGeneration": 1, "conditions": ready(r),
            "notBefore": rfc3339(exp - 30 * 86400), "notAfter": rfc3339(exp),
            "renewalTime": rfc3339(exp - 10 * 86400)}});
        tokens
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("CacheToken status");
    }

    let (ok, out, err) = kubectl(cp, &["get", "bc", "-n", &ns], None);
    assert!(ok, "{err}");
    println!("kubectl get bc:\n{out}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "REPLICAS", "ENDPOINT", "AGE"]);
    let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
    assert_eq!(&row[..4], ["main", "True", "1/2", "http://main.ns.svc/"]);

    let (ok, out, err) = kubectl(cp, &["get", "ct", "-n", &ns], None);
    assert!(ok, "{err}");
    println!("kubectl get ct:\n{out}");
    assert!(!out.contains("<invalid>"), "{out}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "SUBJECT", "SECRET", "EXPIRES", "AGE"]
    );
    for line in lines {
        let row: Vec<&str> = line.split_whitespace().collect();
        let (name, exp, r) = cases
            .iter()
            .find(|c| c.0 == row[0])
            .expect("a token we made");
        let sub = format!("sub-{name}");
        let secret = format!("{name}-token");
        let expires = rfc3339(*exp);
        assert_eq!(
            &row[..5],
            [*name, *r, sub.as_str(), secret.as_str(), expires.as_str()],
            "{line}"
        );
    }
    let (ok, out, _) = kubectl(cp, &["get", "ct", "-n", &ns, "-o", "wide"], None);
    assert!(ok);
    let header: Vec<&str> = out
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "SUBJECT", "SECRET", "EXPIRES", "AGE", "RENEWS", "REASON"]
    );
}
