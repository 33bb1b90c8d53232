//! Backend outages and shutdown: with PostgreSQL stopped under a running garretd, requests
//! get a 503 JSON error quickly (no panic, no hang) and the server recovers by itself when
//! the database returns. It stops PostgreSQL, so it is the only test in this binary.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;

fn pg_ctl(action: &str) {
    let cluster = std::env::var("GARRET_TEST_PG_CLUSTER")
        .expect("GARRET_TEST_PG_CLUSTER from .ci/postgres.sh");
    let mut parts = cluster.split_whitespace();
    let (ver, name) = (parts.next().unwrap(), parts.next().unwrap());
    let mut cmd = std::process::Command::new("pg_ctlcluster");
    cmd.args([ver, name, action]);
    if action == "stop" {
        cmd.args(["-m", "fast"]);
    }
    let out = cmd.output().expect("pg_ctlcluster");
    assert!(
        out.status.success(),
        "pg_ctlcluster {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn database_outage_gives_503_and_recovers() {
    if !on_postgres() {
        eprintln!("skipping: needs GARRET_TEST_DATABASE=postgres (run by .ci/test.sh)");
        return;
    }
    let g = Garretd::start();
    let api = g.client();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let admin = g.admin_token();
    assert_eq!(
        api.create_cache(&admin, "c", true).await.status(),
        StatusCode::OK
    );
    let nar = nar_of_file(b"survives the outage");
    api.upload(Some(&admin), &upload_info("c", "p", &nar, &[]), nar.clone())
        .await;

    pg_ctl("stop");
    let result = std::panic::AssertUnwindSafe(async {
        tokio::time::sleep(Duration::from_secs(6)).await; // past the cache-row TTL
        let start = Instant::now();
        let r = http.get(api.url("readyz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = http
            .get(api.url(&format!("c/{}.narinfo", fake_hash("other"))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], 503);
        assert!(
            body["message"].as_str().unwrap().contains("database"),
            "{body}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "errors come fast, not after a hang"
        );
    });
    let outcome = futures::FutureExt::catch_unwind(result).await;
    pg_ctl("start");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http.get(api.url("readyz")).send().await.unwrap();
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "garretd did not recover after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        api.nar(&format!("c/nar/{}.nar", fake_hash("p")), None)
            .await,
        nar
    );
}
