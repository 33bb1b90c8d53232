//! What a BinaryCache's status says, as pure functions: conditions from the applied
//! Deployment (or from the failure), merged the Kubernetes way (see `condition`), plus the
//! endpoint and public keys [`super::desired`] implies. The controller only writes the result.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::meta::{normal_event, Note};
use crate::condition::{self, Wanted};
use crate::types::{BinaryCache, BinaryCacheStatus, CacheStatus};
use crate::Error;

/// Ready / Progressing / Degraded from what the Deployment reports. Only the Deployment
/// controller's own accounting counts: no pod has passed `/readyz`, no readiness.
pub fn readiness(want: i32, d: &Deployment) -> [Wanted; 3] {
    let status = d.status.clone().unwrap_or_default();
    let observed =
        status.observed_generation == d.metadata.generation && d.metadata.generation.is_some();
    let available = status.available_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let ready = observed && available >= want && updated >= want;
    let msg = format!("{available}/{want} replicas available");
    if ready {
        [
            Wanted::new("Ready", true, "Available", msg.clone()),
            Wanted::new("Progressing", false, "Complete", msg.clone()),
            Wanted::new("Degraded", false, "Available", msg),
        ]
    } else {
        [
            Wanted::new("Ready", false, "WaitingForReplicas", msg.clone()),
            Wanted::new("Progressing", true, "Rollout", msg.clone()),
            Wanted::new("Degraded", false, "Progressing", msg),
        ]
    }
}

/// Conditions for a spec [`super::validate`] rejected: nothing is applied until it changes.
pub fn invalid(msg: &str) -> [Wanted; 3] {
    [
        Wanted::new("Ready", false, "InvalidSpec", msg),
        Wanted::new("Progressing", false, "InvalidSpec", msg),
        Wanted::new("Degraded", true, "InvalidSpec", msg),
    ]
}

/// Conditions after a failed apply; back-off retries it.
pub fn failed(e: &Error) -> [Wanted; 2] {
    [
        Wanted::new("Ready", false, e.reason(), e.to_string()),
        Wanted::new("Degraded", true, e.reason(), e.to_string()),
    ]
}

/// The status to write: `wanted` merged into the current conditions at `now`; endpoint and
/// public keys replaced when `children` is given (a successful apply), else kept.
pub fn status(
    bc: &BinaryCache,
    wanted: &[Wanted],
    children: Option<(&str, &[CacheStatus])>,
    now: &Time,
) -> BinaryCacheStatus {
    let current = bc.status.clone().unwrap_or_default();
    let generation = bc.metadata.generation;
    let (endpoint, caches) = match children {
        Some((endpoint, caches)) => (Some(endpoint.to_string()), caches.to_vec()),
        None => (current.endpoint, current.caches),
    };
    BinaryCacheStatus {
        observed_generation: generation,
        conditions: condition::merge(&current.conditions, wanted, generation, now),
        endpoint,
        caches,
    }
}

/// The Event marking a change of readiness (`Ready` or `Progressing`), if there was one.
pub fn readiness_event(bc: &BinaryCache, wanted: &[Wanted; 3]) -> Option<Note> {
    let was_ready = bc
        .status
        .as_ref()
        .and_then(|s| condition::is_true(&s.conditions, "Ready"));
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
            "status": {"observedGeneration": observed, "availableReplicas": available, "updatedReplicas": available}
        }))
        .expect("deployment")
    }

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).expect("time"))
    }

    #[test]
    fn ready_only_when_the_deployment_says_so() {
        let fresh = readiness(1, &deployment(1, 0, 0));
        assert!(!fresh[0].status && fresh[1].status && !fresh[2].status);
        let stale = readiness(1, &deployment(2, 1, 1));
        assert!(
            !stale[0].status,
            "status of an older generation does not count"
        );
        let done = readiness(1, &deployment(2, 2, 1));
        assert!(done[0].status && !done[1].status);
        assert_eq!(done[0].message, "1/1 replicas available");
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
    fn failures_keep_endpoint_and_keys() {
        let mut bc = binary_cache(MINIMAL);
        let keys = [CacheStatus {
            name: "team".into(),
            public_key: "team:k".into(),
        }];
        bc.status = Some(status(
            &bc,
            &readiness(1, &deployment(1, 0, 0)),
            Some(("http://e/", &keys)),
            &t(1),
        ));
        let invalid = status(&bc, &invalid("replicas: bad"), None, &t(2));
        assert_eq!(invalid.endpoint.as_deref(), Some("http://e/"));
        assert_eq!(invalid.caches, keys);
        assert_eq!(
            condition::is_true(&invalid.conditions, "Degraded"),
            Some(true)
        );
        assert_eq!(
            condition::is_true(&invalid.conditions, "Progressing"),
            Some(false)
        );
        let failed = status(&bc, &failed(&Error::Dependency("x".into())), None, &t(3));
        let ready = failed
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.reason, "DependencyNotReady");
        // Progressing is not part of a failure: it keeps what the last apply said.
        assert_eq!(
            condition::is_true(&failed.conditions, "Progressing"),
            Some(true)
        );
    }
}
