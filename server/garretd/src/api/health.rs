//! Liveness and readiness probes; they ignore `Host` so kubelets can call them by IP.

use axum::extract::State;
use axum::http::StatusCode;

use super::state::SharedState;
use crate::error::ServerError;

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the database answers and the storage accepts a write.
pub async fn readyz(
    State(state): State<SharedState>,
) -> Result<(StatusCode, &'static str), ServerError> {
    state.db().ping().await?;
    state.store.storage().check().await?;
    Ok((StatusCode::OK, "ready\n"))
}

/// Prometheus exposition. Storage size is read from the database at scrape time.
pub async fn metrics(State(state): State<SharedState>) -> impl axum::response::IntoResponse {
    let m = &crate::metrics::METRICS;
    if let Ok(bytes) = state.db().stored_bytes().await {
        m.storage_bytes.set(bytes);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}
