//! Nothing a pusher or cache owner sends can add lines to a served narinfo or
//! nix-cache-info: content addresses follow Nix's grammar, store dirs and store paths are
//! clean, and no served field carries a control character.

mod common;

use common::*;
use reqwest::StatusCode;
use sha2::Digest;

const CA_HASH: &str = "0059v5kg2s39n3s7fchn4vpdqgzwdmpgx5nwyjsn1q67g9a81i1f";

async fn expect_request_error(r: reqwest::Response, what: &str) -> String {
    let status = r.status();
    let body: serde_json::Value = r.json().await.expect("JSON error body");
    assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
    assert_eq!(body["error"], "RequestError", "{what}: {body}");
    body["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn upload_path_refuses_fields_that_could_inject_narinfo_lines() {
    let (g, api, admin) = server_with_cache("c", true).await;
    let nar = nar_of_file(b"payload");
    let injected =
        format!("fixed:r:sha256:{CA_HASH}\nURL: http://other-host/evil.nar\nCompression: none");
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("ca", serde_json::json!(injected)),
        (
            "ca",
            serde_json::json!(format!("fixed:r:sha256:{CA_HASH}\r")),
        ),
        ("ca", serde_json::json!("fixed:r:sha256:abc")),
        ("ca", serde_json::json!(format!("nonsense:{CA_HASH}"))),
        (
            "sigs",
            serde_json::json!(["k-1:AAAA\nURL: http://other-host/evil.nar"]),
        ),
        ("sigs", serde_json::json!(["k-1:AAAA BBBB"])),
        ("system", serde_json::json!("x86_64-linux\nURL: x")),
        (
            "deriver",
            serde_json::json!(format!("{}-x.drv\nURL: x", fake_hash("d"))),
        ),
    ];
    for (i, (field, value)) in cases.into_iter().enumerate() {
        let mut info = upload_info("c", &format!("inj{i}"), &nar, &[]);
        info[field] = value.clone();
        let r = api.upload(Some(&admin), &info, nar.clone()).await;
        let msg = expect_request_error(r, &format!("{field} = {value}")).await;
        assert!(msg.contains(field), "{field}: {msg}");
    }
    // references with a line break are refused too
    let mut info = upload_info("c", "injref", &nar, &[]);
    info["references"] = serde_json::json!([format!("{}-a\nURL: x", fake_hash("r"))]);
    expect_request_error(
        api.upload(Some(&admin), &info, nar.clone()).await,
        "reference",
    )
    .await;
    assert_eq!(g.count("objects"), 0, "nothing was stored");

    // A valid content address is kept and served as one line.
    let mut info = upload_info("c", "good", &nar, &[]);
    info["ca"] = serde_json::json!(format!("fixed:r:sha256:{CA_HASH}"));
    let r = api.upload(Some(&admin), &info, nar.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = api
        .get(&format!("c/{}.narinfo", fake_hash("good")), None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(&format!("\nCA: fixed:r:sha256:{CA_HASH}\n")),
        "{text}"
    );
}

#[tokio::test]
async fn upload_path_refuses_store_paths_outside_the_cache_store_dir() {
    let (g, api, admin) = server_with_cache("c", false).await;
    let nar = nar_of_file(b"elsewhere");
    let mut info = upload_info("c", "elsewhere", &nar, &[]);
    let hash = fake_hash("elsewhere");
    info["store_path"] = serde_json::json!(format!("/gnu/store/{hash}-elsewhere"));
    let msg = expect_request_error(api.upload(Some(&admin), &info, nar.clone()).await, "dir").await;
    assert!(msg.contains("store directory"), "{msg}");
    // A store dir with a line break is no store dir at all.
    info["store_path"] = serde_json::json!(format!("/nix/store\nURL: x/{hash}-elsewhere"));
    expect_request_error(api.upload(Some(&admin), &info, nar).await, "newline dir").await;
    assert_eq!(g.count("objects"), 0);
}

#[tokio::test]
async fn put_narinfo_refuses_content_addresses_outside_nix_grammar() {
    let (g, api, admin) = server_with_cache("c", false).await;
    let nar = nar_of_file(b"via nix");
    let file = garret_core::nix::base32::encode(&sha2::Sha256::digest(&nar));
    let r = api
        .put(&format!("c/nar/{file}.nar"), Some(&admin), nar.clone())
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let hash = fake_hash("via-nix");
    let narinfo = |ca: &str| {
        format!(
            "StorePath: /nix/store/{hash}-via-nix\nURL: nar/{file}.nar\nCompression: none\n\
             NarHash: sha256:{}\nNarSize: {}\nReferences: \nCA: {ca}\n",
            sha256_hex(&nar),
            nar.len()
        )
    };
    for bad in [
        format!("fixed:r:sha256:{CA_HASH}\r"),
        "fixed:r:sha256:abc".to_string(),
        format!("fixed:r:sha256:{CA_HASH} URL: x"),
    ] {
        let r = api
            .put(&format!("c/{hash}.narinfo"), Some(&admin), narinfo(&bad))
            .await;
        expect_request_error(r, &bad).await;
    }
    assert_eq!(g.count("objects"), 0);
    let good = format!("fixed:r:sha256:{CA_HASH}");
    let r = api
        .put(&format!("c/{hash}.narinfo"), Some(&admin), narinfo(&good))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn store_dir_with_line_breaks_is_refused_on_create_and_configure() {
    let g = Garretd::start();
    let api = g.client();
    let admin = g.admin_token();
    let evil = "/nix/store\nWantMassQuery: 0\nPriority: 1";
    for dir in [
        evil,
        "/nix/store\r",
        "/nix/store/",
        "/nix/st ore",
        "relative",
    ] {
        let r = api
            .req(
                reqwest::Method::POST,
                "_api/v1/cache-config/c",
                Some(&admin),
            )
            .json(&serde_json::json!({
                "keypair": "Generate", "is_public": true, "store_dir": dir,
                "priority": 41, "upstream_cache_key_names": []
            }))
            .send()
            .await
            .unwrap();
        let msg = expect_request_error(r, dir).await;
        assert!(msg.contains("store_dir"), "{msg}");
    }
    assert_eq!(
        api.create_cache(&admin, "c", true).await.status(),
        StatusCode::OK
    );
    let r = api
        .patch_config(&admin, "c", serde_json::json!({ "store_dir": evil }))
        .await;
    expect_request_error(r, "configure").await;
    let info = api
        .get("c/nix-cache-info", None)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        info,
        "WantMassQuery: 1\nStoreDir: /nix/store\nPriority: 41\n"
    );
}

#[tokio::test]
async fn rows_stored_before_validation_cannot_inject_narinfo_lines() {
    let (g, api, admin) = server_with_cache("c", true).await;
    let nar = nar_of_file(b"old row");
    let info = upload_info("c", "old-row", &nar, &[]);
    assert_eq!(
        api.upload(Some(&admin), &info, nar).await.status(),
        StatusCode::OK
    );
    // As if written by an older version that stored fields verbatim.
    g.sql(&format!(
        "UPDATE objects SET ca = 'fixed:r:sha256:{CA_HASH}\nURL: http://other-host/evil.nar', \
         deriver = 'bogus\rURL: x'"
    ));
    let text = api
        .get(&format!("c/{}.narinfo", fake_hash("old-row")), None)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.starts_with("StorePath: "), "{text}");
    assert!(!text.contains("other-host"), "{text}");
    assert!(!text.contains('\r'), "{text}");
    assert_eq!(text.matches("URL: ").count(), 1, "{text}");
    assert!(
        !text.contains("CA: ") && !text.contains("Deriver: "),
        "{text}"
    );
}
