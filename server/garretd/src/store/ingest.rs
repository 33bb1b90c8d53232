//! One upload, one pass: the body is hashed, checked against the NAR grammar and split into
//! chunks as it streams in; chunks are deduplicated, compressed and written in parallel.
//! Nothing becomes visible until the final hash and size match the claim and the commit
//! transaction succeeds; on any failure (or a dropped connection) the chunks this upload
//! wrote are removed again.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::{Chunker, Store};
use crate::backend::new_pack_key;
use crate::db::{CommitOutcome, NewChunk, NewNar, NewObject};
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

/// Batches per upload being hashed/compressed/written at once; with the batch limits this
/// bounds an upload's memory to about `IN_FLIGHT × BATCH_BYTES × 2` plus one chunk.
const IN_FLIGHT: usize = 4;
/// A batch closes at this many chunks or bytes, whichever comes first; its new chunks
/// become one pack in storage.
const BATCH_CHUNKS: usize = 64;
const BATCH_BYTES: usize = 2 << 20;

struct ChunkResult {
    id: i64,
    raw_size: usize,
    file_size: i64,
    reused: bool,
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
/// it: the reader hands over each piece (a reference-counted clone, no copy).
struct HashLane {
    tx: Option<tokio::sync::mpsc::Sender<Bytes>>,
    done: tokio::task::JoinHandle<[u8; 32]>,
}

impl HashLane {
    fn start() -> HashLane {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let done = tokio::task::spawn_blocking(move || {
            let mut h = Sha256::new();
            while let Some(piece) = rx.blocking_recv() {
                h.update(&piece);
            }
            h.finalize().into()
        });
        HashLane { tx: Some(tx), done }
    }

    /// Waits (asynchronously) only when the hashing thread is 64 pieces behind.
    async fn update(&mut self, piece: Bytes) {
        if let Some(tx) = &self.tx {
            // A send can only fail if the hashing thread died; `finish` reports that.
            let _ = tx.send(piece).await;
        }
    }

    async fn finish(mut self) -> ServerResult<Sha256Hash> {
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

type ChunkTask = tokio::task::JoinHandle<ServerResult<Vec<ChunkResult>>>;

/// The chunks an upload has written or is writing. Dropping it armed (error, panic, client
/// gone) waits for the tasks still running and then deletes every chunk they wrote, in
/// the background.
struct PendingChunks {
    written: Arc<Mutex<Vec<(i64, String)>>>,
    in_flight: FuturesOrdered<ChunkTask>,
    store: Store,
    armed: bool,
}

impl PendingChunks {
    /// The upload committed: its chunks now belong to the store.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for PendingChunks {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut in_flight = std::mem::take(&mut self.in_flight);
        let written = self.written.clone();
        let store = self.store.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                while in_flight.next().await.is_some() {}
                let chunks = written
                    .lock()
                    .map(|mut v| std::mem::take(&mut *v))
                    .unwrap_or_default();
                if !chunks.is_empty() {
                    store.discard(chunks).await;
                }
            });
        }
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
            if self.proof_of_possession {
                verify_possession(claim, body).await?;
            }
            self.db.attach_object(&obj, nar.id).await?;
            crate::metrics::METRICS.nars_deduplicated.inc();
            return Ok(UploadOutcome::Deduplicated);
        }
        self.ingest_new(obj, claim, hash_text, body).await
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

    /// The streaming pass: hash, validate, chunk, and store chunks (as pending).
    pub(super) async fn receive<S, E>(
        &self,
        mut body: S,
        expected: Option<u64>,
    ) -> ServerResult<Received>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let mut pending = PendingChunks {
            written: Arc::default(),
            in_flight: FuturesOrdered::new(),
            store: self.clone(),
            armed: true,
        };
        let mut hasher = HashLane::start();
        let mut validator = NarValidator::new();
        let mut received: u64 = 0;
        let single = expected.is_some_and(|n| (n as usize) < self.threshold);
        let mut chunker = Chunker::new(if single {
            super::ChunkParams {
                min_size: self.threshold.max(64),
                avg_size: self.threshold.max(256),
                max_size: self.threshold.max(1024),
            }
        } else {
            self.params
        });
        let mut results: Vec<ChunkResult> = Vec::new();
        let mut ready: Vec<Bytes> = Vec::new();
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batch_bytes = 0usize;

        let mut finished = false;
        while !finished {
            match body.next().await {
                Some(Ok(piece)) => {
                    received += piece.len() as u64;
                    if let Some(limit) = expected.filter(|limit| received > *limit) {
                        return Err(ServerError::request(format!(
                            "Bad NAR Hash or Size: the body is longer than the declared {limit} bytes"
                        )));
                    }
                    hasher.update(piece.clone()).await;
                    validator
                        .feed(&piece)
                        .map_err(|e| ServerError::request(format!("Malformed NAR: {e}")))?;
                    chunker.push(&piece, &mut ready);
                }
                Some(Err(e)) => {
                    return Err(ServerError::request(format!(
                        "reading the upload body failed: {e}"
                    )));
                }
                None => {
                    finished = true;
                    let tail = std::mem::replace(&mut chunker, Chunker::new(self.params));
                    tail.finish(&mut ready);
                }
            }
            for chunk in ready.drain(..) {
                batch_bytes += chunk.len();
                batch.push(chunk);
                if batch.len() < BATCH_CHUNKS && batch_bytes < BATCH_BYTES && !finished {
                    continue;
                }
                if pending.in_flight.len() >= IN_FLIGHT {
                    if let Some(done) = pending.in_flight.next().await {
                        results.extend(joined(done)?);
                    }
                }
                let task = tokio::spawn(store_batch(
                    self.clone(),
                    std::mem::take(&mut batch),
                    pending.written.clone(),
                ));
                pending.in_flight.push_back(task);
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() {
            let task = tokio::spawn(store_batch(self.clone(), batch, pending.written.clone()));
            pending.in_flight.push_back(task);
        }
        while let Some(done) = pending.in_flight.next().await {
            results.extend(joined(done)?);
        }
        // Hash and size first: a truncated body is reported as such, not as a bad NAR.
        let hash = hasher.finish().await?;
        if expected.is_none_or(|n| n == received) {
            validator
                .finish()
                .map_err(|e| ServerError::request(format!("Malformed NAR: {e}")))?;
        }
        Ok(Received {
            results,
            hash,
            size: received,
            single,
            pending,
        })
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
        match self.db.commit_upload(obj, &nar).await? {
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

    /// Best-effort removal of an aborted upload's chunks; GC reaps whatever this misses.
    async fn discard(&self, chunks: Vec<(i64, String)>) {
        let packs: std::collections::BTreeSet<&String> = chunks.iter().map(|(_, k)| k).collect();
        for key in packs {
            if let Err(e) = self.storage.delete(key).await {
                tracing::warn!(error = %e, "could not delete a chunk of an aborted upload");
            }
        }
        let ids: Vec<i64> = chunks.iter().map(|(id, _)| *id).collect();
        if let Err(e) = self.db.delete_pending_chunks(&ids).await {
            tracing::warn!(error = %e, "could not forget the chunks of an aborted upload");
        }
    }
}

fn joined(
    r: Result<ServerResult<Vec<ChunkResult>>, tokio::task::JoinError>,
) -> ServerResult<Vec<ChunkResult>> {
    r.map_err(ServerError::internal)?
}

/// A chunk's identity for deduplication: BLAKE3 of its uncompressed bytes. Chunk hashes
/// never leave the server (Nix only sees the NAR's SHA-256), so the faster hash is free to
/// use; it is typed so another algorithm could follow.
fn chunk_id(data: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(data).to_hex())
}

/// Hash a batch of chunks, reuse the ones the store already has (one query), compress the
/// rest into one pack, record them as pending (one statement) and write the pack.
/// Batching keeps database round trips per upload small whatever the chunk count.
async fn store_batch(
    store: Store,
    chunks: Vec<Bytes>,
    pending: Arc<Mutex<Vec<(i64, String)>>>,
) -> ServerResult<Vec<ChunkResult>> {
    let compression = store.compression;
    let (chunks, hashes) = tokio::task::spawn_blocking(move || {
        let hashes: Vec<String> = chunks.iter().map(|c| chunk_id(c)).collect();
        (chunks, hashes)
    })
    .await
    .map_err(ServerError::internal)?;
    let known = store
        .db
        .find_chunks(&hashes, compression.nix_name())
        .await?;

    // Chunks to write: those not in the store, once each even if repeated in the batch.
    let mut new_index: std::collections::HashMap<&str, usize> = Default::default();
    let mut to_write: Vec<(usize, Bytes)> = Vec::new();
    for (i, (h, c)) in hashes.iter().zip(&chunks).enumerate() {
        if !known.contains_key(h) && !new_index.contains_key(h.as_str()) {
            new_index.insert(h, to_write.len());
            to_write.push((i, c.clone()));
        }
    }
    let first_pos: Vec<usize> = to_write.iter().map(|(i, _)| *i).collect();
    // The new chunks of a batch go into one storage object, back to back: one file (or S3
    // PUT) per batch instead of per chunk, which is what creating objects costs most.
    let (pack, frames) = tokio::task::spawn_blocking(move || {
        let raw: usize = to_write.iter().map(|(_, c)| c.len()).sum();
        let mut pack = Vec::with_capacity(raw + raw / 64 + 1024);
        let mut frames = Vec::with_capacity(to_write.len());
        for (i, c) in &to_write {
            let offset = pack.len();
            let len = compression.compress_into(c, &mut pack)?;
            frames.push((*i, offset, len));
        }
        Ok::<_, std::io::Error>((Bytes::from(pack), frames))
    })
    .await
    .map_err(ServerError::internal)?
    .map_err(ServerError::internal)?;

    // Rows first: a crash after them leaves stale pending rows that GC cleans up, never a
    // pack nobody knows about.
    let pack_key = new_pack_key();
    let rows: Vec<NewChunk> = frames
        .iter()
        .map(|&(i, offset, len)| NewChunk {
            chunk_hash: hashes[i].clone(),
            chunk_size: chunks[i].len() as i64,
            file_size: len as i64,
            compression: compression.nix_name().to_string(),
            storage_key: pack_key.clone(),
            storage_offset: offset as i64,
        })
        .collect();
    let ids = store.db.insert_pending_chunks(&rows).await?;
    if let Ok(mut v) = pending.lock() {
        v.extend(ids.iter().map(|id| (*id, pack_key.clone())));
    }
    if !rows.is_empty() {
        store
            .storage
            .put(&pack_key, pack)
            .await
            .map_err(ServerError::from)?;
    }

    Ok(hashes
        .iter()
        .zip(&chunks)
        .enumerate()
        .map(|(i, (h, c))| match known.get(h) {
            Some(&(id, file_size)) => ChunkResult {
                id,
                raw_size: c.len(),
                file_size,
                reused: true,
            },
            None => {
                let n = new_index[h.as_str()];
                ChunkResult {
                    id: ids[n],
                    raw_size: c.len(),
                    file_size: rows[n].file_size,
                    // a repeat within this batch counts as deduplicated
                    reused: first_pos[n] != i,
                }
            }
        })
        .collect())
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
