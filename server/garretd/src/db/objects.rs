//! `objects` (a store path in a cache) and `nars` (global, content-addressed archives), and
//! the one transaction that makes an upload visible.

use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use garret_core::clock::unix_now;

use super::{get, placeholders, Ctx, Database, DbResult};

/// An object joined with its NAR: everything a narinfo needs.
#[derive(Debug, Clone)]
pub struct ObjectRow {
    pub id: i64,
    pub store_path_hash: String,
    pub store_path: String,
    pub references: Vec<String>,
    pub deriver: Option<String>,
    pub ca: Option<String>,
    pub nar_id: i64,
    pub nar_hash: String,
    pub nar_size: i64,
    pub compression: String,
    pub num_chunks: i64,
}

#[derive(Debug, Clone)]
pub struct NewObject {
    pub cache_id: i64,
    pub store_path_hash: String,
    pub store_path: String,
    pub references: Vec<String>,
    pub deriver: Option<String>,
    pub sigs: Vec<String>,
    pub ca: Option<String>,
    pub created_by: Option<String>,
}

/// What a pusher says about a store path besides its NAR, whichever way it pushed (Attic's
/// upload info or Nix's narinfo): the one conversion both upload routes use.
#[derive(Debug, Clone)]
pub struct PathMeta {
    pub references: Vec<String>,
    pub deriver: Option<String>,
    pub sigs: Vec<String>,
    pub ca: Option<String>,
}

impl From<&garret_core::wire::UploadPathNarInfo> for PathMeta {
    fn from(i: &garret_core::wire::UploadPathNarInfo) -> Self {
        PathMeta {
            references: i.references.clone(),
            deriver: i.deriver.clone(),
            sigs: i.sigs.clone(),
            ca: i.ca.clone(),
        }
    }
}

impl From<&garret_core::nix::NarInfo> for PathMeta {
    fn from(i: &garret_core::nix::NarInfo) -> Self {
        PathMeta {
            references: i.references.clone(),
            deriver: i.deriver.clone(),
            sigs: i.sigs.clone(),
            ca: i.ca.clone(),
        }
    }
}

impl NewObject {
    /// `path` in cache `cache_id`, pushed by `created_by`.
    pub fn new(
        cache_id: i64,
        path: &garret_core::nix::StorePath,
        meta: PathMeta,
        created_by: Option<String>,
    ) -> Self {
        NewObject {
            cache_id,
            store_path_hash: path.hash().to_string(),
            store_path: path.to_string(),
            references: meta.references,
            deriver: meta.deriver,
            sigs: meta.sigs,
            ca: meta.ca,
            created_by,
        }
    }
}

/// A fully uploaded NAR waiting to be committed: chunk ids in order; `pending` are the ones
/// this upload wrote itself (state `P`), the rest were reused.
#[derive(Debug, Clone)]
pub struct NewNar {
    pub nar_hash: String,
    pub nar_size: i64,
    pub compression: String,
    pub chunk_ids: Vec<i64>,
    pub pending: Vec<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Our NAR became the valid one.
    Stored,
    /// A concurrent upload committed the same NAR first; ours is redundant and its
    /// pending chunks should be discarded by the caller.
    Raced,
    /// A chunk we reused disappeared (GC) before the commit: nothing was committed.
    ChunkGone,
}

#[derive(Debug, Clone, Copy)]
pub struct NarRow {
    pub id: i64,
    pub nar_size: i64,
}

const OBJECT_SELECT: &str = "SELECT o.id, o.store_path_hash, o.store_path, o.refs, o.deriver, o.ca,
        n.id AS nar_id, n.nar_hash, n.nar_size, n.compression, n.num_chunks
    FROM objects o JOIN nars n ON n.id = o.nar_id";

fn object_from_row(row: &AnyRow) -> DbResult<ObjectRow> {
    let refs: String = get(row, "refs")?;
    Ok(ObjectRow {
        id: get(row, "id")?,
        store_path_hash: get(row, "store_path_hash")?,
        store_path: get(row, "store_path")?,
        references: serde_json::from_str(&refs).unwrap_or_default(),
        deriver: get(row, "deriver")?,
        ca: get(row, "ca")?,
        nar_id: get(row, "nar_id")?,
        nar_hash: get(row, "nar_hash")?,
        nar_size: get(row, "nar_size")?,
        compression: get(row, "compression")?,
        num_chunks: get::<i64>(row, "num_chunks")?,
    })
}

/// SQL parameter lists are bounded on both engines; big closures are queried in slices.
const BATCH: usize = 500;

impl Database {
    pub async fn find_object(&self, cache_id: i64, hash: &str) -> DbResult<Option<ObjectRow>> {
        let row = sqlx::query(&format!(
            "{OBJECT_SELECT} WHERE o.cache_id = $1 AND o.store_path_hash = $2"
        ))
        .bind(cache_id)
        .bind(hash)
        .fetch_optional(self.pool())
        .await
        .ctx("loading an object")?;
        row.as_ref().map(object_from_row).transpose()
    }

    /// The subset of `hashes` that has no object in the cache.
    pub async fn missing_paths(&self, cache_id: i64, hashes: &[String]) -> DbResult<Vec<String>> {
        let mut present = std::collections::HashSet::new();
        for slice in hashes.chunks(BATCH) {
            let sql = format!(
                "SELECT store_path_hash FROM objects WHERE cache_id = $1 AND store_path_hash IN ({})",
                placeholders(2, slice.len())
            );
            let mut q = sqlx::query(&sql).bind(cache_id);
            for h in slice {
                q = q.bind(h.as_str());
            }
            for row in q
                .fetch_all(self.pool())
                .await
                .ctx("querying missing paths")?
            {
                present.insert(get::<String>(&row, "store_path_hash")?);
            }
        }
        let mut seen = std::collections::HashSet::new();
        Ok(hashes
            .iter()
            .filter(|h| !present.contains(*h) && seen.insert(h.as_str()))
            .cloned()
            .collect())
    }

    /// Records a download for retention; failures only cost retention accuracy.
    pub async fn touch_object(&self, id: i64) -> DbResult<()> {
        let _w = self.write_gate().await;
        sqlx::query("UPDATE objects SET last_accessed_at = $2 WHERE id = $1")
            .bind(id)
            .bind(unix_now())
            .execute(self.pool())
            .await
            .ctx("touching an object")?;
        Ok(())
    }

    /// A committed NAR with this hash, whatever its compression.
    pub async fn find_nar(&self, nar_hash: &str) -> DbResult<Option<NarRow>> {
        let row = sqlx::query("SELECT id, nar_size FROM nars WHERE nar_hash = $1 LIMIT 1")
            .bind(nar_hash)
            .fetch_optional(self.pool())
            .await
            .ctx("looking up a NAR")?;
        row.map(|r| {
            Ok(NarRow {
                id: get(&r, "id")?,
                nar_size: get(&r, "nar_size")?,
            })
        })
        .transpose()
    }

    /// Points an object at an already stored NAR (NAR-level deduplication).
    pub async fn attach_object(&self, obj: &NewObject, nar_id: i64) -> DbResult<()> {
        let _w = self.write_gate().await;
        let mut tx = self.begin_write().await.ctx("beginning a transaction")?;
        upsert_object(&mut tx, obj, nar_id).await?;
        tx.commit().await.ctx("committing an object")?;
        Ok(())
    }

    /// Makes an upload visible in one transaction: the NAR, its chunk list, its chunks
    /// (pending → valid) and the object.
    /// Returns the id of the NAR the object now points at (ours, or the one that won a race).
    pub async fn commit_upload(
        &self,
        obj: Option<&NewObject>,
        nar: &NewNar,
    ) -> DbResult<(CommitOutcome, i64)> {
        let _w = self.write_gate().await;
        let mut tx = self.begin_write().await.ctx("beginning a transaction")?;
        if let Some(id) = concurrent_nar(&mut tx, nar).await? {
            if let Some(obj) = obj {
                upsert_object(&mut tx, obj, id).await?;
            }
            tx.commit().await.ctx("committing an object")?;
            return Ok((CommitOutcome::Raced, id));
        }
        if !claim_chunks(&mut tx, self.engine(), nar).await? {
            tx.rollback().await.ctx("rolling back")?;
            return Ok((CommitOutcome::ChunkGone, 0));
        }
        let Some(nar_id) = insert_nar(&mut tx, nar).await? else {
            tx.rollback().await.ctx("rolling back")?;
            let id = self.attach_to_winner(obj, nar).await?;
            return Ok((CommitOutcome::Raced, id));
        };
        insert_chunkrefs(&mut tx, self.engine(), nar_id, &nar.chunk_ids).await?;
        if let Some(obj) = obj {
            upsert_object(&mut tx, obj, nar_id).await?;
        }
        tx.commit().await.ctx("committing an upload")?;
        Ok((CommitOutcome::Stored, nar_id))
    }

    /// Another replica committed the same NAR between our check and our insert: the object
    /// (if any) points at theirs, in a transaction of its own since ours was rolled back.
    async fn attach_to_winner(&self, obj: Option<&NewObject>, nar: &NewNar) -> DbResult<i64> {
        let winner = sqlx::query("SELECT id FROM nars WHERE nar_hash = $1 AND compression = $2")
            .bind(&nar.nar_hash)
            .bind(&nar.compression)
            .fetch_one(self.pool())
            .await
            .ctx("finding the concurrent NAR")?;
        let id: i64 = get(&winner, "id")?;
        if let Some(obj) = obj {
            let mut tx = self.begin_write().await.ctx("beginning a transaction")?;
            upsert_object(&mut tx, obj, id).await?;
            tx.commit().await.ctx("committing an object")?;
        }
        Ok(id)
    }
}

/// The NAR another upload of the same bytes committed while ours streamed, if any.
async fn concurrent_nar(tx: &mut Transaction<'_, Any>, nar: &NewNar) -> DbResult<Option<i64>> {
    let existing = sqlx::query("SELECT id FROM nars WHERE nar_hash = $1 AND compression = $2")
        .bind(&nar.nar_hash)
        .bind(&nar.compression)
        .fetch_optional(&mut **tx)
        .await
        .ctx("checking for a concurrent NAR")?;
    existing.map(|row| get(&row, "id")).transpose()
}

/// Takes the NAR's chunks for it inside the transaction: reused chunks must still be valid
/// (GC may have claimed one since we looked; refreshing `last_used_at` keeps it off them),
/// and our own new chunks go from pending to valid. False when any chunk is not in the
/// state it must be in; the caller rolls back.
async fn claim_chunks(
    tx: &mut Transaction<'_, Any>,
    engine: super::Engine,
    nar: &NewNar,
) -> DbResult<bool> {
    let pending: std::collections::HashSet<i64> = nar.pending.iter().copied().collect();
    let mut reused: Vec<i64> = nar
        .chunk_ids
        .iter()
        .copied()
        .filter(|id| !pending.contains(id))
        .collect();
    reused.sort_unstable();
    reused.dedup();
    let refreshed = update_every_chunk(
        tx,
        engine,
        "UPDATE chunks SET last_used_at = $1 WHERE state = 'V' AND id IN",
        true,
        &reused,
        "re-checking reused chunks",
    )
    .await?;
    if !refreshed {
        return Ok(false);
    }
    let mut pending_sorted: Vec<i64> = pending.into_iter().collect();
    pending_sorted.sort_unstable();
    update_every_chunk(
        tx,
        engine,
        "UPDATE chunks SET state = 'V' WHERE state = 'P' AND id IN",
        false,
        &pending_sorted,
        "validating new chunks",
    )
    .await
}

/// Runs `<update> (<ids>)` in slices of [`BATCH`] ids (with the current time as `$1` when
/// `with_now`); false as soon as a slice changes fewer rows than it names.
async fn update_every_chunk(
    tx: &mut Transaction<'_, Any>,
    engine: super::Engine,
    update: &str,
    with_now: bool,
    ids: &[i64],
    context: &'static str,
) -> DbResult<bool> {
    let first = if with_now { 2 } else { 1 };
    for slice in ids.chunks(BATCH) {
        let sql = format!("{update} ({})", placeholders(first, slice.len()));
        let sql = super::positional(engine, &sql);
        let mut q = sqlx::query(&sql);
        if with_now {
            q = q.bind(unix_now());
        }
        for id in slice {
            q = q.bind(*id);
        }
        let res = q.execute(&mut **tx).await.ctx(context)?;
        if res.rows_affected() != slice.len() as u64 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The NAR row; `None` when another replica inserted the same NAR first.
async fn insert_nar(tx: &mut Transaction<'_, Any>, nar: &NewNar) -> DbResult<Option<i64>> {
    let row = sqlx::query(
        "INSERT INTO nars (nar_hash, nar_size, compression, num_chunks, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (nar_hash, compression) DO NOTHING RETURNING id",
    )
    .bind(&nar.nar_hash)
    .bind(nar.nar_size)
    .bind(&nar.compression)
    .bind(nar.chunk_ids.len() as i64)
    .bind(unix_now())
    .fetch_optional(&mut **tx)
    .await
    .ctx("inserting a NAR")?;
    row.map(|row| get(&row, "id")).transpose()
}

/// The NAR's chunk list, in order, a few hundred references per statement.
async fn insert_chunkrefs(
    tx: &mut Transaction<'_, Any>,
    engine: super::Engine,
    nar_id: i64,
    chunk_ids: &[i64],
) -> DbResult<()> {
    const REF_BATCH: usize = 300;
    for (n, slice) in chunk_ids.chunks(REF_BATCH).enumerate() {
        let values: Vec<String> = (0..slice.len())
            .map(|i| format!("({})", placeholders(1 + 3 * i, 3)))
            .collect();
        let sql = format!(
            "INSERT INTO chunkrefs (nar_id, seq, chunk_id) VALUES {}",
            values.join(", ")
        );
        let sql = super::positional(engine, &sql);
        let mut q = sqlx::query(&sql);
        for (i, id) in slice.iter().enumerate() {
            q = q.bind(nar_id).bind((n * REF_BATCH + i) as i64).bind(*id);
        }
        q.execute(&mut **tx)
            .await
            .ctx("inserting chunk references")?;
    }
    Ok(())
}

async fn upsert_object(tx: &mut Transaction<'_, Any>, o: &NewObject, nar_id: i64) -> DbResult<()> {
    sqlx::query(
        "INSERT INTO objects (cache_id, nar_id, store_path_hash, store_path, refs, deriver, sigs, ca, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (cache_id, store_path_hash) DO UPDATE SET
            nar_id = excluded.nar_id, store_path = excluded.store_path, refs = excluded.refs,
            deriver = excluded.deriver, sigs = excluded.sigs, ca = excluded.ca,
            created_at = excluded.created_at, created_by = excluded.created_by,
            last_accessed_at = NULL",
    )
    .bind(o.cache_id)
    .bind(nar_id)
    .bind(&o.store_path_hash)
    .bind(&o.store_path)
    .bind(serde_json::to_string(&o.references).unwrap_or_else(|_| "[]".into()))
    .bind(o.deriver.clone())
    .bind(serde_json::to_string(&o.sigs).unwrap_or_else(|_| "[]".into()))
    .bind(o.ca.clone())
    .bind(unix_now())
    .bind(o.created_by.clone())
    .execute(&mut **tx)
    .await
    .ctx("upserting an object")?;
    Ok(())
}

impl Database {
    /// Remembers that a cache received this NAR through Nix's own upload protocol.
    pub async fn record_nix_upload(
        &self,
        cache_id: i64,
        nar_hash: &str,
        nar_id: i64,
    ) -> DbResult<()> {
        let _w = self.write_gate().await;
        sqlx::query(
            "INSERT INTO nix_uploads (cache_id, nar_hash, nar_id, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (cache_id, nar_hash) DO UPDATE SET nar_id = excluded.nar_id, created_at = excluded.created_at",
        )
        .bind(cache_id)
        .bind(nar_hash)
        .bind(nar_id)
        .bind(unix_now())
        .execute(self.pool())
        .await
        .ctx("recording a Nix upload")?;
        Ok(())
    }

    /// The NAR a cache received for this hash, if any: the narinfo's commit point.
    pub async fn find_nix_upload(&self, cache_id: i64, nar_hash: &str) -> DbResult<Option<NarRow>> {
        let row = sqlx::query(
            "SELECT n.id, n.nar_size FROM nix_uploads u JOIN nars n ON n.id = u.nar_id
             WHERE u.cache_id = $1 AND u.nar_hash = $2",
        )
        .bind(cache_id)
        .bind(nar_hash)
        .fetch_optional(self.pool())
        .await
        .ctx("looking up a Nix upload")?;
        row.map(|r| {
            Ok(NarRow {
                id: get(&r, "id")?,
                nar_size: get(&r, "nar_size")?,
            })
        })
        .transpose()
    }

    pub async fn forget_nix_upload(&self, cache_id: i64, nar_hash: &str) -> DbResult<()> {
        let _w = self.write_gate().await;
        sqlx::query("DELETE FROM nix_uploads WHERE cache_id = $1 AND nar_hash = $2")
            .bind(cache_id)
            .bind(nar_hash)
            .execute(self.pool())
            .await
            .ctx("forgetting a Nix upload")?;
        Ok(())
    }
}
