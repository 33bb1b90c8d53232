//! `pins` and `pin_paths` (a pin version and the closure it holds), and deleting one object.
//!
//! A pin's closure is resolved inside the transaction that makes the version, and every
//! path of it is touched there (`last_accessed_at`, which takes the row locks on
//! PostgreSQL): a retention run or a path deletion racing the pin either removed the path
//! before (it is then not in the closure) or waits and sees the pin. SQLite serializes the
//! writers anyway (`BEGIN IMMEDIATE`).

use crate::gc::{released_versions, ClosureWalk};

use super::{get, placeholders, Ctx, Database, DbResult, Engine};

/// SQL parameter lists are bounded on both engines; closures are walked in slices.
const BATCH: usize = 400;

/// Concurrent pins of one name on PostgreSQL may pick the same version number; the loser
/// tries again this often.
const VERSION_ATTEMPTS: usize = 5;

#[derive(Debug, Clone)]
pub struct PinRow {
    pub name: String,
    pub version: i64,
    pub store_path: String,
    pub keep: Option<i64>,
    pub created_at: i64,
    pub created_by: Option<String>,
    pub closure_size: i64,
}

#[derive(Debug, Clone)]
pub struct NewPin<'a> {
    pub cache_id: i64,
    pub name: &'a str,
    pub root: &'a str,
    pub keep: Option<u32>,
    pub created_by: Option<String>,
    pub now: i64,
}

#[derive(Debug, Clone)]
pub enum PinOutcome {
    Created {
        pin: PinRow,
        missing: u64,
        released: Vec<u64>,
    },
    /// The root is not in the cache.
    NoSuchObject,
}

#[derive(Debug, Clone)]
pub enum DeleteOutcome {
    Deleted {
        store_path: String,
    },
    NoSuchObject,
    /// Held by these pins (names, sorted): nothing was deleted.
    Pinned(Vec<String>),
}

impl Database {
    /// Pins `root` and its closure under a new version of `name`, releasing the versions
    /// `keep` no longer allows.
    pub async fn create_pin(&self, p: &NewPin<'_>) -> DbResult<PinOutcome> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.create_pin_once(p).await {
                Err(e) if e.is_unique_violation() && attempt < VERSION_ATTEMPTS => continue,
                other => return other,
            }
        }
    }

    async fn create_pin_once(&self, p: &NewPin<'_>) -> DbResult<PinOutcome> {
        let _w = self.write_gate().await;
        let mut tx = self.begin_write().await.ctx("beginning a transaction")?;
        let mut walk = ClosureWalk::new(p.root);
        let mut root_path = None;
        loop {
            let batch = walk.next(BATCH);
            if batch.is_empty() {
                break;
            }
            let sql = format!(
                "UPDATE objects SET last_accessed_at = $2
                 WHERE cache_id = $1 AND store_path_hash IN ({})
                 RETURNING store_path_hash, store_path, refs",
                placeholders(3, batch.len())
            );
            let mut q = sqlx::query(&sql).bind(p.cache_id).bind(p.now);
            for h in &batch {
                q = q.bind(h.as_str());
            }
            let rows = q.fetch_all(&mut *tx).await.ctx("walking a pin's closure")?;
            let mut held = Vec::with_capacity(rows.len());
            for r in &rows {
                let hash: String = get(r, "store_path_hash")?;
                let refs: String = get(r, "refs")?;
                if hash == p.root {
                    root_path = Some(get::<String>(r, "store_path")?);
                }
                held.push((hash, serde_json::from_str(&refs).unwrap_or_default()));
            }
            walk.found(&batch, &held);
            if root_path.is_none() {
                tx.rollback().await.ctx("rolling back")?;
                return Ok(PinOutcome::NoSuchObject);
            }
        }
        let store_path = root_path.unwrap_or_default();
        let (closure, missing) = walk.finish();

        let row = sqlx::query(
            "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) AS v FROM pins
             WHERE cache_id = $1 AND name = $2",
        )
        .bind(p.cache_id)
        .bind(p.name)
        .fetch_one(&mut *tx)
        .await
        .ctx("numbering a pin version")?;
        let version = get::<i64>(&row, "v")? + 1;
        let row = sqlx::query(
            "INSERT INTO pins (cache_id, name, version, store_path_hash, store_path, keep, created_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(p.cache_id)
        .bind(p.name)
        .bind(version)
        .bind(p.root)
        .bind(&store_path)
        .bind(p.keep.map(i64::from))
        .bind(p.now)
        .bind(p.created_by.clone())
        .fetch_one(&mut *tx)
        .await
        .ctx("inserting a pin")?;
        let pin_id: i64 = get(&row, "id")?;
        for slice in closure.chunks(BATCH) {
            let values: Vec<String> = (0..slice.len())
                .map(|i| format!("($1, ${})", i + 2))
                .collect();
            let sql = format!(
                "INSERT INTO pin_paths (pin_id, store_path_hash) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(pin_id);
            for h in slice {
                q = q.bind(h.as_str());
            }
            q.execute(&mut *tx).await.ctx("recording a pin's closure")?;
        }

        let rows = sqlx::query("SELECT version FROM pins WHERE cache_id = $1 AND name = $2")
            .bind(p.cache_id)
            .bind(p.name)
            .fetch_all(&mut *tx)
            .await
            .ctx("listing a pin's versions")?;
        let versions = rows
            .iter()
            .map(|r| get::<i64>(r, "version").map(|v| v.max(0) as u64))
            .collect::<DbResult<Vec<u64>>>()?;
        let released = released_versions(&versions, p.keep);
        if !released.is_empty() {
            let sql = format!(
                "DELETE FROM pins WHERE cache_id = $1 AND name = $2 AND version IN ({})",
                placeholders(3, released.len())
            );
            let mut q = sqlx::query(&sql).bind(p.cache_id).bind(p.name);
            for v in &released {
                q = q.bind(*v as i64);
            }
            q.execute(&mut *tx)
                .await
                .ctx("releasing old pin versions")?;
        }
        tx.commit().await.ctx("committing a pin")?;
        Ok(PinOutcome::Created {
            pin: PinRow {
                name: p.name.to_string(),
                version,
                store_path,
                keep: p.keep.map(i64::from),
                created_at: p.now,
                created_by: p.created_by.clone(),
                closure_size: closure.len() as i64,
            },
            missing,
            released,
        })
    }

    /// Every live pin version of a cache, by name, newest version first.
    pub async fn list_pins(&self, cache_id: i64) -> DbResult<Vec<PinRow>> {
        let rows = sqlx::query(
            "SELECT p.name, p.version, p.store_path, p.keep, p.created_at, p.created_by,
                    (SELECT COUNT(*) FROM pin_paths pp WHERE pp.pin_id = p.id) AS closure_size
             FROM pins p WHERE p.cache_id = $1 ORDER BY p.name, p.version DESC",
        )
        .bind(cache_id)
        .fetch_all(self.pool())
        .await
        .ctx("listing pins")?;
        rows.iter()
            .map(|r| {
                Ok(PinRow {
                    name: get(r, "name")?,
                    version: get(r, "version")?,
                    store_path: get(r, "store_path")?,
                    keep: get(r, "keep")?,
                    created_at: get(r, "created_at")?,
                    created_by: get(r, "created_by")?,
                    closure_size: get(r, "closure_size")?,
                })
            })
            .collect()
    }

    /// Releases every version of a pin; returns how many there were.
    pub async fn delete_pin(&self, cache_id: i64, name: &str) -> DbResult<u64> {
        let _w = self.write_gate().await;
        let res = sqlx::query("DELETE FROM pins WHERE cache_id = $1 AND name = $2")
            .bind(cache_id)
            .bind(name)
            .execute(self.pool())
            .await
            .ctx("deleting a pin")?;
        Ok(res.rows_affected())
    }

    /// Deletes one object unless a pin holds it. Its NAR and chunks stay for GC, which
    /// removes them once nothing else references them.
    pub async fn delete_object(&self, cache_id: i64, hash: &str) -> DbResult<DeleteOutcome> {
        let _w = self.write_gate().await;
        let mut tx = self.begin_write().await.ctx("beginning a transaction")?;
        // PostgreSQL: lock the row, so a pin being made waits for us or we see its pin.
        let lock = match self.engine() {
            Engine::Postgres => " FOR UPDATE",
            Engine::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "SELECT id, store_path FROM objects WHERE cache_id = $1 AND store_path_hash = $2{lock}"
        ))
        .bind(cache_id)
        .bind(hash)
        .fetch_optional(&mut *tx)
        .await
        .ctx("finding an object to delete")?;
        let Some(row) = row else {
            tx.rollback().await.ctx("rolling back")?;
            return Ok(DeleteOutcome::NoSuchObject);
        };
        let id: i64 = get(&row, "id")?;
        let store_path: String = get(&row, "store_path")?;
        let pins = sqlx::query(
            "SELECT DISTINCT p.name FROM pins p JOIN pin_paths pp ON pp.pin_id = p.id
             WHERE p.cache_id = $1 AND pp.store_path_hash = $2 ORDER BY p.name",
        )
        .bind(cache_id)
        .bind(hash)
        .fetch_all(&mut *tx)
        .await
        .ctx("checking pins before a deletion")?;
        if !pins.is_empty() {
            tx.rollback().await.ctx("rolling back")?;
            let names = pins
                .iter()
                .map(|r| get(r, "name"))
                .collect::<DbResult<Vec<String>>>()?;
            return Ok(DeleteOutcome::Pinned(names));
        }
        sqlx::query("DELETE FROM objects WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .ctx("deleting an object")?;
        tx.commit().await.ctx("committing a deletion")?;
        Ok(DeleteOutcome::Deleted { store_path })
    }
}
