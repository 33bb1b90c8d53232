//! Every route × every kind of caller × public and private caches. The rule: whoever has no
//! right at all on a cache name gets 401 (existence stays hidden), whoever has some right but
//! not the needed one gets 403, public caches add pull for everyone, and a rejected token
//! counts as no token but the 401 says why.

mod common;

use common::*;
use reqwest::{Method, StatusCode};

#[derive(Clone, Copy, Debug)]
enum Route {
    CacheInfo,
    Narinfo,
    Nar,
    AtticCacheInfo,
    GetConfig,
    Patch,
    MissingPaths,
    Upload,
    Destroy,
}

impl Route {
    const ALL: [Route; 9] = [
        Route::CacheInfo,
        Route::Narinfo,
        Route::Nar,
        Route::AtticCacheInfo,
        Route::GetConfig,
        Route::Patch,
        Route::MissingPaths,
        Route::Upload,
        Route::Destroy,
    ];

    /// The make-token flag that grants this route.
    fn right(self) -> &'static str {
        match self {
            Route::CacheInfo
            | Route::Narinfo
            | Route::Nar
            | Route::AtticCacheInfo
            | Route::GetConfig => "--pull",
            Route::Patch => "--configure-cache",
            Route::MissingPaths | Route::Upload => "--push",
            Route::Destroy => "--destroy-cache",
        }
    }

    async fn call(
        self,
        api: &Api,
        cache: &str,
        token: Option<&str>,
        nar: &[u8],
    ) -> reqwest::Response {
        let h = fake_hash(&format!("{cache}-obj"));
        let r = match self {
            Route::CacheInfo => api.req(Method::GET, &format!("{cache}/nix-cache-info"), token),
            Route::Narinfo => api.req(Method::GET, &format!("{cache}/{h}.narinfo"), token),
            Route::Nar => api.req(Method::GET, &format!("{cache}/nar/{h}.nar"), token),
            Route::AtticCacheInfo => {
                api.req(Method::GET, &format!("{cache}/attic-cache-info"), token)
            }
            Route::GetConfig => {
                api.req(Method::GET, &format!("_api/v1/cache-config/{cache}"), token)
            }
            Route::Patch => api
                .req(
                    Method::PATCH,
                    &format!("_api/v1/cache-config/{cache}"),
                    token,
                )
                .json(&serde_json::json!({"priority": 42})),
            Route::MissingPaths => api
                .req(Method::POST, "_api/v1/get-missing-paths", token)
                .json(&serde_json::json!({"cache": cache, "store_path_hashes": [h]})),
            Route::Upload => {
                return api
                    .upload(
                        token,
                        &upload_info(cache, &format!("{cache}-obj"), nar, &[]),
                        nar.to_vec(),
                    )
                    .await
            }
            Route::Destroy => api.req(
                Method::DELETE,
                &format!("_api/v1/cache-config/{cache}"),
                token,
            ),
        };
        r.send().await.expect("send")
    }
}

const RIGHTS: [&str; 7] = [
    "--pull",
    "--push",
    "--delete",
    "--create-cache",
    "--configure-cache",
    "--configure-cache-retention",
    "--destroy-cache",
];

fn bad_signature(token: &str) -> String {
    let (rest, sig) = token.rsplit_once('.').unwrap();
    let mut sig: Vec<u8> = sig.bytes().collect();
    sig[3] = if sig[3] == b'A' { b'B' } else { b'A' };
    format!("{rest}.{}", String::from_utf8(sig).unwrap())
}

#[tokio::test]
async fn route_by_caller_by_visibility() {
    let g = Garretd::start();
    let other_server = Garretd::start();
    let api = g.client();
    let admin = g.admin_token();
    let nar = nar_of_file(b"matrix\n");

    let expired = g.token("old", "1s", ALL_RIGHTS);
    let foreign = other_server.admin_token();
    let no_rights_here = g.token(
        "elsewhere",
        "1 hour",
        &["--pull", "elsewhere", "--push", "elsewhere"],
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;

    let mut case = 0;
    for public in [false, true] {
        for route in Route::ALL {
            let right = route.right();
            let with_right = g.token("u", "1 hour", &[right, "*"]);
            let others: Vec<&str> = RIGHTS
                .iter()
                .filter(|r| **r != right)
                .flat_map(|r| [*r, "*"])
                .collect();
            let other_right = g.token("u", "1 hour", &others);

            let callers: Vec<(&str, Option<String>)> = vec![
                ("anonymous", None),
                ("no rights on this cache", Some(no_rights_here.clone())),
                ("another right", Some(other_right)),
                ("expired", Some(expired.clone())),
                ("bad signature", Some(bad_signature(&admin))),
                ("other server's token", Some(foreign.clone())),
                ("the right", Some(with_right)),
            ];
            for (who, token) in callers {
                case += 1;
                let cache = format!("m{case}");
                assert_eq!(
                    api.create_cache(&admin, &cache, public).await.status(),
                    StatusCode::OK
                );
                // every cache holds the object the read routes ask for
                let info = upload_info(&cache, &format!("{cache}-obj"), &nar, &[]);
                assert_eq!(
                    api.upload(Some(&admin), &info, nar.clone()).await.status(),
                    StatusCode::OK
                );

                let resp = route.call(&api, &cache, token.as_deref(), &nar).await;
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                let is_pull = right == "--pull";
                let expected = match who {
                    "the right" => StatusCode::OK,
                    _ if public && is_pull => StatusCode::OK,
                    "another right" => StatusCode::FORBIDDEN,
                    _ if public => StatusCode::FORBIDDEN,
                    _ => StatusCode::UNAUTHORIZED,
                };
                assert_eq!(
                    status, expected,
                    "{route:?} public={public} caller={who}: {body}"
                );
                if status == StatusCode::UNAUTHORIZED {
                    let reason = match who {
                        "expired" => Some("expired"),
                        "bad signature" | "other server's token" => Some("signature"),
                        _ => None,
                    };
                    if let Some(reason) = reason {
                        assert!(
                            body.to_lowercase().contains(reason),
                            "{route:?} {who}: 401 should say why: {body}"
                        );
                    }
                }
            }
        }
    }

    // A missing cache: 401 for anyone without rights on the name, 404 for those with some.
    let ghost = "ghost";
    for route in [
        Route::CacheInfo,
        Route::Narinfo,
        Route::GetConfig,
        Route::Upload,
    ] {
        let r = route.call(&api, ghost, None, &nar).await;
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{route:?} anonymous on a missing cache"
        );
        let r = route.call(&api, ghost, Some(&admin), &nar).await;
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "{route:?} admin on a missing cache"
        );
    }

    // Creating: no rights → 401, other rights → 403, the right → 200.
    let r = api.create_cache(&no_rights_here, "newcache", false).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = api
        .create_cache(&g.token("u", "1 hour", &["--pull", "*"]), "newcache", false)
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = api
        .create_cache(
            &g.token("u", "1 hour", &["--create-cache", "new*"]),
            "newcache",
            false,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Retention changes need configure-cache-retention as well.
    let only_configure = g.token("u", "1 hour", &["--configure-cache", "*"]);
    let r = api
        .req(
            Method::PATCH,
            "_api/v1/cache-config/newcache",
            Some(&only_configure),
        )
        .json(&serde_json::json!({"retention_period": {"Period": 60}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn malformed_tokens_and_algorithms_never_verify() {
    use base64::Engine;
    let (_g, api, admin) = server_with_cache("priv", false).await;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let claims = b64(r#"{"sub":"x","https://jwt.attic.rs/v1":{"caches":{"*":{"r":1,"w":1}}}}"#);
    let none_token = format!("{}.{claims}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
    for (token, why) in [
        (none_token.as_str(), "alg none"),
        ("garbage", "not a JWT"),
        ("a.b.c", "not base64 JSON"),
    ] {
        let r = api.get("_api/v1/cache-config/priv", Some(token)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{why}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("rejected"),
            "{why}: {body}"
        );
    }
    // Basic auth as Nix sends it from netrc works, with any user name
    let r = api
        .http
        .get(api.url("priv/nix-cache-info"))
        .basic_auth("", Some(&admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = api
        .http
        .get(api.url("priv/nix-cache-info"))
        .basic_auth("ci", Some(&admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// A server with a known HS256 secret (and the given extra `[jwt]` lines), so tests can
/// mint tokens with arbitrary time claims.
fn server_with_known_key(jwt_lines: &str) -> (Garretd, garret_core::token::SigningKey) {
    let (key, secret) = garret_core::token::generate_hs256();
    let config =
        format!("[jwt]\n{jwt_lines}\n[jwt.signing]\ntoken-hs256-secret-base64 = \"{secret}\"\n");
    (Garretd::start_with(Some(&config), &[]), key)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn token_with_nbf(key: &garret_core::token::SigningKey, nbf: i64) -> String {
    let claims: garret_core::token::Claims = serde_json::from_value(serde_json::json!({
        "sub": "early", "nbf": nbf, "exp": nbf + 3600,
        "https://jwt.attic.rs/v1": {"caches": {"*": {"r": 1}}}
    }))
    .expect("claims");
    garret_core::token::mint(&claims, key).expect("mint")
}

#[tokio::test]
async fn not_yet_valid_token_is_accepted_once_its_nbf_passes() {
    let (g, key) = server_with_known_key("leeway = 0");
    let api = g.client();
    let admin = g.admin_token();
    assert_eq!(
        api.create_cache(&admin, "priv", false).await.status(),
        StatusCode::OK
    );
    // The first request must be answered before nbf for the 401 to be meaningful; on a very
    // slow machine try again with a later nbf.
    let mut found = None;
    for offset in [3, 10, 30] {
        let nbf = unix_now() + offset;
        let token = token_with_nbf(&key, nbf);
        let r = api.get("priv/nix-cache-info", Some(&token)).await;
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        if unix_now() < nbf {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "before nbf: {body}");
            assert!(body.contains("not valid yet"), "{body}");
            found = Some(token);
            break;
        }
    }
    let token = found.expect("no request finished before its token's nbf");
    // Poll (bounded) until nbf has passed: the early rejection must not be remembered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut last = StatusCode::UNAUTHORIZED;
    while std::time::Instant::now() < deadline {
        last = api.get("priv/nix-cache-info", Some(&token)).await.status();
        if last != StatusCode::UNAUTHORIZED {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        last,
        StatusCode::OK,
        "the token stayed rejected after its nbf"
    );
}

#[tokio::test]
async fn default_leeway_accepts_tokens_from_a_slightly_fast_clock() {
    let (g, key) = server_with_known_key("");
    let api = g.client();
    let admin = g.admin_token();
    assert_eq!(
        api.create_cache(&admin, "priv", false).await.status(),
        StatusCode::OK
    );
    // 20 s ahead: within the default 60 s leeway.
    let token = token_with_nbf(&key, unix_now() + 20);
    let r = api.get("priv/nix-cache-info", Some(&token)).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Far ahead: still refused, and saying why.
    let token = token_with_nbf(&key, unix_now() + 3600);
    let r = api.get("priv/nix-cache-info", Some(&token)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("not valid yet"));
}
