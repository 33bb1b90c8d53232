//! Real Nix (Debian's nix-bin) against garretd: build a two-derivation closure in a
//! throwaway store, push it through the Attic upload API, substitute it into fresh stores
//! with signature checking (public cache, and private cache via netrc), and see a wrong
//! trusted key refused.

mod common;

use common::nix::*;
use common::*;
use reqwest::StatusCode;

/// Pushes one store path the way the attic client does: NAR from the local store, metadata
/// from `nix path-info`, PUT upload-path.
async fn push_path(
    nix: &Nix,
    store: &str,
    api: &Api,
    token: &str,
    cache: &str,
    path: &str,
) -> serde_json::Value {
    let info: serde_json::Value =
        serde_json::from_str(&nix.ok("nix", &["path-info", "--store", store, "--json", path]))
            .unwrap();
    let info = &info[0];
    let refs: Vec<String> = info["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().rsplit('/').next().unwrap().to_string())
        .collect();
    let nar = nix.bytes("nix", &["store", "dump-path", "--store", store, path]);
    assert_eq!(nar.len() as u64, info["narSize"].as_u64().unwrap());
    let base = path.rsplit('/').next().unwrap();
    let upload = serde_json::json!({
        "cache": cache,
        "store_path_hash": &base[..32],
        "store_path": path,
        "references": refs,
        "system": null, "deriver": null, "sigs": [], "ca": null,
        "nar_hash": format!("sha256:{}", sha256_hex(&nar)),
        "nar_size": nar.len(),
    });
    let resp = api.upload(Some(token), &upload, nar).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn push_with_attic_api_then_substitute_with_real_nix() {
    if !common::nix::require_nix() {
        return;
    }
    let nonce = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let tmp = tempfile::Builder::new()
        .prefix("garret-nix-")
        .tempdir()
        .unwrap();
    let nix = Nix::new(tmp.path());

    let (g, api, admin) = server_with_cache("pub", true).await;
    assert_eq!(
        api.create_cache(&admin, "priv", false).await.status(),
        StatusCode::OK
    );

    let a = nix.store("A");
    let top = nix.build_two(&a, &nonce);
    let closure: Vec<String> = nix
        .ok("nix-store", &["--store", &a, "-qR", &top])
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(closure.len(), 2);
    for cache in ["pub", "priv"] {
        for path in &closure {
            push_path(&nix, &a, &api, &admin, cache, path).await;
        }
    }

    // public cache: no credentials needed, signature checked against the cache's key
    let pub_key = api.public_key(None, "pub").await;
    let b = nix.store("B");
    let sub = format!("{}/pub", g.url);
    assert!(
        nix.realise_from(&b, &top, &sub, &pub_key, &[])
            .status
            .success(),
        "substitution failed"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{b}{top}/data")).unwrap(),
        "top\n"
    );
    assert_eq!(
        nix.ok("nix-store", &["--store", &b, "-qR", &top])
            .lines()
            .count(),
        2
    );
    assert_eq!(
        std::fs::read(format!("{b}{top}/blob")).unwrap(),
        std::fs::read(format!("{a}{top}/blob")).unwrap()
    );

    // a key with the same name but other key material is refused
    let wrong = format!(
        "{}:9JwWjIvIxZ++emTefhvrh0lCM+RimmTooj9215Exnv8=",
        pub_key.split(':').next().unwrap()
    );
    let out = nix.realise_from(&nix.store("C"), &top, &sub, &wrong, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not signed by any of the keys"), "{err}");

    // private cache: without credentials Nix cannot see it; with a netrc it substitutes
    let priv_key = api.public_key(Some(&admin), "priv").await;
    let sub = format!("{}/priv", g.url);
    let out = nix.realise_from(&nix.store("D"), &top, &sub, &priv_key, &[]);
    assert!(
        !out.status.success(),
        "a private cache must not serve anonymous Nix"
    );
    let reader = g.token("ci", "1 hour", &["--pull", "priv"]);
    let netrc = tmp.path().join("netrc");
    std::fs::write(&netrc, format!("machine 127.0.0.1 password {reader}\n")).unwrap();
    let e = nix.store("E");
    assert!(
        nix.realise_from(
            &e,
            &top,
            &sub,
            &priv_key,
            &["--option", "netrc-file", netrc.to_str().unwrap()],
        )
        .status
        .success(),
        "substitution failed"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{e}{top}/data")).unwrap(),
        "top\n"
    );
}
