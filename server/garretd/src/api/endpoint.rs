//! The URLs the server hands to clients (`api_endpoint`, `substituter_endpoint`).

use axum::http::HeaderMap;

use crate::config::Config;

/// The configured `api-endpoint`, else `<scheme>://<Host>/` from the request.
pub fn api_endpoint(cfg: &Config, headers: &HeaderMap) -> String {
    if let Some(ep) = &cfg.api_endpoint {
        return ep.clone();
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p == "https");
    format!("{}://{host}/", if https { "https" } else { "http" })
}

pub fn substituter_endpoint(cfg: &Config, headers: &HeaderMap, cache: &str) -> String {
    let base = cfg
        .substituter_endpoint
        .clone()
        .unwrap_or_else(|| api_endpoint(cfg, headers));
    format!("{base}{cache}")
}
