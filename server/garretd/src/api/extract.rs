//! What every handler takes from a request the same way: the cache name in the path, a
//! `<hash>.<ext>` file name, and Attic's JSON bodies. One place, so every route refuses bad
//! input with the same status and message.

use axum::body::{Body, Bytes};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use crate::error::{ServerError, ServerResult};
use garret_core::cache_name::CacheName;
use garret_core::nix::store_path::StorePathHash;

/// A cache name as Attic allows it; anything else is a 400 before any lookup.
pub(super) fn parse_cache(name: &str) -> ServerResult<CacheName> {
    CacheName::parse(name).map_err(|e| ServerError::request(e.to_string()))
}

/// `<hash>.<ext>` with exactly the expected extension, else 404 as Attic does.
pub(super) fn parse_file(file: &str, ext: &str) -> ServerResult<StorePathHash> {
    let (hash, got) = file.split_once('.').ok_or(ServerError::NotFound)?;
    if got != ext {
        return Err(ServerError::NotFound);
    }
    StorePathHash::parse(hash).map_err(|e| ServerError::request(e.to_string()))
}

/// JSON bodies are parsed by hand so a bad body gets Attic's JSON error, not plain text.
pub(super) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> ServerResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ServerError::request(format!("invalid JSON body: {e}")))
}

/// Cache-config bodies are a few small fields (a keypair is under 200 bytes).
pub(super) const CONFIG_BODY_LIMIT: usize = 64 << 10;

/// Reads a request body of at most `limit` bytes; a body declared or sent past the limit is
/// refused there, without reading the rest. Handlers call it once the caller is authorized
/// (get-missing-paths, whose body names the cache, reads a small one first from callers
/// without a valid token), so nobody without a right gets the server to buffer much.
pub(super) async fn read_body(body: Body, limit: usize) -> ServerResult<Bytes> {
    use axum::body::HttpBody as _;
    // A declared length over the limit is refused before a byte of it is read.
    if body.size_hint().lower() > limit as u64 {
        return Err(ServerError::PayloadTooLarge(format!("over {limit} bytes")));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => {
            Err(ServerError::PayloadTooLarge(format!("over {limit} bytes")))
        }
        Err(e) => Err(ServerError::request(format!(
            "reading the request body failed: {e}"
        ))),
    }
}
