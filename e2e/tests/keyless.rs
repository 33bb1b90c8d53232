//! Keyless push on the real control plane: a BinaryCache grants a ServiceAccount push on one
//! cache (`spec.serviceAccountAccess`); the operator, under the chart's ClusterRole only,
//! reads the kube-apiserver's ServiceAccount issuer and JWKS and renders them into the
//! config ConfigMap; a real garretd started from those files accepts a token from the
//! apiserver's TokenRequest API with the cache's audience — uploads to the granted cache,
//! refused on the other — and refuses a wrong-audience token, an expired one (signed with
//! the cluster's own ServiceAccount key, since TokenRequest's minimum is 10 minutes), one of
//! a ServiceAccount without a grant, and tokens of an unlisted issuer.
//!
//! Needs the garretd binary: `cargo build -p garretd --bins` (same profile), and helm from
//! the test binaries (the chart's RBAC).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use garret_e2e::OPERATOR_USER;
use garret_e2e::{rerooted, start_rendered_garretd, wait_for, ControlPlane};
use garret_operator::controller::{self, Settings};
use garret_operator::desired::{CACHE_KEYS_DIR, CONFIG_DIR, REVOCATIONS_DIR};
use garret_operator::types::BinaryCache;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(90);

/// The operator's controllers for one namespace; stopped when dropped.
struct Operator(tokio::task::JoinHandle<()>);

impl Drop for Operator {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn token_request(sas: &Api<ServiceAccount>, name: &str, audience: &str) -> String {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_string()],
            expiration_seconds: Some(600),
            bound_object_ref: None,
        },
        ..TokenRequest::default()
    };
    sas.create_token_request(name, &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .expect("TokenRequest status")
        .token
}

fn nar_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.extend(std::iter::repeat_n(0u8, (8 - s.len() % 8) % 8));
}

/// The NAR of one regular file.
fn nar_of_file(contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"contents",
        contents,
        b")",
    ] {
        nar_str(&mut out, t);
    }
    out
}

/// A store path hash made from `seed` (Nix's base32 alphabet).
fn fake_hash(seed: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let d = Sha256::digest(seed.as_bytes());
    (0..32)
        .map(|i| ALPHABET[(d[i] % 32) as usize] as char)
        .collect()
}

/// HTTP status of a real upload (Attic's `upload-path`, header form) of a fresh NAR named
/// `name` into `cache` (curl: this crate has no HTTP client).
fn push(url: &str, token: &str, cache: &str, name: &str, dir: &Path) -> u16 {
    let nar = nar_of_file(format!("{name}: pushed from CI without a Secret\n").as_bytes());
    let hash = fake_hash(name);
    let info = json!({
        "cache": cache, "store_path_hash": hash,
        "store_path": format!("/nix/store/{hash}-{name}"),
        "references": [], "system": null, "deriver": null, "sigs": [], "ca": null,
        "nar_hash": format!("sha256:{}", hex(&Sha256::digest(&nar))),
        "nar_size": nar.len(),
    });
    let file = dir.join(format!("{name}.nar"));
    std::fs::write(&file, &nar).expect("NAR file");
    curl_status(&[
        "-X".into(),
        "PUT".into(),
        "-H".into(),
        format!("Authorization: Bearer {token}"),
        "-H".into(),
        format!("X-Attic-Nar-Info: {info}"),
        "--data-binary".into(),
        format!("@{}", file.display()),
        format!("{url}/_api/v1/upload-path"),
    ])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HTTP status of GET `path` with `token`.
fn get_status(url: &str, token: &str, path: &str) -> u16 {
    curl_status(&[
        "-H".into(),
        format!("Authorization: Bearer {token}"),
        format!("{url}/{path}"),
    ])
}

fn curl_status(args: &[String]) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The header and claims of a compact JWT (not verified: the test's own token).
fn parts(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let mut next = || -> Value {
        let b = URL_SAFE_NO_PAD
            .decode(it.next().expect("JWT part"))
            .expect("base64url");
        serde_json::from_slice(&b).expect("JSON")
    };
    let header = next();
    (header, next())
}

fn sign_rs256(header: &Value, claims: &Value, key: &jsonwebtoken::EncodingKey) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, jsonwebtoken::Algorithm::RS256)
        .expect("sign");
    format!("{input}.{sig}")
}

#[tokio::test]
async fn service_account_tokens_push_where_granted_and_nothing_else() {
    let options = garret_e2e::operator_options();
    let cp = ControlPlane::shared(options).await.expect("control plane");
    let admin = garret_e2e::admin_with_crds(cp, T)
        .await
        .expect("admin client and CRDs");
    garret_e2e::apply_chart_rbac(&admin)
        .await
        .expect("apply the chart's RBAC");
    // The chart's ClusterRole alone lets the operator read the issuer documents (the test
    // identity is also in system:serviceaccounts, which Kubernetes' default discovery
    // binding covers; the review asks for the user without that group).
    let reviews: Api<SubjectAccessReview> = Api::all(admin.clone());
    for path in ["/.well-known/openid-configuration", "/openid/v1/jwks"] {
        let review: SubjectAccessReview = serde_json::from_value(json!({
            "spec": {"user": OPERATOR_USER, "nonResourceAttributes": {"path": path, "verb": "get"}}
        }))
        .expect("review");
        // RBAC reaches the authorizer through its informers: allowed soon, not at once.
        wait_for(
            T,
            &format!("the chart's ClusterRole to allow GET {path}"),
            || async {
                let answer = reviews.create(&PostParams::default(), &review).await?;
                Ok(answer.status.is_some_and(|s| s.allowed).then_some(()))
            },
        )
        .await
        .expect("the chart's ClusterRole allows the issuer documents");
    }
    let ns = cp.create_namespace("keyless").await.expect("namespace");
    let op_client = cp.client_for(OPERATOR_USER).await.expect("operator client");
    let settings = Settings {
        namespace: Some(ns.clone()),
        rsa_bits: 2048,
        ..Settings::default()
    };
    let _op = Operator(tokio::spawn(controller::run(op_client, settings)));

    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    for sa in ["pusher", "stranger"] {
        sas.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": sa}})).expect("SA"),
        )
        .await
        .expect("create ServiceAccount");
    }
    let caches: Api<BinaryCache> = Api::namespaced(admin.clone(), &ns);
    let bc = json!({
        "apiVersion": "garret.dev/v1alpha1", "kind": "BinaryCache",
        "metadata": {"name": "main"},
        "spec": {
            "caches": [{"name": "team"}, {"name": "other"}],
            "serviceAccountAccess": [{"serviceAccount": "pusher", "caches": ["team"]}],
        },
    });
    caches
        .patch(
            "main",
            &PatchParams::apply("e2e-user").force(),
            &Patch::Apply(bc),
        )
        .await
        .expect("apply BinaryCache");

    // What the pod would mount, read from the API server.
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let (config, revocations, key, cache_keys) = wait_for(
        T,
        "the rendered config with the cluster's issuer",
        || async {
            let (Some(cm), Some(rev), Some(key), Some(cache_keys)) = (
                config_maps.get_opt("main-config").await?,
                config_maps.get_opt("main-revocations").await?,
                secrets.get_opt("main-token-key").await?,
                secrets.get_opt("main-cache-keys").await?,
            ) else {
                return Ok(None);
            };
            let has_jwks = cm
                .data
                .as_ref()
                .is_some_and(|d| d.contains_key("cluster-jwks.json"));
            Ok(has_jwks.then_some((cm, rev, key, cache_keys)))
        },
    )
    .await
    .expect("rendered");
    let files = config.data.clone().unwrap_or_default();
    let server_toml = files["server.toml"].clone();
    let audience = format!("garret.dev/{ns}/main");
    assert!(
        server_toml.contains(&format!("issuer = \"{}\"", cp.url())),
        "the apiserver's issuer: {server_toml}"
    );
    assert!(
        server_toml.contains(&format!("audience = \"{audience}\"")),
        "{server_toml}"
    );

    let root = tempfile::tempdir().expect("tmp");
    let at = |p: &str| rerooted(root.path(), p);
    for dir in [CACHE_KEYS_DIR, REVOCATIONS_DIR, CONFIG_DIR] {
        std::fs::create_dir_all(at(dir)).expect("dir");
    }
    for (name, value) in cache_keys.data.clone().unwrap_or_default() {
        std::fs::write(at(CACHE_KEYS_DIR).join(name), value.0).expect("key file");
    }
    for (name, value) in revocations.data.clone().unwrap_or_default() {
        std::fs::write(at(REVOCATIONS_DIR).join(name), value).expect("revocation file");
    }
    for (name, value) in &files {
        if name != "server.toml" {
            std::fs::write(at(CONFIG_DIR).join(name), value).expect("config file");
        }
    }
    let g = start_rendered_garretd(
        root.path(),
        &server_toml,
        &garret_e2e::secret_text(&key, "token-rs256-secret-base64"),
    );

    let pusher = token_request(&sas, "pusher", &audience).await;
    let (header, claims) = parts(&pusher);
    assert_eq!(claims["sub"], format!("system:serviceaccount:{ns}:pusher"));
    assert_eq!(claims["iss"], cp.url());
    // The declared caches appear once garretd applied server.toml.
    wait_for(T, "the granted cache answers the pusher", || async {
        Ok((get_status(&g.url, &pusher, "_api/v1/cache-config/team") == 200).then_some(()))
    })
    .await
    .expect("pusher's token accepted on team");

    let work = root.path();
    assert_eq!(push(&g.url, &pusher, "team", "built-by-ci", work), 200);
    assert_eq!(
        get_status(
            &g.url,
            &pusher,
            &format!("team/{}.narinfo", fake_hash("built-by-ci"))
        ),
        200,
        "the pushed path is served"
    );
    // Not granted on `other`: 401, exactly as for a cache that does not exist.
    assert_eq!(push(&g.url, &pusher, "other", "not-here", work), 401);
    assert_eq!(
        get_status(&g.url, &pusher, "_api/v1/cache-config/other"),
        get_status(&g.url, &pusher, "_api/v1/cache-config/no-such-cache"),
    );

    // A ServiceAccount without a grant, with the right audience.
    let stranger = token_request(&sas, "stranger", &audience).await;
    assert_eq!(push(&g.url, &stranger, "team", "stranger", work), 401);

    // The pusher's token for another audience.
    let elsewhere = token_request(&sas, "pusher", "https://kubernetes.default.svc").await;
    assert_eq!(
        push(&g.url, &elsewhere, "team", "wrong-audience", work),
        401
    );
    let other_cache = token_request(&sas, "pusher", &format!("garret.dev/{ns}/other")).await;
    assert_eq!(push(&g.url, &other_cache, "team", "other-bc", work), 401);

    // Expired: the same claims with exp in the past, signed with the cluster's own
    // ServiceAccount key (the harness's sa.key). The same re-signing with the times left
    // valid is accepted, so it is the expiry alone that refuses it.
    let sa_key_pem = std::fs::read(cp.dir().join("sa.key")).expect("sa.key");
    let cluster_key = jsonwebtoken::EncodingKey::from_rsa_pem(&sa_key_pem).expect("sa.key PEM");
    let resigned = sign_rs256(&header, &claims, &cluster_key);
    assert_eq!(push(&g.url, &resigned, "team", "resigned", work), 200);
    let mut expired = claims.clone();
    let now = claims["iat"].as_i64().expect("iat");
    expired["iat"] = json!(now - 1200);
    expired["nbf"] = json!(now - 1200);
    expired["exp"] = json!(now - 600);
    let expired = sign_rs256(&header, &expired, &cluster_key);
    assert_eq!(push(&g.url, &expired, "team", "expired", work), 401);

    // An unlisted issuer grants nothing, even with the pusher's claims; nor does a foreign
    // key claiming the cluster's issuer and key id.
    let foreign = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
    let foreign_pem =
        rsa::pkcs1::EncodeRsaPrivateKey::to_pkcs1_pem(&foreign, Default::default()).expect("PEM");
    let foreign_key =
        jsonwebtoken::EncodingKey::from_rsa_pem(foreign_pem.as_bytes()).expect("foreign key");
    let mut unlisted = claims.clone();
    unlisted["iss"] = json!("https://issuer.unlisted.example");
    let unlisted_header = json!({"alg": "RS256", "kid": "unlisted-1"});
    for (what, token) in [
        (
            "unlisted issuer",
            sign_rs256(&unlisted_header, &unlisted, &foreign_key),
        ),
        (
            "the cluster's iss and kid, foreign key",
            sign_rs256(&header, &claims, &foreign_key),
        ),
    ] {
        assert_eq!(push(&g.url, &token, "team", "foreign", work), 401, "{what}");
        assert_eq!(
            get_status(&g.url, &token, "_api/v1/cache-config/team"),
            401,
            "{what}"
        );
    }
    // Only the two accepted uploads happened.
    assert_eq!(
        get_status(
            &g.url,
            &pusher,
            &format!("team/{}.narinfo", fake_hash("resigned"))
        ),
        200
    );
    for name in [
        "expired",
        "foreign",
        "stranger",
        "wrong-audience",
        "other-bc",
    ] {
        assert_eq!(
            get_status(
                &g.url,
                &pusher,
                &format!("team/{}.narinfo", fake_hash(name))
            ),
            404,
            "{name} was not stored"
        );
    }
}
