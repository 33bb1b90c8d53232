//! Serving a NAR: its chunks, in order, concatenated. Chunks that sit next to each other
//! in one pack are read together, and a few reads run ahead so storage latency overlaps
//! with sending.

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};

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

impl Store {
    /// Opens a NAR for streaming. Fails up front (503 `IncompleteNar`) if any chunk is known
    /// to be missing, rather than cutting the download short.
    pub async fn open_nar(&self, nar_id: i64) -> ServerResult<NarStream> {
        let chunks = self.db.nar_chunks(nar_id).await?;
        if chunks.is_empty() || chunks.iter().any(|c| !c.valid) {
            return Err(ServerError::IncompleteNar);
        }
        let storage = self.storage.clone();
        let mut stream = futures::stream::iter(plan_reads(&chunks, MAX_READ))
            .map(move |r| {
                let storage = storage.clone();
                async move {
                    storage
                        .get_range(&r.key, r.offset as u64, r.len as u64)
                        .await
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
