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
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let upload = tokio::spawn({
        let api = api.clone();
        let admin = admin.clone();
        async move {
            api.req(Method::PUT, "_api/v1/upload-path", Some(&admin))
                .header("X-Attic-Nar-Info", info.to_string())
                .body(reqwest::Body::wrap_stream(rx))
                .send()
                .await
        }
    });
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
