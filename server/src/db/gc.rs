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

    /// Deletes objects neither created nor accessed since `cutoff`.
    pub async fn expire_objects(&self, cache_id: i64, cutoff: i64) -> DbResult<u64> {
        let _w = self.write_gate().await;
        let res = sqlx::query(
            "DELETE FROM objects WHERE cache_id = $1 AND created_at < $2
             AND (last_accessed_at IS NULL OR last_accessed_at < $2)",
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

    /// Among `keys`, the packs that still hold a chunk not being deleted.
    pub async fn packs_in_use(
        &self,
        keys: &[String],
    ) -> DbResult<std::collections::HashSet<String>> {
        let mut used = std::collections::HashSet::new();
        for slice in keys.chunks(500) {
            let sql = format!(
                "SELECT DISTINCT storage_key FROM chunks WHERE state <> 'D' AND storage_key IN ({})",
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

    /// Forgets chunks that are gone from storage (or whose pack lives on without them).
    pub async fn forget_chunks(&self, ids: &[i64]) -> DbResult<u64> {
        let _w = self.write_gate().await;
        let mut n = 0;
        for slice in ids.chunks(500) {
            let sql = format!(
                "DELETE FROM chunks WHERE state = 'D' AND id IN ({})",
                placeholders(1, slice.len())
            );
            let mut q = sqlx::query(&sql);
            for id in slice {
                q = q.bind(*id);
            }
            n += q
                .execute(self.pool())
                .await
                .ctx("forgetting deleted chunks")?
                .rows_affected();
        }
        Ok(n)
    }
}
