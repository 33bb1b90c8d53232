//! Metadata in SQLite or PostgreSQL through one code path (sqlx `Any`, `$n` placeholders,
//! which both engines accept). Each submodule owns the queries of one table family.

mod caches;
mod chunks;
mod gc;
mod objects;
mod pins;
mod upload_sessions;

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor};

pub use caches::{CachePatch, CacheRow, NewCache};
pub use chunks::{find_chunks_sql, ChunkLoc, NewChunk};
pub use objects::{CommitOutcome, NarRow, NewNar, NewObject, ObjectRow, PathMeta};
pub use pins::{DeleteOutcome, NewPin, PinOutcome, PinRow};
pub use upload_sessions::{PartRow, SessionKey, SessionRow};

#[derive(Debug, thiserror::Error)]
#[error("database: {context}: {source}")]
pub struct DbError {
    context: &'static str,
    #[source]
    source: sqlx::Error,
}

impl DbError {
    /// True when the database could not be reached (as opposed to a bad query).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.source,
            sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
        ) || matches!(&self.source, sqlx::Error::Database(d) if d.code().as_deref().is_some_and(|c| c.starts_with("08") || c == "57P01" || c == "5"))
    }

    pub fn is_unique_violation(&self) -> bool {
        matches!(&self.source, sqlx::Error::Database(d) if d.is_unique_violation())
    }

    /// A row this statement refers to is gone (SQLite "FOREIGN KEY constraint failed",
    /// PostgreSQL SQLSTATE 23503): typically a concurrent delete (cache destroyed, NAR
    /// garbage-collected) won a race with this write.
    pub fn is_foreign_key_violation(&self) -> bool {
        matches!(&self.source, sqlx::Error::Database(d)
            if d.is_foreign_key_violation()
                || matches!(d.code().as_deref(), Some("23503" | "787"))
                || d.message().contains("FOREIGN KEY constraint failed"))
    }
}

pub(crate) trait Ctx<T> {
    fn ctx(self, context: &'static str) -> Result<T, DbError>;
}

impl<T> Ctx<T> for Result<T, sqlx::Error> {
    fn ctx(self, context: &'static str) -> Result<T, DbError> {
        self.map_err(|source| DbError { context, source })
    }
}

pub type DbResult<T> = Result<T, DbError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Database {
    pool: AnyPool,
    engine: Engine,
    /// SQLite allows one writer at a time and makes the others sleep-poll for the lock
    /// (milliseconds each); queueing our own writers here instead keeps writes at
    /// microseconds. PostgreSQL needs no gate.
    writes: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
}

impl Database {
    pub async fn connect(url: &str) -> anyhow::Result<Database> {
        sqlx::any::install_default_drivers();
        let engine = if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Engine::Postgres
        } else {
            anyhow::bail!("unsupported database URL (want sqlite: or postgresql:)");
        };
        if engine == Engine::Sqlite {
            ensure_sqlite_parent(url)?;
        }
        let opts = AnyPoolOptions::new()
            .max_connections(if engine == Engine::Sqlite { 8 } else { 16 })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if engine == Engine::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;")
                            .await?;
                    }
                    Ok(())
                })
            });
        let pool = opts
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to the database: {e}"))?;
        let writes = (engine == Engine::Sqlite).then(Default::default);
        Ok(Database {
            pool,
            engine,
            writes,
        })
    }

    /// Held for the duration of a write statement or transaction.
    pub(crate) async fn write_gate(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.writes {
            Some(m) => Some(m.lock().await),
            None => None,
        }
    }

    /// A transaction that will write. SQLite must take the write lock up front: a read
    /// transaction that later writes fails at once with "database is locked" when another
    /// process wrote in between, instead of waiting (busy_timeout does not apply).
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.engine {
            Engine::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Engine::Postgres => self.pool.begin().await,
        }
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        self.migrate_up_to(i64::MAX).await
    }

    /// Applies migrations up to and including version `last`: upgrade tests start from
    /// an older schema with this.
    pub async fn migrate_up_to(&self, last: i64) -> anyhow::Result<()> {
        let mut migrator = match self.engine {
            Engine::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Engine::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        let wanted: Vec<_> = migrator
            .iter()
            .filter(|m| m.version <= last)
            .cloned()
            .collect();
        migrator.migrations = std::borrow::Cow::Owned(wanted);
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| anyhow::anyhow!("running database migrations: {e}"))
    }

    /// Readiness probe: one round trip.
    pub async fn ping(&self) -> DbResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .ctx("ping")?;
        Ok(())
    }
}

fn ensure_sqlite_parent(url: &str) -> anyhow::Result<()> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path).parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)?;
        }
    }
    Ok(())
}

impl Database {
    /// Runs a statement whose `{}` stands for an `IN (…)` list of `values`, in slices every
    /// database accepts; returns the rows it affected. Writers hold the write gate.
    pub(crate) async fn execute_in<T>(
        &self,
        sql: &str,
        values: &[T],
        ctx: &'static str,
    ) -> DbResult<u64>
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + Clone + Send + 'static,
    {
        let mut n = 0;
        for slice in values.chunks(500) {
            let sql = sql.replace("{}", &placeholders(1, slice.len()));
            let sql = positional(self.engine, &sql);
            let mut q = sqlx::query(&sql);
            for v in slice {
                q = q.bind(v.clone());
            }
            n += q.execute(self.pool()).await.ctx(ctx)?.rows_affected();
        }
        Ok(n)
    }
}

/// The statement text for `engine`. PostgreSQL takes `$1, $2, …` as written. For SQLite they
/// become anonymous `?`, which bind in order: sqlx binds a named parameter by asking SQLite
/// its name, a linear scan there, so a statement with n named parameters costs O(n²) to
/// bind (1.7–2.3 % of an upload's CPU with the few-hundred-parameter inserts of `chunks.rs`
/// and `objects.rs`). Only for statements whose every `$k` appears once, in order (what the
/// builders here emit; checked in debug builds).
pub(crate) fn positional(engine: Engine, sql: &str) -> std::borrow::Cow<'_, str> {
    if engine != Engine::Sqlite {
        return sql.into();
    }
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    let mut expected = 1usize;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        debug_assert_eq!(
            rest[at + 1..at + 1 + digits].parse::<usize>().ok(),
            Some(expected),
            "parameters must appear once each, in order: {sql}"
        );
        expected += 1;
        out.push('?');
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
    out.into()
}

/// `$start, $start+1, …` for an `IN (…)` list of `n` values.
pub(crate) fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn get<'r, T>(row: &'r AnyRow, col: &str) -> DbResult<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    use sqlx::Row;
    row.try_get(col).ctx("decoding a row")
}

#[cfg(test)]
mod tests {
    use super::{placeholders, positional, Engine};

    #[test]
    fn sqlite_gets_anonymous_parameters_and_postgres_the_text_as_written() {
        let sql = format!("UPDATE t SET a = $1 WHERE id IN ({})", placeholders(2, 11));
        assert_eq!(positional(Engine::Postgres, &sql), sql);
        let lite = positional(Engine::Sqlite, &sql);
        assert_eq!(
            lite,
            format!("UPDATE t SET a = ? WHERE id IN ({})", ["?"; 11].join(", "))
        );
        assert_eq!(positional(Engine::Sqlite, "SELECT 1"), "SELECT 1");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "in order")]
    fn a_reused_parameter_is_refused_for_sqlite() {
        let _ = positional(Engine::Sqlite, "INSERT INTO t VALUES ($1, $2), ($1, $3)");
    }
}
