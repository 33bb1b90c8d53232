//! Pure GC decisions: which point in time separates kept from expired objects, and how long
//! unreferenced data must rest before it may go. Times are whole Unix seconds and `now` is
//! always passed in, so every boundary is testable without waiting for a clock.
//!
//! The database applies the cutoffs with a strict `<`: an object expires when it was both
//! created and last accessed before the retention cutoff ([`is_expired`]); an unreferenced
//! NAR or chunk goes when it was last used before the orphan cutoff ([`is_orphan_due`]).

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
/// retention `cutoff` (the rule the database's expiry query applies).
pub fn is_expired(cutoff: i64, created: i64, accessed: Option<i64>) -> bool {
    created < cutoff && accessed.is_none_or(|a| a < cutoff)
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
            !is_expired(at(created + HOUR), created, None),
            "exactly one period: kept"
        );
        assert!(is_expired(at(created + HOUR + 1), created, None));
    }

    #[test]
    fn an_access_restarts_the_retention() {
        let (created, accessed) = (1_000_000, 1_000_000 + 2 * HOUR);
        let cutoff = retention_cutoff(accessed + 10, Some(HOUR), Duration::ZERO).unwrap();
        assert!(
            is_expired(cutoff, created, None),
            "without the access it would go"
        );
        assert!(!is_expired(cutoff, created, Some(accessed)));
        let later = retention_cutoff(accessed + HOUR + 1, Some(HOUR), Duration::ZERO).unwrap();
        assert!(is_expired(later, created, Some(accessed)));
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
}
