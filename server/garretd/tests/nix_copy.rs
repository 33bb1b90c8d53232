//! Plain `nix copy --to http://…/CACHE` as a pusher, with the token in netrc: NARs in any
//! compression Nix sends are verified, chunked, re-signed with the cache's key and served
//! like every other object. Refused without push rights; a narinfo without its NAR, or
//! with hashes that don't match it, stores nothing.

mod common;

use common::nix::*;
use common::*;
use reqwest::{Method, StatusCode};
use sha2::Digest;

#[tokio::test]
async fn nix_copy_into_a_private_cache_then_substitute_elsewhere() {
    if !require_nix() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("garret-copy-")
        .tempdir()
        .unwrap();
    let nix = Nix::new(tmp.path());
    let (g, api, admin) = server_with_cache("priv", false).await;

    let a = nix.store("A");
    let top = nix.build_two(&a, &nonce());
    let dep = nix.ok("nix-store", &["--store", &a, "-q", "--references", &top]);
    let url = format!("{}/priv", g.url);

    let netrc = |name: &str, token: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, format!("machine 127.0.0.1 password {token}\n")).unwrap();
        p.to_str().unwrap().to_string()
    };
    let pusher = netrc(
        "netrc-push",
        &g.token("ci", "1 hour", &["--pull", "priv", "--push", "priv"]),
    );
    let reader = netrc("netrc-read", &g.token("dev", "1 hour", &["--pull", "priv"]));

    // no credentials, or pull-only credentials: the upload is refused and nothing lands
    let out = nix.run("nix", &["copy", "--from", &a, "--to", &url, &dep]);
    assert!(!out.status.success(), "an anonymous push must fail");
    let out = nix.run(
        "nix",
        &[
            "copy",
            "--from",
            &a,
            "--to",
            &url,
            &dep,
            "--option",
            "netrc-file",
            &reader,
        ],
    );
    assert!(!out.status.success(), "a pull-only token must not push");
    let missing = api
        .req(Method::POST, "_api/v1/get-missing-paths", Some(&admin))
        .json(&serde_json::json!({"cache": "priv", "store_path_hashes": [&dep[11..43]]}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(missing["missing_paths"].as_array().unwrap().len(), 1);

    // the dependency with Nix's default (xz), then the rest of the closure with zstd
    nix.ok(
        "nix",
        &[
            "copy",
            "--from",
            &a,
            "--to",
            &url,
            &dep,
            "--option",
            "netrc-file",
            &pusher,
        ],
    );
    nix.ok(
        "nix",
        &[
            "copy",
            "--from",
            &a,
            "--to",
            &format!("{url}?compression=zstd"),
            &top,
            "--option",
            "netrc-file",
            &pusher,
        ],
    );

    // served re-signed with the cache's key (Nix signed nothing), substituted elsewhere
    let key = &api.public_key(Some(&admin), "priv").await;
    let b = nix.store("B");
    assert!(
        nix.realise_from(&b, &top, &url, key, &["--option", "netrc-file", &reader])
            .status
            .success(),
        "substitution failed"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{b}{top}/data")).unwrap(),
        "top\n"
    );
    assert_eq!(
        std::fs::read(format!("{b}{top}/blob")).unwrap(),
        std::fs::read(format!("{a}{top}/blob")).unwrap()
    );
    assert_eq!(
        nix.ok("nix-store", &["--store", &b, "-qR", &top])
            .lines()
            .count(),
        2
    );

    // the stock narinfo of our server carries our URL and compression, not Nix's file
    let text = api
        .get(&format!("priv/{}.narinfo", &top[11..43]), Some(&admin))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(&format!("URL: nar/{}.nar\n", &top[11..43])),
        "{text}"
    );
    assert!(text.contains("Compression: zstd\n"), "{text}");
}

#[tokio::test]
async fn narinfo_uploads_are_checked_against_the_nar() {
    let (_g, api, admin) = server_with_cache("c", false).await;
    let nar = nar_of_file(&noise(3, 100_000));
    let hash = fake_hash("x");
    let nar_hash =
        garret_core::nix::Sha256Hash::parse_attic(&format!("sha256:{}", sha256_hex(&nar))).unwrap();
    let narinfo = |size: usize| {
        format!(
            "StorePath: /nix/store/{hash}-x\nURL: nar/whatever.nar\nCompression: none\nNarHash: {}\nNarSize: {size}\nReferences: \n",
            nar_hash.to_typed_nix32()
        )
    };

    // a narinfo whose NAR never arrived is refused
    let r = api
        .put(
            &format!("c/{hash}.narinfo"),
            Some(&admin),
            narinfo(nar.len()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("upload the NAR first"),
        "{body}"
    );

    // upload the NAR (uncompressed), named after its own hash
    let file = garret_core::nix::base32::encode(&sha2::Sha256::digest(&nar));
    let r = api
        .put(&format!("c/nar/{file}.nar"), Some(&admin), nar.clone())
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // a file whose name is another hash is refused
    let other = garret_core::nix::base32::encode(&[7u8; 32]);
    let r = api
        .put(&format!("c/nar/{other}.nar"), Some(&admin), nar.clone())
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // a corrupt compressed file is refused
    let r = api
        .put(&format!("c/nar/{file}.nar.xz"), Some(&admin), nar.clone())
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // wrong size, or a StorePath that doesn't match the file name: refused
    let r = api
        .put(
            &format!("c/{hash}.narinfo"),
            Some(&admin),
            narinfo(nar.len() + 1),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = api
        .put(
            &format!("c/{}.narinfo", fake_hash("y")),
            Some(&admin),
            narinfo(nar.len()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = api.get(&format!("c/{hash}.narinfo"), Some(&admin)).await;
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "nothing is visible before a valid narinfo"
    );

    // the right narinfo commits; then the object is served
    let r = api
        .put(
            &format!("c/{hash}.narinfo"),
            Some(&admin),
            narinfo(nar.len()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        api.nar(&format!("c/nar/{hash}.nar"), Some(&admin)).await,
        nar
    );

    // another cache cannot claim that NAR by hash alone (proof of possession)
    assert_eq!(
        api.create_cache(&admin, "d", false).await.status(),
        StatusCode::OK
    );
    let r = api
        .put(
            &format!("d/{hash}.narinfo"),
            Some(&admin),
            narinfo(nar.len()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}
