//! `POST /_api/v1/revocations` (Garret addition): the operator pushes revocation entries so
//! they apply at once, where a mounted ConfigMap can take a kubelet sync (a minute by
//! default) to change. The body is the revocation-list format (`<jti> [<exp>]` or
//! `sub:<subject>` per line). Entries are held in memory until the mounted list carries them
//! or their token has expired; the file stays the durable copy that a restarted pod reads.
//!
//! Only a token with the server right `push-revocations` may push (the operator signs a
//! short-lived one with the cache's key): anyone else gets 401 before a byte of the body is
//! read. Pushing only ever refuses more tokens; it cannot un-revoke.

use axum::body::Body;
use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::auth::Caller;
use super::extract::read_body;
use super::state::SharedState;
use crate::error::{ServerError, ServerResult};
use garret_core::token::parse_entries;

/// The operator's ConfigMap holds at most 1 MiB; room for its whole list with margin.
const BODY_LIMIT: usize = 2 << 20;
/// Entries one push may carry.
const MAX_ENTRIES: usize = 100_000;

#[derive(Serialize)]
pub struct PushAnswer {
    /// Entries in this push.
    pub received: usize,
    /// Pushed entries (from any push) the mounted list does not carry yet.
    pub held: usize,
}

pub async fn push(
    State(state): State<SharedState>,
    caller: Caller,
    body: Body,
) -> ServerResult<Json<PushAnswer>> {
    if !caller
        .claims
        .as_ref()
        .is_some_and(|c| c.server.push_revocations)
    {
        return Err(caller.unauthorized());
    }
    let body = read_body(body, BODY_LIMIT).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ServerError::request("the revocation list is not UTF-8"))?;
    let entries = parse_entries(text);
    if entries.len() > MAX_ENTRIES {
        return Err(ServerError::PayloadTooLarge(format!(
            "{} entries, at most {MAX_ENTRIES}",
            entries.len()
        )));
    }
    let received = entries.len();
    let held = state.push_revocations(entries);
    tracing::info!(
        received,
        held,
        by = caller.subject().as_deref().unwrap_or("-"),
        "revocations pushed"
    );
    Ok(Json(PushAnswer { received, held }))
}
