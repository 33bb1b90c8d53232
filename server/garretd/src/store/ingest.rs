//! One upload, one pass: the body is hashed, checked against the NAR grammar and split into
//! chunks as it streams in; chunks are deduplicated, compressed and written in parallel.
//! Nothing becomes visible until the final hash and size match the claim and the commit
//! transaction succeeds; on any failure (or a dropped connection) the chunks this upload
//! wrote are removed again (the drop guard in [`super::batch`], which writes them).

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::batch::{Batches, ChunkResult, PendingChunks};
use super::{Chunker, Store};
use crate::db::{CommitOutcome, NewNar, NewObject};
use crate::error::{ServerError, ServerResult};
use garret_core::nix::nar::NarValidator;
use garret_core::nix::Sha256Hash;

/// What the uploader says the NAR is.
#[derive(Debug, Clone, Copy)]
pub struct NarClaim {
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UploadOutcome {
    Uploaded {
        file_size: u64,
        frac_deduplicated: Option<f64>,
    },
    Deduplicated,
}

/// What one streaming pass produced, before it is committed.
pub(super) struct Received {
    results: Vec<ChunkResult>,
    pub(super) hash: Sha256Hash,
    pub(super) size: u64,
    single: bool,
    pending: PendingChunks,
}

/// The whole-NAR SHA-256 on its own thread, so it runs beside chunking instead of before
/// it: the reader hands over the pieces (reference-counted clones, no copy) in groups of
/// about [`HASH_GROUP`] bytes, so the thread wakes a few times per MiB rather than once
/// per network read.
struct HashLane {
    tx: Option<tokio::sync::mpsc::Sender<Vec<Bytes>>>,
    group: Vec<Bytes>,
    group_bytes: usize,
    done: tokio::task::JoinHandle<[u8; 32]>,
}

/// Bytes handed to the hashing thread at once; with the channel's capacity this bounds how
/// far it may fall behind (and the memory that holds).
const HASH_GROUP: usize = 1 << 20;
const HASH_GROUPS_QUEUED: usize = 4;

impl HashLane {
    fn start() -> HashLane {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(HASH_GROUPS_QUEUED);
        let done = tokio::task::spawn_blocking(move || {
            let mut h = Sha256::new();
            while let Some(group) = rx.blocking_recv() {
                for piece in group {
                    h.update(&piece);
                }
            }
            h.finalize().into()
        });
        HashLane {
            tx: Some(tx),
            group: Vec::new(),
            group_bytes: 0,
            done,
        }
    }

    /// Waits (asynchronously) only when the hashing thread is several groups behind.
    async fn update(&mut self, piece: Bytes) {
        self.group_bytes += piece.len();
        self.group.push(piece);
        if self.group_bytes >= HASH_GROUP {
            self.flush().await;
        }
    }

    async fn flush(&mut self) {
        self.group_bytes = 0;
        let group = std::mem::take(&mut self.group);
        if let (Some(tx), false) = (&self.tx, group.is_empty()) {
            // A send can only fail if the hashing thread died; `finish` reports that.
            let _ = tx.send(group).await;
        }
    }

    async fn finish(mut self) -> ServerResult<Sha256Hash> {
        self.flush().await;
        self.tx = None;
        let digest = (&mut self.done).await.map_err(ServerError::internal)?;
        Ok(Sha256Hash::from_digest(digest))
    }
}

impl Drop for HashLane {
    fn drop(&mut self) {
        // Closing the channel ends the thread; nobody waits for its result.
        self.tx = None;
    }
}

/// What every piece of the body goes through before it is chunked: the size limit, the
/// whole-NAR hash and the NAR grammar.
struct BodyCheck {
    hasher: HashLane,
    validator: NarValidator,
    received: u64,
    expected: Option<u64>,
}

impl BodyCheck {
    fn new(expected: Option<u64>) -> BodyCheck {
        BodyCheck {
            hasher: HashLane::start(),
            validator: NarValidator::new(),
            received: 0,
            expected,
        }
    }

    /// A body longer than declared is refused at the first byte too many.
    async fn feed(&mut self, piece: &Bytes) -> ServerResult<()> {
        self.received += piece.len() as u64;
        if let Some(limit) = self.expected.filter(|limit| self.received > *limit) {
            return Err(ServerError::request(format!(
                "Bad NAR Hash or Size: the body is longer than the declared {limit} bytes"
            )));
        }
        self.hasher.update(piece.clone()).await;
        self.validator
            .feed(piece)
            .map_err(|e| ServerError::request(format!("Malformed NAR: {e}")))
    }

    /// The hash and size of the whole body. Hash and size first: a truncated body is
    /// reported as such (by the caller's comparison), not as a bad NAR.
    async fn finish(self) -> ServerResult<(Sha256Hash, u64)> {
        let hash = self.hasher.finish().await?;
        if self.expected.is_none_or(|n| n == self.received) {
            self.validator
                .finish()
                .map_err(|e| ServerError::request(format!("Malformed NAR: {e}")))?;
        }
        Ok((hash, self.received))
    }
}

impl Store {
    /// Stores a NAR for `obj` from a byte stream, verifying it against `claim`.
    pub async fn ingest<S, E>(
        &self,
        obj: NewObject,
        claim: NarClaim,
        body: S,
    ) -> ServerResult<UploadOutcome>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let hash_text = claim.nar_hash.to_typed_hex();
        if let Some(nar) = self.db.find_nar(&hash_text).await? {
            if nar.nar_size as u64 != claim.nar_size {
                return Err(ServerError::request("Bad NAR Hash or Size"));
            }
            let body_read = self.proof_of_possession;
            if body_read {
                let _busy = InProgress::new("stored-nar");
                verify_possession(claim, body).await?;
                return match self.db.attach_object(&obj, nar.id).await {
                    Ok(()) => Ok(deduplicated()),
                    Err(e) => Err(self.write_race(Some(obj.cache_id), e).await),
                };
            }
            match self.db.attach_object(&obj, nar.id).await {
                Ok(()) => return Ok(deduplicated()),
                // The NAR was garbage-collected between the lookup and the attach: the body
                // is still unread, so store it as a fresh upload instead.
                Err(e) if e.is_foreign_key_violation() => {
                    if !self.cache_is_live(obj.cache_id).await {
                        return Err(ServerError::NoSuchCache);
                    }
                    tracing::info!(nar = %hash_text, "deduplication target vanished; ingesting afresh");
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.ingest_new(obj, claim, hash_text, body).await
    }

    /// Whether the cache still exists; when that cannot even be checked, assume it does
    /// (the caller then answers with a retryable error rather than a wrong 404).
    async fn cache_is_live(&self, cache_id: i64) -> bool {
        self.db.cache_is_live(cache_id).await.unwrap_or(true)
    }

    /// The answer for a failed write. A foreign-key violation means a concurrent delete
    /// won: the cache was destroyed (404 `NoSuchCache`, as Attic answers for a missing
    /// cache) or something the upload refers to was garbage-collected (a retryable 503;
    /// the data was never visible, so nothing is lost).
    pub(super) async fn write_race(
        &self,
        cache_id: Option<i64>,
        e: crate::db::DbError,
    ) -> ServerError {
        if !e.is_foreign_key_violation() {
            return e.into();
        }
        if let Some(id) = cache_id {
            if !self.cache_is_live(id).await {
                tracing::info!(cache_id = id, "the cache was deleted during an upload");
                return ServerError::NoSuchCache;
            }
        }
        tracing::info!(error = %e, "an upload raced with garbage collection");
        ServerError::Unavailable(
            "data this upload depends on was garbage-collected while it was in progress; \
             please retry the upload"
                .into(),
        )
    }

    async fn ingest_new<S, E>(
        &self,
        obj: NewObject,
        claim: NarClaim,
        hash_text: String,
        body: S,
    ) -> ServerResult<UploadOutcome>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let _busy = InProgress::new("new");
        let got = self.receive(body, Some(claim.nar_size)).await?;
        if got.size != claim.nar_size || got.hash != claim.nar_hash {
            return Err(ServerError::request(format!(
                "Bad NAR Hash or Size: received {} bytes hashing to {}, declared {} bytes hashing to {}",
                got.size,
                got.hash.to_typed_hex(),
                claim.nar_size,
                hash_text
            )));
        }
        let (outcome, _) = self.commit(Some(&obj), got).await?;
        Ok(outcome)
    }

    /// The streaming pass: hash, validate, chunk, and store chunks (as pending). Every piece
    /// is looked at once, as it arrives; chunks go to [`Batches`] as soon as they are cut.
    pub(super) async fn receive<S, E>(
        &self,
        mut body: S,
        expected: Option<u64>,
    ) -> ServerResult<Received>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let single = expected.is_some_and(|n| (n as usize) < self.threshold);
        let mut chunker = Chunker::new(self.chunk_params(single));
        let mut check = BodyCheck::new(expected);
        let mut batches = Batches::new(self);
        let mut ready: Vec<super::chunker::Chunk> = Vec::new();
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| {
                ServerError::request(format!("reading the upload body failed: {e}"))
            })?;
            check.feed(&piece).await?;
            chunker.push(&piece, &mut ready);
            batches.add(&mut ready, false).await?;
        }
        chunker.finish(&mut ready);
        batches.add(&mut ready, true).await?;
        let (results, pending) = batches.finish().await?;
        let (hash, size) = check.finish().await?;
        Ok(Received {
            results,
            hash,
            size,
            single,
            pending,
        })
    }

    /// A NAR declared smaller than the threshold is stored as one chunk: the chunker's
    /// bounds are raised to the threshold so it never cuts.
    fn chunk_params(&self, single: bool) -> super::ChunkParams {
        if single {
            super::ChunkParams {
                min_size: self.threshold.max(64),
                avg_size: self.threshold.max(256),
                max_size: self.threshold.max(1024),
            }
        } else {
            self.params
        }
    }

    /// Makes received chunks a NAR (and, with `obj`, an object pointing at it).
    pub(super) async fn commit(
        &self,
        obj: Option<&NewObject>,
        got: Received,
    ) -> ServerResult<(UploadOutcome, i64)> {
        let Received {
            results,
            hash,
            size,
            single,
            mut pending,
        } = got;
        if size == 0 {
            return Err(ServerError::request("the NAR is empty"));
        }
        let nar = NewNar {
            nar_hash: hash.to_typed_hex(),
            nar_size: size as i64,
            compression: self.compression.nix_name().to_string(),
            chunk_ids: results.iter().map(|r| r.id).collect(),
            pending: results.iter().filter(|r| !r.reused).map(|r| r.id).collect(),
        };
        let committed = match self.db.commit_upload(obj, &nar).await {
            Ok(c) => c,
            // `pending` is still armed: dropping it discards the chunks written.
            Err(e) => return Err(self.write_race(obj.map(|o| o.cache_id), e).await),
        };
        match committed {
            (CommitOutcome::Stored, id) => {
                pending.disarm();
                let m = &crate::metrics::METRICS;
                m.nars_uploaded.inc();
                m.bytes_in.inc_by(size);
                m.chunks_stored
                    .inc_by(results.iter().filter(|r| !r.reused).count() as u64);
                m.chunks_deduplicated
                    .inc_by(results.iter().filter(|r| r.reused).count() as u64);
                let reused: usize = results
                    .iter()
                    .filter(|r| r.reused)
                    .map(|r| r.raw_size)
                    .sum();
                let outcome = UploadOutcome::Uploaded {
                    file_size: results.iter().map(|r| r.file_size as u64).sum(),
                    frac_deduplicated: (!single).then(|| reused as f64 / (size.max(1)) as f64),
                };
                Ok((outcome, id))
            }
            // Dropping `pending` (still armed) discards our now redundant chunks.
            (CommitOutcome::Raced, id) => {
                crate::metrics::METRICS.nars_deduplicated.inc();
                Ok((UploadOutcome::Deduplicated, id))
            }
            (CommitOutcome::ChunkGone, _) => Err(ServerError::Unavailable(
                "a chunk was garbage-collected during the upload; please retry".into(),
            )),
        }
    }
}

/// Counts an upload in `garret_uploads_in_progress` while it reads its body: `new` while a
/// NAR is received and stored, `stored-nar` while the body of an already stored NAR is read
/// to prove possession.
struct InProgress(crate::metrics::UploadLabels);

impl InProgress {
    fn new(kind: &str) -> InProgress {
        let labels = crate::metrics::UploadLabels { kind: kind.into() };
        crate::metrics::METRICS
            .uploads_in_progress
            .get_or_create(&labels)
            .inc();
        InProgress(labels)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        crate::metrics::METRICS
            .uploads_in_progress
            .get_or_create(&self.0)
            .dec();
    }
}

fn deduplicated() -> UploadOutcome {
    crate::metrics::METRICS.nars_deduplicated.inc();
    UploadOutcome::Deduplicated
}

/// NAR-level dedup still reads the whole body: knowing a hash must not be enough to attach
/// someone else's NAR to your cache.
async fn verify_possession<S, E>(claim: NarClaim, mut body: S) -> ServerResult<()>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
    E: std::fmt::Display,
{
    let mut hasher = Sha256::new();
    let mut n: u64 = 0;
    while let Some(piece) = body.next().await {
        let piece = piece
            .map_err(|e| ServerError::request(format!("reading the upload body failed: {e}")))?;
        n += piece.len() as u64;
        if n > claim.nar_size {
            break;
        }
        hasher.update(&piece);
    }
    let digest: [u8; 32] = hasher.finalize().into();
    if n != claim.nar_size || Sha256Hash::from_digest(digest) != claim.nar_hash {
        return Err(ServerError::request("Bad NAR Hash or Size"));
    }
    Ok(())
}
