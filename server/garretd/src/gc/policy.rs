//! Pure GC decisions: which point in time separates kept from expired objects, and how long
//! unreferenced data must rest before it may go. Times are whole Unix seconds and `now` is
//! always passed in, so every boundary is testable without waiting for a clock.
//!
//! The database applies the cutoffs with a strict `<`: an object expires when it was both
//! created and last accessed before the retention cutoff, unless a pin holds it
//! ([`is_expired`]); an unreferenced NAR or chunk goes when it was last used before the
//! orphan cutoff ([`is_orphan_due`]).
//!
//! Pins are an input here, never looked up: what a pin protects is its closure
//! ([`ClosureWalk`], walked by the caller over the references the cache holds) and which
//! versions of a name a new one releases ([`released_versions`]).

use std::collections::HashSet;
use std::time::Duration;

/// The retention of one cache: its own period (seconds; 0 = keep forever), else the
/// global default (zero = keep forever). Returns the cutoff: objects neither created nor
/// accessed since then expire.
pub fn retention_cutoff(now: i64, own: Option<i64>, default: Duration) -> Option<i64> {
    let period = match own {
        Some(p) => p,
        None => default.as_secs() as i64,
    };
    (period > 0).then(|| now.saturating_sub(period))
}

/// Unreferenced NARs and chunks younger than this are left alone: an upload in flight may
/// be about to reference them (it refreshes `last_used_at` when it reuses one).
pub fn orphan_cutoff(now: i64, grace: Duration) -> i64 {
    now.saturating_sub(grace.as_secs() as i64)
}

/// Whether an object created at `created` and last accessed at `accessed` is past the
/// retention `cutoff` (the rule the database's expiry query applies). A `pinned` object (in
/// the closure of any pin version of its cache) never expires.
pub fn is_expired(cutoff: i64, created: i64, accessed: Option<i64>, pinned: bool) -> bool {
    !pinned && created < cutoff && accessed.is_none_or(|a| a < cutoff)
}

/// The versions a new pin version releases: `versions` are the name's live ones, the new
/// one included; `keep` newest survive (`None`: all). Returned oldest first.
pub fn released_versions(versions: &[u64], keep: Option<u32>) -> Vec<u64> {
    let Some(keep) = keep else {
        return Vec::new();
    };
    let mut sorted = versions.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    let mut released: Vec<u64> = sorted.into_iter().skip(keep as usize).collect();
    released.reverse();
    released
}

/// The closure of a pinned root, discovered breadth first: the caller asks the cache for the
/// references of each [`next`](ClosureWalk::next) batch and reports what it found. Memory is
/// the closure's size, never the cache's.
#[derive(Debug)]
pub struct ClosureWalk {
    seen: HashSet<String>,
    frontier: Vec<String>,
    present: Vec<String>,
    missing: u64,
}

impl ClosureWalk {
    pub fn new(root: &str) -> ClosureWalk {
        ClosureWalk {
            seen: HashSet::from([root.to_string()]),
            frontier: vec![root.to_string()],
            present: Vec::new(),
            missing: 0,
        }
    }

    /// Up to `max` hashes whose references are to be looked up next; empty when done.
    pub fn next(&mut self, max: usize) -> Vec<String> {
        let n = self.frontier.len().min(max);
        self.frontier.drain(..n).collect()
    }

    /// What the cache holds of an `asked` batch: (hash, references as base names). Asked
    /// hashes it does not hold are counted missing; new references join the frontier.
    pub fn found(&mut self, asked: &[String], held: &[(String, Vec<String>)]) {
        let held_hashes: HashSet<&str> = held.iter().map(|(h, _)| h.as_str()).collect();
        self.missing += asked
            .iter()
            .filter(|h| !held_hashes.contains(h.as_str()))
            .count() as u64;
        for (hash, refs) in held {
            self.present.push(hash.clone());
            for r in refs {
                // a base name is `<hash>-<name>`; anything shorter is not a path
                let Some(h) = r.get(..garret_core::nix::store_path::HASH_LEN) else {
                    continue;
                };
                if self.seen.insert(h.to_string()) {
                    self.frontier.push(h.to_string());
                }
            }
        }
    }

    /// Whether the root was found (the first batch holds only the root).
    pub fn has(&self, hash: &str) -> bool {
        self.present.iter().any(|h| h == hash)
    }

    /// The closure paths the cache holds, in discovery order, and how many it lacks.
    pub fn finish(self) -> (Vec<String>, u64) {
        (self.present, self.missing)
    }
}

/// Whether unreferenced data last used at `last_used` may go at the orphan `cutoff` (the
/// rule the database's orphan queries apply).
pub fn is_orphan_due(cutoff: i64, last_used: i64) -> bool {
    last_used < cutoff
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600;

    #[test]
    fn an_object_expires_one_second_after_its_retention_has_passed() {
        let created = 1_000_000;
        let retention = Some(HOUR);
        let at = |now: i64| retention_cutoff(now, retention, Duration::ZERO).unwrap();
        assert!(
            !is_expired(at(created + HOUR), created, None, false),
            "exactly one period: kept"
        );
        assert!(is_expired(at(created + HOUR + 1), created, None, false));
        assert!(
            !is_expired(at(created + 100 * HOUR), created, None, true),
            "a pinned object is kept however old"
        );
    }

    #[test]
    fn an_access_restarts_the_retention() {
        let (created, accessed) = (1_000_000, 1_000_000 + 2 * HOUR);
        let cutoff = retention_cutoff(accessed + 10, Some(HOUR), Duration::ZERO).unwrap();
        assert!(
            is_expired(cutoff, created, None, false),
            "without the access it would go"
        );
        assert!(!is_expired(cutoff, created, Some(accessed), false));
        let later = retention_cutoff(accessed + HOUR + 1, Some(HOUR), Duration::ZERO).unwrap();
        assert!(is_expired(later, created, Some(accessed), false));
    }

    #[test]
    fn without_grace_orphans_wait_for_the_next_second() {
        // Timestamps are whole seconds: data orphaned in the second GC runs is left for the
        // next run, even with no grace period (why HTTP-level tests age their data instead
        // of racing the clock).
        let now = 5000;
        let cutoff = orphan_cutoff(now, Duration::ZERO);
        assert!(!is_orphan_due(cutoff, now));
        assert!(is_orphan_due(cutoff, now - 1));
        let graced = orphan_cutoff(now, Duration::from_secs(60));
        assert!(!is_orphan_due(graced, now - 60));
        assert!(is_orphan_due(graced, now - 61));
    }

    #[test]
    fn cache_period_overrides_default_and_zero_disables() {
        let day = Duration::from_secs(86400);
        assert_eq!(retention_cutoff(1000, None, Duration::ZERO), None);
        assert_eq!(retention_cutoff(100_000, None, day), Some(100_000 - 86400));
        assert_eq!(retention_cutoff(1000, Some(10), day), Some(990));
        assert_eq!(
            retention_cutoff(1000, Some(0), day),
            None,
            "Period 0 keeps forever even with a default"
        );
    }

    #[test]
    fn orphan_grace() {
        assert_eq!(orphan_cutoff(5000, Duration::from_secs(3600)), 1400);
        assert_eq!(orphan_cutoff(5000, Duration::ZERO), 5000);
    }

    #[test]
    fn keep_n_releases_the_oldest_versions_beyond_n() {
        assert_eq!(released_versions(&[1, 2, 3], None), Vec::<u64>::new());
        assert_eq!(released_versions(&[3, 1, 2], Some(2)), vec![1]);
        assert_eq!(released_versions(&[1, 2, 3, 4, 5], Some(2)), vec![1, 2, 3]);
        assert_eq!(released_versions(&[7], Some(1)), Vec::<u64>::new());
        assert_eq!(released_versions(&[1, 2], Some(5)), Vec::<u64>::new());
    }

    fn base(h: char) -> String {
        format!("{}-p", h.to_string().repeat(32))
    }

    #[test]
    fn the_closure_follows_references_once_and_counts_what_the_cache_lacks() {
        let h = |c: char| c.to_string().repeat(32);
        // a -> b, c; b -> c, a (a cycle); c -> d (not in the cache); a refers to itself
        let graph = |x: &str| -> Option<Vec<String>> {
            match x.chars().next() {
                Some('a') => Some(vec![base('a'), base('b'), base('c')]),
                Some('b') => Some(vec![base('c'), base('a')]),
                Some('c') => Some(vec![base('d'), "short".into()]),
                _ => None,
            }
        };
        let mut walk = ClosureWalk::new(&h('a'));
        let mut rounds = 0;
        loop {
            let batch = walk.next(1);
            if batch.is_empty() {
                break;
            }
            rounds += 1;
            let held: Vec<(String, Vec<String>)> = batch
                .iter()
                .filter_map(|x| graph(x).map(|r| (x.clone(), r)))
                .collect();
            walk.found(&batch, &held);
        }
        assert!(walk.has(&h('a')));
        assert_eq!(rounds, 4, "a, b, c and d are each asked once");
        let (present, missing) = walk.finish();
        assert_eq!(present, vec![h('a'), h('b'), h('c')]);
        assert_eq!(missing, 1);
    }
}
