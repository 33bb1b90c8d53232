//! Backend outages and shutdown: with PostgreSQL stopped under a running garretd, requests
//! get a 503 JSON error quickly (no panic, no hang) and the server recovers by itself when
//! the database returns. It stops PostgreSQL, so it is the only test in this binary.

mod common;

use std::time::Duration;

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
        // The process answers at once (the client's 20 s timeout would turn a hang into a
        // failure); the narinfo lookup reaches the database once the cached cache row has
        // expired, so poll until it does.
        let r = http.get(api.url("readyz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let url = api.url(&format!("c/{}.narinfo", fake_hash("other")));
        let r = eventually_some(
            PATIENCE,
            "a narinfo lookup reaching the stopped database",
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let r = http.get(url).send().await.expect("answered, not hung");
                    (r.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(r)
                }
            },
        )
        .await;
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], 503);
        assert!(
            body["message"].as_str().unwrap().contains("database"),
            "{body}"
        );
    });
    let outcome = futures::FutureExt::catch_unwind(result).await;
    pg_ctl("start");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }

    eventually(
        PATIENCE,
        "garretd ready again after the database came back",
        || {
            let (http, url) = (http.clone(), api.url("readyz"));
            async move {
                http.get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK)
            }
        },
    )
    .await;
    assert_eq!(
        api.nar(&format!("c/nar/{}.nar", fake_hash("p")), None)
            .await,
        nar
    );
}
