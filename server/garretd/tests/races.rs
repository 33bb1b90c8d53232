//! Uploads racing with deletes: whatever wins, the loser gets an answer a client can act on
//! (404 `NoSuchCache`, or a retryable 503), never a 500, and nothing half-made is visible.

mod common;

use std::time::Duration;

use common::*;
use futures::SinkExt;
use reqwest::{Method, StatusCode};

#[tokio::test]
async fn cache_deleted_during_an_upload_answers_no_such_cache() {
    let (g, api, admin) = server_with_cache("doomed", false).await;
    let nar = nar_of_file(&noise(21, 6 << 20));
    let info = upload_info("doomed", "in-flight", &nar, &[]);
    let (mut tx, upload) = api.upload_streaming(&admin, &info, 1);
    // Most of the NAR, then hold the rest back until the server is visibly ingesting (it
    // has recorded chunks), which it only does after authorizing the upload.
    let held = nar.len() - 4096;
    for piece in nar[..held].chunks(256 << 10) {
        tx.send(Ok(piece.to_vec())).await.expect("send body");
    }
    wait_for(Duration::from_secs(60), Duration::from_millis(50), || {
        g.count("chunks") > 0
    })
    .await;
    assert!(g.count("chunks") > 0, "the server never started ingesting");

    let r = api
        .send(Method::DELETE, "_api/v1/cache-config/doomed", Some(&admin))
        .await;
    assert_eq!(r.status(), StatusCode::OK, "deleting the cache");

    tx.send(Ok(nar[held..].to_vec())).await.expect("send body");
    drop(tx);
    let resp = upload.await.expect("join").expect("response");
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "NoSuchCache", "{body}");

    // Nothing of the upload is visible: no object, no NAR.
    assert_eq!(g.count("objects"), 0);
    assert_eq!(g.count("nars"), 0);
}

/// How many uploads are reading the body of an already stored NAR to prove possession.
async fn proving_possession(api: &Api) -> Option<i64> {
    let text = api.get("metrics", None).await.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("garret_uploads_in_progress{kind=\"stored-nar\"} "))
        .and_then(|v| v.trim().parse().ok())
}

/// A re-pushed NAR whose last object went away is still stored, so the upload reads its body
/// to prove possession; garbage collection deletes the NAR meanwhile. Attaching the object
/// then fails on the vanished NAR: the answer is a retryable 503, nothing is half-made, and
/// the retry stores the NAR afresh.
#[tokio::test]
async fn nar_collected_while_a_repush_proves_possession_answers_a_retryable_503() {
    let g = Garretd::start_with(
        Some("[garbage-collection]\ninterval = 0\norphan-grace-period = 0\n"),
        &[],
    );
    let api = g.client();
    let admin = g.admin_token();
    for c in ["first", "second"] {
        assert_eq!(
            api.create_cache(&admin, c, false).await.status(),
            StatusCode::OK
        );
    }
    let nar = nar_of_file(&noise(31, 3 << 20));
    api.upload_ok(&admin, "first", "twice", &nar).await;
    // The NAR's only object goes with its cache: an orphan, as GC will see it.
    let r = api
        .send(Method::DELETE, "_api/v1/cache-config/first", Some(&admin))
        .await;
    assert_eq!(r.status(), StatusCode::OK, "deleting the first cache");
    assert_eq!(g.count("objects"), 0);
    assert_eq!(g.count("nars"), 1);

    let info = upload_info("second", "twice", &nar, &[]);
    let (mut tx, upload) = api.upload_streaming(&admin, &info, 1);
    let held = nar.len() - 4096;
    for piece in nar[..held].chunks(256 << 10) {
        tx.send(Ok(piece.to_vec())).await.expect("send body");
    }
    // The server found the stored NAR and is reading the body against it.
    eventually(PATIENCE, "the re-push proving possession", || async {
        proving_possession(&api).await == Some(1)
    })
    .await;

    // Garbage collection now: the NAR is an orphan past its grace (its timestamps are moved
    // back, so whole-second clocks cannot make this depend on timing).
    g.sql("UPDATE nars SET created_at = created_at - 3600");
    g.sql("UPDATE chunks SET last_used_at = last_used_at - 3600, created_at = created_at - 3600");
    let out = g.run(&["gc"]);
    assert!(out.status.success(), "gc failed");
    assert_eq!(g.count("nars"), 0, "GC deleted the NAR during the upload");

    tx.send(Ok(nar[held..].to_vec())).await.expect("send body");
    drop(tx);
    let resp = upload.await.expect("join").expect("response");
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "ServiceUnavailable", "{body}");
    assert_eq!(
        g.count("objects"),
        0,
        "nothing of the failed upload is visible"
    );

    // The retry the 503 asks for stores the NAR afresh.
    api.upload_ok(&admin, "second", "twice", &nar).await;
    let path = format!("second/nar/{}.nar", fake_hash("twice"));
    assert_eq!(api.nar(&path, Some(&admin)).await, nar);
}
