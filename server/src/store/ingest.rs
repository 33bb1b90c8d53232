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

use super::{Chunker, Compression, Store};
use crate::db::{CommitOutcome, NewChunk, NewNar, NewObject};
use crate::error::{ServerError, ServerResult};
use crate::nix::nar::NarValidator;
use crate::nix::Sha256Hash;
use crate::storage::{new_chunk_key, DynStorage};

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

/// Chunks per upload being hashed/compressed/written at once. Bounds memory to about
/// `IN_FLIGHT × max-size × 2`.
const IN_FLIGHT: usize = 8;

struct ChunkResult {
    id: i64,
    raw_size: usize,
    file_size: i64,
    reused: bool,
}

/// What one streaming pass produced, before it is committed.
struct Received {
    results: Vec<ChunkResult>,
    hash: Sha256Hash,
    size: u64,
    single: bool,
    pending: PendingChunks,
}

type ChunkTask = tokio::task::JoinHandle<ServerResult<ChunkResult>>;

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

    /// Stores a NAR whose hash is not known in advance (Nix's own uploads announce it only
    /// in the narinfo that follows). The NAR is committed without any object, so it stays
    /// invisible until a narinfo claims it; GC reaps it if none ever does. Returns the NAR's
    /// id, hash and size.
    pub async fn ingest_unclaimed<S, E>(&self, body: S) -> ServerResult<(i64, Sha256Hash, u64)>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let got = self.receive(body, None).await?;
        let (hash, size) = (got.hash, got.size);
        let (_, id) = self.commit(None, got).await?;
        Ok((id, hash, size))
    }

    /// The streaming pass: hash, validate, chunk, and store chunks (as pending).
    async fn receive<S, E>(&self, mut body: S, expected: Option<u64>) -> ServerResult<Received>
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
        let mut hasher = Sha256::new();
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
                    hasher.update(&piece);
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
                if pending.in_flight.len() >= IN_FLIGHT {
                    if let Some(done) = pending.in_flight.next().await {
                        results.push(joined(done)?);
                    }
                }
                let task = tokio::spawn(store_chunk(self.clone(), chunk, pending.written.clone()));
                pending.in_flight.push_back(task);
            }
        }
        while let Some(done) = pending.in_flight.next().await {
            results.push(joined(done)?);
        }
        // Hash and size first: a truncated body is reported as such, not as a bad NAR.
        let digest: [u8; 32] = hasher.finalize().into();
        let hash = Sha256Hash::from_digest(digest);
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
    async fn commit(&self, obj: Option<&NewObject>, got: Received) -> ServerResult<(UploadOutcome, i64)> {
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
                let reused: usize = results.iter().filter(|r| r.reused).map(|r| r.raw_size).sum();
                let outcome = UploadOutcome::Uploaded {
                    file_size: results.iter().map(|r| r.file_size as u64).sum(),
                    frac_deduplicated: (!single).then(|| reused as f64 / (size.max(1)) as f64),
                };
                Ok((outcome, id))
            }
            // Dropping `pending` (still armed) discards our now redundant chunks.
            (CommitOutcome::Raced, id) => Ok((UploadOutcome::Deduplicated, id)),
            (CommitOutcome::ChunkGone, _) => Err(ServerError::Unavailable(
                "a chunk was garbage-collected during the upload; please retry".into(),
            )),
        }
    }

    /// Best-effort removal of an aborted upload's chunks; GC reaps whatever this misses.
    async fn discard(&self, chunks: Vec<(i64, String)>) {
        for (_, key) in &chunks {
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
    r: Result<ServerResult<ChunkResult>, tokio::task::JoinError>,
) -> ServerResult<ChunkResult> {
    r.map_err(ServerError::internal)?
}

/// Hash → reuse an identical chunk, or compress and write a new one.
async fn store_chunk(
    store: Store,
    data: Bytes,
    pending: Arc<Mutex<Vec<(i64, String)>>>,
) -> ServerResult<ChunkResult> {
    let compression = store.compression;
    let raw_size = data.len();
    let (hash, data) = tokio::task::spawn_blocking(move || {
        let digest: [u8; 32] = Sha256::digest(&data).into();
        (Sha256Hash::from_digest(digest).to_typed_hex(), data)
    })
    .await
    .map_err(ServerError::internal)?;
    if let Some((id, file_size)) = store.db.reuse_chunk(&hash, compression.nix_name()).await? {
        return Ok(ChunkResult {
            id,
            raw_size,
            file_size,
            reused: true,
        });
    }
    let file = compress(compression, data).await?;
    let key = new_chunk_key();
    let file_size = file.len() as i64;
    put(&store.storage, &key, file).await?;
    let id = store
        .db
        .insert_pending_chunk(&NewChunk {
            chunk_hash: hash,
            chunk_size: raw_size as i64,
            file_size,
            compression: compression.nix_name().to_string(),
            storage_key: key.clone(),
        })
        .await;
    let id = match id {
        Ok(id) => id,
        Err(e) => {
            let _ = store.storage.delete(&key).await;
            return Err(e.into());
        }
    };
    if let Ok(mut v) = pending.lock() {
        v.push((id, key));
    }
    Ok(ChunkResult {
        id,
        raw_size,
        file_size,
        reused: false,
    })
}

async fn compress(c: Compression, data: Bytes) -> ServerResult<Bytes> {
    tokio::task::spawn_blocking(move || c.compress(&data))
        .await
        .map_err(ServerError::internal)?
        .map_err(ServerError::internal)
}

async fn put(storage: &DynStorage, key: &str, file: Bytes) -> ServerResult<()> {
    storage.put(key, file).await.map_err(ServerError::from)
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
