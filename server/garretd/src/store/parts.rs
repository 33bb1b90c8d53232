//! Staging for resumable uploads (docs/resumable-uploads.md). A part streams into storage as
//! blobs of at most [`SEGMENT_BYTES`], so memory stays constant whatever the part and NAR
//! size; the part counts as present only once its size and hash are checked. The commit
//! streams the parts, in order, through the normal [`Store::ingest`]: the NAR is verified,
//! chunked and deduplicated exactly as a single-request upload, and nothing is visible before.
//!
//! Every blob is recorded before it is written, so a crash leaves rows that GC follows
//! ([`sweep_sessions`]), never a blob nobody knows about. Until an attempt is disarmed, its
//! guard ([`Attempt`]) deletes its blobs again on error or when the client goes away, the
//! way `batch::PendingChunks` does for chunks.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::Store;
use crate::backend::DynStorage;
use crate::db::{Database, PartRow, SessionRow};
use crate::error::{ServerError, ServerResult};
use garret_core::nix::Sha256Hash;

/// Staged blobs are at most this large: the memory one part upload holds.
pub const SEGMENT_BYTES: usize = 4 << 20;

/// Parts are at least this large (the last one excepted) ...
pub const MIN_PART_SIZE: u64 = 64 << 10;
/// ... and at most this large: a part is one request, which proxies must let through.
pub const MAX_PART_SIZE: u64 = 1 << 30;
/// A NAR has at most this many parts (as S3's multipart uploads); larger NARs get larger
/// parts.
pub const MAX_PARTS: u64 = 10_000;

/// A session nobody has touched for this long is abandoned; every part extends it.
pub const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// Deletions in flight at once when a session is cleaned up.
const PARALLEL_DELETES: usize = 16;

/// The part size a session gets for a NAR: what the client asked for, within the bounds,
/// and large enough that the NAR needs at most [`MAX_PARTS`] parts.
pub fn effective_part_size(requested: u64, nar_size: u64) -> u64 {
    let floor = MIN_PART_SIZE.max(nar_size.div_ceil(MAX_PARTS));
    requested.clamp(floor.min(MAX_PART_SIZE), MAX_PART_SIZE)
}

/// The blobs one attempt at a part wrote. Dropped while armed (an error, the client gone),
/// it deletes them and their rows in the background.
struct Attempt {
    store: Store,
    session_id: String,
    id: String,
    keys: Vec<String>,
    armed: bool,
}

impl Attempt {
    fn new(store: &Store, session_id: &str) -> Attempt {
        Attempt {
            store: store.clone(),
            session_id: session_id.to_string(),
            id: uuid::Uuid::new_v4().simple().to_string(),
            keys: Vec::new(),
            armed: true,
        }
    }

    /// Records, then writes, the next blob.
    async fn write(&mut self, data: Bytes) -> ServerResult<()> {
        let seq = self.keys.len() as i64;
        let key = format!("{}-{seq:05}.stage", self.id);
        self.keys.push(key.clone());
        match self
            .store
            .db
            .record_session_blob(&self.session_id, &self.id, seq, &key)
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_foreign_key_violation() => {
                self.keys.pop();
                return Err(session_gone());
            }
            Err(e) => {
                self.keys.pop();
                return Err(e.into());
            }
        }
        self.store.storage.put(&key, data).await?;
        Ok(())
    }

    /// Deletes what this attempt wrote, now (so a refused part leaves nothing behind by the
    /// time the client reads the answer).
    async fn discard(mut self) {
        self.armed = false;
        let keys = std::mem::take(&mut self.keys);
        delete_blobs(&self.store.db, &self.store.storage, keys).await;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.armed || self.keys.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut self.keys);
        let (db, storage) = (self.store.db.clone(), self.store.storage.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { delete_blobs(&db, &storage, keys).await });
        }
    }
}

/// Deletes blobs and then their rows; returns whether all went. A blob that could not be
/// deleted keeps its row, so GC tries again with its session.
async fn delete_blobs(db: &Database, storage: &DynStorage, keys: Vec<String>) -> bool {
    let results: Vec<(String, bool)> = futures::stream::iter(keys)
        .map(|key| async move {
            let ok = match storage.delete(&key).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(blob = %key, error = %e, "could not delete a staged blob");
                    false
                }
            };
            (key, ok)
        })
        .buffer_unordered(PARALLEL_DELETES)
        .collect()
        .await;
    let gone: Vec<String> = results
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(k, _)| k.clone())
        .collect();
    let all = gone.len() == results.len();
    if let Err(e) = db.forget_session_blobs(&gone).await {
        tracing::warn!(error = %e, "could not forget staged blobs");
        return false;
    }
    all
}

fn session_gone() -> ServerError {
    ServerError::request("the upload session does not exist or has expired")
}

/// What staging a part did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartOutcome {
    Stored,
    /// Another request stored the same part first; this one changed nothing.
    AlreadyPresent,
}

impl Store {
    /// Streams part `part` of `session` into staging, checking it is exactly `len` bytes
    /// hashing to `hash`. A part that fails the check leaves nothing behind.
    pub async fn stage_part<S, E>(
        &self,
        session: &SessionRow,
        part: u64,
        len: u64,
        hash: Sha256Hash,
        mut body: S,
    ) -> ServerResult<PartOutcome>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let mut attempt = Attempt::new(self, &session.id);
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let mut buf = BytesMut::with_capacity(SEGMENT_BYTES.min(len as usize));
        let result: ServerResult<()> = async {
            while let Some(piece) = body.next().await {
                let mut piece = piece.map_err(|e| {
                    ServerError::request(format!("reading the part body failed: {e}"))
                })?;
                received += piece.len() as u64;
                if received > len {
                    return Err(ServerError::request(format!(
                        "Bad part hash or size: part {part} is longer than its {len} bytes"
                    )));
                }
                hasher.update(&piece);
                while piece.has_remaining() {
                    let take = (SEGMENT_BYTES - buf.len()).min(piece.len());
                    buf.extend_from_slice(&piece[..take]);
                    piece.advance(take);
                    if buf.len() == SEGMENT_BYTES {
                        attempt.write(buf.split().freeze()).await?;
                    }
                }
            }
            if !buf.is_empty() {
                attempt.write(buf.split().freeze()).await?;
            }
            let got = Sha256Hash::from_digest(hasher.finalize().into());
            if received != len || got != hash {
                return Err(ServerError::request(format!(
                    "Bad part hash or size: part {part} is {received} bytes hashing to {}, \
                     declared {len} bytes hashing to {}",
                    got.to_typed_hex(),
                    hash.to_typed_hex()
                )));
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            attempt.discard().await;
            return Err(e);
        }
        let row = PartRow {
            part: part as i64,
            attempt: attempt.id.clone(),
            part_hash: hash.to_typed_hex(),
            part_size: len as i64,
        };
        match self.db.record_session_part(&session.id, &row).await {
            Ok(true) => {
                attempt.armed = false;
                crate::metrics::METRICS.upload_parts_stored.inc();
                Ok(PartOutcome::Stored)
            }
            Ok(false) => {
                attempt.discard().await;
                crate::metrics::METRICS.upload_parts_redundant.inc();
                Ok(PartOutcome::AlreadyPresent)
            }
            Err(e) => {
                attempt.discard().await;
                Err(if e.is_foreign_key_violation() {
                    session_gone()
                } else {
                    e.into()
                })
            }
        }
    }

    /// The staged NAR: every part's blobs in order, read a couple of blobs ahead.
    pub async fn staged_nar(
        &self,
        session: &SessionRow,
        parts: &[PartRow],
    ) -> ServerResult<impl Stream<Item = Result<Bytes, crate::backend::StorageError>> + Send> {
        let mut keys = Vec::new();
        for p in parts {
            keys.extend(self.db.session_blobs(&session.id, Some(&p.attempt)).await?);
        }
        let storage = self.storage.clone();
        Ok(futures::stream::iter(keys)
            .map(move |key| {
                let storage = storage.clone();
                async move { storage.get(&key).await }
            })
            .buffered(2))
    }

    /// Ends a session (committed, or refused for good): nobody finds it from now on, then
    /// its blobs and rows go. What cannot be deleted now is left to GC.
    pub async fn finish_session(&self, id: &str) -> ServerResult<()> {
        self.db.expire_upload_session(id).await?;
        let keys = self.db.session_blobs(id, None).await?;
        if delete_blobs(&self.db, &self.storage, keys).await {
            self.db.forget_upload_session(id).await?;
        }
        Ok(())
    }
}

/// GC: removes sessions expired before `cutoff` (or of caches that are gone) with their
/// blobs; returns how many. A session whose blobs cannot all be deleted stays for the next
/// run.
pub async fn sweep_sessions(
    db: &Database,
    storage: &DynStorage,
    cutoff: i64,
) -> anyhow::Result<u64> {
    let mut removed = 0;
    loop {
        let ids = db.abandoned_upload_sessions(cutoff, 100).await?;
        if ids.is_empty() {
            break;
        }
        let mut failed = false;
        for id in ids {
            let keys = db.session_blobs(&id, None).await?;
            if delete_blobs(db, storage, keys).await {
                db.forget_upload_session(&id).await?;
                removed += 1;
            } else {
                failed = true;
            }
        }
        if failed {
            break;
        }
    }
    crate::metrics::METRICS
        .upload_sessions_abandoned
        .inc_by(removed);
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_stay_in_bounds_and_under_the_part_count() {
        assert_eq!(effective_part_size(64 << 20, 1 << 30), 64 << 20);
        assert_eq!(effective_part_size(1, 10 << 20), MIN_PART_SIZE);
        assert_eq!(effective_part_size(u64::MAX, 10 << 20), MAX_PART_SIZE);
        // 1 TiB at 1 MiB would be a million parts: raised to fit 10,000.
        let tib = 1u64 << 40;
        let p = effective_part_size(1 << 20, tib);
        assert!(tib.div_ceil(p) <= MAX_PARTS, "{p}");
        // Beyond MAX_PARTS × MAX_PART_SIZE the part size caps (and creation refuses).
        assert_eq!(effective_part_size(1 << 20, u64::MAX), MAX_PART_SIZE);
    }
}
