//! Resumable uploads (docs/resumable-uploads.md), Garret's opt-in addition to `upload-path`:
//! `GET /_api/v1/upload-session` (what the server accepts), `POST` of the upload info (a
//! session: new, or the unfinished one of the same NAR), `PUT …/{id}/part/{n}` with the
//! part's hash, `GET …/{id}` (what is stored) and `POST …/{id}/commit`, which ingests the
//! staged parts exactly as `upload-path` ingests a body.
//!
//! Every route authorizes before reading a byte of the body. A session is reached only by
//! its unguessable id, and is answered for like a private cache: a caller who may push
//! nowhere gets 401, one whose token has no right on the session's cache gets the same 404
//! as for an id that does not exist.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Version};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::{authorize, Caller};
use super::extract::{parse_cache, parse_json, read_body};
use super::state::{CacheEntry, SharedState};
use super::upload::{may_push_somewhere, validate};
use crate::db::{NewObject, PathMeta, SessionKey, SessionRow};
use crate::error::{ServerError, ServerResult};
use crate::store::parts::{
    effective_part_size, PartOutcome, MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE, SESSION_TTL,
};
use garret_core::clock::unix_now;
use garret_core::nix::Sha256Hash;
use garret_core::upload_session::{
    num_parts, part_len, Capabilities, CreateSessionRequest, PartResult, Session, PART_HASH_HEADER,
    VERSION,
};
use garret_core::wire::{UploadPathNarInfo, UploadPathResult};

/// The capability probe: says nothing about any cache, so it needs no token.
pub async fn capabilities() -> Json<Capabilities> {
    Json(Capabilities {
        version: VERSION,
        min_part_size: MIN_PART_SIZE,
        max_part_size: MAX_PART_SIZE,
        max_parts: MAX_PARTS,
    })
}

/// An error answer; on HTTP/1.1 the connection is closed, since the body may be unread.
fn refuse(e: ServerError, version: Version) -> Response {
    close(e.into_response(), version)
}

/// Closes an HTTP/1.1 connection after this answer (HTTP/2 resets the unread stream).
fn close(mut resp: Response, version: Version) -> Response {
    if version <= Version::HTTP_11 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn push_nowhere(caller: &Caller) -> ServerError {
    match caller.claims {
        Some(_) => ServerError::Unauthorized {
            reason: Some("it grants push on no cache".into()),
        },
        None => caller.unauthorized(),
    }
}

pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    version: Version,
    body: Body,
) -> Response {
    match create_session(&state, &caller, body).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => refuse(e, version),
    }
}

async fn create_session(state: &SharedState, caller: &Caller, body: Body) -> ServerResult<Session> {
    // The body names the cache: nobody who may push nowhere gets the server to read it.
    if !may_push_somewhere(caller) {
        return Err(push_nowhere(caller));
    }
    let body = read_body(body, state.config.max_nar_info_size + 1024).await?;
    let req: CreateSessionRequest = parse_json(&body)?;
    let info = &req.nar_info;
    let name = parse_cache(&info.cache)?;
    let (path, claim) = validate(info)?;
    let c = authorize(state, caller, name.as_str(), |p| p.push).await?;
    if path.store_dir() != c.row.store_dir {
        return Err(ServerError::request(format!(
            "store_path is not in this cache's store directory {}",
            c.row.store_dir
        )));
    }
    let part_size = effective_part_size(req.part_size, claim.nar_size);
    if num_parts(claim.nar_size, part_size) > MAX_PARTS {
        return Err(ServerError::request(format!(
            "the NAR is too large for a part upload (at most {MAX_PARTS} parts of {MAX_PART_SIZE} bytes)"
        )));
    }
    let subject = caller.subject();
    let nar_hash = claim.nar_hash.to_typed_hex();
    let key = SessionKey {
        cache_id: c.row.id,
        created_by: subject.as_deref(),
        store_path_hash: path.hash().as_str(),
        nar_hash: &nar_hash,
        nar_size: claim.nar_size as i64,
        part_size: part_size as i64,
    };
    let expires_at = unix_now() + SESSION_TTL.as_secs() as i64;
    let db = state.db();
    if let Some(row) = db.find_upload_session(&key).await? {
        if db.touch_upload_session(&row.id, expires_at).await? {
            tracing::debug!(session = %row.id, "resuming an upload session");
            return describe(state, row, expires_at).await;
        }
    }
    let row = SessionRow {
        id: uuid::Uuid::new_v4().simple().to_string(),
        cache_id: c.row.id,
        cache_name: name.to_string(),
        created_by: subject.clone(),
        store_path_hash: path.hash().to_string(),
        nar_hash,
        nar_size: claim.nar_size as i64,
        part_size: part_size as i64,
        nar_info: serde_json::to_string(info).map_err(ServerError::internal)?,
        expires_at,
    };
    db.create_upload_session(&row).await?;
    tracing::info!(session = %row.id, cache = %name, path = %info.store_path, part_size, "upload session started");
    describe(state, row, expires_at).await
}

/// The session as the client sees it.
async fn describe(state: &SharedState, row: SessionRow, expires_at: i64) -> ServerResult<Session> {
    let parts = state.db().upload_session_parts(&row.id).await?;
    Ok(Session {
        num_parts: num_parts(row.nar_size as u64, row.part_size as u64),
        part_size: row.part_size as u64,
        parts_present: parts.iter().map(|p| p.part as u64).collect(),
        session_id: row.id,
        expires_at,
    })
}

/// Loads a live session and authorizes push on its cache, before any body is read.
async fn session_for(
    state: &SharedState,
    caller: &Caller,
    id: &str,
) -> ServerResult<(SessionRow, Arc<CacheEntry>)> {
    if !may_push_somewhere(caller) {
        return Err(push_nowhere(caller));
    }
    let not_found = || ServerError::NotFound;
    if uuid::Uuid::try_parse(id).is_err() {
        return Err(not_found());
    }
    let row = state
        .db()
        .get_upload_session(id)
        .await?
        .ok_or_else(not_found)?;
    let c = match authorize(state, caller, &row.cache_name, |p| p.push).await {
        Ok(c) => c,
        Err(ServerError::Unauthorized { .. } | ServerError::NoSuchCache) => return Err(not_found()),
        Err(e) => return Err(e),
    };
    if c.row.id != row.cache_id {
        // destroyed and created again under the same name: not this session's cache
        return Err(not_found());
    }
    Ok((row, c))
}

pub async fn get_session(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ServerResult<Json<Session>> {
    let (row, _) = session_for(&state, &caller, &id).await?;
    let expires_at = row.expires_at;
    Ok(Json(describe(&state, row, expires_at).await?))
}

pub async fn put_part(
    State(state): State<SharedState>,
    caller: Caller,
    version: Version,
    Path((id, part)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match receive_part(&state, &caller, &id, &part, &headers, body).await {
        Ok(r) if r.stored => Json(r).into_response(),
        // Already stored: the body was not read, so the connection cannot be reused.
        Ok(r) => close(Json(r).into_response(), version),
        Err(e) => refuse(e, version),
    }
}

async fn receive_part(
    state: &SharedState,
    caller: &Caller,
    id: &str,
    part: &str,
    headers: &HeaderMap,
    body: Body,
) -> ServerResult<PartResult> {
    let (row, _) = session_for(state, caller, id).await?;
    let part: u64 = part
        .parse()
        .map_err(|_| ServerError::request(format!("invalid part number {part:?}")))?;
    let (nar_size, part_size) = (row.nar_size as u64, row.part_size as u64);
    let len = part_len(nar_size, part_size, part).ok_or_else(|| {
        ServerError::request(format!(
            "part {part} does not exist: this upload has {} parts",
            num_parts(nar_size, part_size)
        ))
    })?;
    let hash = headers
        .get(PART_HASH_HEADER)
        .ok_or_else(|| ServerError::request(format!("{PART_HASH_HEADER} must be set")))?;
    let hash = hash
        .to_str()
        .ok()
        .and_then(|h| Sha256Hash::parse_attic(h.trim()).ok())
        .ok_or_else(|| {
            ServerError::request(format!("{PART_HASH_HEADER} is not a sha256:<hex> hash"))
        })?;
    if let Some(declared) = headers.get(header::CONTENT_LENGTH) {
        let declared: Option<u64> = declared.to_str().ok().and_then(|s| s.parse().ok());
        if declared != Some(len) {
            return Err(ServerError::request(format!(
                "Bad part hash or size: part {part} is {len} bytes, the request declares {}",
                declared.map_or("an invalid length".to_string(), |d| d.to_string())
            )));
        }
    }
    let db = state.db();
    if let Some(p) = db
        .upload_session_parts(&row.id)
        .await?
        .into_iter()
        .find(|p| p.part as u64 == part)
    {
        if p.part_hash != hash.to_typed_hex() {
            return Err(ServerError::request(format!(
                "part {part} is already stored with hash {}",
                p.part_hash
            )));
        }
        crate::metrics::METRICS.upload_parts_redundant.inc();
        return Ok(PartResult {
            part,
            stored: false,
        });
    }
    let expires_at = unix_now() + SESSION_TTL.as_secs() as i64;
    if !db.touch_upload_session(&row.id, expires_at).await? {
        return Err(ServerError::NotFound);
    }
    let outcome = state
        .store
        .stage_part(&row, part, len, hash, body.into_data_stream())
        .await?;
    Ok(PartResult {
        part,
        stored: outcome == PartOutcome::Stored,
    })
}

pub async fn commit(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ServerResult<Json<UploadPathResult>> {
    let (row, c) = session_for(&state, &caller, &id).await?;
    let (nar_size, part_size) = (row.nar_size as u64, row.part_size as u64);
    let parts = state.db().upload_session_parts(&row.id).await?;
    let missing: Vec<u64> = (0..num_parts(nar_size, part_size))
        .filter(|n| !parts.iter().any(|p| p.part as u64 == *n))
        .collect();
    if !missing.is_empty() {
        let first: Vec<String> = missing.iter().take(10).map(u64::to_string).collect();
        return Err(ServerError::request(format!(
            "{} parts are missing (first: {})",
            missing.len(),
            first.join(", ")
        )));
    }
    let info: UploadPathNarInfo =
        serde_json::from_str(&row.nar_info).map_err(ServerError::internal)?;
    let (path, claim) = validate(&info)?;
    // Keeps GC away from the blobs while they are read.
    let expires_at = unix_now() + SESSION_TTL.as_secs() as i64;
    if !state.db().touch_upload_session(&row.id, expires_at).await? {
        return Err(ServerError::NotFound);
    }
    let obj = NewObject::new(c.row.id, &path, PathMeta::from(&info), caller.subject());
    let nar = state.store.staged_nar(&row, &parts).await?;
    let result = state.store.ingest(obj, claim, Box::pin(nar)).await;
    match &result {
        // Committed, or refused for good (the parts do not make the declared NAR): either
        // way the parts are of no further use.
        Ok(_) | Err(ServerError::RequestError(_)) => {
            if let Err(e) = state.store.finish_session(&row.id).await {
                tracing::warn!(session = %row.id, error = %e, "could not clean up an upload session; GC will");
            }
        }
        // Retryable (database or storage unavailable, a race with GC): the parts stay.
        Err(_) => {}
    }
    let outcome = result?;
    state
        .narinfos
        .invalidate(&(c.row.id, path.hash().to_string()));
    tracing::info!(cache = %row.cache_name, path = %info.store_path, session = %row.id, ?outcome, "path uploaded in parts");
    Ok(Json(super::upload::upload_result(outcome)))
}
