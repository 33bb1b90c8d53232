//! Serving a NAR: its chunk files, in order, concatenated — a few fetched ahead so storage
//! latency overlaps with sending.

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::Store;
use crate::error::{ServerError, ServerResult};
use crate::storage::StorageError;

pub type NarStream = Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>;

/// Chunk files fetched ahead of the one being sent.
const PREFETCH: usize = 16;

impl Store {
    /// Opens a NAR for streaming. Fails up front (503 `IncompleteNar`) if any chunk is known
    /// to be missing, rather than cutting the download short.
    pub async fn open_nar(&self, nar_id: i64) -> ServerResult<NarStream> {
        let chunks = self.db.nar_chunks(nar_id).await?;
        if chunks.is_empty() || chunks.iter().any(|c| !c.valid) {
            return Err(ServerError::IncompleteNar);
        }
        let storage = self.storage.clone();
        let mut stream = futures::stream::iter(chunks)
            .map(move |c| {
                let storage = storage.clone();
                async move { storage.get(&c.storage_key).await }
            })
            .buffered(PREFETCH)
            .inspect(|piece| {
                if let Ok(b) = piece {
                    crate::metrics::METRICS.bytes_out.inc_by(b.len() as u64);
                }
            });
        // Await the first chunk before any header goes out, so a storage outage is a 503
        // with a JSON body instead of a 200 whose body breaks off.
        let first = stream.next().await.transpose()?;
        Ok(Box::pin(futures::stream::iter(first.map(Ok)).chain(stream)))
    }
}
