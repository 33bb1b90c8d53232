//! The `caches` table: one row per tenant.

use sqlx::any::AnyRow;

use garret_core::clock::unix_now;
use garret_core::upstream::Upstream;

use super::{get, Ctx, Database, DbResult};

#[derive(Debug, Clone)]
pub struct CacheRow {
    pub id: i64,
    pub name: String,
    /// Canonical `name:base64(seed ‖ public)`; never leaves the server.
    pub keypair: String,
    pub is_public: bool,
    pub store_dir: String,
    pub priority: i32,
    pub upstream_cache_key_names: Vec<String>,
    /// Seconds; `None` = use the global default.
    pub retention_period: Option<i64>,
    /// Pull-through upstreams, as stored (checked when written).
    pub upstreams: Vec<Upstream>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewCache {
    /// Created from configuration rather than through the API.
    pub declared: bool,
    pub name: String,
    pub keypair: String,
    pub is_public: bool,
    pub store_dir: String,
    pub priority: i32,
    pub upstream_cache_key_names: Vec<String>,
    pub retention_period: Option<i64>,
    pub upstreams: Vec<Upstream>,
}

/// A partial update; `None` leaves a column as it is. `retention_period: Some(None)` resets
/// to the global default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CachePatch {
    pub keypair: Option<String>,
    pub is_public: Option<bool>,
    pub store_dir: Option<String>,
    pub priority: Option<i32>,
    pub upstream_cache_key_names: Option<Vec<String>>,
    pub retention_period: Option<Option<i64>>,
    pub upstreams: Option<Vec<Upstream>>,
}

impl CachePatch {
    pub fn is_empty(&self) -> bool {
        self.keypair.is_none()
            && self.is_public.is_none()
            && self.store_dir.is_none()
            && self.priority.is_none()
            && self.upstream_cache_key_names.is_none()
            && self.retention_period.is_none()
            && self.upstreams.is_none()
    }
}

const COLUMNS: &str =
    "id, name, keypair, is_public, store_dir, priority, upstream_cache_key_names, retention_period, upstreams";

fn from_row(row: &AnyRow) -> DbResult<CacheRow> {
    let upstream: String = get(row, "upstream_cache_key_names")?;
    Ok(CacheRow {
        id: get(row, "id")?,
        name: get(row, "name")?,
        keypair: get(row, "keypair")?,
        is_public: get::<i64>(row, "is_public")? != 0,
        store_dir: get(row, "store_dir")?,
        priority: get::<i64>(row, "priority")? as i32,
        upstream_cache_key_names: serde_json::from_str(&upstream).unwrap_or_default(),
        retention_period: get(row, "retention_period")?,
        upstreams: serde_json::from_str(&get::<String>(row, "upstreams")?).unwrap_or_default(),
    })
}

impl Database {
    /// A live (not soft-deleted) cache by name.
    pub async fn get_cache(&self, name: &str) -> DbResult<Option<CacheRow>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM caches WHERE name = $1 AND deleted_at IS NULL"
        ))
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .ctx("loading a cache")?;
        row.as_ref().map(from_row).transpose()
    }

    /// Whether the cache with this id still exists and is not deleted.
    pub async fn cache_is_live(&self, id: i64) -> DbResult<bool> {
        let row = sqlx::query("SELECT id FROM caches WHERE id = $1 AND deleted_at IS NULL")
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .ctx("checking a cache")?;
        Ok(row.is_some())
    }

    /// Whether a live cache exists and came from configuration: `(id, declared)`.
    pub async fn cache_origin(&self, name: &str) -> DbResult<Option<(CacheRow, bool)>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS}, declared FROM caches WHERE name = $1 AND deleted_at IS NULL"
        ))
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .ctx("loading a cache")?;
        row.map(|r| Ok((from_row(&r)?, get::<i64>(&r, "declared")? != 0)))
            .transpose()
    }

    /// Inserts a cache; `Ok(false)` when the name is taken (also by a soft-deleted cache).
    pub async fn create_cache(&self, c: &NewCache) -> DbResult<bool> {
        let _w = self.write_gate().await;
        let res = sqlx::query(
            "INSERT INTO caches (name, keypair, is_public, store_dir, priority, upstream_cache_key_names, created_at, declared, retention_period, upstreams)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&c.name)
        .bind(&c.keypair)
        .bind(c.is_public as i64)
        .bind(&c.store_dir)
        .bind(c.priority as i64)
        .bind(json(&c.upstream_cache_key_names))
        .bind(unix_now())
        .bind(c.declared as i64)
        .bind(c.retention_period)
        .bind(upstreams_json(&c.upstreams))
        .execute(self.pool())
        .await
        .ctx("creating a cache")?;
        Ok(res.rows_affected() == 1)
    }

    /// Applies a patch; `Ok(false)` if the cache vanished meanwhile.
    pub async fn update_cache(&self, id: i64, p: &CachePatch) -> DbResult<bool> {
        let _w = self.write_gate().await;
        let mut sets = Vec::new();
        let mut n = 1;
        let mut col = |name: &str, sets: &mut Vec<String>| {
            n += 1;
            sets.push(format!("{name} = ${n}"));
        };
        if p.keypair.is_some() {
            col("keypair", &mut sets);
        }
        if p.is_public.is_some() {
            col("is_public", &mut sets);
        }
        if p.store_dir.is_some() {
            col("store_dir", &mut sets);
        }
        if p.priority.is_some() {
            col("priority", &mut sets);
        }
        if p.upstream_cache_key_names.is_some() {
            col("upstream_cache_key_names", &mut sets);
        }
        if p.retention_period.is_some() {
            col("retention_period", &mut sets);
        }
        if p.upstreams.is_some() {
            col("upstreams", &mut sets);
        }
        if sets.is_empty() {
            return Ok(true);
        }
        let sql = format!(
            "UPDATE caches SET {} WHERE id = $1 AND deleted_at IS NULL",
            sets.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(id);
        if let Some(v) = &p.keypair {
            q = q.bind(v.clone());
        }
        if let Some(v) = p.is_public {
            q = q.bind(v as i64);
        }
        if let Some(v) = &p.store_dir {
            q = q.bind(v.clone());
        }
        if let Some(v) = p.priority {
            q = q.bind(v as i64);
        }
        if let Some(v) = &p.upstream_cache_key_names {
            q = q.bind(json(v));
        }
        if let Some(v) = p.retention_period {
            q = q.bind(v);
        }
        if let Some(v) = &p.upstreams {
            q = q.bind(upstreams_json(v));
        }
        let res = q.execute(self.pool()).await.ctx("updating a cache")?;
        Ok(res.rows_affected() == 1)
    }

    /// Deletes (or soft-deletes) a cache; `Ok(false)` if it was already gone.
    pub async fn delete_cache(&self, id: i64, soft: bool) -> DbResult<bool> {
        let _w = self.write_gate().await;
        let res = if soft {
            sqlx::query("UPDATE caches SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL")
                .bind(id)
                .bind(unix_now())
                .execute(self.pool())
                .await
        } else {
            sqlx::query("DELETE FROM caches WHERE id = $1")
                .bind(id)
                .execute(self.pool())
                .await
        }
        .ctx("deleting a cache")?;
        Ok(res.rows_affected() == 1)
    }
}

fn json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn upstreams_json(v: &[Upstream]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}
