//! `/_api/v1/cache/{cache}/pins`: pin a path with its closure under a name, list pins,
//! release a pin (Garret additions; Attic has no pins).
//!
//! Rights: creating (and thereby releasing versions beyond `keep`) is part of pushing, `w`;
//! listing is reading, `r`; deleting a pin makes paths collectable again, so it needs the
//! delete right `d`. A caller with no right on the cache gets 401 whether or not it exists.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::Json;

use super::auth::{authorize, Caller};
use super::extract::{parse_cache, parse_json, read_body};
use super::state::SharedState;
use crate::db::{NewPin, PinOutcome, PinRow};
use crate::error::{ServerError, ServerResult};
use garret_core::clock::unix_now;
use garret_core::pins::{
    CreatePinRequest, CreatePinResponse, DeletePinResponse, PinEntry, PinList, PinName, PinVersion,
};

/// A pin body is a name, a hash and a number.
const PIN_BODY_LIMIT: usize = 4 << 10;

fn version_of(p: &PinRow) -> PinVersion {
    PinVersion {
        version: p.version.max(0) as u64,
        store_path: p.store_path.clone(),
        closure_size: p.closure_size.max(0) as u64,
        keep: p.keep.and_then(|k| u32::try_from(k).ok()),
        created_at: p.created_at,
        created_by: p.created_by.clone(),
    }
}

fn pin_name(s: &str) -> ServerResult<PinName> {
    PinName::parse(s).map_err(|e| ServerError::request(e.to_string()))
}

pub async fn create_pin(
    State(state): State<SharedState>,
    caller: Caller,
    Path(cache): Path<String>,
    body: Body,
) -> ServerResult<Json<CreatePinResponse>> {
    let name = parse_cache(&cache)?;
    let c = authorize(&state, &caller, name.as_str(), |p| p.push).await?;
    let body = read_body(body, PIN_BODY_LIMIT).await?;
    let req: CreatePinRequest = parse_json(&body)?;
    if req.keep == Some(0) {
        return Err(ServerError::request(
            "keep must be at least 1 (the new version); omit it to keep every version",
        ));
    }
    let outcome = state
        .db()
        .create_pin(&NewPin {
            cache_id: c.row.id,
            name: req.name.as_str(),
            root: req.store_path_hash.as_str(),
            keep: req.keep,
            created_by: caller.subject(),
            now: unix_now(),
        })
        .await?;
    let PinOutcome::Created {
        pin,
        missing,
        released,
    } = outcome
    else {
        return Err(ServerError::NoSuchObject);
    };
    tracing::info!(
        cache = %name, pin = %req.name, version = pin.version, paths = pin.closure_size,
        missing, released = released.len(),
        by = caller.subject().as_deref().unwrap_or("-"), "pinned"
    );
    Ok(Json(CreatePinResponse {
        name: req.name,
        pin: version_of(&pin),
        missing_references: missing,
        released_versions: released,
    }))
}

pub async fn list_pins(
    State(state): State<SharedState>,
    caller: Caller,
    Path(cache): Path<String>,
) -> ServerResult<Json<PinList>> {
    let name = parse_cache(&cache)?;
    let c = authorize(&state, &caller, name.as_str(), |p| p.pull).await?;
    let rows = state.db().list_pins(c.row.id).await?;
    let mut list = PinList::default();
    for row in &rows {
        let same = list
            .pins
            .last()
            .is_some_and(|e: &PinEntry| e.name.as_str() == row.name);
        if !same {
            // names were validated when pinned; a row that does not parse is left out
            let Ok(n) = PinName::parse(&row.name) else {
                continue;
            };
            list.pins.push(PinEntry {
                name: n,
                versions: Vec::new(),
            });
        }
        if let Some(e) = list.pins.last_mut() {
            e.versions.push(version_of(row));
        }
    }
    Ok(Json(list))
}

pub async fn delete_pin(
    State(state): State<SharedState>,
    caller: Caller,
    Path((cache, pin)): Path<(String, String)>,
) -> ServerResult<Json<DeletePinResponse>> {
    let name = parse_cache(&cache)?;
    let c = authorize(&state, &caller, name.as_str(), |p| p.delete).await?;
    let pin = pin_name(&pin)?;
    let n = state.db().delete_pin(c.row.id, pin.as_str()).await?;
    if n == 0 {
        return Err(ServerError::NoSuchPin);
    }
    tracing::info!(cache = %name, pin = %pin, versions = n, by = caller.subject().as_deref().unwrap_or("-"), "pin deleted");
    Ok(Json(DeletePinResponse {
        name: pin,
        versions_released: n,
    }))
}
