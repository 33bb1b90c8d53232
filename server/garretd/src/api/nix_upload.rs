//! Plain Nix as a pusher: `nix copy --to http://host/CACHE` PUTs the (compressed) NAR first
//! and the narinfo last. The NAR is decompressed and ingested into the chunk store as it
//! streams in, but stays invisible; the narinfo is the commit point that attaches it to the
//! cache, after its NarHash/NarSize are checked against what actually arrived.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_compression::tokio::bufread::{BrotliDecoder, BzDecoder, XzDecoder, ZstdDecoder};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

use super::auth::{authorize, Caller};
use super::extract::{parse_cache, parse_file, read_body};
use super::state::SharedState;
use crate::db::{NewObject, PathMeta};
use crate::error::{ServerError, ServerResult};
use garret_core::nix::narinfo::NarInfo;
use garret_core::nix::store_path::StorePath;
use garret_core::nix::{base32, Sha256Hash};

/// `PUT /{cache}/nix-cache-info`: Nix writes one when it thinks the cache is new. The
/// server owns that file, so a pusher's write is accepted and ignored.
pub async fn put_cache_info(
    State(state): State<SharedState>,
    caller: Caller,
    Path(cache): Path<String>,
) -> ServerResult<StatusCode> {
    let name = parse_cache(&cache)?;
    authorize(&state, &caller, name.as_str(), |p| p.push).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileCompression {
    None,
    Xz,
    Zstd,
    Bzip2,
    Brotli,
}

/// `<nix32 file hash>.nar[.xz|.zst|.bz2|.br]` → the expected file hash and compression.
fn parse_nar_file(file: &str) -> ServerResult<(Option<Sha256Hash>, FileCompression)> {
    let (stem, ext) = file
        .split_once(".nar")
        .ok_or_else(|| ServerError::request("NAR file names end in .nar or .nar.<compression>"))?;
    let compression = match ext {
        "" => FileCompression::None,
        ".xz" => FileCompression::Xz,
        ".zst" => FileCompression::Zstd,
        ".bz2" => FileCompression::Bzip2,
        ".br" => FileCompression::Brotli,
        other => {
            return Err(ServerError::request(format!(
                "unsupported NAR compression {other:?}: use xz, zstd, bzip2, brotli or none"
            )))
        }
    };
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_alphanumeric()) || stem.len() > 64 {
        return Err(ServerError::request("invalid NAR file name"));
    }
    // Nix names the file after the nix32 SHA-256 of its compressed bytes; check it when so.
    let expected = (stem.len() == 52)
        .then(|| base32::decode(stem).ok())
        .flatten()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(Sha256Hash::from_digest);
    Ok((expected, compression))
}

type ByteStream = Pin<Box<dyn futures::Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

pub async fn put_nar(
    State(state): State<SharedState>,
    caller: Caller,
    Path((cache, file)): Path<(String, String)>,
    body: Body,
) -> ServerResult<StatusCode> {
    let name = parse_cache(&cache)?;
    let (expected, compression) = parse_nar_file(&file)?;
    let c = authorize(&state, &caller, name.as_str(), |p| p.push).await?;

    let file_hasher = Arc::new(Mutex::new(Sha256::new()));
    let tap = file_hasher.clone();
    let raw = body.into_data_stream().map(move |piece| {
        let piece = piece.map_err(std::io::Error::other)?;
        if let Ok(mut h) = tap.lock() {
            h.update(&piece);
        }
        Ok::<_, std::io::Error>(piece)
    });
    let reader = tokio::io::BufReader::with_capacity(256 << 10, StreamReader::new(raw));
    let decoded: Pin<Box<dyn AsyncRead + Send>> = match compression {
        FileCompression::None => Box::pin(reader),
        FileCompression::Xz => {
            let mut d = XzDecoder::new(reader);
            d.multiple_members(true);
            Box::pin(d)
        }
        FileCompression::Zstd => {
            let mut d = ZstdDecoder::new(reader);
            d.multiple_members(true);
            Box::pin(d)
        }
        FileCompression::Bzip2 => {
            let mut d = BzDecoder::new(reader);
            d.multiple_members(true);
            Box::pin(d)
        }
        FileCompression::Brotli => Box::pin(BrotliDecoder::new(reader)),
    };
    let nar: ByteStream = Box::pin(ReaderStream::with_capacity(decoded, 256 << 10));
    let matches_name = || {
        let file_hash = file_hasher
            .lock()
            .map(|h| Sha256Hash::from_digest(h.clone().finalize().into()))
            .map_err(|_| ServerError::internal(anyhow::anyhow!("file hasher poisoned")))?;
        if expected.is_some_and(|e| e != file_hash) {
            return Err(ServerError::request(format!(
                "the uploaded file does not match its name: its hash is {}",
                file_hash.to_typed_nix32()
            )));
        }
        Ok(())
    };
    let (_, nar_size) = state
        .store
        .ingest_for_narinfo(c.row.id, nar, matches_name)
        .await?;
    tracing::info!(cache = %name, %file, nar_size, "NAR received from Nix");
    Ok(StatusCode::OK)
}

pub async fn put_narinfo(
    State(state): State<SharedState>,
    caller: Caller,
    headers: HeaderMap,
    Path((cache, file)): Path<(String, String)>,
    body: Body,
) -> ServerResult<StatusCode> {
    let name = parse_cache(&cache)?;
    if !file.ends_with(".narinfo") {
        return Err(ServerError::request(format!(
            "only NARs and narinfos can be uploaded, not {file:?}"
        )));
    }
    let hash = parse_file(&file, "narinfo")?;
    let c = authorize(&state, &caller, name.as_str(), |p| p.push).await?;
    // Read only now that the caller may push, and never more than a narinfo may be.
    let body = read_body(body, state.config.max_nar_info_size)
        .await
        .map_err(|e| match e {
            ServerError::PayloadTooLarge(_) => ServerError::request("the narinfo is too large"),
            other => other,
        })?;
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        if enc.as_bytes() != b"identity" {
            return Err(ServerError::request(
                "compressed narinfos are not supported; leave narinfo-compression unset",
            ));
        }
    }
    let text =
        std::str::from_utf8(&body).map_err(|_| ServerError::request("the narinfo is not UTF-8"))?;
    let info =
        NarInfo::parse(text).map_err(|e| ServerError::request(format!("invalid narinfo: {e}")))?;
    let path = StorePath::parse(&info.store_path)
        .map_err(|e| ServerError::request(format!("invalid StorePath: {e}")))?;
    if path.hash().as_str() != hash.as_str() {
        return Err(ServerError::request(
            "StorePath does not match the narinfo's file name",
        ));
    }
    if path.store_dir() != c.row.store_dir {
        return Err(ServerError::request(format!(
            "StorePath is not in this cache's store directory {}",
            c.row.store_dir
        )));
    }
    let obj = NewObject::new(c.row.id, &path, PathMeta::from(&info), caller.subject());
    state
        .store
        .commit_narinfo(&obj, &info.nar_hash, info.nar_size)
        .await?;
    state
        .narinfos
        .invalidate(&(c.row.id, hash.as_str().to_string()));
    tracing::info!(cache = %name, path = %info.store_path, "path uploaded by Nix");
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nar_file_names() {
        let h = "1".repeat(52);
        assert_eq!(
            parse_nar_file(&format!("{h}.nar.xz")).unwrap().1,
            FileCompression::Xz
        );
        assert_eq!(
            parse_nar_file(&format!("{h}.nar")).unwrap().1,
            FileCompression::None
        );
        assert!(parse_nar_file(&format!("{h}.nar.zst")).unwrap().0.is_some());
        assert!(parse_nar_file("abc.nar.lz4").is_err());
        assert!(parse_nar_file("..%2f.nar").is_err());
        assert!(parse_nar_file("x.txt").is_err());
    }
}
