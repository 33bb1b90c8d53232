//! The operator against a real kube-apiserver: CRDs from `crds/`, controllers running
//! in-process (one operator per test, watching only the test's namespace), real server-side
//! apply, status subresources, finalizers and owner references. No kubelet runs, so pods never
//! start and a BinaryCache never becomes Ready; the tests check what the control plane shows.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use garret_core::token::{SigningKey, Verifier};
use garret_e2e::OPERATOR_USER;
use garret_e2e::{wait_for, ControlPlane};
use garret_operator::controller::{self, Settings};
use garret_operator::types::{BinaryCache, CacheToken};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

async fn cp() -> &'static ControlPlane {
    let options = garret_e2e::operator_options();
    ControlPlane::shared(options).await.expect("control plane")
}

/// Install the committed CRDs (idempotent; every test calls it).
async fn install_crds(client: &Client) {
    garret_e2e::install_garret_crds(client, T)
        .await
        .expect("install CRDs");
}

/// The operator's controllers for one namespace; stopped when dropped.
struct Operator(tokio::task::JoinHandle<()>);

impl Drop for Operator {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A fresh namespace on the shared control plane (CRDs installed) with its own operator
/// watching it: (admin client, namespace, operator; dropping it stops the operator).
async fn operator_in_namespace(prefix: &str) -> (Client, String, Operator) {
    let cp = cp().await;
    let client = cp.admin_client().await.expect("client");
    install_crds(&client).await;
    let ns = cp.create_namespace(prefix).await.expect("namespace");
    let op = start_operator(client.clone(), &ns);
    (client, ns, op)
}

fn start_operator(client: Client, ns: &str) -> Operator {
    let settings = Settings {
        namespace: Some(ns.to_string()),
        // Smaller than production keys: debug-build RSA generation is slow, the code path
        // is the same.
        rsa_bits: 2048,
        resync: Duration::from_secs(300),
        ..Settings::default()
    };
    Operator(tokio::spawn(controller::run(client, settings)))
}

async fn apply_json<K>(api: &Api<K>, name: &str, value: serde_json::Value) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply("e2e-user").force(),
        &Patch::Apply(value),
    )
    .await
    .expect("apply")
}

fn binary_cache(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "garret.dev/v1alpha1", "kind": "BinaryCache", "metadata": {"name": name}, "spec": spec})
}

fn cache_token(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "garret.dev/v1alpha1", "kind": "CacheToken", "metadata": {"name": name}, "spec": spec})
}

fn condition<'a>(
    conds: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conds.iter().find(|c| c.type_ == t)
}

/// Wait until status reflects the current generation, then return the object.
async fn observed(api: &Api<BinaryCache>, name: &str) -> BinaryCache {
    wait_for(
        T,
        "BinaryCache status for the current generation",
        || async {
            let bc = api.get(name).await?;
            let done = bc.status.as_ref().and_then(|s| s.observed_generation)
                == bc.metadata.generation
                && bc
                    .status
                    .as_ref()
                    .is_some_and(|s| condition(&s.conditions, "Ready").is_some());
            Ok(done.then_some(bc))
        },
    )
    .await
    .expect("status observed")
}

fn data_str(secret: &Secret, key: &str) -> String {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .expect("secret key present");
    String::from_utf8(bytes.0.clone()).expect("utf-8")
}

fn owned_by(meta: &kube::api::ObjectMeta, owner: &impl Resource) -> bool {
    meta.owner_references.as_ref().is_some_and(|refs| {
        refs.iter()
            .any(|r| Some(&r.uid) == owner.meta().uid.as_ref() && r.controller == Some(true))
    })
}

#[tokio::test]
async fn binary_cache_gets_children_status_and_keys() {
    let (client, ns, _op) = operator_in_namespace("op-bc").await;
    let caches: Api<BinaryCache> = Api::namespaced(client.clone(), &ns);

    apply_json(
        &caches,
        "main",
        binary_cache(
            "main",
            json!({
                "caches": [{"name": "team"}, {"name": "oss", "public": true, "priority": 30}],
                "ingress": {"host": "cache.example.org", "className": "nginx"},
                "resources": {"requests": {"memory": "256Mi"}}
            }),
        ),
    )
    .await;
    let bc = observed(&caches, "main").await;
    let status = bc.status.clone().expect("status");

    // No kubelet: the Deployment exists but nothing is available, so not Ready.
    let ready = condition(&status.conditions, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "RollingOut")
    );
    assert_eq!(
        condition(&status.conditions, "Reconciling").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(
        condition(&status.conditions, "Stalled").map(|c| c.status.as_str()),
        Some("False")
    );
    assert_eq!(
        status.endpoint.as_deref(),
        Some("http://cache.example.org/")
    );
    assert!(bc.finalizers().iter().any(|f| f == "garret.dev/reclaim"));

    // Config: garretd's own parser accepts it, with both caches and their key files.
    let cm: ConfigMap = Api::namespaced(client.clone(), &ns)
        .get("main-config")
        .await
        .expect("ConfigMap");
    assert!(owned_by(&cm.metadata, &bc));
    let toml = cm
        .data
        .as_ref()
        .and_then(|d| d.get("server.toml"))
        .expect("server.toml");
    let cfg = garretd::config::Config::from_toml(toml, &Default::default(), vec![])
        .expect("garretd accepts the config");
    let names: Vec<_> = cfg.caches.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["team", "oss"]);

    // Keys: the token key parses; each cache has a keypair whose public half is in status.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let token_key = secrets
        .get("main-token-key")
        .await
        .expect("token key Secret");
    assert!(
        token_key.metadata.owner_references.is_none(),
        "kept per reclaimPolicy, not owned"
    );
    SigningKey::from_rs256_secret_base64(&data_str(&token_key, "token-rs256-secret-base64"))
        .expect("RS256 key");
    let cache_keys = secrets
        .get("main-cache-keys")
        .await
        .expect("cache keys Secret");
    let team_key =
        garret_core::nix::signing::Keypair::parse(&data_str(&cache_keys, "team")).expect("keypair");
    let public: BTreeMap<_, _> = status
        .caches
        .iter()
        .map(|c| (c.name.clone(), c.public_key.clone()))
        .collect();
    assert_eq!(
        public.get("team"),
        Some(&team_key.public_key().to_canonical_string())
    );
    assert!(public.contains_key("oss"));

    // Workload and exposure.
    let d: Deployment = Api::namespaced(client.clone(), &ns)
        .get("main")
        .await
        .expect("Deployment");
    assert!(owned_by(&d.metadata, &bc));
    let pod = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    let c = &pod.containers[0];
    assert_eq!(
        c.security_context
            .as_ref()
            .and_then(|s| s.read_only_root_filesystem),
        Some(true)
    );
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root),
        Some(true)
    );
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.as_deref()),
        Some("/readyz")
    );
    let env = c.env.clone().unwrap_or_default();
    let key_ref = env
        .iter()
        .find(|e| e.name == "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("token key from Secret");
    assert_eq!(key_ref.name, "main-token-key");
    let svc: Service = Api::namespaced(client.clone(), &ns)
        .get("main")
        .await
        .expect("Service");
    assert!(owned_by(&svc.metadata, &bc));
    let ing: Ingress = Api::namespaced(client.clone(), &ns)
        .get("main")
        .await
        .expect("Ingress");
    assert!(owned_by(&ing.metadata, &bc));
    assert_eq!(
        ing.annotations()
            .get("nginx.ingress.kubernetes.io/proxy-body-size")
            .map(String::as_str),
        Some("0")
    );
    let pvc: PersistentVolumeClaim = Api::namespaced(client.clone(), &ns)
        .get("main-data")
        .await
        .expect("PVC");
    assert!(pvc.metadata.owner_references.is_none());

    // An Event marks the first transition.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    wait_for(T, "KeyGenerated event", || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("KeyGenerated"))
            .then_some(()))
    })
    .await
    .expect("event");

    // A spec change: one more cache, no ingress. Existing keys stay, the new one is added,
    // the Ingress goes away.
    apply_json(
        &caches,
        "main",
        binary_cache("main", json!({"caches": [{"name": "team"}, {"name": "oss", "public": true}, {"name": "extra"}]})),
    )
    .await;
    let bc2 = observed(&caches, "main").await;
    assert!(bc2.metadata.generation > bc.metadata.generation);
    let cache_keys = secrets
        .get("main-cache-keys")
        .await
        .expect("cache keys Secret");
    assert_eq!(
        data_str(&cache_keys, "team"),
        team_key.to_canonical_string(),
        "existing key kept"
    );
    assert!(cache_keys
        .data
        .as_ref()
        .is_some_and(|d| d.contains_key("extra")));
    assert_eq!(bc2.status.expect("status").caches.len(), 3);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    wait_for(T, "Ingress removed", || async {
        Ok(ingresses.get_opt("main").await?.is_none().then_some(()))
    })
    .await
    .expect("ingress deleted");
}

#[tokio::test]
async fn invalid_spec_is_degraded_without_children() {
    let (client, ns, _op) = operator_in_namespace("op-invalid").await;
    let caches: Api<BinaryCache> = Api::namespaced(client.clone(), &ns);
    // Passes the CRD's rules (see tests/validation.rs), refused by the operator.
    apply_json(
        &caches,
        "bad",
        // (A duration of the right shape whose value overflows: CEL checks only the shape.)
        binary_cache(
            "bad",
            json!({"garbageCollection": {"interval": "99999999999999999999 years"}}),
        ),
    )
    .await;
    let bc = observed(&caches, "bad").await;
    let conds = bc.status.expect("status").conditions;
    let degraded = condition(&conds, "Stalled").expect("Stalled");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(
        degraded.message.contains("garbageCollection.interval"),
        "{}",
        degraded.message
    );
    assert_eq!(
        condition(&conds, "Ready").map(|c| c.status.as_str()),
        Some("False")
    );
    let deployments: Api<Deployment> = Api::namespaced(client, &ns);
    assert!(deployments.get_opt("bad").await.expect("get").is_none());
}

/// The current token of a CacheToken, once its status reaches `min_revision`.
async fn token_at(
    tokens: &Api<CacheToken>,
    secrets: &Api<Secret>,
    name: &str,
    min_revision: i64,
) -> (CacheToken, String) {
    let ct = wait_for(
        T,
        &format!("CacheToken {name} revision {min_revision}"),
        || async {
            let ct = tokens.get(name).await?;
            let rev = ct.status.as_ref().and_then(|s| s.revision).unwrap_or(0);
            let ready = ct.status.as_ref().is_some_and(|s| {
                condition(&s.conditions, "Ready").is_some_and(|c| c.status == "True")
                    && s.observed_generation == ct.metadata.generation
            });
            Ok((rev >= min_revision && ready).then_some(ct))
        },
    )
    .await
    .expect("token issued");
    let secret = secrets
        .get(&ct.spec.secret_name)
        .await
        .expect("token Secret");
    (ct, data_str(&secret, "token"))
}

#[tokio::test]
async fn cache_token_is_minted_verifiable_and_reissued() {
    let (client, ns, _op) = operator_in_namespace("op-token").await;
    let caches: Api<BinaryCache> = Api::namespaced(client.clone(), &ns);
    let tokens: Api<CacheToken> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    apply_json(
        &caches,
        "main",
        binary_cache("main", json!({"caches": [{"name": "team-ci"}]})),
    )
    .await;
    apply_json(
        &tokens,
        "ci",
        cache_token(
            "ci",
            json!({
                "binaryCacheRef": {"name": "main"},
                "subject": "ci-runner",
                "validity": "30d",
                "permissions": {"pull": ["team-ci", "team-*"], "push": ["team-ci"]},
                "secretName": "ci-token"
            }),
        ),
    )
    .await;

    let (ct, token) = token_at(&tokens, &secrets, "ci", 1).await;
    let key_secret = secrets.get("main-token-key").await.expect("token key");
    let key =
        SigningKey::from_rs256_secret_base64(&data_str(&key_secret, "token-rs256-secret-base64"))
            .expect("key");
    let verifier = Verifier::new(key, None, None).expect("verifier");
    let claims = verifier
        .verify(&token, garret_core::clock::unix_now())
        .expect("garret accepts the token");
    assert_eq!(claims.sub.as_deref(), Some("ci-runner"));
    let ci = claims.permission_for("team-ci");
    assert!(ci.pull && ci.push && !ci.delete);
    let other = claims.permission_for("team-web");
    assert!(other.pull && !other.push);
    assert!(!claims.permission_for("private").pull);

    let status = ct.status.clone().expect("status");
    assert_eq!(status.revision, Some(1));
    assert_eq!(status.token_id, claims.jti);
    let (nbf, exp) = (claims.nbf.expect("nbf"), claims.exp.expect("exp"));
    assert_eq!(exp - nbf, 30 * 86400);
    assert_eq!(status.not_before.map(|t| t.0.as_second()), Some(nbf));
    assert_eq!(status.not_after.map(|t| t.0.as_second()), Some(exp));
    assert_eq!(
        status.renewal_time.map(|t| t.0.as_second()),
        Some(nbf + 20 * 86400)
    );
    let secret = secrets.get("ci-token").await.expect("token Secret");
    assert!(owned_by(&secret.metadata, &ct));

    // A permission change reissues.
    apply_json(
        &tokens,
        "ci",
        cache_token(
            "ci",
            json!({
                "binaryCacheRef": {"name": "main"},
                "subject": "ci-runner",
                "validity": "30d",
                "permissions": {"pull": ["team-ci", "team-*"], "push": ["team-ci"], "delete": ["team-ci"]},
                "secretName": "ci-token"
            }),
        ),
    )
    .await;
    let (_, token2) = token_at(&tokens, &secrets, "ci", 2).await;
    let claims2 = verifier
        .verify(&token2, garret_core::clock::unix_now())
        .expect("valid");
    assert!(claims2.permission_for("team-ci").delete);
    assert_ne!(claims2.jti, claims.jti);

    // A corrupted Secret is repaired with a new token.
    secrets
        .patch(
            "ci-token",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"token": "Z2FyYmFnZQ=="}})),
        )
        .await
        .expect("corrupt the Secret");
    let (_, token3) = token_at(&tokens, &secrets, "ci", 3).await;
    let claims3 = verifier
        .verify(&token3, garret_core::clock::unix_now())
        .expect("valid again");
    assert_ne!(claims3.jti, claims2.jti);

    // The netrc follows the BinaryCache's endpoint without a new token.
    let secret = secrets.get("ci-token").await.expect("token Secret");
    assert_eq!(
        data_str(&secret, "netrc"),
        format!("machine main.{ns}.svc password {token3}\n")
    );
    apply_json(
        &caches,
        "main",
        binary_cache(
            "main",
            json!({"caches": [{"name": "team-ci"}], "ingress": {"host": "cache.example.org", "tlsSecretName": "tls"}}),
        ),
    )
    .await;
    let moved = wait_for(T, "token Secret follows the endpoint", || async {
        let s = secrets.get("ci-token").await?;
        Ok((data_str(&s, "endpoint") == "https://cache.example.org/").then_some(s))
    })
    .await
    .expect("endpoint updated");
    assert_eq!(
        data_str(&moved, "netrc"),
        format!("machine cache.example.org password {token3}\n")
    );
    assert_eq!(data_str(&moved, "token"), token3);
    // … and so do the files a CI pod mounts (docs/operator.md): nix.conf and the client config.
    let nix_conf = data_str(&moved, "nix.conf");
    assert!(
        nix_conf.contains("netrc-file = /var/run/secrets/garret/netrc\n"),
        "{nix_conf}"
    );
    // Substituters are listed for the caches the BinaryCache's status publishes.
    wait_for(T, "nix.conf follows status.caches", || async {
        let published = caches
            .get("main")
            .await?
            .status
            .is_some_and(|s| s.caches.iter().any(|c| c.name == "team-ci"));
        let conf = data_str(&secrets.get("ci-token").await?, "nix.conf");
        let listed = conf.contains("extra-substituters = https://cache.example.org/team-ci\n")
            && conf.contains("extra-trusted-public-keys = team-ci:");
        Ok((published == listed).then_some(()))
    })
    .await
    .expect("nix.conf substituters");
    assert_eq!(
        data_str(&moved, "config.toml"),
        "default-server = \"main\"\n\n[servers.main]\nendpoint = \"https://cache.example.org/\"\n\
         token-file = \"/var/run/secrets/garret/token\"\n"
    );
}

#[tokio::test]
async fn short_lived_token_is_renewed_before_expiry() {
    let (client, ns, _op) = operator_in_namespace("op-renew").await;
    let caches: Api<BinaryCache> = Api::namespaced(client.clone(), &ns);
    let tokens: Api<CacheToken> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    apply_json(&caches, "main", binary_cache("main", json!({}))).await;
    apply_json(
        &tokens,
        "short",
        cache_token(
            "short",
            json!({
                "binaryCacheRef": {"name": "main"},
                "subject": "short",
                "validity": "30s",
                "permissions": {"pull": ["*"]},
                "secretName": "short-token"
            }),
        ),
    )
    .await;
    let (first, _) = token_at(&tokens, &secrets, "short", 1).await;
    let first = first.status.expect("status");
    let (second, _) = token_at(&tokens, &secrets, "short", 2).await;
    let second = second.status.expect("status");
    assert_ne!(second.token_id, first.token_id);
    let first_exp = first.not_after.expect("notAfter").0.as_second();
    let second_nbf = second.not_before.expect("notBefore").0.as_second();
    let first_nbf = first.not_before.clone().expect("notBefore").0.as_second();
    let first_renewal = first
        .renewal_time
        .clone()
        .expect("renewalTime")
        .0
        .as_second();
    assert_eq!(first_renewal - first_nbf, 20, "two thirds of 30s");
    // Renewed at two thirds of the lifetime, i.e. before the first token expired.
    assert!(
        second_nbf < first_exp,
        "renewed at {second_nbf}, first expired at {first_exp}"
    );
    assert!(second_nbf >= first_renewal);
}

#[tokio::test]
async fn deleting_a_binary_cache_runs_the_reclaim_finalizer() {
    let (client, ns, _op) = operator_in_namespace("op-delete").await;
    let caches: Api<BinaryCache> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);

    for (name, policy) in [("gone", "Delete"), ("kept", "Retain")] {
        apply_json(
            &caches,
            name,
            binary_cache(
                name,
                json!({"reclaimPolicy": policy, "caches": [{"name": "c"}]}),
            ),
        )
        .await;
        observed(&caches, name).await;
        caches
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for name in ["gone", "kept"] {
        wait_for(T, &format!("BinaryCache {name} deleted"), || async {
            Ok(caches.get_opt(name).await?.is_none().then_some(()))
        })
        .await
        .expect("finalizer released");
    }
    // The PVC is deleted, but kube-apiserver's pvc-protection finalizer keeps it visible
    // until a controller-manager (absent here) releases it.
    let gone = pvcs.get_opt("gone-data").await.expect("get");
    assert!(gone.is_none_or(|p| p.metadata.deletion_timestamp.is_some()));
    let kept = pvcs
        .get_opt("kept-data")
        .await
        .expect("get")
        .expect("kept PVC");
    assert!(kept.metadata.deletion_timestamp.is_none());
    assert!(secrets
        .get_opt("gone-token-key")
        .await
        .expect("get")
        .is_none());
    assert!(secrets
        .get_opt("gone-cache-keys")
        .await
        .expect("get")
        .is_none());
    assert!(secrets
        .get_opt("kept-token-key")
        .await
        .expect("get")
        .is_some());
    assert!(secrets
        .get_opt("kept-cache-keys")
        .await
        .expect("get")
        .is_some());
}

/// `helm template` of the operator chart, as release `garret-operator` in `namespace`.
fn render_chart(namespace: &str) -> String {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/garret-operator");
    let helm = garret_e2e::testbin_dir().expect("testbin dir").join("helm");
    let out = std::process::Command::new(&helm)
        .args(["template", "garret-operator"])
        .arg(&chart)
        .args(["--namespace", namespace, "--include-crds"])
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", helm.display()));
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The documents of a rendered chart whose kind is in `kinds`, as a YAML stream.
fn documents_of_kind(yaml: &str, kinds: &[&str]) -> String {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(yaml).expect("parse chart output");
    docs.into_iter()
        .filter(|d| d["kind"].as_str().is_some_and(|k| kinds.contains(&k)))
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[tokio::test]
async fn chart_renders_and_passes_server_side_dry_run() {
    let cp = cp().await;
    let client = cp.admin_client().await.expect("client");
    install_crds(&client).await;
    let ns = cp.create_namespace("op-chart").await.expect("namespace");
    let rendered = render_chart(&ns);
    let kinds: Vec<String> = serde_saphyr::from_multiple::<serde_json::Value>(&rendered)
        .expect("parse")
        .iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_string))
        .collect();
    for kind in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{kind} missing from {kinds:?}"
        );
    }
    let applied = garret_e2e::apply_yaml(
        &client,
        &rendered,
        &garret_e2e::ApplyYaml {
            namespace: &ns,
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .expect("server-side dry run accepts the chart");
    assert_eq!(applied.len(), kinds.len());
    let deployment = applied
        .iter()
        .find(|o| o.types.as_ref().is_some_and(|t| t.kind == "Deployment"))
        .expect("Deployment");
    let pod = &deployment.data["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], json!(true));
    assert_eq!(
        pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        json!(true)
    );
}

#[tokio::test]
async fn operator_does_its_job_with_only_its_cluster_role() {
    let cp = cp().await;
    let admin = cp.admin_client().await.expect("client");
    install_crds(&admin).await;
    // The chart's RBAC, bound to the ServiceAccount whose identity the operator client uses.
    let rbac = documents_of_kind(
        &render_chart("garret-system"),
        &["ClusterRole", "ClusterRoleBinding"],
    );
    garret_e2e::apply_yaml(
        &admin,
        &rbac,
        &garret_e2e::ApplyYaml {
            force: true,
            ..Default::default()
        },
    )
    .await
    .expect("apply chart RBAC");

    let ns = cp.create_namespace("op-rbac").await.expect("namespace");
    let op_client = cp.client_for(OPERATOR_USER).await.expect("operator client");
    // Least privilege: nothing outside its job, e.g. no Pods.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(op_client.clone(), &ns);
    let denied = pods
        .list(&ListParams::default())
        .await
        .expect_err("no access to Pods");
    assert!(
        matches!(denied, kube::Error::Api(ref s) if s.code == 403),
        "{denied}"
    );

    let _op = start_operator(op_client, &ns);
    let caches: Api<BinaryCache> = Api::namespaced(admin.clone(), &ns);
    let tokens: Api<CacheToken> = Api::namespaced(admin.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    apply_json(
        &caches,
        "main",
        binary_cache("main", json!({"reclaimPolicy": "Delete", "caches": [{"name": "c"}], "ingress": {"host": "c.example.org"}})),
    )
    .await;
    apply_json(
        &tokens,
        "t",
        cache_token("t", json!({"binaryCacheRef": {"name": "main"}, "subject": "s", "permissions": {"pull": ["c"]}, "secretName": "t-token"})),
    )
    .await;
    let bc = observed(&caches, "main").await;
    assert_eq!(
        bc.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Stalled"))
            .map(|c| c.status.as_str()),
        Some("False"),
        "{:?}",
        bc.status
    );
    let _ = token_at(&tokens, &secrets, "t", 1).await;
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    wait_for(T, "events written by the operator", || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Issued"))
            .then_some(()))
    })
    .await
    .expect("Issued event");
    caches
        .delete("main", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(T, "finalizer ran", || async {
        Ok(caches.get_opt("main").await?.is_none().then_some(()))
    })
    .await
    .expect("deleted");
    assert!(secrets
        .get_opt("main-token-key")
        .await
        .expect("get")
        .is_none());
}

#[tokio::test]
async fn cache_token_refuses_to_take_over_a_foreign_secret() {
    let (client, ns, _op) = operator_in_namespace("op-conflict").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    apply_json(
        &secrets,
        "precious",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "precious"}, "stringData": {"token": "mine"}}),
    )
    .await;
    let caches: Api<BinaryCache> = Api::namespaced(client.clone(), &ns);
    let tokens: Api<CacheToken> = Api::namespaced(client.clone(), &ns);
    apply_json(&caches, "main", binary_cache("main", json!({}))).await;
    apply_json(
        &tokens,
        "t",
        cache_token(
            "t",
            json!({"binaryCacheRef": {"name": "main"}, "subject": "s", "permissions": {"pull": ["x"]}, "secretName": "precious"}),
        ),
    )
    .await;
    let ready = wait_for(T, "CacheToken reports the conflict", || async {
        let ct = tokens.get("t").await?;
        let c = ct
            .status
            .and_then(|s| condition(&s.conditions, "Ready").cloned());
        Ok(c.filter(|c| c.reason == "InvalidSpec"))
    })
    .await
    .expect("conflict reported");
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("not owned by this CacheToken"),
        "{}",
        ready.message
    );
    let secret = secrets.get("precious").await.expect("Secret");
    assert_eq!(
        data_str(&secret, "token"),
        "mine",
        "the foreign Secret is untouched"
    );
}

#[tokio::test]
async fn cache_token_waits_for_its_binary_cache() {
    let (client, ns, _op) = operator_in_namespace("op-wait").await;
    let caches: Api<BinaryCache> = Api::namespaced(client.clone(), &ns);
    let tokens: Api<CacheToken> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    apply_json(
        &tokens,
        "early",
        cache_token("early", json!({"binaryCacheRef": {"name": "later"}, "subject": "s", "permissions": {"pull": ["x"]}, "secretName": "early-token"})),
    )
    .await;
    let issuing = wait_for(T, "CacheToken waiting for its BinaryCache", || async {
        let ct = tokens.get("early").await?;
        Ok(ct
            .status
            .and_then(|s| condition(&s.conditions, "Issuing").cloned()))
    })
    .await
    .expect("Issuing condition");
    assert_eq!(
        (issuing.status.as_str(), issuing.reason.as_str()),
        ("True", "DependencyNotReady")
    );
    assert!(
        issuing.message.contains("BinaryCache later not found"),
        "{}",
        issuing.message
    );
    assert!(secrets.get_opt("early-token").await.expect("get").is_none());
    apply_json(&caches, "later", binary_cache("later", json!({}))).await;
    let (ct, _) = token_at(&tokens, &secrets, "early", 1).await;
    let conds = ct.status.expect("status").conditions;
    assert_eq!(
        condition(&conds, "Issuing").map(|c| c.status.as_str()),
        Some("False")
    );
}
