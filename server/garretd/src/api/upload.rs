//! Attic's push side: `get-missing-paths` and `upload-path`.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Version};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};

use super::auth::{authorize, Caller};
use super::extract::{parse_cache, parse_json, read_body};
use super::state::SharedState;
use crate::db::{NewObject, PathMeta};
use crate::error::{ServerError, ServerResult};
use crate::store::{NarClaim, UploadOutcome};
use garret_core::nix::fields::{validate_ca, validate_token};
use garret_core::nix::store_path::{validate_base_name, StorePath, StorePathHash};
use garret_core::nix::Sha256Hash;
use garret_core::wire::{
    GetMissingPathsRequest, GetMissingPathsResponse, UploadPathNarInfo, UploadPathResult,
    UploadPathResultKind, NAR_INFO_HEADER, NAR_INFO_PREAMBLE_SIZE_HEADER,
};

/// At most this many hashes per get-missing-paths call (a closure of 100k paths is huge).
const MAX_QUERY_PATHS: usize = 100_000;

/// The largest get-missing-paths body: each hash is 32 characters, quoted, with a comma;
/// the rest (cache name, keys, whitespace) fits in 64 KiB.
const MISSING_PATHS_BODY_LIMIT: usize = MAX_QUERY_PATHS * 40 + (64 << 10);

/// What is read of a get-missing-paths body from a caller without a valid token.
const ANONYMOUS_QUERY_LIMIT: usize = 16 << 10;

pub async fn get_missing_paths(
    State(state): State<SharedState>,
    caller: Caller,
    body: Body,
) -> ServerResult<Json<GetMissingPathsResponse>> {
    // Pushing takes a valid token, so a caller without one is only ever refused; whether with
    // 401 or 403 depends on the cache the body names (public or not). Such a caller gets a
    // small body read at most; a larger one (declared or sent) is a 401 at once.
    let limit = match caller.claims {
        Some(_) => MISSING_PATHS_BODY_LIMIT,
        None => ANONYMOUS_QUERY_LIMIT,
    };
    let body = read_body(body, limit).await.map_err(|e| match e {
        ServerError::PayloadTooLarge(_) if caller.claims.is_none() => caller.unauthorized(),
        other => other,
    })?;
    let req: GetMissingPathsRequest = parse_json(&body)?;
    let name = parse_cache(&req.cache)?;
    if req.store_path_hashes.len() > MAX_QUERY_PATHS {
        return Err(ServerError::request(format!(
            "at most {MAX_QUERY_PATHS} paths per query"
        )));
    }
    for h in &req.store_path_hashes {
        StorePathHash::parse(h).map_err(|e| ServerError::request(format!("{e} ({h:?})")))?;
    }
    let c = authorize(&state, &caller, name.as_str(), |p| p.push).await?;
    let missing = state
        .db()
        .missing_paths(c.row.id, &req.store_path_hashes)
        .await?;
    // Pull-through: what an upstream has is fetched on demand, so it needs no upload.
    let missing = state.pull_through.still_missing(&c, missing).await;
    Ok(Json(GetMissingPathsResponse {
        missing_paths: missing,
    }))
}

type BodyStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, axum::Error>> + Send>>;

/// Reads the upload info from the header or the body preamble; returns it with the NAR
/// stream that follows.
async fn upload_info(
    headers: &HeaderMap,
    stream: &mut BodyStream,
    max_size: usize,
) -> ServerResult<UploadPathNarInfo> {
    if let Some(size) = headers.get(NAR_INFO_PREAMBLE_SIZE_HEADER) {
        let size: usize = size
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                ServerError::request("X-Attic-Nar-Info-Preamble-Size is not a number")
            })?;
        if size > max_size {
            return Err(ServerError::request(format!(
                "Upload info is too large ({size} bytes, limit {max_size})"
            )));
        }
        let mut buf = Vec::with_capacity(size);
        let mut rest = Bytes::new();
        while buf.len() < size {
            match stream.next().await {
                Some(Ok(mut piece)) => {
                    let take = (size - buf.len()).min(piece.len());
                    buf.extend_from_slice(&piece[..take]);
                    rest = piece.split_off(take);
                }
                Some(Err(e)) => {
                    return Err(ServerError::request(format!(
                        "reading the upload body failed: {e}"
                    )))
                }
                None => {
                    return Err(ServerError::request(
                        "the body ended inside the upload info preamble",
                    ))
                }
            }
        }
        let info = parse_json(&buf)?;
        let tail = std::mem::replace(stream, Box::pin(futures::stream::empty()));
        *stream = Box::pin(futures::stream::once(async move { Ok(rest) }).chain(tail));
        return Ok(info);
    }
    let header = headers
        .get(NAR_INFO_HEADER)
        .ok_or_else(|| ServerError::request("X-Attic-Nar-Info must be set"))?;
    parse_json(header.as_bytes())
}

/// After refusing an upload, read (and drop) what the client is still sending, so it gets
/// to read our error instead of a connection reset. Bounded in bytes and time.
async fn drain(stream: &mut BodyStream) {
    const MAX_DRAIN: u64 = 1 << 30;
    let mut n = 0u64;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(Ok(piece)) = stream.next().await {
            n += piece.len() as u64;
            if n > MAX_DRAIN {
                break;
            }
        }
    })
    .await;
}

/// Checks everything about the upload info that can be checked before reading the NAR.
pub(super) fn validate(info: &UploadPathNarInfo) -> ServerResult<(StorePath, NarClaim)> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        ServerError::request(format!("invalid {what}: {e}"))
    };
    let hash =
        StorePathHash::parse(&info.store_path_hash).map_err(|e| bad("store_path_hash", &e))?;
    let path = StorePath::parse(&info.store_path).map_err(|e| bad("store_path", &e))?;
    if path.hash().as_str() != hash.as_str() {
        return Err(ServerError::request(
            "store_path does not match store_path_hash",
        ));
    }
    for r in &info.references {
        validate_base_name(r).map_err(|e| bad("reference", &e))?;
    }
    if let Some(d) = &info.deriver {
        validate_base_name(d).map_err(|e| bad("deriver", &e))?;
    }
    for s in &info.sigs {
        validate_token("signature", s).map_err(|e| bad("sigs", &e))?;
    }
    if let Some(s) = &info.system {
        validate_token("system", s).map_err(|e| bad("system", &e))?;
    }
    if let Some(ca) = info.ca.as_deref().filter(|ca| !ca.is_empty()) {
        validate_ca(ca).map_err(|e| bad("ca", &e))?;
    }
    let nar_hash = Sha256Hash::parse_attic(&info.nar_hash).map_err(|e| bad("nar_hash", &e))?;
    if info.nar_size == 0 {
        return Err(ServerError::request("nar_size must not be zero"));
    }
    Ok((
        path,
        NarClaim {
            nar_hash,
            nar_size: info.nar_size,
        },
    ))
}

pub async fn upload_path(
    State(state): State<SharedState>,
    caller: Caller,
    version: Version,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut stream: BodyStream = Box::pin(body.into_data_stream());
    let pusher = may_push_somewhere(&caller);
    match receive(&state, &caller, pusher, &headers, &mut stream).await {
        Ok(result) => result.into_response(),
        // A caller who may push on the cache gets its error read rather than a reset: the
        // rest of its body is drained (bounded). Anyone else has the connection closed
        // without a further byte of the body being read.
        Err(e) if pusher && !matches!(e, ServerError::Unauthorized { .. }) => {
            drain(&mut stream).await;
            e.into_response()
        }
        Err(e) => {
            let mut resp = e.into_response();
            // (HTTP/2 has no such header: there the unread stream is reset instead.)
            if version <= Version::HTTP_11 {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    }
}

/// Whether the caller's token (verified: signature, time, issuer and audience) grants push
/// on any cache at all. Push is never implied by a public cache, so a caller without it can
/// only be refused, whatever cache its upload names.
pub(super) fn may_push_somewhere(caller: &Caller) -> bool {
    caller
        .claims
        .as_ref()
        .is_some_and(|c| c.caches.iter().any(|(_, p)| p.push))
}

async fn receive(
    state: &SharedState,
    caller: &Caller,
    pusher: bool,
    headers: &HeaderMap,
    stream: &mut BodyStream,
) -> ServerResult<Json<UploadPathResult>> {
    // The preamble form names the cache in the body: nobody who cannot push anywhere gets
    // the server to read it. (The header form names it in the headers, so it is authorized
    // below exactly as every other route, still before a byte of the body is read.)
    if !pusher && headers.contains_key(NAR_INFO_PREAMBLE_SIZE_HEADER) {
        return Err(match caller.claims {
            Some(_) => ServerError::Unauthorized {
                reason: Some("it grants push on no cache".into()),
            },
            None => caller.unauthorized(),
        });
    }
    let info = upload_info(headers, stream, state.config.max_nar_info_size).await?;
    let name = parse_cache(&info.cache)?;
    let (path, claim) = validate(&info)?;
    let c = authorize(state, caller, name.as_str(), |p| p.push).await?;
    if path.store_dir() != c.row.store_dir {
        return Err(ServerError::request(format!(
            "store_path is not in this cache's store directory {}",
            c.row.store_dir
        )));
    }
    let obj = NewObject::new(c.row.id, &path, PathMeta::from(&info), caller.subject());
    let outcome = state.store.ingest(obj, claim, stream).await?;
    state
        .narinfos
        .invalidate(&(c.row.id, path.hash().to_string()));
    tracing::info!(cache = %name, path = %info.store_path, ?outcome, "path uploaded");
    Ok(Json(upload_result(outcome)))
}

/// What an upload answers (Attic's `UploadPathResult`), whichever route it came through.
pub(super) fn upload_result(outcome: UploadOutcome) -> UploadPathResult {
    match outcome {
        UploadOutcome::Deduplicated => UploadPathResult {
            kind: UploadPathResultKind::Deduplicated,
            file_size: None,
            frac_deduplicated: None,
        },
        UploadOutcome::Uploaded {
            file_size,
            frac_deduplicated,
        } => UploadPathResult {
            kind: UploadPathResultKind::Uploaded,
            file_size: Some(file_size),
            frac_deduplicated,
        },
    }
}
