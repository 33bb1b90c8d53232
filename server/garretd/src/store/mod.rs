//! The content store: NARs in, NARs out. Uploads are verified, chunked, deduplicated and
//! compressed in one streaming pass, each batch of new chunks written as one pack; downloads
//! concatenate the chunks, reading neighbours in a pack together.

mod batch;
mod chunker;
mod compression;
mod download;
mod ingest;
mod nix_push;
pub mod parts;

use crate::backend::DynStorage;
use crate::config::Config;
use crate::db::Database;

pub use chunker::{ChunkParams, Chunker};
pub use compression::{Compression, DEFAULT_ZSTD_LEVEL};
pub use download::{NarStream, ReadBudget};
pub use ingest::{NarClaim, UploadOutcome};

#[derive(Clone)]
pub struct Store {
    db: Database,
    storage: DynStorage,
    params: ChunkParams,
    /// NARs smaller than this are stored as one chunk.
    threshold: usize,
    compression: Compression,
    proof_of_possession: bool,
    /// Bytes held for NAR downloads, all of them together (`[http] nar-read-buffer-budget`).
    read_budget: ReadBudget,
}

impl Store {
    pub fn new(cfg: &Config, db: Database, storage: DynStorage) -> anyhow::Result<Store> {
        let c = &cfg.chunking;
        Ok(Store {
            db,
            storage,
            params: ChunkParams {
                min_size: c.min_size,
                avg_size: c.avg_size,
                max_size: c.max_size,
            },
            // Attic's 0 means "never chunk"; an unbounded chunk would need unbounded memory,
            // so Garret always chunks large NARs and only honours small thresholds.
            threshold: c.nar_size_threshold.min(c.max_size),
            compression: Compression::from_config(&cfg.compression)?,
            proof_of_possession: cfg.require_proof_of_possession,
            read_budget: ReadBudget::new(cfg.http.nar_read_buffer_budget),
        })
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    pub fn storage(&self) -> &DynStorage {
        &self.storage
    }
}
