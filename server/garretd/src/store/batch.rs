//! Writing an upload's chunks, a batch at a time: each batch is hashed, the chunks the store
//! already has are reused (one query), the rest are compressed into one pack, recorded as
//! pending (one statement) and written. Batching keeps database round trips and storage
//! objects per upload small whatever the chunk count.
//!
//! Guarantee: every chunk row written here is pending (`P`) and known to the upload's
//! [`PendingChunks`]. Until the upload commits and disarms that guard, dropping it (error,
//! panic, client gone) deletes those rows and their packs again. Rows go in before their pack
//! is written, so a crash leaves stale pending rows that GC cleans up, never a pack nobody
//! knows about.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::chunker::Chunk;
use futures::stream::FuturesOrdered;
use futures::StreamExt;

use super::{Compression, Store};
use crate::backend::new_pack_key;
use crate::db::NewChunk;
use crate::error::{ServerError, ServerResult};

/// Batches per upload being hashed/compressed/written at once; with the batch limits this
/// bounds an upload's memory to about `IN_FLIGHT × BATCH_BYTES × 2` plus one chunk.
const IN_FLIGHT: usize = 4;
/// A batch closes at this many chunks or bytes, whichever comes first; its new chunks
/// become one pack in storage.
const BATCH_CHUNKS: usize = 64;
const BATCH_BYTES: usize = 2 << 20;

/// One chunk of the NAR, in order: the row it is and whether it was already stored.
pub(super) struct ChunkResult {
    pub(super) id: i64,
    pub(super) raw_size: usize,
    pub(super) file_size: i64,
    pub(super) reused: bool,
}

/// Chunk rows (id, pack key) an upload wrote, shared with the tasks writing them.
type Written = Arc<Mutex<Vec<(i64, String)>>>;
type ChunkTask = tokio::task::JoinHandle<ServerResult<Vec<ChunkResult>>>;

/// The chunks an upload has written or is writing. Dropping it armed (error, panic, client
/// gone) waits for the tasks still running and then deletes every chunk they wrote, in
/// the background.
pub(super) struct PendingChunks {
    written: Written,
    in_flight: FuturesOrdered<ChunkTask>,
    store: Store,
    armed: bool,
}

impl PendingChunks {
    fn new(store: Store) -> PendingChunks {
        PendingChunks {
            written: Arc::default(),
            in_flight: FuturesOrdered::new(),
            store,
            armed: true,
        }
    }

    /// The upload committed: its chunks now belong to the store.
    pub(super) fn disarm(&mut self) {
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

/// Gathers an upload's chunks, in order, into batches and keeps up to [`IN_FLIGHT`] of them
/// being written; the results come back in chunk order.
pub(super) struct Batches {
    store: Store,
    open: Vec<Chunk>,
    open_bytes: usize,
    results: Vec<ChunkResult>,
    pending: PendingChunks,
}

impl Batches {
    pub(super) fn new(store: &Store) -> Batches {
        Batches {
            store: store.clone(),
            open: Vec::new(),
            open_bytes: 0,
            results: Vec::new(),
            pending: PendingChunks::new(store.clone()),
        }
    }

    /// Takes the chunks in `ready` (leaving it empty). The open batch is sent off when it is
    /// full, and with `last` (the body ended) at every chunk, so nothing waits for more.
    pub(super) async fn add(&mut self, ready: &mut Vec<Chunk>, last: bool) -> ServerResult<()> {
        for chunk in ready.drain(..) {
            self.open_bytes += chunk.len();
            self.open.push(chunk);
            if self.open.len() < BATCH_CHUNKS && self.open_bytes < BATCH_BYTES && !last {
                continue;
            }
            // Bounded memory: wait for the oldest batch before starting one more.
            if self.pending.in_flight.len() >= IN_FLIGHT {
                if let Some(done) = self.pending.in_flight.next().await {
                    self.results.extend(joined(done)?);
                }
            }
            self.send_open();
        }
        Ok(())
    }

    /// Sends whatever is left and waits for every batch: the chunks in order, and the guard
    /// that still owns the ones written.
    pub(super) async fn finish(mut self) -> ServerResult<(Vec<ChunkResult>, PendingChunks)> {
        if !self.open.is_empty() {
            self.send_open();
        }
        while let Some(done) = self.pending.in_flight.next().await {
            self.results.extend(joined(done)?);
        }
        Ok((self.results, self.pending))
    }

    fn send_open(&mut self) {
        let task = tokio::spawn(store_batch(
            self.store.clone(),
            std::mem::take(&mut self.open),
            self.pending.written.clone(),
        ));
        self.pending.in_flight.push_back(task);
        self.open_bytes = 0;
    }
}

impl Store {
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
fn chunk_id(chunk: &Chunk) -> String {
    let hash = match chunk.contiguous() {
        Some(data) => blake3::hash(data),
        None => {
            let mut h = blake3::Hasher::new();
            chunk.parts().iter().for_each(|p| {
                h.update(p);
            });
            h.finalize()
        }
    };
    format!("blake3:{}", hash.to_hex())
}

/// One batch: hash, look up, compress the new chunks into one pack, record, write.
async fn store_batch(
    store: Store,
    chunks: Vec<Chunk>,
    pending: Written,
) -> ServerResult<Vec<ChunkResult>> {
    let compression = store.compression;
    let (chunks, hashes) = hash_chunks(chunks).await?;
    let known = store
        .db
        .find_chunks(&hashes, compression.nix_name())
        .await?;
    let (fresh, to_write) = select_new(&hashes, &chunks, &known);
    let (pack, frames) = compress_pack(compression, to_write).await?;
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
    let ids = record_and_write(&store, &rows, &pack_key, pack, &pending).await?;
    Ok(batch_results(&hashes, &chunks, &known, &fresh, &ids, &rows))
}

/// Hashing is CPU work (a batch is up to [`BATCH_BYTES`]), so it runs off the async threads.
async fn hash_chunks(chunks: Vec<Chunk>) -> ServerResult<(Vec<Chunk>, Vec<String>)> {
    tokio::task::spawn_blocking(move || {
        let hashes: Vec<String> = chunks.iter().map(chunk_id).collect();
        (chunks, hashes)
    })
    .await
    .map_err(ServerError::internal)
}

/// Where the batch's new chunks go: `index` maps a new chunk's hash to its place among the
/// written ones, `first_pos` that place to the chunk's first position in the batch.
struct Fresh<'h> {
    index: HashMap<&'h str, usize>,
    first_pos: Vec<usize>,
}

/// Chunks to write: those not in the store, once each even if repeated in the batch, as
/// (position in the batch, bytes).
fn select_new<'h>(
    hashes: &'h [String],
    chunks: &[Chunk],
    known: &HashMap<String, (i64, i64)>,
) -> (Fresh<'h>, Vec<(usize, Chunk)>) {
    let mut index: HashMap<&str, usize> = Default::default();
    let mut to_write: Vec<(usize, Chunk)> = Vec::new();
    for (i, (h, c)) in hashes.iter().zip(chunks).enumerate() {
        if !known.contains_key(h) && !index.contains_key(h.as_str()) {
            index.insert(h, to_write.len());
            to_write.push((i, c.clone()));
        }
    }
    let first_pos = to_write.iter().map(|(i, _)| *i).collect();
    (Fresh { index, first_pos }, to_write)
}

/// The new chunks of a batch go into one storage object, back to back: one file (or S3
/// PUT) per batch instead of per chunk, which is what creating objects costs most.
/// Compression runs off the async threads. Returns the pack and, per written chunk, its
/// (position in the batch, offset in the pack, compressed length).
async fn compress_pack(
    compression: Compression,
    to_write: Vec<(usize, Chunk)>,
) -> ServerResult<(Bytes, Vec<(usize, usize, usize)>)> {
    tokio::task::spawn_blocking(move || {
        let raw: usize = to_write.iter().map(|(_, c)| c.len()).sum();
        // Aligned, so an `O_DIRECT` write takes the pack as it is, without another copy.
        let (mut pack, start) = PackBuf::take(raw + raw / 64 + 1024);
        let mut frames = Vec::with_capacity(to_write.len());
        for (i, c) in &to_write {
            let offset = pack.len() - start;
            let len = compression.compress_parts_into(c.parts(), &mut pack)?;
            frames.push((*i, offset, len));
        }
        Ok::<_, std::io::Error>((Bytes::from_owner(PackBuf { buf: pack, start }), frames))
    })
    .await
    .map_err(ServerError::internal)?
    .map_err(ServerError::internal)
}

/// A pack's buffer; once storage is done with it, it goes back to [`PACK_POOL`]. Fresh
/// buffers cost a page fault per 4 KiB on first touch (two thirds of an upload's page faults,
/// `perf record -e page-faults`), so the few an upload cycles through are reused.
struct PackBuf {
    buf: Vec<u8>,
    start: usize,
}

/// Buffers kept for reuse: enough for the batches of two uploads in flight.
const PACK_POOL_KEEP: usize = 2 * IN_FLIGHT;
static PACK_POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

impl PackBuf {
    /// An empty aligned buffer with room for `capacity` bytes, reused when one is free (see
    /// [`crate::backend::direct::aligned_buffer`] for the returned start offset).
    fn take(capacity: usize) -> (Vec<u8>, usize) {
        let reused = PACK_POOL.lock().ok().and_then(|mut pool| pool.pop());
        match reused {
            Some(mut buf) if buf.capacity() >= capacity + 4096 => {
                buf.clear();
                let start = buf.as_ptr().align_offset(4096).min(4096);
                buf.resize(start, 0);
                (buf, start)
            }
            _ => crate::backend::direct::aligned_buffer(capacity),
        }
    }
}

impl AsRef<[u8]> for PackBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl Drop for PackBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if let Ok(mut pool) = PACK_POOL.lock() {
            if pool.len() < PACK_POOL_KEEP {
                pool.push(buf);
            }
        }
    }
}

/// Rows first, then the pack (see the module header). The new ids join the upload's pending
/// set before the write, so a failed write is cleaned up as well.
async fn record_and_write(
    store: &Store,
    rows: &[NewChunk],
    pack_key: &str,
    pack: Bytes,
    pending: &Written,
) -> ServerResult<Vec<i64>> {
    let ids = store.db.insert_pending_chunks(rows).await?;
    if let Ok(mut v) = pending.lock() {
        v.extend(ids.iter().map(|id| (*id, pack_key.to_owned())));
    }
    if !rows.is_empty() {
        store
            .storage
            .put(pack_key, pack)
            .await
            .map_err(ServerError::from)?;
    }
    Ok(ids)
}

/// Every chunk of the batch, in order: a known one is reused; a new one is the row just
/// written, and a repeat of it later in the same batch counts as deduplicated.
fn batch_results(
    hashes: &[String],
    chunks: &[Chunk],
    known: &HashMap<String, (i64, i64)>,
    fresh: &Fresh<'_>,
    ids: &[i64],
    rows: &[NewChunk],
) -> Vec<ChunkResult> {
    hashes
        .iter()
        .zip(chunks)
        .enumerate()
        .map(|(i, (h, c))| match known.get(h) {
            Some(&(id, file_size)) => ChunkResult {
                id,
                raw_size: c.len(),
                file_size,
                reused: true,
            },
            None => {
                let n = fresh.index[h.as_str()];
                ChunkResult {
                    id: ids[n],
                    raw_size: c.len(),
                    file_size: rows[n].file_size,
                    reused: fresh.first_pos[n] != i,
                }
            }
        })
        .collect()
}
