//! Garbage collection. Each phase is idempotent and leaves a consistent state on its own,
//! so a crashed or interrupted run is finished by the next one:
//! 1. expire objects past their cache's retention;
//! 2. drop NARs no object references (chunk references cascade);
//! 3. mark unreferenced chunks `D` (deleting), delete the packs no live chunk shares any
//!    more, then forget the rows. A pack that still holds a live chunk keeps its dead
//!    chunks' bytes until its last chunk goes.
//!
//! Uploads never reference a `D` chunk: reuse requires `V` and refreshes `last_used_at`,
//! and the commit re-checks both in its transaction, so GC and uploads may race freely.

mod policy;

use std::time::Duration;

use futures::StreamExt;

pub use policy::{orphan_cutoff, retention_cutoff};

use crate::db::{now_unix, Database};
use crate::storage::DynStorage;

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
    /// Compressed bytes of the chunks deleted with their packs. A dead chunk whose pack
    /// still held live ones is forgotten without counting: its bytes leave with the pack.
    pub bytes_freed: u64,
}

/// Where a run may be told to stop early, to prove that the next run finishes the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAfter {
    Never,
    /// After marking chunks `D`, before touching storage (as if the process died there).
    Mark,
}

/// Which storage objects a batch of `D` chunks lets GC delete: the packs no chunk outside
/// `D` still uses. (Rows of packs still in use can be forgotten at once; the pack's bytes
/// go with its last live chunk.)
#[derive(Debug, PartialEq, Eq)]
struct Deletions {
    delete_packs: Vec<String>,
}

fn plan_deletions(
    batch: &[(i64, String, i64)],
    in_use: &std::collections::HashSet<String>,
) -> Deletions {
    let packs: std::collections::BTreeSet<&String> = batch
        .iter()
        .map(|(_, key, _)| key)
        .filter(|key| !in_use.contains(*key))
        .collect();
    Deletions {
        delete_packs: packs.into_iter().cloned().collect(),
    }
}

/// Storage deletions in flight at once.
const PARALLEL_DELETES: usize = 16;
const BATCH: i64 = 500;

pub async fn run_once(
    db: &Database,
    storage: &DynStorage,
    s: GcSettings,
    stop: StopAfter,
) -> anyhow::Result<GcReport> {
    let now = now_unix();
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
        let plan = plan_deletions(&batch, &in_use);
        let results: Vec<_> = futures::stream::iter(plan.delete_packs)
            .map(|key| {
                let storage = storage.clone();
                async move { (key.clone(), storage.delete(&key).await) }
            })
            .buffer_unordered(PARALLEL_DELETES)
            .collect()
            .await;
        let mut deleted = std::collections::HashSet::new();
        let mut failed = false;
        for (key, res) in results {
            match res {
                Ok(()) => {
                    deleted.insert(key);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "GC could not delete a pack; will retry next run");
                    failed = true;
                }
            }
        }
        let mut gone = Vec::new();
        for (id, key, size) in &batch {
            if deleted.contains(key) {
                gone.push(*id);
                report.bytes_freed += *size as u64;
            } else if in_use.contains(key) {
                // the row goes; its bytes stay in the pack until the pack's last chunk goes
                gone.push(*id);
            }
        }
        report.chunks_deleted += db.forget_chunks(&gone).await?;
        if failed {
            break;
        }
    }
    let m = &crate::metrics::METRICS;
    m.gc_runs.inc();
    m.gc_bytes_freed.inc_by(report.bytes_freed);
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
            plan_deletions(&batch, &in_use).delete_packs,
            vec!["a.pack".to_string(), "c.pack".to_string()]
        );
    }
}
