//! The `chunks` table: compressed pieces of NARs, deduplicated globally by the hash of
//! their uncompressed bytes. A chunk lives at (`storage_key`, `storage_offset`): several
//! chunks written by one upload batch share a storage object (a pack).

use garret_core::clock::unix_now;

use super::{get, placeholders, Ctx, Database, DbResult};

#[derive(Debug, Clone)]
pub struct NewChunk {
    pub chunk_hash: String,
    pub chunk_size: i64,
    pub file_size: i64,
    pub compression: String,
    pub storage_key: String,
    pub storage_offset: i64,
}

/// Where one piece of a NAR lives, in order.
#[derive(Debug, Clone)]
pub struct ChunkLoc {
    pub storage_key: String,
    pub storage_offset: i64,
    pub file_size: i64,
    pub valid: bool,
}

/// The deduplication lookup for `n` hashes (compression `$1`, hashes after it). It says
/// `state = 'V'` literally, so both engines can use the partial index `chunks_by_hash`
/// (migration 7); public so the migration test checks the plan of this very query.
pub fn find_chunks_sql(engine: super::Engine, n: usize) -> String {
    let sql = format!(
        "SELECT id, chunk_hash, file_size FROM chunks WHERE compression = $1 AND state = 'V' AND chunk_hash IN ({})",
        placeholders(2, n)
    );
    super::positional(engine, &sql).into_owned()
}

impl Database {
    /// Valid chunks among `hashes` with this compression: hash → (id, file size).
    pub async fn find_chunks(
        &self,
        hashes: &[String],
        compression: &str,
    ) -> DbResult<std::collections::HashMap<String, (i64, i64)>> {
        let mut found = std::collections::HashMap::new();
        for slice in hashes.chunks(500) {
            let sql = find_chunks_sql(self.engine(), slice.len());
            let mut q = sqlx::query(&sql).bind(compression);
            for h in slice {
                q = q.bind(h.as_str());
            }
            for r in q.fetch_all(self.pool()).await.ctx("looking up chunks")? {
                found.insert(
                    get(&r, "chunk_hash")?,
                    (get(&r, "id")?, get(&r, "file_size")?),
                );
            }
        }
        Ok(found)
    }

    /// Records chunks an upload is about to write, in one statement; ids in input order.
    pub async fn insert_pending_chunks(&self, rows: &[NewChunk]) -> DbResult<Vec<i64>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let _w = self.write_gate().await;
        let now = unix_now();
        let mut ids = std::collections::HashMap::new();
        for slice in rows.chunks(100) {
            let values: Vec<String> = (0..slice.len())
                .map(|i| format!("('P', {})", placeholders(1 + 8 * i, 8)))
                .collect();
            let sql = format!(
                "INSERT INTO chunks (state, chunk_hash, chunk_size, file_size, compression, storage_key, storage_offset, created_at, last_used_at)
                 VALUES {} RETURNING id, storage_key, storage_offset",
                values.join(", ")
            );
            let sql = super::positional(self.engine(), &sql);
            let mut q = sqlx::query(&sql);
            for c in slice {
                q = q
                    .bind(&c.chunk_hash)
                    .bind(c.chunk_size)
                    .bind(c.file_size)
                    .bind(&c.compression)
                    .bind(&c.storage_key)
                    .bind(c.storage_offset)
                    .bind(now)
                    .bind(now);
            }
            for r in q.fetch_all(self.pool()).await.ctx("recording chunks")? {
                let location = (
                    get::<String>(&r, "storage_key")?,
                    get::<i64>(&r, "storage_offset")?,
                );
                ids.insert(location, get::<i64>(&r, "id")?);
            }
        }
        rows.iter()
            .map(|c| {
                ids.get(&(c.storage_key.clone(), c.storage_offset))
                    .copied()
                    .ok_or_else(|| super::DbError {
                        context: "recording chunks",
                        source: sqlx::Error::RowNotFound,
                    })
            })
            .collect()
    }

    /// Forgets pending chunks of a failed upload (their files are removed by the caller).
    pub async fn delete_pending_chunks(&self, ids: &[i64]) -> DbResult<()> {
        let _w = self.write_gate().await;
        self.execute_in(
            "DELETE FROM chunks WHERE state = 'P' AND id IN ({})",
            ids,
            "discarding pending chunks",
        )
        .await?;
        Ok(())
    }

    /// Compressed bytes of all chunks the store holds.
    pub async fn stored_bytes(&self) -> DbResult<i64> {
        let row =
            sqlx::query("SELECT CAST(COALESCE(SUM(file_size), 0) AS BIGINT) AS total FROM chunks")
                .fetch_one(self.pool())
                .await
                .ctx("summing storage")?;
        get(&row, "total")
    }

    /// The chunks of a NAR in order.
    pub async fn nar_chunks(&self, nar_id: i64) -> DbResult<Vec<ChunkLoc>> {
        let rows = sqlx::query(
            "SELECT c.storage_key, c.storage_offset, c.file_size, c.state FROM chunkrefs r JOIN chunks c ON c.id = r.chunk_id
             WHERE r.nar_id = $1 ORDER BY r.seq",
        )
        .bind(nar_id)
        .fetch_all(self.pool())
        .await
        .ctx("listing a NAR's chunks")?;
        rows.iter()
            .map(|r| {
                Ok(ChunkLoc {
                    storage_key: get(r, "storage_key")?,
                    storage_offset: get(r, "storage_offset")?,
                    file_size: get(r, "file_size")?,
                    valid: get::<String>(r, "state")? == "V",
                })
            })
            .collect()
    }
}
