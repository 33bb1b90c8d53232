//! The one wall clock: Unix time in whole seconds. Decisions take `now` as a parameter
//! (token checks, retention, renewal) so they stay pure; only the edges call [`unix_now`].

/// Current Unix time in whole seconds (0 for clocks set before 1970, `i64::MAX` past 2^63 s).
pub fn unix_now() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_now_is_plausible() {
        // 2020-01-01T00:00:00Z; any sane build machine is past that.
        assert!(unix_now() > 1_577_836_800);
    }
}
