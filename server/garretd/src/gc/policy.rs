//! Pure GC decisions: which point in time separates kept from expired objects, and how long
//! unreferenced data must rest before it may go.

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

#[cfg(test)]
mod tests {
    use super::*;

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
