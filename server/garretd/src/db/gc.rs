//! The queries garbage collection runs; see `crate::gc` for why they are safe to race.

use super::{get, placeholders, Ctx, Database, DbResult};

impl Database {
    /// Every cache (soft-deleted ones too) with its own retention period.
    pub async fn cache_retentions(&self) -> DbResult<Vec<(i64, Option<i64>)>> {
        let rows = sqlx::query("SELECT id, retention_period FROM caches")
            .fetch_all(self.pool())
            .await
            .ctx("listing caches for GC")?;
        rows.iter()
            .map(|r| Ok((get(r, "id")?, get(r, "retention_period")?)))
            .collect()
    }

    /// Deletes objects neither created nor accessed since `cutoff` and held by no pin
    /// (`gc::is_expired`).
    pub async fn expire_objects(&self, cache_id: i64, cutoff: i64) -> DbResult<u64> {
        let _w = self.write_gate().await;
        let res = sqlx::query(
            "DELETE FROM objects WHERE cache_id = $1 AND created_at < $2
             AND (last_accessed_at IS NULL OR last_accessed_at < $2)
             AND NOT EXISTS (SELECT 1 FROM pin_paths pp JOIN pins p ON p.id = pp.pin_id
                             WHERE p.cache_id = objects.cache_id
                               AND pp.store_path_hash = objects.store_path_hash)",
        )
        .bind(cache_id)
        .bind(cutoff)
        .execute(self.pool())
        .await
        .ctx("expiring objects")?;
        Ok(res.rows_affected())
    }

    /// Deletes NARs that no object (and no pending Nix upload) references.
    pub async fn delete_orphan_nars(&self, cutoff: i64) -> DbResult<u64> {
        let _w = self.write_gate().await;
        sqlx::query("DELETE FROM nix_uploads WHERE created_at < $1")
            .bind(cutoff)
            .execute(self.pool())
            .await
            .ctx("expiring unclaimed Nix uploads")?;
        let res = sqlx::query(
            "DELETE FROM nars WHERE created_at < $1
             AND NOT EXISTS (SELECT 1 FROM objects o WHERE o.nar_id = nars.id)
             AND NOT EXISTS (SELECT 1 FROM nix_uploads u WHERE u.nar_id = nars.id)",
        )
        .bind(cutoff)
        .execute(self.pool())
        .await
        .ctx("deleting orphan NARs")?;
        Ok(res.rows_affected())
    }

    /// Marks unreferenced chunks for deletion, and pending chunks of uploads that died.
    pub async fn mark_orphan_chunks(&self, cutoff: i64) -> DbResult<u64> {
        let _w = self.write_gate().await;
        let a = sqlx::query(
            "UPDATE chunks SET state = 'D' WHERE state = 'V' AND last_used_at < $1
             AND NOT EXISTS (SELECT 1 FROM chunkrefs r WHERE r.chunk_id = chunks.id)",
        )
        .bind(cutoff)
        .execute(self.pool())
        .await
        .ctx("marking orphan chunks")?;
        let b = sqlx::query("UPDATE chunks SET state = 'D' WHERE state = 'P' AND created_at < $1")
            .bind(cutoff)
            .execute(self.pool())
            .await
            .ctx("marking abandoned chunks")?;
        Ok(a.rows_affected() + b.rows_affected())
    }

    /// A batch of chunks awaiting deletion: (id, storage key, file size).
    pub async fn deleting_chunks(&self, limit: i64) -> DbResult<Vec<(i64, String, i64)>> {
        let rows = sqlx::query(
            "SELECT id, storage_key, file_size FROM chunks WHERE state = 'D' ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .ctx("listing chunks to delete")?;
        rows.iter()
            .map(|r| Ok((get(r, "id")?, get(r, "storage_key")?, get(r, "file_size")?)))
            .collect()
    }

    /// Among `keys`, the packs that still hold a chunk that is neither being deleted (`D`)
    /// nor dead inside a live pack (`Z`).
    pub async fn packs_in_use(
        &self,
        keys: &[String],
    ) -> DbResult<std::collections::HashSet<String>> {
        let mut used = std::collections::HashSet::new();
        for slice in keys.chunks(500) {
            let sql = format!(
                "SELECT DISTINCT storage_key FROM chunks WHERE state NOT IN ('D', 'Z') AND storage_key IN ({})",
                placeholders(1, slice.len())
            );
            let mut q = sqlx::query(&sql);
            for k in slice {
                q = q.bind(k.as_str());
            }
            for r in q
                .fetch_all(self.pool())
                .await
                .ctx("checking packs in use")?
            {
                used.insert(get::<String>(&r, "storage_key")?);
            }
        }
        Ok(used)
    }

    /// Dead chunks in packs that live on become `Z`: no longer anyone's, their bytes kept
    /// until the pack goes (or is compacted).
    pub async fn retire_chunks(&self, ids: &[i64]) -> DbResult<u64> {
        let _w = self.write_gate().await;
        self.execute_in(
            "UPDATE chunks SET state = 'Z' WHERE state = 'D' AND id IN ({})",
            ids,
            "retiring dead chunks",
        )
        .await
    }

    /// Packs holding only dead chunks (`Z`): left behind by a compaction, or by a pack
    /// whose last live chunk went in a run that stopped early.
    pub async fn dead_packs(&self, limit: i64) -> DbResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT z.storage_key FROM chunks z WHERE z.state = 'Z'
             AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.storage_key = z.storage_key
                             AND c.state NOT IN ('D', 'Z'))
             LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .ctx("listing dead packs")?;
        rows.iter().map(|r| get(r, "storage_key")).collect()
    }

    /// Forgets every dead row (`D`, `Z`) of packs deleted from storage.
    pub async fn forget_packs(&self, keys: &[String]) -> DbResult<u64> {
        let _w = self.write_gate().await;
        self.execute_in(
            "DELETE FROM chunks WHERE state IN ('D', 'Z') AND storage_key IN ({})",
            keys,
            "forgetting deleted packs",
        )
        .await
    }

    /// Packs where dead bytes outweigh live ones and nothing is in flight (`P`, `D`):
    /// (key, live chunk bytes, dead chunk bytes).
    pub async fn sparse_packs(&self, limit: i64) -> DbResult<Vec<(String, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT storage_key,
                    CAST(SUM(CASE WHEN state = 'V' THEN file_size ELSE 0 END) AS BIGINT) AS live,
                    CAST(SUM(CASE WHEN state = 'Z' THEN file_size ELSE 0 END) AS BIGINT) AS dead
             FROM chunks
             WHERE storage_key IN (SELECT storage_key FROM chunks WHERE state = 'Z')
             GROUP BY storage_key
             HAVING SUM(CASE WHEN state IN ('P', 'D') THEN 1 ELSE 0 END) = 0
                AND SUM(CASE WHEN state = 'Z' THEN file_size ELSE 0 END)
                  > SUM(CASE WHEN state = 'V' THEN file_size ELSE 0 END)
                AND SUM(CASE WHEN state = 'V' THEN 1 ELSE 0 END) > 0
             LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .ctx("listing sparse packs")?;
        rows.iter()
            .map(|r| Ok((get(r, "storage_key")?, get(r, "live")?, get(r, "dead")?)))
            .collect()
    }

    /// The live chunks of a pack, in pack order: (id, offset, size).
    pub async fn pack_live_chunks(&self, key: &str) -> DbResult<Vec<(i64, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT id, storage_offset, file_size FROM chunks
             WHERE storage_key = $1 AND state = 'V' ORDER BY storage_offset",
        )
        .bind(key)
        .fetch_all(self.pool())
        .await
        .ctx("listing a pack's live chunks")?;
        rows.iter()
            .map(|r| {
                Ok((
                    get(r, "id")?,
                    get(r, "storage_offset")?,
                    get(r, "file_size")?,
                ))
            })
            .collect()
    }

    /// Points chunks at their copies in a new pack, in one transaction; a chunk that left
    /// `V` or moved meanwhile (another GC) is skipped. Returns how many moved.
    pub async fn move_chunks(&self, from: &str, to: &str, moves: &[(i64, i64)]) -> DbResult<u64> {
        let _w = self.write_gate().await;
        let mut tx = self.begin_write().await.ctx("beginning a transaction")?;
        let mut n = 0;
        for (id, offset) in moves {
            n += sqlx::query(
                "UPDATE chunks SET storage_key = $1, storage_offset = $2
                 WHERE id = $3 AND state = 'V' AND storage_key = $4",
            )
            .bind(to)
            .bind(*offset)
            .bind(*id)
            .bind(from)
            .execute(&mut *tx)
            .await
            .ctx("moving a chunk to its new pack")?
            .rows_affected();
        }
        tx.commit().await.ctx("committing moved chunks")?;
        Ok(n)
    }
}
