//! Identity tokens from a trusted issuer (`[[jwt.oidc]]`) on a running garretd, with keys
//! generated here (RS256 and ES256): what the grants give, and every way a token must be
//! refused (wrong audience, expired, unlisted issuer, alg=none, HS256 keyed with the public
//! key, kid confusion, malformed JWKS), plus revocation and key rotation while running.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use reqwest::StatusCode;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "garret-test";
const PUSHER: &str = "system:serviceaccount:ci:pusher";

/// A signing key of the test issuer (or of an impostor).
struct Signer {
    alg: &'static str,
    kid: String,
    encoding: jsonwebtoken::EncodingKey,
    jwk: Value,
    /// RSA only: the public key as PEM, for the HS256 key-confusion forgery.
    public_pem: Option<String>,
}

fn rsa_signer(kid: &str) -> Signer {
    let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key");
    let public = private.to_public_key();
    let der = private.to_pkcs1_der().expect("PKCS#1");
    Signer {
        alg: "RS256",
        kid: kid.into(),
        encoding: jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes()),
        jwk: json!({
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }),
        public_pem: Some(public.to_public_key_pem(LineEnding::LF).expect("PEM")),
    }
}

fn ec_signer(kid: &str) -> Signer {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("P-256");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("P-256 pair");
    let point = pair.public_key().as_ref();
    Signer {
        alg: "ES256",
        kid: kid.into(),
        encoding: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({
            "kty": "EC", "kid": kid, "crv": "P-256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }),
        public_pem: None,
    }
}

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Signs `claims` under `header` with `key` using `alg` (which may differ from the header's).
fn sign_raw(
    header: &Value,
    claims: &Value,
    key: &jsonwebtoken::EncodingKey,
    alg: jsonwebtoken::Algorithm,
) -> String {
    let input = format!("{}.{}", b64json(header), b64json(claims));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).expect("sign");
    format!("{input}.{sig}")
}

impl Signer {
    fn jwt_alg(&self) -> jsonwebtoken::Algorithm {
        match self.alg {
            "RS256" => jsonwebtoken::Algorithm::RS256,
            _ => jsonwebtoken::Algorithm::ES256,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg, "kid": self.kid});
        sign_raw(&header, claims, &self.encoding, self.jwt_alg())
    }
}

fn now() -> i64 {
    garret_core::clock::unix_now()
}

/// A ServiceAccount token's claims as the kube-apiserver writes them.
fn sa_claims(sub: &str) -> Value {
    let t = now();
    json!({
        "iss": ISSUER, "sub": sub, "aud": [AUDIENCE],
        "exp": t + 600, "iat": t, "nbf": t,
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "pusher", "uid": "x"}},
    })
}

fn write_jwks(path: &Path, keys: &[&Signer]) {
    let doc = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    // Write then rename, as the kubelet swaps a ConfigMap's files.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string()).expect("write JWKS");
    std::fs::rename(&tmp, path).expect("rename JWKS");
}

struct Setup {
    g: Garretd,
    api: Api,
    admin: String,
    rsa: Signer,
    ec: Signer,
    dir: tempfile::TempDir,
}

impl Setup {
    fn jwks(&self) -> std::path::PathBuf {
        self.dir.path().join("issuer.jwks")
    }

    fn revoked(&self) -> std::path::PathBuf {
        self.dir.path().join("revoked")
    }
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let rsa = rsa_signer("rsa-1");
    let ec = ec_signer("ec-1");
    let jwks = dir.path().join("issuer.jwks");
    write_jwks(&jwks, &[&rsa, &ec]);
    let revoked = dir.path().join("revoked");
    std::fs::write(&revoked, "").expect("revocation list");
    let config = format!(
        r#"
[jwt]
revocation-list = "{revoked}"

[[jwt.oidc]]
issuer = "{ISSUER}"
audience = ["{AUDIENCE}", "second-audience"]
jwks-file = "{jwks}"

[[jwt.oidc.grants]]
match = {{ sub = "{PUSHER}" }}
caches = {{ "team-*" = "rw" }}

[[jwt.oidc.grants]]
match = {{ repository = "org/repo", ref = "refs/heads/main" }}
caches = {{ "gh-*" = "rw" }}

[[jwt.oidc.grants]]
match = {{ "/kubernetes.io/namespace" = "readers" }}
caches = {{ "team-*" = "r" }}
"#,
        revoked = revoked.display(),
        jwks = jwks.display(),
    );
    let g = Garretd::start_with(Some(&config), &[]);
    let api = g.client();
    let admin = g.admin_token();
    for cache in ["team-a", "other", "gh-main"] {
        assert_eq!(
            api.create_cache(&admin, cache, false).await.status(),
            StatusCode::OK
        );
    }
    Setup {
        g,
        api,
        admin,
        rsa,
        ec,
        dir,
    }
}

/// Status and body of an upload of a fresh NAR named `name` into `cache`.
async fn push(api: &Api, token: &str, cache: &str, name: &str) -> (StatusCode, String) {
    let nar = nar_of_file(format!("{name} pushed with an identity token\n").as_bytes());
    let r = api
        .upload(Some(token), &upload_info(cache, name, &nar, &[]), nar)
        .await;
    let status = r.status();
    (status, r.text().await.unwrap_or_default())
}

async fn config_status(api: &Api, token: &str, cache: &str) -> (StatusCode, String) {
    let r = api
        .get(&format!("_api/v1/cache-config/{cache}"), Some(token))
        .await;
    let status = r.status();
    (status, r.text().await.unwrap_or_default())
}

/// Whether `token` is refused as revoked on team-a's config.
async fn is_revoked(api: &Api, token: &str) -> bool {
    let (status, body) = config_status(api, token, "team-a").await;
    status == StatusCode::UNAUTHORIZED && body.contains("revoked")
}

#[tokio::test]
async fn granted_identities_push_and_pull_where_granted_only() {
    let s = setup().await;
    for (signer, name) in [(&s.rsa, "via-rs256"), (&s.ec, "via-es256")] {
        let token = signer.sign(&sa_claims(PUSHER));
        let (status, body) = push(&s.api, &token, "team-a", name).await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", signer.alg);
        let nar = s
            .api
            .nar(&format!("team-a/nar/{}.nar", fake_hash(name)), Some(&token))
            .await;
        assert!(!nar.is_empty(), "pulled back with the same token");
        // Not granted: the private cache is hidden exactly like a missing one.
        let refused = push(&s.api, &token, "other", name).await;
        assert_eq!(refused.0, StatusCode::UNAUTHORIZED, "{}", refused.1);
        let missing = config_status(&s.api, &token, "no-such-cache").await;
        let hidden = config_status(&s.api, &token, "other").await;
        assert_eq!(hidden, missing, "a private cache's existence does not leak");
        assert_eq!(hidden.0, StatusCode::UNAUTHORIZED);
        // And the token creates nothing, even in its own namespace of caches.
        assert_ne!(
            s.api.create_cache(&token, "team-new", false).await.status(),
            StatusCode::OK
        );
    }
    // The pusher recorded is the identity's subject.
    assert!(s
        .g
        .sql_rows("SELECT created_by FROM objects")
        .iter()
        .all(|who| who == PUSHER));

    // GitHub Actions style: repository and ref must both match.
    let gh = |r#ref: &str, repo: &str| {
        let mut c = sa_claims("repo:org/repo:ref:refs/heads/main");
        c["repository"] = json!(repo);
        c["ref"] = json!(r#ref);
        c["aud"] = json!("second-audience");
        s.rsa.sign(&c)
    };
    let (status, body) = push(&s.api, &gh("refs/heads/main", "org/repo"), "gh-main", "gh").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for token in [
        gh("refs/heads/feature", "org/repo"),
        gh("refs/heads/main", "org/repo2"),
    ] {
        assert_eq!(
            push(&s.api, &token, "gh-main", "gh2").await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    // Read-only by a JSON-pointer claim: pull yes, push no (403: the cache is visible).
    let mut reader = sa_claims("system:serviceaccount:readers:r");
    reader["kubernetes.io"]["namespace"] = json!("readers");
    let reader = s.ec.sign(&reader);
    assert_eq!(
        config_status(&s.api, &reader, "team-a").await.0,
        StatusCode::OK
    );
    assert_eq!(
        push(&s.api, &reader, "team-a", "ro").await.0,
        StatusCode::FORBIDDEN
    );

    // An identity with no matching grant gets nothing, whatever Attic claims it carries.
    let mut selfmade = sa_claims("system:serviceaccount:ci:other");
    selfmade["https://jwt.attic.rs/v1"] = json!({"caches": {"*": {"r": 1, "w": 1, "cc": 1}}});
    let selfmade = s.rsa.sign(&selfmade);
    assert_eq!(
        push(&s.api, &selfmade, "team-a", "x").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        config_status(&s.api, &selfmade, "other").await.0,
        StatusCode::UNAUTHORIZED
    );

    // Attic's own tokens are unchanged.
    assert_eq!(
        push(&s.api, &s.admin, "other", "admin").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn bad_identity_tokens_are_refused_like_any_bad_token() {
    let s = setup().await;
    let good = sa_claims(PUSHER);
    assert_eq!(
        push(&s.api, &s.rsa.sign(&good), "team-a", "good").await.0,
        StatusCode::OK
    );

    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = sa_claims(PUSHER);
        edit(&mut c);
        c
    };
    let rs256 = jsonwebtoken::Algorithm::RS256;
    let hs256 = jsonwebtoken::Algorithm::HS256;
    let rsa_header = json!({"alg": "RS256", "kid": "rsa-1"});
    let impostor = rsa_signer("rsa-1");
    let unlisted = ec_signer("ec-1");
    let pem = s.rsa.public_pem.clone().expect("RSA PEM");
    let n_bytes = URL_SAFE_NO_PAD
        .decode(s.rsa.jwk["n"].as_str().expect("n"))
        .expect("n bytes");
    let mut unlisted_claims = good.clone();
    unlisted_claims["iss"] = json!("https://unlisted.test");
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            s.rsa.sign(&with(&|c| c["exp"] = json!(now() - 5))),
        ),
        (
            "no exp",
            s.rsa.sign(&with(&|c| {
                c.as_object_mut().map(|m| m.remove("exp"));
            })),
        ),
        (
            "not yet valid",
            s.ec.sign(&with(&|c| c["nbf"] = json!(now() + 600))),
        ),
        (
            "issued in the future",
            s.ec.sign(&with(&|c| c["iat"] = json!(now() + 600))),
        ),
        (
            "wrong audience",
            s.rsa.sign(&with(&|c| c["aud"] = json!("someone-else"))),
        ),
        (
            "no audience",
            s.rsa.sign(&with(&|c| {
                c.as_object_mut().map(|m| m.remove("aud"));
            })),
        ),
        (
            "audience as a prefix",
            s.rsa.sign(&with(&|c| c["aud"] = json!("garret-test-2"))),
        ),
        ("unlisted issuer, same kid", unlisted.sign(&unlisted_claims)),
        ("unlisted issuer, RSA", impostor.sign(&unlisted_claims)),
        (
            "our issuer, foreign key with a known kid",
            impostor.sign(&good),
        ),
        ("unknown kid", {
            let h = json!({"alg": "RS256", "kid": "rsa-9"});
            sign_raw(&h, &good, &s.rsa.encoding, rs256)
        }),
        (
            "no kid",
            sign_raw(&json!({"alg": "RS256"}), &good, &s.rsa.encoding, rs256),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64json(&json!({"alg": "none", "kid": "rsa-1"})),
                b64json(&good)
            ),
        ),
        ("alg none with a signature", {
            let t = s.rsa.sign(&good);
            let sig = t.rsplit('.').next().unwrap_or_default().to_string();
            format!(
                "{}.{}.{sig}",
                b64json(&json!({"alg": "none", "kid": "rsa-1"})),
                b64json(&good)
            )
        }),
        (
            "HS256 keyed with the PEM",
            sign_raw(
                &json!({"alg": "HS256", "kid": "rsa-1"}),
                &good,
                &jsonwebtoken::EncodingKey::from_secret(pem.as_bytes()),
                hs256,
            ),
        ),
        (
            "HS256 keyed with the modulus",
            sign_raw(
                &json!({"alg": "HS256", "kid": "rsa-1"}),
                &good,
                &jsonwebtoken::EncodingKey::from_secret(&n_bytes),
                hs256,
            ),
        ),
        (
            "kid confusion: RS256 header naming the EC key",
            sign_raw(
                &json!({"alg": "RS256", "kid": "ec-1"}),
                &good,
                &s.rsa.encoding,
                rs256,
            ),
        ),
        (
            "kid confusion: ES256 header naming the RSA key",
            sign_raw(
                &json!({"alg": "ES256", "kid": "rsa-1"}),
                &good,
                &s.ec.encoding,
                jsonwebtoken::Algorithm::ES256,
            ),
        ),
        (
            "RS384",
            sign_raw(
                &json!({"alg": "RS384", "kid": "rsa-1"}),
                &good,
                &s.rsa.encoding,
                jsonwebtoken::Algorithm::RS384,
            ),
        ),
        (
            "crit header",
            sign_raw(
                &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["x"]}),
                &good,
                &s.rsa.encoding,
                rs256,
            ),
        ),
        ("claims changed after signing", {
            let t = s.rsa.sign(&good);
            let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
            parts[1] = b64json(&with(&|c| {
                c["sub"] = json!("system:serviceaccount:ci:pusher2")
            }));
            parts.join(".")
        }),
        (
            "iss not a string",
            s.rsa.sign(&with(&|c| c["iss"] = json!([ISSUER]))),
        ),
        (
            "sub not a string",
            sign_raw(
                &rsa_header,
                &with(&|c| c["sub"] = json!(5)),
                &s.rsa.encoding,
                rs256,
            ),
        ),
    ];
    for (what, token) in &cases {
        let (status, body) = push(&s.api, token, "team-a", "bad").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        // The same token cannot read the (private) cache either, and the answer is the
        // one a missing cache gets.
        let hidden = config_status(&s.api, token, "team-a").await;
        let missing = config_status(&s.api, token, "no-such-cache").await;
        assert_eq!(hidden, missing, "{what}");
        assert_eq!(hidden.0, StatusCode::UNAUTHORIZED, "{what}");
    }
    assert_eq!(
        s.g.count("objects"),
        1,
        "only the good token's upload exists"
    );
}

#[tokio::test]
async fn revocation_and_key_rotation_apply_while_running() {
    let s = setup().await;
    let token = s.rsa.sign(&sa_claims(PUSHER));
    let ec_token = s.ec.sign(&sa_claims(PUSHER));
    assert_eq!(
        push(&s.api, &token, "team-a", "one").await.0,
        StatusCode::OK
    );

    // A malformed JWKS is refused and the previous keys stay in use.
    std::fs::write(
        s.jwks(),
        r#"{"keys": [{"kty": "RSA", "kid": "broken", "n": "!!"}]}"#,
    )
    .expect("write");
    let g = &s.g;
    wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        g.logged("keeping this issuer's previous keys")
    })
    .await;
    assert!(g.logged("keeping this issuer's previous keys"));
    assert_eq!(
        push(&s.api, &token, "team-a", "two").await.0,
        StatusCode::OK
    );

    // Rotation: the RSA key leaves the set; its tokens stop working, remembered verdicts
    // included, while the EC key keeps working.
    write_jwks(&s.jwks(), &[&s.ec]);
    let api = s.api.clone();
    let mut refused = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !refused && std::time::Instant::now() < deadline {
        refused = config_status(&api, &token, "team-a").await.0 == StatusCode::UNAUTHORIZED;
        if !refused {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        refused,
        "a token of a removed key is refused after the reload"
    );
    assert_eq!(
        push(&s.api, &ec_token, "team-a", "three").await.0,
        StatusCode::OK
    );

    // Revoking one token by its jti refuses that token only.
    let mut one = sa_claims(PUSHER);
    one["jti"] = json!("revoke-me");
    let one = s.ec.sign(&one);
    let other = s.ec.sign(&sa_claims(PUSHER));
    assert_eq!(config_status(&api, &one, "team-a").await.0, StatusCode::OK);
    std::fs::write(s.revoked(), "revoke-me\n").expect("revoke jti");
    eventually(
        Duration::from_secs(20),
        "revoked by jti, remembered verdict included",
        || is_revoked(&api, &one),
    )
    .await;
    assert_eq!(
        config_status(&api, &other, "team-a").await.0,
        StatusCode::OK
    );

    // Revoking the subject refuses every token of that identity.
    std::fs::write(s.revoked(), format!("sub:{PUSHER}\n")).expect("revoke");
    eventually(Duration::from_secs(20), "revoked by sub", || {
        is_revoked(&api, &ec_token)
    })
    .await;
    let fresh = s.ec.sign(&sa_claims(PUSHER));
    assert_eq!(
        push(&s.api, &fresh, "team-a", "four").await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[test]
fn invalid_oidc_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let head = "[[jwt.oidc]]\nissuer = \"https://i\"\naudience = \"a\"\njwks-file = \"/x\"\n";
    let grant = |m: &str, c: &str| format!("[[jwt.oidc.grants]]\nmatch = {m}\ncaches = {c}\n");
    let check = |text: &str| {
        let path = dir.path().join("server.toml");
        std::fs::write(&path, text).expect("write");
        std::process::Command::new(garretd_bin())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&path)
            .arg("check-config")
            .env(
                "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64",
                "c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
            )
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("garretd check-config")
    };
    let valid = format!("{head}{}", grant(r#"{ sub = "s" }"#, r#"{ "x-*" = "rw" }"#));
    let out = check(&valid);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases = [
        (
            "no audience",
            valid.replace(r#"audience = "a""#, "audience = []"),
            "audience",
        ),
        (
            "grant without match",
            format!("{head}{}", grant("{}", r#"{ "x" = "rw" }"#)),
            "match",
        ),
        (
            "create-cache letter",
            valid.replace(r#""rw""#, r#""rwc""#),
            "only r (pull)",
        ),
        (
            "bad cache pattern",
            valid.replace("x-*", "bad name"),
            "pattern",
        ),
        ("twice", format!("{valid}{valid}"), "twice"),
        (
            "unknown key",
            valid.replace("jwks-file", "jwks-uri"),
            "jwks-uri",
        ),
        (
            "also Attic's bound issuer",
            format!("[jwt]\ntoken-bound-issuer = \"https://i\"\n{valid}"),
            "token-bound-issuer",
        ),
        (
            "file and url",
            valid.replace(
                "jwks-file = \"/x\"",
                "jwks-file = \"/x\"\njwks-url = \"https://i/k\"",
            ),
            "not both",
        ),
        (
            "plain http off loopback",
            valid.replace(
                "jwks-file = \"/x\"",
                "jwks-url = \"http://keys.example/jwks\"",
            ),
            "https only",
        ),
        (
            "discovery over plain http",
            valid
                .replace("jwks-file = \"/x\"\n", "")
                .replace("https://i", "http://issuer.example"),
            "https only",
        ),
    ];
    for (what, text, needle) in cases {
        let out = check(&text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(stderr.contains(needle), "{what}: {stderr}");
    }
}

/// An issuer on loopback serving its discovery document and JWKS, counting JWKS fetches.
struct IssuerServer {
    url: String,
    jwks: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for IssuerServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn issuer_server(keys: &[&Signer]) -> IssuerServer {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let doc = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    let jwks = Arc::new(Mutex::new(doc.to_string()));
    let fetches = Arc::new(AtomicUsize::new(0));
    let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/keys")}).to_string();
    let (served, counted) = (jwks.clone(), fetches.clone());
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || async move { discovery }),
        )
        .route(
            "/keys",
            axum::routing::get(move || async move {
                counted.fetch_add(1, Ordering::SeqCst);
                served.lock().map(|j| j.clone()).unwrap_or_default()
            }),
        );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    IssuerServer {
        url,
        jwks,
        fetches,
        task,
    }
}

/// Whether `token` reaches cache-config of `cache` within a minute (keys are fetched in the
/// background).
async fn accepted_soon(api: &Api, token: &str, cache: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if config_status(api, token, cache).await.0 == StatusCode::OK {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keys from the issuer's discovery document: fetched at start, fetched again when a token
/// names a new `kid`, and not more often than the minimum interval however many unknown
/// `kid`s arrive.
#[tokio::test]
async fn discovered_keys_are_fetched_and_refreshed_on_an_unknown_kid_at_a_bounded_rate() {
    use std::sync::atomic::Ordering;
    let a = rsa_signer("a");
    let b = ec_signer("b");
    let issuer = issuer_server(&[&a]).await;
    let config = format!(
        r#"
[[jwt.oidc]]
issuer = "{url}"
audience = "{AUDIENCE}"

[[jwt.oidc.grants]]
match = {{ sub = "{PUSHER}" }}
caches = {{ "team-*" = "rw" }}
"#,
        url = issuer.url
    );
    let g = Garretd::start_with(Some(&config), &[]);
    let api = g.client();
    let admin = g.admin_token();
    assert_eq!(
        api.create_cache(&admin, "team-a", false).await.status(),
        StatusCode::OK
    );
    let token = |signer: &Signer| {
        let mut c = sa_claims(PUSHER);
        c["iss"] = json!(issuer.url);
        signer.sign(&c)
    };
    assert!(
        accepted_soon(&api, &token(&a), "team-a").await,
        "key a from the discovered JWKS"
    );
    let (status, body) = push(&api, &token(&a), "team-a", "discovered").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The issuer adds key b; the first token naming it makes garretd fetch again.
    if let Ok(mut j) = issuer.jwks.lock() {
        *j = json!({"keys": [a.jwk.clone(), b.jwk.clone()]}).to_string();
    }
    assert!(
        accepted_soon(&api, &token(&b), "team-a").await,
        "key b after a refetch"
    );

    // A burst of unknown kids right after a fetch asks the issuer at most once more.
    let before = issuer.fetches.load(Ordering::SeqCst);
    for i in 0..40 {
        let stray = ec_signer(&format!("stray-{i}"));
        let (status, _) = config_status(&api, &token(&stray), "team-a").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = issuer.fetches.load(Ordering::SeqCst);
    assert!(after <= before + 1, "{before} → {after} JWKS fetches");
    // Keys already known keep working throughout.
    assert_eq!(
        config_status(&api, &token(&a), "team-a").await.0,
        StatusCode::OK
    );
}
