//! The one way a test steps aside when something it needs is missing on this machine.
//!
//! Under CI (`CI` set) `.ci/run` provides every service and tool, so a missing one fails the
//! test; elsewhere the test prints `SKIPPED <test>: <why>` and returns early, so a developer
//! without, say, Garage still runs everything else.

/// `true` when `available`; otherwise fails under CI, or prints the reason and returns `false`.
pub fn require(test: &str, available: bool, why: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why} (CI is set, so this is a failure, not a skip)");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}
