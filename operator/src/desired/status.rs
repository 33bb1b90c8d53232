//! What a BinaryCache's status says, as pure functions: the kstatus conditions (`Ready`,
//! `Reconciling`, `Stalled`) from the applied Deployment (or from the failure), merged the
//! Kubernetes way (see `condition`), the replica counts, and the endpoint and per-cache
//! substituter URL and public key [`super::desired`] implies, with whether garretd serves
//! each cache ([`served`], from the answers the controller's probe got). The controller only
//! writes the result.
//!
//! kstatus (Flux, Helm 4 `--wait`, `kubectl wait`-style tools) reads `observedGeneration`,
//! `Reconciling` and `Stalled`; Argo CD reads them through the `health.lua` shipped in
//! `charts/garret-operator/argocd/`. The three conditions are always written together, so
//! the readings agree:
//!
//! | situation | Ready | Reconciling | Stalled | kstatus | Argo CD |
//! |---|---|---|---|---|---|
//! | all replicas available, every declared cache served | True | False | False | Current | Healthy |
//! | rolling out, waiting for pods or for a cache to be served, retrying a failure | False | True | False | InProgress | Progressing |
//! | invalid spec, rollout past its progress deadline | False | False | True | Failed | Degraded |

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::meta::{normal_event, Note};
use crate::condition::{self, Wanted};
use crate::types::{BinaryCache, BinaryCacheStatus, CacheEndpoint, CacheStatus};
use crate::Error;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// The three conditions in one state: `(ready, reconciling, stalled)` by the same reason.
fn conditions(state: (bool, bool, bool), reason: &'static str, msg: &str) -> [Wanted; 3] {
    let (ready, reconciling, stalled) = state;
    [
        Wanted::new(READY, ready, reason, msg),
        Wanted::new(RECONCILING, reconciling, reason, msg),
        Wanted::new(STALLED, stalled, reason, msg),
    ]
}

/// Ready / Reconciling / Stalled from what the Deployment reports. Only the Deployment
/// controller's own accounting counts: no pod has passed `/readyz`, no readiness.
pub fn readiness(want: i32, d: &Deployment) -> [Wanted; 3] {
    let status = d.status.clone().unwrap_or_default();
    let observed =
        status.observed_generation == d.metadata.generation && d.metadata.generation.is_some();
    let available = status.available_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let msg = format!("{available}/{want} replicas available");
    if observed && available >= want && updated >= want {
        return conditions((true, false, false), "Available", &msg);
    }
    // The Deployment controller gave up on this rollout: only a change helps.
    let deadline = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if let (true, Some(c)) = (observed, deadline) {
        let why = c.message.clone().unwrap_or_default();
        return conditions(
            (false, false, true),
            "ProgressDeadlineExceeded",
            &format!("{msg}: {why}"),
        );
    }
    conditions((false, true, false), "RollingOut", &msg)
}

/// Conditions for a spec [`super::validate`] rejected: nothing is applied until it changes.
pub fn invalid(msg: &str) -> [Wanted; 3] {
    conditions((false, false, true), "InvalidSpec", msg)
}

/// Conditions after a failed apply; back-off retries it, so it is still reconciling.
pub fn failed(e: &Error) -> [Wanted; 3] {
    conditions((false, true, false), e.reason(), &e.to_string())
}

/// Desired and ready pods, as the Deployment reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replicas {
    pub desired: i32,
    pub ready: i32,
}

impl Replicas {
    pub fn of(d: &Deployment) -> Replicas {
        Replicas {
            desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            ready: d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0),
        }
    }
}

/// What garretd answered to `GET /_api/v1/cache-config/<cache>` with the operator's token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not asked: no garretd replica is available to answer.
    NotAsked,
    /// An HTTP answer; `public_key` from the body of a 200.
    Http {
        status: u16,
        public_key: Option<String>,
    },
    /// No HTTP answer (connection refused, timeout, bad URL): why.
    Unreachable(String),
}

/// Whether `answer` shows garretd serving `cache` with the key the operator generated:
/// `Ok(())`, or why not. A cache answered with another key (an older row, the declared key
/// file not applied yet) is not served: clients would reject its signatures.
pub fn served(cache: &CacheStatus, answer: &Answer) -> Result<(), String> {
    match answer {
        Answer::NotAsked => Err("no garretd replica available".into()),
        Answer::Unreachable(why) => Err(format!("garretd unreachable: {why}")),
        Answer::Http {
            status: 200,
            public_key: Some(key),
        } if *key == cache.public_key => Ok(()),
        Answer::Http {
            status: 200,
            public_key: Some(key),
        } => Err(format!("served with another public key ({key})")),
        Answer::Http { status: 200, .. } => Err("answer without a public key".into()),
        Answer::Http { status, .. } => Err(format!("HTTP {status}")),
    }
}

/// The declared caches served, and those waiting with why, from one answer per cache (in
/// the order of `caches`; a missing answer counts as [`Answer::NotAsked`]).
pub fn tally(
    caches: &[CacheStatus],
    answers: &[Answer],
) -> (BTreeSet<String>, Vec<(String, String)>) {
    let mut served_names = BTreeSet::new();
    let mut waiting = Vec::new();
    for (i, c) in caches.iter().enumerate() {
        match served(c, answers.get(i).unwrap_or(&Answer::NotAsked)) {
            Ok(()) => drop(served_names.insert(c.name.clone())),
            Err(why) => waiting.push((c.name.clone(), why)),
        }
    }
    (served_names, waiting)
}

/// The conditions once garretd's answers are in: `readiness` as it is, unless it says Ready
/// while some declared caches (`waiting`: name and why) are not served — then Reconciling,
/// naming them, until they are.
pub fn serving(readiness: [Wanted; 3], waiting: &[(String, String)]) -> [Wanted; 3] {
    if !readiness[0].status || waiting.is_empty() {
        return readiness;
    }
    let list: Vec<String> = waiting
        .iter()
        .map(|(name, why)| format!("{name} ({why})"))
        .collect();
    let msg = format!(
        "{}; waiting for garretd to serve {}",
        readiness[0].message,
        list.join(", ")
    );
    conditions((false, true, false), "CachesNotServed", &msg)
}

/// What a successful apply tells status.
#[derive(Clone, Copy, Debug)]
pub struct Applied<'a> {
    pub endpoint: &'a str,
    pub caches: &'a [CacheStatus],
    /// Names of the declared caches garretd serves (see [`served`]).
    pub served: &'a BTreeSet<String>,
    pub replicas: Replicas,
}

/// The substituter URL of cache `name` behind `endpoint` (which ends in `/`).
pub fn substituter(endpoint: &str, name: &str) -> String {
    format!("{}/{name}", endpoint.trim_end_matches('/'))
}

/// The status to write: `wanted` (the whole set of conditions) merged into the current
/// conditions at `now`; endpoint, caches and replicas replaced when `applied` is given (a
/// successful apply), else kept.
pub fn status(
    bc: &BinaryCache,
    wanted: &[Wanted],
    applied: Option<Applied<'_>>,
    now: &Time,
) -> BinaryCacheStatus {
    let current = bc.status.clone().unwrap_or_default();
    let generation = bc.metadata.generation;
    let mut status = BinaryCacheStatus {
        observed_generation: generation,
        conditions: condition::set(&current.conditions, wanted, generation, now),
        ..current
    };
    if let Some(a) = applied {
        status.endpoint = Some(a.endpoint.to_string());
        status.caches = a
            .caches
            .iter()
            .map(|c| CacheEndpoint {
                name: c.name.clone(),
                substituter: substituter(a.endpoint, &c.name),
                public_key: c.public_key.clone(),
                served: a.served.contains(&c.name),
            })
            .collect();
        status.replicas = Some(a.replicas.desired);
        status.ready_replicas = Some(a.replicas.ready);
        status.replica_status = Some(format!("{}/{}", a.replicas.ready, a.replicas.desired));
    }
    status
}

/// The Event marking a change of readiness (`Ready` or `Progressing`), if there was one.
pub fn readiness_event(bc: &BinaryCache, wanted: &[Wanted; 3]) -> Option<Note> {
    let was_ready = bc
        .status
        .as_ref()
        .and_then(|s| condition::is_true(&s.conditions, READY));
    let ready = wanted[0].status;
    (was_ready != Some(ready)).then(|| {
        let reason = if ready { "Ready" } else { "Progressing" };
        normal_event(reason, "Reconcile", wanted[0].message.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::fixtures::*;
    use serde_json::json;

    fn deployment(generation: i64, observed: i64, available: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "main", "generation": generation},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"observedGeneration": observed, "availableReplicas": available,
                       "updatedReplicas": available, "readyReplicas": available}
        }))
        .expect("deployment")
    }

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).expect("time"))
    }

    fn states(w: &[Wanted; 3]) -> (bool, bool, bool) {
        (w[0].status, w[1].status, w[2].status)
    }

    fn applied<'a>(
        keys: &'a [CacheStatus],
        served: &'a BTreeSet<String>,
        d: &Deployment,
    ) -> Applied<'a> {
        Applied {
            endpoint: "http://e/",
            caches: keys,
            served,
            replicas: Replicas::of(d),
        }
    }

    fn team() -> CacheStatus {
        CacheStatus {
            name: "team".into(),
            public_key: "team:k".into(),
        }
    }

    fn ok(key: &str) -> Answer {
        Answer::Http {
            status: 200,
            public_key: Some(key.into()),
        }
    }

    #[test]
    fn served_only_with_a_200_and_the_generated_key() {
        let c = team();
        assert_eq!(served(&c, &ok("team:k")), Ok(()));
        let other = served(&c, &ok("team:old")).expect_err("another key");
        assert!(other.contains("team:old"), "{other}");
        let missing = Answer::Http {
            status: 404,
            public_key: None,
        };
        assert_eq!(served(&c, &missing), Err("HTTP 404".into()));
        let denied = Answer::Http {
            status: 401,
            public_key: Some("team:k".into()),
        };
        assert!(
            served(&c, &denied).is_err(),
            "a key in a non-200 body counts for nothing"
        );
        let no_key = Answer::Http {
            status: 200,
            public_key: None,
        };
        assert!(served(&c, &no_key).is_err());
        let down =
            served(&c, &Answer::Unreachable("connection refused".into())).expect_err("unreachable");
        assert!(down.contains("connection refused"), "{down}");
        assert!(served(&c, &Answer::NotAsked).is_err());
    }

    #[test]
    fn tally_pairs_answers_with_caches_in_order() {
        let ci = CacheStatus {
            name: "ci".into(),
            public_key: "ci:k".into(),
        };
        let (served, waiting) = tally(&[team(), ci], &[ok("team:k")]);
        assert_eq!(served, BTreeSet::from(["team".to_string()]));
        assert_eq!(
            waiting,
            [("ci".to_string(), "no garretd replica available".to_string())]
        );
    }

    #[test]
    fn ready_waits_for_every_declared_cache() {
        let available = readiness(1, &deployment(1, 1, 1));
        assert_eq!(
            states(&serving(available.clone(), &[])),
            (true, false, false)
        );
        let waiting = vec![
            ("team".to_string(), "HTTP 404".to_string()),
            (
                "ci".to_string(),
                "garretd unreachable: timed out".to_string(),
            ),
        ];
        let w = serving(available, &waiting);
        assert_eq!(
            states(&w),
            (false, true, false),
            "Reconciling while waiting"
        );
        assert_eq!(w[0].reason, "CachesNotServed");
        assert_eq!(
            w[0].message,
            "1/1 replicas available; waiting for garretd to serve team (HTTP 404), \
             ci (garretd unreachable: timed out)"
        );
        // A rollout or a stall keeps its own reason.
        let rolling = readiness(1, &deployment(1, 0, 0));
        assert_eq!(serving(rolling.clone(), &waiting), rolling);
        let stalled = invalid("x");
        assert_eq!(serving(stalled.clone(), &waiting), stalled);
    }

    #[test]
    fn ready_only_when_the_deployment_says_so() {
        let fresh = readiness(1, &deployment(1, 0, 0));
        assert_eq!(states(&fresh), (false, true, false), "rolling out");
        assert_eq!(fresh[1].type_, RECONCILING);
        let stale = readiness(1, &deployment(2, 1, 1));
        assert!(
            !stale[0].status,
            "status of an older generation does not count"
        );
        let done = readiness(1, &deployment(2, 2, 1));
        assert_eq!(states(&done), (true, false, false));
        assert_eq!(done[0].message, "1/1 replicas available");
    }

    #[test]
    fn a_rollout_past_its_deadline_is_stalled() {
        let mut d = deployment(1, 1, 0);
        let status = d.status.as_mut().expect("status");
        status.conditions = Some(vec![serde_json::from_value(json!({
            "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet \"main-1\" has timed out progressing."
        }))
        .expect("condition")]);
        let w = readiness(1, &d);
        assert_eq!(states(&w), (false, false, true));
        assert_eq!(w[2].reason, "ProgressDeadlineExceeded");
        assert!(w[2].message.contains("timed out"), "{}", w[2].message);
    }

    #[test]
    fn invalid_specs_stall_and_failures_keep_reconciling() {
        assert_eq!(states(&invalid("x")), (false, false, true));
        let f = failed(&Error::Dependency("x".into()));
        assert_eq!(states(&f), (false, true, false));
        assert_eq!(f[0].reason, "DependencyNotReady");
    }

    #[test]
    fn events_mark_transitions_only() {
        let mut bc = binary_cache(MINIMAL);
        let waiting = readiness(1, &deployment(1, 0, 0));
        let first = readiness_event(&bc, &waiting).expect("first status is a transition");
        assert_eq!((first.reason, first.action), ("Progressing", "Reconcile"));
        bc.status = Some(status(&bc, &waiting, None, &t(1)));
        assert!(readiness_event(&bc, &waiting).is_none());
        let ready = readiness(1, &deployment(1, 1, 1));
        let ev = readiness_event(&bc, &ready).expect("became ready");
        assert_eq!(ev.reason, "Ready");
        assert_eq!(ev.note, "1/1 replicas available");
    }

    #[test]
    fn applied_status_has_replicas_and_nix_conf_values() {
        let bc = binary_cache(MINIMAL);
        let keys = [
            team(),
            CacheStatus {
                name: "ci".into(),
                public_key: "ci:k".into(),
            },
        ];
        let served = BTreeSet::from(["team".to_string()]);
        let d = deployment(1, 1, 1);
        let s = status(
            &bc,
            &readiness(1, &d),
            Some(applied(&keys, &served, &d)),
            &t(1),
        );
        assert_eq!(s.observed_generation, bc.metadata.generation);
        assert_eq!((s.replicas, s.ready_replicas), (Some(1), Some(1)));
        assert_eq!(s.replica_status.as_deref(), Some("1/1"));
        assert_eq!(
            s.caches,
            [
                CacheEndpoint {
                    name: "team".into(),
                    substituter: "http://e/team".into(),
                    public_key: "team:k".into(),
                    served: true,
                },
                CacheEndpoint {
                    name: "ci".into(),
                    substituter: "http://e/ci".into(),
                    public_key: "ci:k".into(),
                    served: false,
                }
            ]
        );
        let types: Vec<&str> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "Reconciling", "Stalled"]);
        assert!(s
            .conditions
            .iter()
            .all(|c| c.observed_generation == bc.metadata.generation));
    }

    #[test]
    fn old_condition_types_are_dropped_and_times_kept() {
        let mut bc = binary_cache(MINIMAL);
        bc.status = Some(BinaryCacheStatus {
            conditions: condition::merge(
                &[],
                &[
                    Wanted::new("Progressing", true, "Rollout", ""),
                    Wanted::new("Degraded", false, "Progressing", ""),
                ],
                Some(1),
                &t(1),
            ),
            ..BinaryCacheStatus::default()
        });
        let waiting = readiness(1, &deployment(1, 0, 0));
        bc.status = Some(status(&bc, &waiting, None, &t(2)));
        let again = status(&bc, &waiting, None, &t(3));
        assert_eq!(again.conditions.len(), 3);
        assert!(again
            .conditions
            .iter()
            .all(|c| c.last_transition_time == t(2)));
    }

    #[test]
    fn failures_keep_endpoint_keys_and_replicas() {
        let mut bc = binary_cache(MINIMAL);
        let keys = [CacheStatus {
            name: "team".into(),
            public_key: "team:k".into(),
        }];
        let d = deployment(1, 0, 0);
        bc.status = Some(status(
            &bc,
            &readiness(1, &d),
            Some(applied(&keys, &BTreeSet::new(), &d)),
            &t(1),
        ));
        let invalid = status(&bc, &invalid("replicas: bad"), None, &t(2));
        assert_eq!(invalid.endpoint.as_deref(), Some("http://e/"));
        assert_eq!(invalid.caches.len(), 1);
        assert_eq!(invalid.replica_status.as_deref(), Some("0/1"));
        assert_eq!(condition::is_true(&invalid.conditions, STALLED), Some(true));
        assert_eq!(
            condition::is_true(&invalid.conditions, RECONCILING),
            Some(false)
        );
        let failed = status(&bc, &failed(&Error::Dependency("x".into())), None, &t(3));
        let ready = failed
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("Ready");
        assert_eq!(ready.reason, "DependencyNotReady");
        assert_eq!(
            condition::is_true(&failed.conditions, RECONCILING),
            Some(true)
        );
    }
}
