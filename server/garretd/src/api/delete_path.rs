//! `DELETE /_api/v1/cache/{cache}/path/{store_path_hash}`: remove one store path from a
//! cache (a Garret addition; Attic reserves the `d` right for it but has no endpoint).
//!
//! The object row goes in one transaction, so the narinfo and the NAR are 404 from the next
//! request on (this replica also drops its rendered narinfo; other replicas' copies expire
//! within seconds). The NAR and its chunks stay until GC finds nothing else references
//! them. A path a pin holds is refused with 409 `PathPinned`.

use axum::extract::{Path, State};
use axum::Json;

use super::auth::{authorize, Caller};
use super::extract::parse_cache;
use super::state::SharedState;
use crate::db::DeleteOutcome;
use crate::error::{ServerError, ServerResult};
use garret_core::nix::store_path::StorePathHash;
use garret_core::pins::DeletePathResponse;

pub async fn delete_path(
    State(state): State<SharedState>,
    caller: Caller,
    Path((cache, hash)): Path<(String, String)>,
) -> ServerResult<Json<DeletePathResponse>> {
    let name = parse_cache(&cache)?;
    let c = authorize(&state, &caller, name.as_str(), |p| p.delete).await?;
    let hash = StorePathHash::parse(&hash).map_err(|e| ServerError::request(e.to_string()))?;
    match state.db().delete_object(c.row.id, hash.as_str()).await? {
        DeleteOutcome::Deleted { store_path } => {
            state
                .narinfos
                .invalidate(&(c.row.id, hash.as_str().to_string()));
            tracing::info!(cache = %name, path = %store_path, by = caller.subject().as_deref().unwrap_or("-"), "path deleted");
            Ok(Json(DeletePathResponse { store_path }))
        }
        DeleteOutcome::NoSuchObject => Err(ServerError::NoSuchObject),
        DeleteOutcome::Pinned(names) => Err(ServerError::PathPinned(names.join(", "))),
    }
}
