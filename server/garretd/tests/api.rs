//! The Attic API against a real garretd: cache lifecycle, uploads in both forms, narinfo
//! and NAR serving, deduplication, and bad input that must be refused without storing.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

async fn expect_error(resp: reqwest::Response, status: StatusCode, name: &str) -> String {
    assert_eq!(resp.status(), status);
    let body = json(resp).await;
    assert_eq!(body["error"], name, "{body}");
    assert_eq!(body["code"], status.as_u16());
    body["message"].as_str().unwrap_or_default().to_string()
}

fn parse_narinfo(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            l.split_once(": ")
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn cache_lifecycle() {
    let g = Garretd::start();
    let api = g.client();
    let admin = g.admin_token();

    let r = api.create_cache(&admin, "team", false).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = api.create_cache(&admin, "team", false).await;
    expect_error(r, StatusCode::BAD_REQUEST, "CacheAlreadyExists").await;

    let cfg = api.cache_config(Some(&admin), "team").await.1;
    assert_eq!(cfg["is_public"], false);
    assert_eq!(cfg["priority"], 41);
    assert_eq!(cfg["store_dir"], "/nix/store");
    assert_eq!(cfg["retention_period"], "Global");
    assert_eq!(cfg["api_endpoint"], format!("{}/", g.url));
    assert_eq!(cfg["substituter_endpoint"], format!("{}/team", g.url));
    let pk = cfg["public_key"].as_str().unwrap();
    assert!(pk.starts_with("team:"), "{pk}");
    assert!(
        cfg.get("keypair").is_none(),
        "the keypair must never be returned"
    );

    // attic-cache-info is the same document
    let alias = json(api.get("team/attic-cache-info", Some(&admin)).await).await;
    assert_eq!(alias, cfg);

    let r = api
        .patch_config(&admin, "team", serde_json::json!({"is_public": true, "priority": 30, "retention_period": {"Period": 3600}}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let cfg = api.cache_config(None, "team").await.1;
    assert_eq!(cfg["is_public"], true);
    assert_eq!(cfg["priority"], 30);
    assert_eq!(cfg["retention_period"]["Period"], 3600);

    let info = api.get("team/nix-cache-info", None).await;
    assert_eq!(info.headers()["content-type"], "text/x-nix-cache-info");
    assert_eq!(info.headers()["x-attic-cache-visibility"], "public");
    let text = info.text().await.unwrap();
    assert_eq!(
        text,
        "WantMassQuery: 1\nStoreDir: /nix/store\nPriority: 30\n"
    );

    let r = api
        .patch_config(&admin, "team", serde_json::json!({"keypair": "Generate"}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let cfg2 = api.cache_config(None, "team").await.1;
    assert_ne!(
        cfg2["public_key"], cfg["public_key"],
        "regenerating the keypair changes the key"
    );

    let r = api
        .patch_config(&admin, "team", serde_json::json!({"public_key": "ignored"}))
        .await;
    expect_error(r, StatusCode::BAD_REQUEST, "RequestError").await;

    let r = api
        .send(Method::DELETE, "_api/v1/cache-config/team", Some(&admin))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = api.get("_api/v1/cache-config/team", Some(&admin)).await;
    expect_error(r, StatusCode::NOT_FOUND, "NoSuchCache").await;
    let r = api
        .send(Method::DELETE, "_api/v1/cache-config/team", Some(&admin))
        .await;
    expect_error(r, StatusCode::NOT_FOUND, "NoSuchCache").await;
}

/// Two caches, a small NAR (single chunk) and a big one (many chunks) uploaded into `one`,
/// each with one form of upload info.
struct Uploaded {
    _g: Garretd,
    api: Api,
    admin: String,
    small: Vec<u8>,
    big: Vec<u8>,
    dep: Value,
    top: Value,
    dep_base: String,
}

impl Uploaded {
    async fn new() -> Uploaded {
        let (g, api, admin) = server_with_cache("one", false).await;
        assert_eq!(
            api.create_cache(&admin, "two", true).await.status(),
            StatusCode::OK
        );
        let small = nar_of_file(b"hello world\n");
        let big = nar_of_file(&noise(7, 8 << 20));
        let dep = upload_info("one", "dep-1.0", &small, &[]);
        let dep_base = format!("{}-dep-1.0", dep["store_path_hash"].as_str().unwrap());
        let top = upload_info("one", "top-1.0", &big, std::slice::from_ref(&dep_base));

        let r = json(api.upload(Some(&admin), &dep, small.clone()).await).await;
        assert_eq!(r["kind"], "Uploaded", "{r}");
        assert!(r["frac_deduplicated"].is_null());
        let r = json(api.upload_preamble(Some(&admin), &top, big.clone()).await).await;
        assert_eq!(r["kind"], "Uploaded", "{r}");
        assert_eq!(r["frac_deduplicated"], 0.0);
        assert!(
            r["file_size"].as_u64().unwrap() > (3 << 20),
            "noise does not compress"
        );
        Uploaded {
            _g: g,
            api,
            admin,
            small,
            big,
            dep,
            top,
            dep_base,
        }
    }

    fn top_hash(&self) -> &str {
        self.top["store_path_hash"].as_str().unwrap()
    }
}

#[tokio::test]
async fn get_missing_paths_lists_only_what_was_not_uploaded() {
    let u = Uploaded::new().await;
    let unknown = fake_hash("never-uploaded");
    let missing = json(
        u.api
            .req(Method::POST, "_api/v1/get-missing-paths", Some(&u.admin))
            .json(&serde_json::json!({"cache": "one", "store_path_hashes": [u.dep["store_path_hash"], u.top["store_path_hash"], unknown]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(missing["missing_paths"], serde_json::json!([unknown]));
}

#[tokio::test]
async fn narinfo_has_the_upload_fields_and_a_signature_that_verifies() {
    let u = Uploaded::new().await;
    let top_hash = u.top_hash();
    let resp = u
        .api
        .get(&format!("one/{top_hash}.narinfo"), Some(&u.admin))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/x-nix-narinfo");
    let text = resp.text().await.unwrap();
    let ni = parse_narinfo(&text);
    assert_eq!(ni["StorePath"], u.top["store_path"].as_str().unwrap());
    assert_eq!(ni["URL"], format!("nar/{top_hash}.nar"));
    assert_eq!(ni["Compression"], "zstd");
    assert_eq!(ni["NarHash"], u.top["nar_hash"].as_str().unwrap());
    assert_eq!(ni["NarSize"], u.big.len().to_string());
    assert_eq!(ni["References"], u.dep_base);
    let cfg = u.api.cache_config(Some(&u.admin), "one").await.1;
    let pk =
        garret_core::nix::signing::PublicKey::parse(cfg["public_key"].as_str().unwrap()).unwrap();
    let fp = garret_core::nix::signing::fingerprint(
        &ni["StorePath"],
        &garret_core::nix::Sha256Hash::parse_attic(&ni["NarHash"]).unwrap(),
        u.big.len() as u64,
        std::slice::from_ref(&u.dep_base),
    )
    .unwrap();
    assert!(
        pk.verify(&fp, &ni["Sig"]),
        "narinfo signature must verify: {text}"
    );
}

#[tokio::test]
async fn nar_decompresses_to_the_upload_and_head_answers_without_a_body() {
    let u = Uploaded::new().await;
    let top_hash = u.top_hash();
    let resp = u
        .api
        .get(&format!("one/nar/{top_hash}.nar"), Some(&u.admin))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-nix-nar");
    let body = resp.bytes().await.unwrap();
    assert_eq!(zstd::decode_all(&body[..]).unwrap(), u.big);

    for path in [
        format!("one/{top_hash}.narinfo"),
        format!("one/nar/{top_hash}.nar"),
        "one/nix-cache-info".into(),
    ] {
        let r = u.api.send(Method::HEAD, &path, Some(&u.admin)).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(r.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn same_nar_elsewhere_deduplicates_and_a_similar_one_reuses_chunks() {
    let u = Uploaded::new().await;
    let again = upload_info("two", "top-1.0", &u.big, std::slice::from_ref(&u.dep_base));
    let r = json(u.api.upload(Some(&u.admin), &again, u.big.clone()).await).await;
    assert_eq!(r["kind"], "Deduplicated", "{r}");
    let mut edited_file = noise(7, 8 << 20);
    edited_file.extend_from_slice(b"one more line\n");
    let edited = nar_of_file(&edited_file);
    let r = json(
        u.api
            .upload(
                Some(&u.admin),
                &upload_info("two", "top-1.1", &edited, &[]),
                edited.clone(),
            )
            .await,
    )
    .await;
    assert_eq!(r["kind"], "Uploaded");
    let frac = r["frac_deduplicated"].as_f64().unwrap();
    assert!(frac > 0.8, "most chunks should be shared, got {frac}");
    assert_eq!(
        u.api
            .nar(&format!("two/nar/{}.nar", fake_hash("top-1.1")), None)
            .await,
        edited
    );
}

#[tokio::test]
async fn unknown_objects_and_routes_are_not_found() {
    let u = Uploaded::new().await;
    let r = u
        .api
        .get(
            &format!("one/{}.narinfo", fake_hash("nope")),
            Some(&u.admin),
        )
        .await;
    expect_error(r, StatusCode::NOT_FOUND, "NoSuchObject").await;
    let r = u
        .api
        .get(&format!("one/{}.ls", fake_hash("nope")), Some(&u.admin))
        .await;
    expect_error(r, StatusCode::NOT_FOUND, "NotFound").await;
    let r = u.api.get("no/such/route/here", None).await;
    expect_error(r, StatusCode::NOT_FOUND, "NotFound").await;
}

#[tokio::test]
async fn reuploading_a_path_replaces_its_metadata() {
    let u = Uploaded::new().await;
    let replaced = upload_info("one", "top-1.0", &u.small, &[]);
    let r = json(
        u.api
            .upload(Some(&u.admin), &replaced, u.small.clone())
            .await,
    )
    .await;
    assert_eq!(r["kind"], "Deduplicated");
    let text = u
        .api
        .get(&format!("one/{}.narinfo", u.top_hash()), Some(&u.admin))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(parse_narinfo(&text)["NarSize"], u.small.len().to_string());
}

/// Waits for the background cleanup of refused uploads, then finds nothing stored.
async fn assert_nothing_stored(g: &Garretd) {
    eventually(PATIENCE, "refused uploads' chunks are removed", || async {
        g.count("chunks") == 0 && g.chunk_files() == 0
    })
    .await;
    assert_eq!(g.count("objects"), 0);
    assert_eq!(g.count("nars"), 0);
    assert_eq!(g.count("chunks"), 0);
    assert_eq!(g.chunk_files(), 0);
}

#[tokio::test]
async fn nars_that_break_their_claim_or_the_grammar_are_refused() {
    let (g, api, admin) = server_with_cache("c", false).await;
    let nar = nar_of_file(&noise(1, 1 << 20));

    // wrong hash
    let mut info = upload_info("c", "x-1", &nar, &[]);
    info["nar_hash"] = format!("sha256:{}", sha256_hex(b"something else")).into();
    let msg = expect_error(
        api.upload(Some(&admin), &info, nar.clone()).await,
        StatusCode::BAD_REQUEST,
        "RequestError",
    )
    .await;
    assert!(msg.contains("Bad NAR Hash or Size"), "{msg}");
    // wrong size (claims more than is sent = truncated body)
    let mut info = upload_info("c", "x-2", &nar, &[]);
    info["nar_size"] = (nar.len() + 10).into();
    expect_error(
        api.upload(Some(&admin), &info, nar.clone()).await,
        StatusCode::BAD_REQUEST,
        "RequestError",
    )
    .await;
    // body longer than claimed
    let mut info = upload_info("c", "x-3", &nar, &[]);
    info["nar_size"] = (nar.len() - 8).into();
    expect_error(
        api.upload(Some(&admin), &info, nar.clone()).await,
        StatusCode::BAD_REQUEST,
        "RequestError",
    )
    .await;
    // malformed NAR whose hash and size are honest
    let mut broken = nar.clone();
    broken[8] = b'X';
    let msg = expect_error(
        api.upload(
            Some(&admin),
            &upload_info("c", "x-4", &broken, &[]),
            broken.clone(),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "RequestError",
    )
    .await;
    assert!(msg.contains("Malformed NAR"), "{msg}");
    let trailing = [nar.clone(), vec![0u8; 8]].concat();
    expect_error(
        api.upload(
            Some(&admin),
            &upload_info("c", "x-5", &trailing, &[]),
            trailing.clone(),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "RequestError",
    )
    .await;
    assert_nothing_stored(&g).await;
}

#[tokio::test]
async fn invalid_upload_metadata_is_refused() {
    let (g, api, admin) = server_with_cache("c", false).await;
    let nar = nar_of_file(&noise(1, 1 << 20));
    let good = upload_info("c", "x-6", &nar, &[]);
    for (field, value) in [
        ("store_path_hash", Value::from("../../etc/passwd")),
        ("store_path_hash", Value::from("e".repeat(32))),
        ("store_path", Value::from("/nix/store/../../etc/passwd")),
        (
            "store_path",
            Value::from(format!("/nix/store/{}-x-6", fake_hash("other"))),
        ),
        ("references", serde_json::json!(["not a base name/.."])),
        ("nar_hash", Value::from("md5:abcdef")),
        ("cache", Value::from("../c")),
        ("cache", Value::from("x".repeat(51))),
    ] {
        let mut info = good.clone();
        info[field] = value.clone();
        let r = api.upload(Some(&admin), &info, nar.clone()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{field} = {value}");
    }
    assert_nothing_stored(&g).await;
}

#[tokio::test]
async fn missing_malformed_or_oversized_upload_info_is_refused() {
    let (g, api, admin) = server_with_cache("c", false).await;
    let nar = nar_of_file(&noise(1, 1 << 20));
    let r = api
        .put("_api/v1/upload-path", Some(&admin), nar.clone())
        .await;
    let msg = expect_error(r, StatusCode::BAD_REQUEST, "RequestError").await;
    assert!(msg.contains("X-Attic-Nar-Info"), "{msg}");
    let r = api
        .req(Method::PUT, "_api/v1/upload-path", Some(&admin))
        .header("X-Attic-Nar-Info", "{not json")
        .body(nar.clone())
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "RequestError").await;
    // oversized preamble
    let r = api
        .req(Method::PUT, "_api/v1/upload-path", Some(&admin))
        .header("X-Attic-Nar-Info-Preamble-Size", (2u64 << 20).to_string())
        .body(nar.clone())
        .send()
        .await
        .unwrap();
    let msg = expect_error(r, StatusCode::BAD_REQUEST, "RequestError").await;
    assert!(msg.contains("too large"), "{msg}");
    // preamble longer than the body
    let r = api
        .req(Method::PUT, "_api/v1/upload-path", Some(&admin))
        .header("X-Attic-Nar-Info-Preamble-Size", "5000")
        .body(vec![b'{'; 100])
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "RequestError").await;
    assert_nothing_stored(&g).await;
}

#[tokio::test]
async fn invalid_names_and_hashes_in_urls_are_refused() {
    let (g, api, admin) = server_with_cache("c", false).await;
    for path in [
        "..%2F..%2Fetc/nix-cache-info".to_string(),
        format!("{}/nix-cache-info", "x".repeat(51)),
        "_api/nix-cache-info".into(),
        "c/abc.narinfo".into(),
        format!("c/{}.narinfo", "e".repeat(32)),
        "c/nar/..%2F..%2Fserver.db.nar".into(),
    ] {
        let r = api.get(&path, Some(&admin)).await;
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].is_string(), "{path}: JSON error body");
    }
    assert_nothing_stored(&g).await;
}

/// Large enough that chunks are already written when the connection drops.
#[tokio::test]
async fn an_upload_cut_off_mid_body_leaves_nothing_and_can_be_retried() {
    let (g, api, admin) = server_with_cache("c", false).await;
    let nar = nar_of_file(&noise(2, 6 << 20));
    let info = upload_info("c", "x-7", &nar, &[]);
    let mut stream = tokio::net::TcpStream::connect(g.url.trim_start_matches("http://"))
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let head = format!(
        "PUT /_api/v1/upload-path HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nX-Attic-Nar-Info: {info}\r\nContent-Length: {}\r\n\r\n",
        nar.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&nar[..nar.len() / 2]).await.unwrap();
    eventually(PATIENCE, "the first half is being stored", || async {
        g.count("chunks") != 0
    })
    .await;
    drop(stream);
    eventually(
        PATIENCE,
        "the interrupted upload's chunks are removed",
        || async { g.count("chunks") == 0 && g.chunk_files() == 0 },
    )
    .await;
    assert_eq!(g.count("objects"), 0);
    assert_eq!(
        g.count("chunks"),
        0,
        "chunks of an interrupted upload are removed"
    );
    assert_eq!(g.chunk_files(), 0);

    // and the real upload still works afterwards
    let r = json(api.upload(Some(&admin), &info, nar.clone()).await).await;
    assert_eq!(r["kind"], "Uploaded");
    assert_eq!(g.count("objects"), 1);
}

#[tokio::test]
async fn host_header_rules() {
    let g = Garretd::start_with(Some("allowed-hosts = [\"cache.example\"]\n"), &[]);
    let api = g.client();
    let r = api.get("x/nix-cache-info", None).await;
    let msg = expect_error(r, StatusCode::BAD_REQUEST, "RequestError").await;
    assert!(msg.contains("Bad Host"));
    let r = api
        .req(Method::GET, "x/nix-cache-info", None)
        .header("Host", "cache.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // probes ignore Host
    let r = api.get("healthz", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = api.get("readyz", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    // the home page
    let r = api
        .req(Method::GET, "", None)
        .header("Host", "cache.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("nix copy"));
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {prefix} in:\n{text}"))
}

#[tokio::test]
async fn metrics_count_requests_uploads_and_storage() {
    let (_g, api, admin) = server_with_cache("m", true).await;
    let nar = nar_of_file(&noise(5, 400_000));
    let info = upload_info("m", "p", &nar, &[]);
    api.upload(Some(&admin), &info, nar.clone()).await;
    api.upload(Some(&admin), &info, nar.clone()).await;
    let body = api
        .get(&format!("m/nar/{}.nar", fake_hash("p")), None)
        .await
        .bytes()
        .await
        .unwrap();
    api.get(&format!("m/{}.narinfo", fake_hash("nope")), None)
        .await;

    let resp = api.get("metrics", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert_eq!(metric(&text, "garret_http_requests_total{route=\"/_api/v1/upload-path\",method=\"PUT\",status=\"200\"}"), 2.0);
    assert_eq!(
        metric(
            &text,
            "garret_http_requests_total{route=\"/{cache}/{file}\",method=\"GET\",status=\"404\"}"
        ),
        1.0
    );
    assert_eq!(metric(&text, "garret_nars_uploaded_total"), 1.0);
    assert_eq!(metric(&text, "garret_nars_deduplicated_total"), 1.0);
    assert_eq!(
        metric(&text, "garret_nar_bytes_received_total"),
        nar.len() as f64
    );
    assert_eq!(
        metric(&text, "garret_nar_bytes_sent_total"),
        body.len() as f64
    );
    assert!(metric(&text, "garret_storage_bytes") >= nar.len() as f64);
    assert!(
        metric(
            &text,
            "garret_http_request_duration_seconds_count{route=\"/_api/v1/upload-path\"}"
        ) >= 2.0
    );
    assert!(
        !text.contains("\"m\""),
        "cache names never become label values"
    );
}

/// SIGTERM: new connections are refused, an upload in flight still completes.
#[tokio::test]
async fn sigterm_lets_an_in_flight_upload_finish() {
    let (g, api, admin) = server_with_cache("c", false).await;
    let nar = nar_of_file(&noise(9, 6 << 20));
    let info = upload_info("c", "slow", &nar, &[]);
    let (mut tx, upload) = api.upload_streaming(&admin, &info, 4);
    use futures::SinkExt;
    // More than a batch (2 MiB) of the NAR: the server stores chunks while the rest is
    // still to come, which shows that it is handling the upload.
    let half = nar.len() / 2;
    tx.send(Ok(nar[..half].to_vec())).await.unwrap();
    eventually(
        PATIENCE,
        "the server is storing the upload's chunks",
        || async { g.count("chunks") > 0 },
    )
    .await;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(g.pid() as i32, libc::SIGTERM) };
    // new connections are no longer accepted
    eventually(PATIENCE, "new connections are refused", || async {
        let fresh = reqwest::Client::new().get(api.url("healthz")).send().await;
        fresh.map_or(true, |r| r.status() != StatusCode::OK)
    })
    .await;
    tx.send(Ok(nar[half..].to_vec())).await.unwrap();
    drop(tx);
    let resp = upload
        .await
        .unwrap()
        .expect("the in-flight upload completes");
    assert_eq!(resp.status(), StatusCode::OK);
}
