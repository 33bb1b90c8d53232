//! One NAR pushed as parts (docs/resumable-uploads.md). The server says which parts it has
//! (a session for the same NAR is resumed, so a re-run or a retry sends only the rest); the
//! NAR is streamed from `nix store dump-path` twice: once to hash every part (the hash goes
//! in the part's header), once to send the missing parts. Memory stays one piece of the
//! dump whatever the NAR and part size; nothing is written to disk.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::http::ApiClient;
use crate::local_nix;
use crate::progress::PathProgress;
use garret_core::nix::Sha256Hash;
use garret_core::upload_session::part_len;
use garret_core::wire::{UploadPathNarInfo, UploadPathResult};

/// A NAR dump read in pieces of at most a given length, so consecutive parts can be cut
/// from one stream.
struct Cursor {
    stream: BoxStream<'static, std::io::Result<Bytes>>,
    leftover: Bytes,
}

impl Cursor {
    fn dump(path: &str) -> Result<Cursor> {
        Ok(Cursor {
            stream: local_nix::dump(path)?.boxed(),
            leftover: Bytes::new(),
        })
    }

    /// The next piece, at most `max` bytes; `None` at the end of the dump.
    async fn next(&mut self, max: u64) -> std::io::Result<Option<Bytes>> {
        if self.leftover.is_empty() {
            match self.stream.next().await {
                Some(piece) => self.leftover = piece?,
                None => return Ok(None),
            }
        }
        let take = (max as usize).min(self.leftover.len());
        Ok(Some(self.leftover.split_to(take)))
    }

    /// Reads exactly `len` bytes, handing each piece to `each`.
    async fn take(&mut self, len: u64, mut each: impl FnMut(&Bytes)) -> Result<()> {
        let mut left = len;
        while left > 0 {
            let piece = self
                .next(left)
                .await?
                .context("the NAR dump is shorter than the path's NAR size")?;
            left -= piece.len() as u64;
            each(&piece);
        }
        Ok(())
    }
}

/// The SHA-256 of every part, from one pass over the dump.
async fn part_hashes(path: &str, nar_size: u64, part_size: u64) -> Result<Vec<Sha256Hash>> {
    let mut cursor = Cursor::dump(path)?;
    let mut hashes = Vec::new();
    let mut n = 0;
    while let Some(len) = part_len(nar_size, part_size, n) {
        let mut h = Sha256::new();
        cursor.take(len, |piece| h.update(piece)).await?;
        hashes.push(Sha256Hash::from_digest(h.finalize().into()));
        n += 1;
    }
    if cursor.next(1).await?.is_some() {
        bail!("the NAR dump is longer than the path's NAR size");
    }
    Ok(hashes)
}

/// The body of one part: `len` bytes taken from the shared cursor as the request sends them.
fn part_body(
    cursor: Arc<Mutex<Cursor>>,
    len: u64,
    bar: Arc<PathProgress>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::unfold(len, move |left| {
        let cursor = cursor.clone();
        let bar = bar.clone();
        async move {
            if left == 0 {
                return None;
            }
            let piece = cursor.lock().await.next(left).await;
            match piece {
                Ok(Some(p)) => {
                    bar.inc(p.len() as u64);
                    Some((Ok(p.clone()), left - p.len() as u64))
                }
                Ok(None) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the NAR dump is shorter than the path's NAR size",
                    )),
                    0,
                )),
                Err(e) => Some((Err(e), 0)),
            }
        }
    })
}

/// Pushes one NAR in parts of (about) `part_size` bytes; the server may choose another
/// size, which is then used.
pub async fn upload(
    api: &ApiClient,
    info: &UploadPathNarInfo,
    part_size: u64,
    bar: Arc<PathProgress>,
) -> Result<UploadPathResult> {
    let path = info.store_path.as_str();
    let session = api
        .create_upload_session(info, part_size)
        .await
        .context("starting a part upload")?;
    let present: std::collections::BTreeSet<u64> = session.parts_present.iter().copied().collect();
    if present.len() as u64 != session.num_parts {
        let hashes = part_hashes(path, info.nar_size, session.part_size).await?;
        let cursor = Arc::new(Mutex::new(Cursor::dump(path)?));
        for (n, hash) in hashes.iter().enumerate() {
            let n = n as u64;
            let len = part_len(info.nar_size, session.part_size, n)
                .context("the server's part count does not match the NAR size")?;
            if present.contains(&n) {
                // The server has it: read past it locally, send nothing.
                cursor.lock().await.take(len, |_| {}).await?;
                bar.inc(len);
                continue;
            }
            let body = part_body(cursor.clone(), len, bar.clone());
            api.upload_part(&session.session_id, n, len, hash, body)
                .await?;
        }
    } else {
        bar.inc(info.nar_size);
    }
    api.commit_upload_session(&session.session_id)
        .await
        .context("committing the part upload")
}
