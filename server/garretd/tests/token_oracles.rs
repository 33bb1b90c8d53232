//! Tokens garretd did not mint: vectors made by PyJWT (HS256 with a fixed secret, RS256 with
//! an RSA key from OpenSSL) in Attic's claim layout (`tests/vectors/README.md`). A running
//! garretd given the key the way atticd takes it accepts them with exactly the rights they
//! list, and refuses them when one byte is changed.

mod common;

use base64::Engine;
use common::*;
use reqwest::{Method, StatusCode};

fn vector(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// The token with one character of the given part (0 header, 1 claims, 2 signature)
/// changed to another valid base64url character (never the last one, whose low bits may
/// be padding).
fn one_byte_changed(token: &str, part: usize) -> String {
    let mut parts: Vec<Vec<u8>> = token.split('.').map(|p| p.as_bytes().to_vec()).collect();
    let p = &mut parts[part];
    let i = p.len() / 2;
    p[i] = if p[i] == b'A' { b'B' } else { b'A' };
    let parts: Vec<String> = parts
        .into_iter()
        .map(|p| String::from_utf8(p).unwrap())
        .collect();
    parts.join(".")
}

/// What the vector tokens grant (`tests/vectors/claims.json`): all but `d` on
/// `oracle-*`, and pull only on `oracle-ro` (an exact entry wins over the pattern).
async fn check_rights(g: &Garretd, token: &str) {
    let api = g.client();
    assert_eq!(
        api.create_cache(token, "oracle-rw", false).await.status(),
        StatusCode::OK,
        "cc on oracle-*"
    );
    let nar = nar_of_file(b"pushed with a token minted elsewhere\n");
    api.upload_ok(token, "oracle-rw", "vector", &nar).await;
    let path = format!("oracle-rw/nar/{}.nar", fake_hash("vector"));
    assert_eq!(api.nar(&path, Some(token)).await, nar, "r on oracle-*");
    let r = api
        .get(
            &format!("oracle-rw/{}.narinfo", fake_hash("vector")),
            Some(token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // The pusher is the token's `sub`.
    assert_eq!(
        g.sql("SELECT created_by FROM objects"),
        "pyjwt-oracle",
        "the object records the token's sub"
    );

    // oracle-ro: the exact entry grants pull only.
    let admin = g.admin_token();
    assert_eq!(
        api.create_cache(&admin, "oracle-ro", false).await.status(),
        StatusCode::OK
    );
    let (status, _) = api.cache_config(Some(token), "oracle-ro").await;
    assert_eq!(status, StatusCode::OK, "r on oracle-ro");
    assert_eq!(
        api.create_cache(token, "oracle-ro2", false).await.status(),
        StatusCode::OK,
        "oracle-ro2 is matched by the pattern, not the exact entry"
    );
    let info = upload_info("oracle-ro", "denied", &nar, &[]);
    assert_eq!(
        api.upload(Some(token), &info, nar.clone()).await.status(),
        StatusCode::FORBIDDEN,
        "no w on oracle-ro"
    );
    // Nothing at all on other names: existence stays hidden.
    assert_eq!(
        api.create_cache(&admin, "elsewhere", false).await.status(),
        StatusCode::OK
    );
    let (status, _) = api.cache_config(Some(token), "elsewhere").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // cd on the pattern: the cache it made can be destroyed.
    let r = api
        .send(
            Method::DELETE,
            "_api/v1/cache-config/oracle-rw",
            Some(token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "cd on oracle-*");
}

async fn refuses_tampered(g: &Garretd, token: &str) {
    let api = g.client();
    assert_eq!(
        api.create_cache(&g.admin_token(), "oracle-t", false)
            .await
            .status(),
        StatusCode::OK
    );
    let (status, _) = api.cache_config(Some(token), "oracle-t").await;
    assert_eq!(status, StatusCode::OK, "the untouched token works");
    for (part, what) in [(0, "header"), (1, "claims"), (2, "signature")] {
        let bad = one_byte_changed(token, part);
        assert_ne!(bad, token);
        let r = api
            .send(Method::GET, "_api/v1/cache-config/oracle-t", Some(&bad))
            .await;
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "one byte of the {what} changed"
        );
    }
}

#[tokio::test]
async fn an_hs256_token_minted_by_pyjwt_is_accepted_with_its_rights() {
    let secret = vector("hs256-secret.b64");
    let g = Garretd::start_with(None, &[("ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64", &secret)]);
    let token = vector("hs256.jwt");
    check_rights(&g, &token).await;
    refuses_tampered(&g, &token).await;
    // A token signed with the RSA key means nothing to an HS256 server.
    let (status, _) = g
        .client()
        .cache_config(Some(&vector("rs256.jwt")), "oracle-t")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_rs256_key_from_openssl_is_loaded_from_attics_environment_variable() {
    let pem = vector("rs256-key.pem");
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{pem}\n"));
    let g = Garretd::start_with(None, &[("ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64", &b64)]);
    let token = vector("rs256.jwt");
    check_rights(&g, &token).await;
    refuses_tampered(&g, &token).await;
    // The HS256 vector (another algorithm, another key) is refused.
    let (status, _) = g
        .client()
        .cache_config(Some(&vector("hs256.jwt")), "oracle-t")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The server's own tokens are RS256 with that key now: PyJWT-compatible, checked here
    // by decoding the header.
    let own = g.admin_token();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(own.split('.').next().unwrap())
        .unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header["alg"], "RS256");
}
