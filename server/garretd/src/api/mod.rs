//! The HTTP surface: Attic's API, the Nix binary-cache protocol, health. One file per
//! endpoint group; [`router`] wires them.

pub mod auth;
mod cache_config;
mod delete_path;
mod endpoint;
mod extract;
mod health;
mod home;
mod nix_read;
mod nix_upload;
mod pins;
mod revocations;
pub mod state;
mod upload;
mod upload_session;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;

pub use nix_read::render_narinfo;
use state::SharedState;

use crate::error::ServerError;

/// The ceiling for any body extracted whole. The JSON and narinfo routes read theirs after
/// authorizing, with their own smaller limits (`extract::read_body`, docs/limits.md); NAR
/// bodies are streamed and not subject to this limit.
const JSON_BODY_LIMIT: usize = 16 << 20;

pub fn router(state: SharedState) -> Router {
    let api = Router::new()
        .route("/", get(home::home))
        .route(
            "/_api/v1/cache-config/{cache}",
            get(cache_config::get_config)
                .post(cache_config::create_cache)
                .patch(cache_config::configure_cache)
                .delete(cache_config::destroy_cache),
        )
        .route(
            "/_api/v1/get-missing-paths",
            post(upload::get_missing_paths),
        )
        .route("/_api/v1/upload-path", put(upload::upload_path))
        .route("/_api/v1/revocations", post(revocations::push))
        .route(
            "/_api/v1/upload-session",
            get(upload_session::capabilities).post(upload_session::create),
        )
        .route(
            "/_api/v1/upload-session/{id}",
            get(upload_session::get_session),
        )
        .route(
            "/_api/v1/upload-session/{id}/part/{part}",
            put(upload_session::put_part),
        )
        .route(
            "/_api/v1/upload-session/{id}/commit",
            post(upload_session::commit),
        )
        .route(
            "/_api/v1/cache/{cache}/pins",
            get(pins::list_pins).post(pins::create_pin),
        )
        .route(
            "/_api/v1/cache/{cache}/pins/{name}",
            delete(pins::delete_pin),
        )
        .route(
            "/_api/v1/cache/{cache}/path/{hash}",
            delete(delete_path::delete_path),
        )
        .route(
            "/{cache}/nix-cache-info",
            get(nix_read::nix_cache_info).put(nix_upload::put_cache_info),
        )
        .route("/{cache}/attic-cache-info", get(cache_config::get_config))
        .route(
            "/{cache}/{file}",
            get(nix_read::narinfo).put(nix_upload::put_narinfo),
        )
        .route(
            "/{cache}/nar/{file}",
            get(nix_read::nar).put(nix_upload::put_nar),
        )
        .route_layer(middleware::from_fn(track))
        .fallback(|| async { ServerError::NotFound })
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route_layer(middleware::from_fn(track))
        .merge(api)
        .with_state(state)
}

/// Counts requests and their latency by route template.
async fn track(path: MatchedPath, req: Request, next: Next) -> Response {
    let start = std::time::Instant::now();
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let route = path.as_str().to_string();
    let m = &crate::metrics::METRICS;
    m.latency
        .get_or_create(&crate::metrics::RouteLabels {
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&crate::metrics::RequestLabels {
            route,
            method,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// `Host` is required, and must be one of `allowed-hosts` when that list is set.
async fn check_host(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let Some(host) = host else {
        return ServerError::request("the Host header is missing").into_response();
    };
    let allowed = &state.config.allowed_hosts;
    if !allowed.is_empty() && !allowed.contains(&host) {
        return ServerError::request("Bad Host").into_response();
    }
    next.run(req).await
}
