//! Garbage collection. Each phase is idempotent and leaves a consistent state on its own,
//! so a crashed or interrupted run is finished by the next one:
//! 1. expire objects past their cache's retention, except those in the closure of a pin
//!    (`pin_paths`: resolved when the pin is made, so this phase stays one statement);
//! 2. drop NARs no object references (chunk references cascade);
//! 3. mark unreferenced chunks `D` (deleting), delete the packs no live chunk shares any
//!    more, then forget the rows. In a pack that still holds live chunks the dead ones
//!    become `Z`: their bytes stay until the pack goes;
//! 4. compact packs that are mostly dead: copy the live chunks into a new pack and point
//!    them there. The old pack (now all `Z`) is deleted by the next run, so downloads that
//!    looked up the old locations have long finished.
//! 5. remove resumable-upload sessions that expired unfinished (or whose cache is gone),
//!    with their staged parts (`store::parts::sweep_sessions`).
//!
//! Uploads never reference a `D` chunk: reuse requires `V` and refreshes `last_used_at`,
//! and the commit re-checks both in its transaction, so GC and uploads may race freely.

mod policy;

use std::time::Duration;

use futures::StreamExt;

pub use policy::{
    is_expired, is_orphan_due, orphan_cutoff, released_versions, retention_cutoff, ClosureWalk,
};

use crate::backend::DynStorage;
use crate::db::Database;
use garret_core::clock::unix_now;

#[derive(Debug, Clone, Copy)]
pub struct GcSettings {
    pub default_retention: Duration,
    pub orphan_grace: Duration,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub objects_expired: u64,
    pub nars_deleted: u64,
    pub chunks_deleted: u64,
    pub packs_compacted: u64,
    /// Compressed bytes of the chunks deleted with their packs. A dead chunk whose pack
    /// still held live ones is forgotten without counting: its bytes leave with the pack.
    pub bytes_freed: u64,
    /// Temporary files left by interrupted uploads (older than the storage's age rule).
    pub temp_files_swept: u64,
    /// Resumable-upload sessions removed unfinished, with their staged parts.
    pub upload_sessions_removed: u64,
}

/// Where a run may be told to stop early, to prove that the next run finishes the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAfter {
    Never,
    /// After marking chunks `D`, before touching storage (as if the process died there).
    Mark,
}

/// The packs a batch of `D` chunks lets GC delete: those no chunk outside `D`/`Z` still
/// uses. (Rows of packs still in use become `Z`; the pack's bytes go with its last live
/// chunk.)
fn packs_to_delete(
    batch: &[(i64, String, i64)],
    in_use: &std::collections::HashSet<String>,
) -> Vec<String> {
    let packs: std::collections::BTreeSet<&String> = batch
        .iter()
        .map(|(_, key, _)| key)
        .filter(|key| !in_use.contains(*key))
        .collect();
    packs.into_iter().cloned().collect()
}

/// Deletes packs from storage; returns those now gone and whether any deletion failed.
async fn delete_packs(storage: &DynStorage, keys: Vec<String>) -> (Vec<String>, bool) {
    let results: Vec<_> = futures::stream::iter(keys)
        .map(|key| {
            let storage = storage.clone();
            async move {
                let res = storage.delete(&key).await;
                (key, res)
            }
        })
        .buffer_unordered(PARALLEL_DELETES)
        .collect()
        .await;
    let mut deleted = Vec::new();
    let mut failed = false;
    for (key, res) in results {
        match res {
            Ok(()) => deleted.push(key),
            Err(e) => {
                tracing::warn!(error = %e, "GC could not delete a pack; will retry next run");
                failed = true;
            }
        }
    }
    (deleted, failed)
}

/// Rewrites packs whose dead bytes outweigh the live ones. Best effort: a failure is
/// logged and the pack stays as it is. Returns how many packs were compacted.
async fn compact(db: &Database, storage: &DynStorage) -> u64 {
    let sparse = match db.sparse_packs(COMPACT_PER_RUN).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "GC could not look for sparse packs");
            return 0;
        }
    };
    let mut n = 0;
    for (key, live, dead) in sparse {
        match compact_pack(db, storage, &key).await {
            Ok(true) => {
                n += 1;
                tracing::debug!(pack = %key, live, dead, "compacted a pack");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(pack = %key, error = %e, "GC could not compact a pack"),
        }
    }
    n
}

async fn compact_pack(db: &Database, storage: &DynStorage, key: &str) -> anyhow::Result<bool> {
    let chunks = db.pack_live_chunks(key).await?;
    if chunks.is_empty() {
        return Ok(false);
    }
    // One read of the old pack (a batch's worth of bytes), sliced into the live chunks.
    let old = storage.get(key).await?;
    let mut pack = Vec::with_capacity(chunks.iter().map(|c| c.2 as usize).sum());
    let mut moves = Vec::with_capacity(chunks.len());
    for (id, offset, size) in chunks {
        let bytes = old
            .get(offset as usize..(offset + size) as usize)
            .ok_or_else(|| anyhow::anyhow!("pack {key} is shorter than its chunk rows"))?;
        moves.push((id, pack.len() as i64));
        pack.extend_from_slice(bytes);
    }
    let new_key = crate::backend::new_pack_key();
    storage.put(&new_key, pack.into()).await?;
    // A crash right here leaves the new pack unreferenced in storage (never served).
    let moved = db.move_chunks(key, &new_key, &moves).await?;
    if moved == 0 {
        // every chunk died or moved meanwhile: the copy is nobody's
        storage.delete(&new_key).await?;
        return Ok(false);
    }
    Ok(true)
}

/// Packs compacted per GC run at most.
const COMPACT_PER_RUN: i64 = 100;

/// Storage deletions in flight at once.
const PARALLEL_DELETES: usize = 16;
const BATCH: i64 = 500;

/// One GC run as of the clock's current time.
pub async fn run_once(
    db: &Database,
    storage: &DynStorage,
    s: GcSettings,
    stop: StopAfter,
) -> anyhow::Result<GcReport> {
    run_once_at(db, storage, s, stop, unix_now()).await
}

/// One GC run as of `now` (Unix seconds): retention and the orphan grace period count back
/// from it ([`retention_cutoff`], [`orphan_cutoff`]).
pub async fn run_once_at(
    db: &Database,
    storage: &DynStorage,
    s: GcSettings,
    stop: StopAfter,
    now: i64,
) -> anyhow::Result<GcReport> {
    let mut report = GcReport::default();
    for (id, own) in db.cache_retentions().await? {
        if let Some(cutoff) = retention_cutoff(now, own, s.default_retention) {
            report.objects_expired += db.expire_objects(id, cutoff).await?;
        }
    }
    let orphan = orphan_cutoff(now, s.orphan_grace);
    report.nars_deleted = db.delete_orphan_nars(orphan).await?;
    db.mark_orphan_chunks(orphan).await?;
    if stop == StopAfter::Mark {
        return Ok(report);
    }
    // Packs compacted by an earlier run (or emptied by one that stopped early).
    let dead = db.dead_packs(BATCH).await?;
    let (deleted, _) = delete_packs(storage, dead).await;
    report.chunks_deleted += db.forget_packs(&deleted).await?;
    loop {
        let batch = db.deleting_chunks(BATCH).await?;
        if batch.is_empty() {
            break;
        }
        let keys: Vec<String> = batch
            .iter()
            .map(|(_, key, _)| key.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let in_use = db.packs_in_use(&keys).await?;
        let (deleted, failed) = delete_packs(storage, packs_to_delete(&batch, &in_use)).await;
        let retired: Vec<i64> = batch
            .iter()
            .filter(|(_, key, _)| in_use.contains(key))
            .map(|(id, _, _)| *id)
            .collect();
        report.chunks_deleted += db.retire_chunks(&retired).await?;
        report.bytes_freed += batch
            .iter()
            .filter(|(_, key, _)| deleted.contains(key))
            .map(|(_, _, size)| *size as u64)
            .sum::<u64>();
        report.chunks_deleted += db.forget_packs(&deleted).await?;
        if failed {
            break;
        }
    }
    report.packs_compacted = compact(db, storage).await;
    report.temp_files_swept = storage.sweep_temporary().await as u64;
    report.upload_sessions_removed = crate::store::parts::sweep_sessions(db, storage, now).await?;
    let m = &crate::metrics::METRICS;
    m.gc_runs.inc();
    m.gc_bytes_freed.inc_by(report.bytes_freed);
    m.gc_temp_files_swept.inc_by(report.temp_files_swept);
    tracing::info!(?report, "garbage collection finished");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_is_deleted_once_and_only_when_nothing_live_shares_it() {
        let batch = vec![
            (1, "a.pack".to_string(), 10),
            (2, "a.pack".to_string(), 20),
            (3, "b.pack".to_string(), 30),
            (4, "c.pack".to_string(), 40),
        ];
        let in_use = ["b.pack".to_string()].into_iter().collect();
        assert_eq!(
            packs_to_delete(&batch, &in_use),
            vec!["a.pack".to_string(), "c.pack".to_string()]
        );
    }
}
