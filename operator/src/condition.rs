//! Setting status conditions the Kubernetes way: `lastTransitionTime` only moves when the
//! status flips, so watchers can tell a transition from a re-affirmation.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition to set, without times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Wanted {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Wanted {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

fn status_str(b: bool) -> String {
    if b { "True" } else { "False" }.to_string()
}

/// Merge `wanted` into `current`: existing types keep their transition time when the status
/// is unchanged; other condition types are kept as they are.
pub fn merge(
    current: &[Condition],
    wanted: &[Wanted],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = current
        .iter()
        .filter(|c| !wanted.iter().any(|w| w.type_ == c.type_))
        .cloned()
        .collect();
    for w in wanted {
        let status = status_str(w.status);
        let previous = current.iter().find(|c| c.type_ == w.type_);
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => now.clone(),
        };
        out.push(Condition {
            type_: w.type_.to_string(),
            status,
            reason: w.reason.to_string(),
            message: w.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Like [`merge`], for a `wanted` that is the object's whole set of conditions: types not in
/// it (such as ones an older operator wrote) are dropped.
pub fn set(
    current: &[Condition],
    wanted: &[Wanted],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out = merge(current, wanted, generation, now);
    out.retain(|c| wanted.iter().any(|w| w.type_ == c.type_));
    out
}

/// The status of condition `type_`, if present.
pub fn is_true(conditions: &[Condition], type_: &str) -> Option<bool> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid time"))
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let first = merge(
            &[],
            &[Wanted::new("Ready", false, "Waiting", "x")],
            Some(1),
            &t(10),
        );
        assert_eq!(first[0].last_transition_time, t(10));
        let same = merge(
            &first,
            &[Wanted::new("Ready", false, "StillWaiting", "y")],
            Some(2),
            &t(20),
        );
        assert_eq!(same[0].last_transition_time, t(10));
        assert_eq!(same[0].reason, "StillWaiting");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(
            &same,
            &[Wanted::new("Ready", true, "Ready", "z")],
            Some(2),
            &t(30),
        );
        assert_eq!(flipped[0].last_transition_time, t(30));
        assert_eq!(flipped[0].status, "True");
    }

    #[test]
    fn set_drops_types_it_does_not_name() {
        let old = merge(
            &[],
            &[
                Wanted::new("Degraded", false, "Ok", ""),
                Wanted::new("Ready", false, "Waiting", ""),
            ],
            Some(1),
            &t(1),
        );
        let new = set(
            &old,
            &[Wanted::new("Ready", true, "Ok", "")],
            Some(1),
            &t(2),
        );
        assert_eq!(new.len(), 1);
        assert_eq!(is_true(&new, "Ready"), Some(true));
        assert_eq!(new[0].last_transition_time, t(2));
    }

    #[test]
    fn other_conditions_are_kept() {
        let a = merge(
            &[],
            &[Wanted::new("Degraded", true, "Bad", "")],
            None,
            &t(1),
        );
        let b = merge(&a, &[Wanted::new("Ready", true, "Ok", "")], None, &t(2));
        assert_eq!(b.len(), 2);
        assert_eq!(is_true(&b, "Degraded"), Some(true));
        assert_eq!(is_true(&b, "Ready"), Some(true));
        assert_eq!(is_true(&b, "Issuing"), None);
    }
}
