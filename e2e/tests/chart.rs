//! The operator chart as a platform team meets it: `helm lint --strict`, a values schema
//! that refuses what it does not know, both Deployments (the chart's operator and the garretd
//! the operator writes) admitted under the `restricted` Pod Security Standard, and every file
//! of `docs/examples/` accepted by a real kube-apiserver (server-side dry-run), the Argo CD and
//! Flux objects against those tools' own CRDs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use garret_e2e::{testbin_dir, ControlPlane, Options};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    repo().join("charts/garret-operator")
}

fn helm(args: &[&str]) -> Output {
    let helm = testbin_dir().expect("testbin dir").join("helm");
    Command::new(&helm)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", helm.display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubectl <args>` against the test control plane, with `input` on stdin.
fn kubectl(cp: &ControlPlane, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(garret_e2e::kubectl())
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("kubectl output")
}

/// Server-side dry-run apply of `yaml` in `ns`: must succeed without any warning (Pod
/// Security `warn` mode reports a Deployment whose pods it would refuse as a warning).
/// Objects that name their own namespace go there; the others to `ns`.
fn dry_run_apply(cp: &ControlPlane, ns: Option<&str>, what: &str, yaml: &str) {
    let mut args = vec![
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=garret-e2e",
        "-f",
        "-",
    ];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    let out = kubectl(cp, &args, yaml);
    let all = text(&out);
    assert!(out.status.success(), "{what}: dry-run refused:\n{all}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("Warning"),
        "{what}: dry-run warned:\n{all}"
    );
}

async fn cp() -> &'static ControlPlane {
    ControlPlane::shared(Options::new())
        .await
        .expect("control plane")
}

/// A namespace enforcing (and warning about) the `restricted` Pod Security Standard.
async fn restricted_namespace(cp: &ControlPlane, client: &Client) -> String {
    let ns = cp.create_namespace("restricted").await.expect("namespace");
    let api: Api<Namespace> = Api::all(client.clone());
    api.patch(
        &ns,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
            "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/warn-version": "latest",
        }}})),
    )
    .await
    .expect("label namespace");
    ns
}

/// The documents of a YAML stream.
fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .expect("parse YAML stream")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// A Pod made of `deployment`'s pod template: Pod Security admission enforces on Pods.
fn pod_of(deployment: &Value, name: &str) -> Value {
    let template = &deployment["spec"]["template"];
    assert!(template.is_object(), "no pod template in {deployment}");
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    })
}

/// `kubectl create --dry-run=server` of `pod` in `ns`.
fn dry_run_pod(cp: &ControlPlane, ns: &str, pod: &Value) -> Output {
    kubectl(
        cp,
        &["create", "--dry-run=server", "-n", ns, "-f", "-"],
        &pod.to_string(),
    )
}

fn render_chart(ns: &str, extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec![
        "template",
        "garret-operator",
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        ns,
    ];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(out.status.success(), "helm template: {}", text(&out));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn chart_lints_strict_and_its_schema_refuses_unknown_or_mistyped_values() {
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    let lint = helm(&["lint", "--strict", chart]);
    assert!(lint.status.success(), "helm lint --strict: {}", text(&lint));

    for (set, names) in [
        ("replicaCount=2", "replicaCount"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("networkPolicy.enabled=yes", "enabled"),
        ("watchNamespace=Not_A_Namespace", "watchNamespace"),
    ] {
        let out = helm(&["template", "t", chart, "--set-string", set]);
        let all = text(&out);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            all.contains("schema") && all.contains(names),
            "--set {set}: the error names neither the schema nor {names}:\n{all}"
        );
    }
}

#[tokio::test]
async fn both_deployments_are_admitted_under_the_restricted_pod_security_standard() {
    let cp = cp().await;
    let client = cp.admin_client().await.expect("client");
    let ns = restricted_namespace(cp, &client).await;

    // NOTES.txt tells what to apply next.
    let chart = chart();
    let kubeconfig = cp.kubeconfig_path();
    let install = helm(&[
        "install",
        "garret-operator",
        chart.to_str().expect("utf-8 path"),
        "--dry-run=client",
        "--namespace",
        &ns,
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8 path"),
    ]);
    let notes = text(&install);
    assert!(install.status.success(), "{notes}");
    assert!(
        notes.contains("kubectl apply -f") && notes.contains("CacheToken"),
        "{notes}"
    );

    // The chart, NetworkPolicy included: applied without a Pod Security warning.
    let rendered = render_chart(&ns, &["--set", "networkPolicy.enabled=true"]);
    let docs = documents(&rendered);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert!(kinds.contains(&"NetworkPolicy"), "{kinds:?}");
    let namespaced: Vec<String> = docs
        .iter()
        .filter(|d| {
            !matches!(
                d["kind"].as_str(),
                Some("ClusterRole" | "ClusterRoleBinding")
            )
        })
        .map(Value::to_string)
        .collect();
    dry_run_apply(cp, Some(&ns), "the chart", &namespaced.join("\n---\n"));

    // Its operator pod, and the garretd pods the operator renders (the operator's own
    // expected outputs, checked against its code by the fixture tests), as Pods.
    let operator = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the chart has a Deployment");
    let mut pods = vec![("operator", pod_of(operator, "operator"))];
    for fixture in [
        "binary-cache.expected.yaml",
        "binary-cache-s3.expected.yaml",
    ] {
        let path = repo().join("operator/tests/fixtures").join(fixture);
        let expected: Value = serde_saphyr::from_str(
            &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{fixture}: {e}")),
        )
        .expect("parse fixture");
        let children = expected["children"].as_array().cloned().unwrap_or_default();
        let deployment = children
            .iter()
            .find(|c| c["kind"] == "Deployment")
            .unwrap_or_else(|| panic!("{fixture} has no Deployment"));
        pods.push(("garretd", pod_of(deployment, "garretd")));
    }
    for (what, pod) in &pods {
        let out = dry_run_pod(cp, &ns, pod);
        assert!(out.status.success(), "{what} pod refused: {}", text(&out));
    }

    // The check bites: the same garretd pod without its seccomp profile is refused.
    let (_, garretd) = pods.last().expect("garretd pod");
    let mut weakened = garretd.clone();
    weakened["spec"]["securityContext"]
        .as_object_mut()
        .expect("pod securityContext")
        .remove("seccompProfile");
    let out = dry_run_pod(cp, &ns, &weakened);
    let all = text(&out);
    assert!(
        !out.status.success(),
        "a pod without seccompProfile was admitted"
    );
    assert!(all.contains("restricted"), "{all}");
}

fn example_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read docs/examples") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(example_files(&path));
        } else if path.extension().is_some_and(|x| x == "yaml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn every_example_is_accepted_by_the_api_server_and_the_operator() {
    let cp = cp().await;
    let client = cp.admin_client().await.expect("client");
    let ours = garret_e2e::install_crds_from(&client, &repo().join("crds"), T)
        .await
        .expect("install CRDs");
    assert_eq!(ours, 2);
    let gitops = testbin_dir().expect("testbin").join("gitops-crds");
    assert!(
        gitops.is_dir(),
        "{} missing: `bash tools/k8s-testbin/build.sh` fetches the Argo CD and Flux CRDs",
        gitops.display()
    );
    garret_e2e::install_crds_from(&client, &gitops, T)
        .await
        .expect("install the GitOps CRDs");
    // The GitOps objects live in their tools' namespaces.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in ["argocd", "flux-system"] {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace object");
        match namespaces.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("create namespace {name}: {e}"),
        }
    }
    let ns = restricted_namespace(cp, &client).await;

    let files = example_files(&repo().join("docs/examples"));
    let mut kinds = Vec::new();
    for file in &files {
        let yaml = std::fs::read_to_string(file).expect("read example");
        let docs = documents(&yaml);
        assert!(!docs.is_empty(), "{} is empty", file.display());
        for doc in &docs {
            kinds.push(doc["kind"].as_str().unwrap_or_default().to_string());
            if doc["kind"] == "BinaryCache" {
                // What the API server accepts, the operator must accept too.
                let mut bc: garret_operator::types::BinaryCache =
                    serde_json::from_value(doc.clone()).expect("BinaryCache parses");
                bc.metadata.namespace = Some(ns.clone());
                bc.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
                if let Err(e) = garret_operator::desired::validate::validate(&bc) {
                    panic!("{}: the operator refuses it: {e}", file.display());
                }
            }
        }
        let own_namespace = docs.iter().any(|d| d["metadata"]["namespace"].is_string());
        let target = (!own_namespace).then_some(ns.as_str());
        dry_run_apply(cp, target, &file.display().to_string(), &yaml);
    }
    for kind in [
        "BinaryCache",
        "CacheToken",
        "Application",
        "GitRepository",
        "HelmRelease",
        "Kustomization",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} example: {kinds:?}"
        );
    }
}
