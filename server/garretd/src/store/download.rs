//! Serving a NAR: its chunks, in order, concatenated. Chunks that sit next to each other
//! in one pack are read together, and a few reads run ahead so storage latency overlaps
//! with sending.
//!
//! Every byte read for a download is counted against one process-wide budget
//! (`[http] nar-read-buffer-budget`) from before the read starts until the last copy of the
//! bytes is dropped (sent, or the connection gone), so downloads to clients that stop
//! reading cannot together pin more than the budget: at the limit, reads wait for budget.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Store;
use crate::backend::StorageError;
use crate::db::ChunkLoc;
use crate::error::{ServerError, ServerResult};

pub type NarStream = Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>;

/// Reads fetched ahead of the one being sent.
const PREFETCH: usize = 6;
/// Adjacent chunks are merged into reads of at most this many bytes (a single chunk can
/// be larger); with `PREFETCH` this bounds a download's buffered bytes.
const MAX_READ: i64 = 2 << 20;

/// One storage read: `len` bytes at `offset` of `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Read {
    pub key: String,
    pub offset: i64,
    pub len: i64,
}

/// Groups a NAR's chunks into as few reads as adjacency and `max_read` allow.
pub(crate) fn plan_reads(chunks: &[ChunkLoc], max_read: i64) -> Vec<Read> {
    let mut reads: Vec<Read> = Vec::new();
    for c in chunks {
        match reads.last_mut() {
            Some(r)
                if r.key == c.storage_key
                    && r.offset + r.len == c.storage_offset
                    && r.len + c.file_size <= max_read =>
            {
                r.len += c.file_size;
            }
            _ => reads.push(Read {
                key: c.storage_key.clone(),
                offset: c.storage_offset,
                len: c.file_size,
            }),
        }
    }
    reads
}

/// The process-wide budget of bytes held for NAR downloads.
#[derive(Clone)]
pub struct ReadBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

impl ReadBudget {
    pub fn new(total: usize) -> ReadBudget {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        crate::metrics::METRICS
            .nar_read_buffer_budget
            .set(i64::try_from(total).unwrap_or(i64::MAX));
        ReadBudget {
            permits: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Waits until `len` bytes of budget are free and takes them (a read larger than the
    /// whole budget takes all of it, so it can still proceed, alone).
    async fn reserve(&self, len: u64) -> Result<Reserved, StorageError> {
        let n = len.min(self.total as u64).min(u64::from(u32::MAX)) as u32;
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| StorageError::Unavailable("the read budget is closed".into()))?;
        crate::metrics::METRICS
            .nar_read_buffered_bytes
            .inc_by(i64::from(n));
        Ok(Reserved { _permit: permit, n })
    }
}

/// Budget held for one read; given back when dropped.
struct Reserved {
    _permit: OwnedSemaphorePermit,
    n: u32,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        crate::metrics::METRICS
            .nar_read_buffered_bytes
            .dec_by(i64::from(self.n));
    }
}

/// Read bytes that keep their budget until the last `Bytes` sharing them is dropped, i.e.
/// also while hyper holds them in its write queue.
struct Held {
    bytes: Bytes,
    _reserved: Reserved,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Store {
    /// Opens a NAR for streaming. Fails up front (503 `IncompleteNar`) if any chunk is known
    /// to be missing, rather than cutting the download short.
    pub async fn open_nar(&self, nar_id: i64) -> ServerResult<NarStream> {
        let chunks = self.db.nar_chunks(nar_id).await?;
        if chunks.is_empty() || chunks.iter().any(|c| !c.valid) {
            return Err(ServerError::IncompleteNar);
        }
        let storage = self.storage.clone();
        let budget = self.read_budget.clone();
        let mut stream = futures::stream::iter(plan_reads(&chunks, MAX_READ))
            .map(move |r| {
                let storage = storage.clone();
                let budget = budget.clone();
                async move {
                    let reserved = budget.reserve(r.len.max(0) as u64).await?;
                    let bytes = storage
                        .get_range(&r.key, r.offset as u64, r.len as u64)
                        .await?;
                    Ok(Bytes::from_owner(Held {
                        bytes,
                        _reserved: reserved,
                    }))
                }
            })
            .buffered(PREFETCH)
            .inspect(|piece| {
                if let Ok(b) = piece {
                    crate::metrics::METRICS.bytes_out.inc_by(b.len() as u64);
                }
            });
        // Await the first read before any header goes out, so a storage outage is a 503
        // with a JSON body instead of a 200 whose body breaks off.
        let first = stream.next().await.transpose()?;
        Ok(Box::pin(futures::stream::iter(first.map(Ok)).chain(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(key: &str, offset: i64, size: i64) -> ChunkLoc {
        ChunkLoc {
            storage_key: key.into(),
            storage_offset: offset,
            file_size: size,
            valid: true,
        }
    }

    fn read(key: &str, offset: i64, len: i64) -> Read {
        Read {
            key: key.into(),
            offset,
            len,
        }
    }

    #[test]
    fn adjacent_chunks_of_a_pack_become_one_read() {
        let chunks = [loc("p", 0, 10), loc("p", 10, 5), loc("p", 15, 7)];
        assert_eq!(plan_reads(&chunks, 100), vec![read("p", 0, 22)]);
    }

    #[test]
    fn gaps_other_packs_and_the_size_cap_split_reads() {
        let chunks = [
            loc("p", 0, 10),
            loc("p", 30, 5), // a gap: a chunk in between was deduplicated elsewhere
            loc("q", 35, 5), // another pack
            loc("q", 40, 60),
            loc("q", 100, 50), // would pass the cap
            loc("p", 0, 10),   // the same chunk again, later in the NAR
        ];
        assert_eq!(
            plan_reads(&chunks, 100),
            vec![
                read("p", 0, 10),
                read("p", 30, 5),
                read("q", 35, 65),
                read("q", 100, 50),
                read("p", 0, 10),
            ]
        );
    }

    #[test]
    fn a_chunk_larger_than_the_cap_is_still_one_read() {
        assert_eq!(
            plan_reads(&[loc("p", 0, 500), loc("p", 500, 1)], 100),
            vec![read("p", 0, 500), read("p", 500, 1)]
        );
    }
}
