//! The `api_endpoint` garretd hands out in cache-config (the base URL clients switch to for
//! uploads): derived from each request's Host and X-Forwarded-Proto / Forwarded when
//! `api-endpoint` is unset, so `garret push` works through `kubectl port-forward`, a Service
//! and a TLS-terminating proxy alike; the configured value wins when set.

mod common;

use common::{server_with_cache, Garretd};
use reqwest::StatusCode;

async fn endpoints(
    api: &common::Api,
    token: &str,
    cache: &str,
    extra: &[(&str, &str)],
) -> (StatusCode, String, String) {
    let mut req = api.req(
        reqwest::Method::GET,
        &format!("_api/v1/cache-config/{cache}"),
        Some(token),
    );
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let s = |k: &str| body[k].as_str().unwrap_or_default().to_string();
    (status, s("api_endpoint"), s("substituter_endpoint"))
}

#[tokio::test]
async fn api_endpoint_follows_the_request_unless_pinned() {
    let (g, api, admin) = server_with_cache("team", false).await;
    let port = g.url.rsplit(':').next().expect("port").to_string();

    // as a client through `kubectl port-forward 8080:80` would send it
    let (status, ep, sub) = endpoints(&api, &admin, "team", &[("host", "localhost:8080")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ep, "http://localhost:8080/");
    assert_eq!(sub, "http://localhost:8080/team");

    // through a Service from another pod
    let (_, ep, _) = endpoints(&api, &admin, "team", &[("host", "main.ns.svc")]).await;
    assert_eq!(ep, "http://main.ns.svc/");

    // behind a TLS-terminating proxy, both header styles
    let (_, ep, sub) = endpoints(
        &api,
        &admin,
        "team",
        &[
            ("host", "cache.example.org"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(ep, "https://cache.example.org/");
    assert_eq!(sub, "https://cache.example.org/team");
    let (_, ep, _) = endpoints(
        &api,
        &admin,
        "team",
        &[
            ("host", "cache.example.org"),
            ("forwarded", "for=10.0.0.1;proto=https"),
        ],
    )
    .await;
    assert_eq!(ep, "https://cache.example.org/");

    // the plain request: the address the test connected to
    let (_, ep, _) = endpoints(&api, &admin, "team", &[]).await;
    assert_eq!(ep, format!("http://127.0.0.1:{port}/"));

    // a Host that is not hostname[:port] never reaches the answer
    let (status, ep, _) = endpoints(&api, &admin, "team", &[("host", "evil.example/phish")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ep, "http://localhost/");
    drop(g);

    // pinned: the configured value wins over every header
    let g = Garretd::start_with(Some("api-endpoint = \"https://pinned.example/\"\n"), &[]);
    let api = g.client();
    let admin = g.admin_token();
    assert_eq!(
        api.create_cache(&admin, "team", false).await.status(),
        StatusCode::OK
    );
    let (status, ep, sub) = endpoints(
        &api,
        &admin,
        "team",
        &[("host", "localhost:8080"), ("x-forwarded-proto", "http")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ep, "https://pinned.example/");
    assert_eq!(sub, "https://pinned.example/team");
}
