//! Leader election on a `coordination.k8s.io/v1` Lease, so that several operator replicas
//! can run and exactly one of them writes.
//!
//! States of one replica:
//! 1. **Waiting**: it competes for the Lease and runs no controller.
//! 2. **Leading**: it holds the Lease (renewed `grace` before it expires) and runs the
//!    controllers.
//! 3. **Done**: leadership was lost (another replica holds the Lease, or the Lease could not
//!    be confirmed for `duration - grace`, so a replica cut off from the API server stops
//!    before anyone else may take over) or shutdown was asked.
//!    The controllers are dropped before the Lease is given up, so two replicas never write
//!    at once; after a loss the caller exits and the pod restarts into state 1, the way
//!    controller-runtime operators behave.
//!
//! On shutdown (SIGTERM in a rolling update) the Lease is released, so the next replica
//! takes over at once instead of after the Lease's duration. A replica that dies without
//! releasing is replaced after at most `duration`. The Lease machinery is the well-kept
//! `kube-lease-manager` crate (server-side apply with conflict detection).

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;

use crate::{Error, Result};

/// Where and how to elect.
#[derive(Clone, Debug)]
pub struct Election {
    /// Name of the Lease.
    pub lease: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// This replica's identity in the Lease (its pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal; the longest a takeover waits.
    pub duration: Duration,
    /// The holder renews this long before the Lease would expire.
    pub grace: Duration,
}

impl Election {
    /// The defaults of the chart: Lease `garret-operator`, 15 s, renewed 5 s before expiry.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Election {
        Election {
            lease: "garret-operator".into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            grace: Duration::from_secs(5),
        }
    }
}

/// How a replica's term ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Another replica took the Lease: exit and compete again.
    LostLeadership,
    /// `shutdown` resolved; the Lease was released.
    Shutdown,
    /// The work itself returned (it normally runs for ever).
    WorkReturned,
}

/// Whether the Lease (read from the API server) names this replica; `None` when it cannot
/// be read.
async fn still_holder(leases: &Api<Lease>, election: &Election) -> Option<bool> {
    let lease = leases.get_opt(&election.lease).await.ok()?;
    let holder = lease.and_then(|l| l.spec).and_then(|s| s.holder_identity);
    Some(holder.as_deref() == Some(election.identity.as_str()))
}

/// Wait for the Lease, then run `work` while holding it. Returns when leadership is lost,
/// `shutdown` resolves, or `work` returns; the Lease is released in every case but a loss.
pub async fn run_while_leader<W, S>(
    client: Client,
    election: &Election,
    work: W,
    shutdown: S,
) -> Result<Ended>
where
    W: Future<Output = ()>,
    S: Future<Output = ()>,
{
    let secs = |d: Duration| d.as_secs().max(1);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &election.namespace);
    let manager = LeaseManagerBuilder::new(client, &election.lease)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(secs(election.duration))
        .with_grace(secs(election.grace))
        .build()
        .await
        .map_err(|e| Error::Leader(e.to_string()))?;
    let (mut leading, task) = manager.watch().await;
    tokio::pin!(shutdown);
    tracing::info!(lease = %election.lease, identity = %election.identity, "waiting for leadership");
    let ended = loop {
        if *leading.borrow_and_update() {
            break None;
        }
        tokio::select! {
            changed = leading.changed() => if changed.is_err() {
                return Err(Error::Leader("the lease watcher stopped".into()));
            },
            () = &mut shutdown => break Some(Ended::Shutdown),
        }
    };
    let ended = match ended {
        Some(ended) => ended,
        None => {
            tracing::info!(identity = %election.identity, "leading: starting the controllers");
            crate::metrics::global().leader.set(1);
            tokio::pin!(work);
            let mut check = tokio::time::interval(election.grace.max(Duration::from_secs(1)));
            let mut confirmed = Instant::now();
            loop {
                tokio::select! {
                    () = &mut work => break Ended::WorkReturned,
                    () = &mut shutdown => break Ended::Shutdown,
                    changed = leading.changed() => {
                        if changed.is_err() || !*leading.borrow_and_update() {
                            break Ended::LostLeadership;
                        }
                    }
                    _ = check.tick() => match still_holder(&leases, election).await {
                        Some(true) => confirmed = Instant::now(),
                        Some(false) => break Ended::LostLeadership,
                        // Unreachable API server: step down before the Lease can expire
                        // and another replica take it (client-go's renew deadline).
                        None if confirmed.elapsed() + election.grace >= election.duration => {
                            tracing::warn!("cannot confirm the lease: stepping down");
                            break Ended::LostLeadership;
                        }
                        None => {}
                    },
                }
            }
            // `work` is dropped here, before the Lease can pass to anyone else.
        }
    };
    crate::metrics::global().leader.set(0);
    tracing::info!(identity = %election.identity, ?ended, "leaving the election");
    // Closing the channel makes the watcher release the Lease (if held) and stop.
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the lease"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the lease watcher panicked"),
        Err(_) => tracing::warn!("the lease was not released within 5 s; it expires on its own"),
    }
    Ok(ended)
}
