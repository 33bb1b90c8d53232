//! What every handler takes from a request the same way: the cache name in the path, a
//! `<hash>.<ext>` file name, and Attic's JSON bodies. One place, so every route refuses bad
//! input with the same status and message.

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
