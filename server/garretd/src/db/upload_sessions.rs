//! Queries of resumable uploads (`upload_sessions`, `_parts`, `_blobs`); the staging logic
//! that drives them is `crate::store::parts`.

use garret_core::clock::unix_now;

use super::{get, Ctx, Database, DbResult};

/// A session row.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: String,
    pub cache_id: i64,
    pub cache_name: String,
    pub created_by: Option<String>,
    pub store_path_hash: String,
    pub nar_hash: String,
    pub nar_size: i64,
    pub part_size: i64,
    /// The upload info JSON the session was created with (what commit ingests under).
    pub nar_info: String,
    pub expires_at: i64,
}

/// What identifies a session to resume: the same NAR for the same path and cache, cut the
/// same way, by the same token subject.
#[derive(Debug, Clone)]
pub struct SessionKey<'a> {
    pub cache_id: i64,
    pub created_by: Option<&'a str>,
    pub store_path_hash: &'a str,
    pub nar_hash: &'a str,
    pub nar_size: i64,
    pub part_size: i64,
}

/// A stored part: which attempt's blobs hold it, and its checked hash and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRow {
    pub part: i64,
    pub attempt: String,
    pub part_hash: String,
    pub part_size: i64,
}

const SESSION_COLUMNS: &str = "id, cache_id, cache_name, created_by, store_path_hash, nar_hash, \
     nar_size, part_size, nar_info, expires_at";

fn session_from(r: &sqlx::any::AnyRow) -> DbResult<SessionRow> {
    Ok(SessionRow {
        id: get(r, "id")?,
        cache_id: get(r, "cache_id")?,
        cache_name: get(r, "cache_name")?,
        created_by: get(r, "created_by")?,
        store_path_hash: get(r, "store_path_hash")?,
        nar_hash: get(r, "nar_hash")?,
        nar_size: get(r, "nar_size")?,
        part_size: get(r, "part_size")?,
        nar_info: get(r, "nar_info")?,
        expires_at: get(r, "expires_at")?,
    })
}

impl Database {
    /// The live session for `key`, if one was started and has not expired.
    pub async fn find_upload_session(&self, key: &SessionKey<'_>) -> DbResult<Option<SessionRow>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM upload_sessions
             WHERE cache_id = $1 AND store_path_hash = $2 AND nar_hash = $3 AND nar_size = $4
             AND part_size = $5 AND expires_at > $6
             AND COALESCE(created_by, '') = $7
             ORDER BY created_at DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(key.cache_id)
            .bind(key.store_path_hash)
            .bind(key.nar_hash)
            .bind(key.nar_size)
            .bind(key.part_size)
            .bind(unix_now())
            .bind(key.created_by.unwrap_or_default().to_owned())
            .fetch_optional(self.pool())
            .await
            .ctx("looking up an upload session")?;
        row.as_ref().map(session_from).transpose()
    }

    /// A live session by id.
    pub async fn get_upload_session(&self, id: &str) -> DbResult<Option<SessionRow>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM upload_sessions WHERE id = $1 AND expires_at > $2"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(unix_now())
            .fetch_optional(self.pool())
            .await
            .ctx("loading an upload session")?;
        row.as_ref().map(session_from).transpose()
    }

    pub async fn create_upload_session(&self, s: &SessionRow) -> DbResult<()> {
        let _w = self.write_gate().await;
        sqlx::query(
            "INSERT INTO upload_sessions (id, cache_id, cache_name, created_by, store_path_hash,
                 nar_hash, nar_size, part_size, nar_info, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&s.id)
        .bind(s.cache_id)
        .bind(&s.cache_name)
        .bind(s.created_by.clone())
        .bind(&s.store_path_hash)
        .bind(&s.nar_hash)
        .bind(s.nar_size)
        .bind(s.part_size)
        .bind(&s.nar_info)
        .bind(unix_now())
        .bind(s.expires_at)
        .execute(self.pool())
        .await
        .ctx("creating an upload session")?;
        Ok(())
    }

    /// Moves a live session's expiry to `expires_at`; false when it is gone or expired
    /// (GC may be deleting it: its blobs must not be added to).
    pub async fn touch_upload_session(&self, id: &str, expires_at: i64) -> DbResult<bool> {
        let _w = self.write_gate().await;
        let res = sqlx::query(
            "UPDATE upload_sessions SET expires_at = $2 WHERE id = $1 AND expires_at > $3",
        )
        .bind(id)
        .bind(expires_at)
        .bind(unix_now())
        .execute(self.pool())
        .await
        .ctx("touching an upload session")?;
        Ok(res.rows_affected() > 0)
    }

    /// Ends a session for everyone at once (lookups ignore it from now on); its rows and
    /// blobs are then removed by [`Database::forget_upload_session`] or, after a crash, GC.
    pub async fn expire_upload_session(&self, id: &str) -> DbResult<()> {
        let _w = self.write_gate().await;
        sqlx::query("UPDATE upload_sessions SET expires_at = 0 WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await
            .ctx("ending an upload session")?;
        Ok(())
    }

    /// Deletes a session with its part and blob rows (their blobs must be gone already).
    pub async fn forget_upload_session(&self, id: &str) -> DbResult<()> {
        let _w = self.write_gate().await;
        let mut tx = self.begin_write().await.ctx("beginning a transaction")?;
        for sql in [
            "DELETE FROM upload_session_blobs WHERE session_id = $1",
            "DELETE FROM upload_session_parts WHERE session_id = $1",
            "DELETE FROM upload_sessions WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(id)
                .execute(&mut *tx)
                .await
                .ctx("forgetting an upload session")?;
        }
        tx.commit().await.ctx("committing")?;
        Ok(())
    }

    /// Sessions to clean up: expired before `cutoff`, or of a cache that is gone.
    pub async fn abandoned_upload_sessions(
        &self,
        cutoff: i64,
        limit: i64,
    ) -> DbResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT id FROM upload_sessions s WHERE s.expires_at < $1
             OR NOT EXISTS (SELECT 1 FROM caches c WHERE c.id = s.cache_id AND c.deleted_at IS NULL)
             ORDER BY s.expires_at LIMIT $2",
        )
        .bind(cutoff)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .ctx("listing abandoned upload sessions")?;
        rows.iter().map(|r| get(r, "id")).collect()
    }

    pub async fn upload_session_parts(&self, id: &str) -> DbResult<Vec<PartRow>> {
        let rows = sqlx::query(
            "SELECT part, attempt, part_hash, part_size FROM upload_session_parts
             WHERE session_id = $1 ORDER BY part",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await
        .ctx("listing the parts of an upload session")?;
        rows.iter()
            .map(|r| {
                Ok(PartRow {
                    part: get(r, "part")?,
                    attempt: get(r, "attempt")?,
                    part_hash: get(r, "part_hash")?,
                    part_size: get(r, "part_size")?,
                })
            })
            .collect()
    }

    /// Records a blob before it is written. Fails (foreign key) when the session is gone.
    pub async fn record_session_blob(
        &self,
        session_id: &str,
        attempt: &str,
        seq: i64,
        key: &str,
    ) -> DbResult<()> {
        let _w = self.write_gate().await;
        sqlx::query(
            "INSERT INTO upload_session_blobs (storage_key, session_id, attempt, seq, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(key)
        .bind(session_id)
        .bind(attempt)
        .bind(seq)
        .bind(unix_now())
        .execute(self.pool())
        .await
        .ctx("recording a staged blob")?;
        Ok(())
    }

    /// The blobs of one attempt in order, or of the whole session (`attempt` None).
    pub async fn session_blobs(
        &self,
        session_id: &str,
        attempt: Option<&str>,
    ) -> DbResult<Vec<String>> {
        let rows = match attempt {
            Some(a) => {
                sqlx::query(
                    "SELECT storage_key FROM upload_session_blobs
                 WHERE session_id = $1 AND attempt = $2 ORDER BY seq",
                )
                .bind(session_id)
                .bind(a)
                .fetch_all(self.pool())
                .await
            }
            None => {
                sqlx::query("SELECT storage_key FROM upload_session_blobs WHERE session_id = $1")
                    .bind(session_id)
                    .fetch_all(self.pool())
                    .await
            }
        }
        .ctx("listing staged blobs")?;
        rows.iter().map(|r| get(r, "storage_key")).collect()
    }

    /// Forgets blob rows whose blobs were deleted.
    pub async fn forget_session_blobs(&self, keys: &[String]) -> DbResult<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let _w = self.write_gate().await;
        self.execute_in(
            "DELETE FROM upload_session_blobs WHERE storage_key IN ({})",
            keys,
            "forgetting staged blobs",
        )
        .await
    }

    /// Marks a part present; false when a concurrent upload of the same part got there
    /// first (whose blobs then hold it, and this attempt's are redundant).
    pub async fn record_session_part(&self, session_id: &str, p: &PartRow) -> DbResult<bool> {
        let _w = self.write_gate().await;
        let res = sqlx::query(
            "INSERT INTO upload_session_parts (session_id, part, attempt, part_hash, part_size)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_id, part) DO NOTHING",
        )
        .bind(session_id)
        .bind(p.part)
        .bind(&p.attempt)
        .bind(&p.part_hash)
        .bind(p.part_size)
        .execute(self.pool())
        .await
        .ctx("recording a part")?;
        Ok(res.rows_affected() > 0)
    }
}
