//! garretd on S3 end to end: a multi-chunk NAR through the Attic API, and an S3 outage
//! under a running server (503 with a JSON body, fast, then recovery without a restart).

mod common;
mod s3_support;

use std::time::{Duration, Instant};

use common::*;
use garretd::config::S3Config;
use reqwest::{Method, StatusCode};
use s3_support::{s3_from_env, storage_toml, PrivateS3};

/// Small chunks, so a 1 MiB NAR becomes dozens of S3 objects.
fn config_text(s3: &S3Config) -> String {
    format!(
        "{}\n[chunking]\nnar-size-threshold = 1024\nmin-size = 4096\navg-size = 16384\n\
         max-size = 65536\n",
        storage_toml(s3)
    )
}

/// Every request is bounded: a hung server fails the test instead of stalling it.
fn client(g: &Garretd) -> Api {
    Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        base: g.url.clone(),
    }
}

async fn download(api: &Api, token: &str, cache: &str, name: &str) -> reqwest::Response {
    api.req(
        Method::GET,
        &format!("{cache}/nar/{}.nar", fake_hash(name)),
        Some(token),
    )
    .send()
    .await
    .expect("download")
}

/// Downloads a NAR and undoes the cache's zstd compression.
async fn fetch_nar(api: &Api, token: &str, cache: &str, name: &str) -> Vec<u8> {
    let r = download(api, token, cache, name).await;
    assert_eq!(r.status(), StatusCode::OK, "download {cache}/{name}");
    let body = r.bytes().await.expect("NAR body");
    zstd::decode_all(&body[..]).expect("zstd NAR")
}

async fn expect_503_json(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["code"], 503, "{what}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {body}"
    );
    assert!(body["message"].as_str().is_some(), "{what}: {body}");
}

#[tokio::test]
async fn multi_chunk_nar_round_trip_on_s3() {
    let Some(s3) = s3_from_env("multi_chunk_nar_round_trip_on_s3") else {
        return;
    };
    let g = Garretd::start_with(Some(&config_text(&s3)), &[]);
    let api = client(&g);
    let admin = g.admin_token();
    assert_eq!(
        api.create_cache(&admin, "s3", false).await.status(),
        StatusCode::OK
    );

    let nar = nar_of_file(&noise(7, 1 << 20));
    let t = Instant::now();
    api.upload_ok(&admin, "s3", "big-1.0", &nar).await;
    let up = t.elapsed();
    let back = fetch_nar(&api, &admin, "s3", "big-1.0").await;
    eprintln!(
        "1 MiB NAR: upload {up:?}, upload+download {:?}",
        t.elapsed()
    );
    assert_eq!(back.len(), nar.len());
    assert!(back[..] == nar[..], "NAR differs after the S3 round trip");

    // Identical content again: deduplicated against the chunks already in S3.
    api.upload_ok(&admin, "s3", "big-copy-1.0", &nar).await;
    assert!(fetch_nar(&api, &admin, "s3", "big-copy-1.0").await == nar);

    let r = api
        .req(Method::GET, "readyz", None)
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        !g.data_dir.join("storage").exists(),
        "chunks must go to S3, not the data dir"
    );
}

#[tokio::test]
async fn s3_outage_is_503_and_recovers() {
    // The shared server's variables prove the S3 binaries are installed; this test stops
    // a private server so the other tests keep theirs.
    if s3_from_env("s3_outage_is_503_and_recovers").is_none() {
        return;
    }
    let s3 = PrivateS3::start();
    let g = Garretd::start_with(Some(&config_text(&s3.config)), &[]);
    let api = client(&g);
    let admin = g.admin_token();
    assert_eq!(
        api.create_cache(&admin, "o", false).await.status(),
        StatusCode::OK
    );
    let nar = nar_of_file(&noise(11, 256 << 10));
    api.upload_ok(&admin, "o", "before-1.0", &nar).await;
    assert_eq!(
        download(&api, &admin, "o", "before-1.0").await.status(),
        StatusCode::OK
    );

    s3.halt();
    let t = Instant::now();
    let r = api
        .req(Method::GET, "readyz", None)
        .send()
        .await
        .expect("readyz");
    expect_503_json(r, "readyz during the outage").await;
    expect_503_json(
        download(&api, &admin, "o", "before-1.0").await,
        "NAR download during the outage",
    )
    .await;
    let other = nar_of_file(&noise(12, 256 << 10));
    let r = api
        .upload(
            Some(&admin),
            &upload_info("o", "during-1.0", &other, &[]),
            other.clone(),
        )
        .await;
    expect_503_json(r, "upload during the outage").await;
    let r = api
        .req(Method::GET, "healthz", None)
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), StatusCode::OK, "the process itself stays alive");
    // (Each request has the client's timeout: a hang fails there, not here.)
    eprintln!(
        "three requests during the outage answered in {:?}",
        t.elapsed()
    );

    s3.resume();
    let t = Instant::now();
    loop {
        let r = api
            .req(Method::GET, "readyz", None)
            .send()
            .await
            .expect("readyz");
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "not ready again after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("ready again {:?} after S3 came back", t.elapsed());
    assert!(fetch_nar(&api, &admin, "o", "before-1.0").await == nar);
    api.upload_ok(&admin, "o", "during-1.0", &other).await;
    assert!(fetch_nar(&api, &admin, "o", "during-1.0").await == other);
}
