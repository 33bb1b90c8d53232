//! Leader election against a real kube-apiserver: two operators share one Lease, only the
//! holder writes, a graceful shutdown hands over at once, and a holder cut off from the API
//! server is replaced once its Lease expires and steps down when it can reach it again.
//!
//! Each operator gets its own client whose requests pass through a small tower layer: it
//! counts the operator's writes (everything but GETs/watches and the Lease itself) and can
//! cut the operator off (every request fails, as in a network partition).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use garret_e2e::{wait_for, ControlPlane, Options, ADMIN_USER};
use garret_operator::controller::{self, Settings};
use garret_operator::leader::{run_while_leader, Election, Ended};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(90);
const LEASE: Duration = Duration::from_secs(4);

/// One operator replica running in this process.
struct Replica {
    writes: Arc<AtomicUsize>,
    cut_off: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<garret_operator::Result<Ended>>,
}

impl Replica {
    async fn start(cp: &ControlPlane, ns: &str, identity: &str) -> Replica {
        let writes = Arc::new(AtomicUsize::new(0));
        let cut_off = Arc::new(AtomicBool::new(false));
        let (w, c) = (writes.clone(), cut_off.clone());
        let layer =
            tower::filter::FilterLayer::new(move |req: http::Request<kube::client::Body>| {
                if c.load(Ordering::SeqCst) {
                    return Err("cut off from the API server".to_string());
                }
                let lease = req.uri().path().contains("/coordination.k8s.io/");
                if req.method() != http::Method::GET && !lease {
                    w.fetch_add(1, Ordering::SeqCst);
                }
                Ok(req)
            });
        let config = cp.config_for(ADMIN_USER).await.expect("kubeconfig");
        let client: Client = kube::client::ClientBuilder::try_from(config)
            .expect("client builder")
            .with_layer(&layer)
            .build();
        let settings = Settings {
            namespace: Some(ns.to_string()),
            rsa_bits: 2048,
            ..Settings::default()
        };
        let election = Election {
            duration: LEASE,
            grace: Duration::from_secs(1),
            ..Election::new(ns, identity)
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let work = controller::run(client.clone(), settings);
            let shutdown = async {
                let _ = stopped.await;
            };
            run_while_leader(client, &election, work, shutdown).await
        });
        Replica {
            writes,
            cut_off,
            stop: Some(stop),
            task,
        }
    }

    fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    async fn shut_down(mut self) -> Ended {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("join").expect("election")
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("garret-operator")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

async fn wait_holder(leases: &Api<Lease>, who: &str) -> Duration {
    let start = Instant::now();
    wait_for(T, &format!("{who} holds the Lease"), || async {
        Ok((holder(leases).await.as_deref() == Some(who)).then_some(()))
    })
    .await
    .expect("lease holder");
    start.elapsed()
}

async fn apply_cache(client: &Client, ns: &str, name: &str) {
    let api: Api<garret_operator::BinaryCache> = Api::namespaced(client.clone(), ns);
    let bc = json!({
        "apiVersion": "garret.dev/v1alpha1",
        "kind": "BinaryCache",
        "metadata": {"name": name},
        "spec": {"caches": [{"name": name}], "storage": {"volume": {"size": "1Gi"}}},
    });
    api.patch(name, &PatchParams::apply("garret-e2e"), &Patch::Apply(&bc))
        .await
        .expect("apply BinaryCache");
}

async fn wait_reconciled(client: &Client, ns: &str, name: &str) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(T, &format!("the Deployment of {name}"), || async {
        Ok(api.get_opt(name).await?.map(|_| ()))
    })
    .await
    .expect("reconciled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_another_replica_takes_over() {
    let cp = ControlPlane::shared(Options::new())
        .await
        .expect("control plane");
    let admin = cp.admin_client().await.expect("client");
    garret_e2e::install_garret_crds(&admin, T)
        .await
        .expect("install CRDs");
    let ns = cp.create_namespace("leader").await.expect("namespace");
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &ns);

    // a leads; b waits and writes nothing while a reconciles.
    let a = Replica::start(cp, &ns, "replica-a").await;
    wait_holder(&leases, "replica-a").await;
    let b = Replica::start(cp, &ns, "replica-b").await;
    apply_cache(&admin, &ns, "one").await;
    wait_reconciled(&admin, &ns, "one").await;
    assert!(a.writes() > 0, "the leader wrote nothing");
    assert_eq!(
        b.writes(),
        0,
        "the follower wrote while another replica led"
    );

    // A graceful stop (SIGTERM in a rolling update) releases the Lease: b takes over.
    let a_writes = a.writes();
    assert_eq!(a.shut_down().await, Ended::Shutdown);
    let handover = wait_holder(&leases, "replica-b").await;
    apply_cache(&admin, &ns, "two").await;
    wait_reconciled(&admin, &ns, "two").await;
    assert!(b.writes() > 0, "the new leader wrote nothing");
    eprintln!("leader: graceful handover in {handover:?} (lease {LEASE:?}), a wrote {a_writes}");

    // b is cut off from the API server without releasing anything: it steps down on its
    // own before its Lease expires, and a new replica takes over and reconciles.
    let c = Replica::start(cp, &ns, "replica-c").await;
    let b_writes = b.writes();
    b.cut_off.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    let ended = tokio::time::timeout(T, b.task)
        .await
        .expect("the cut-off replica steps down")
        .expect("join")
        .expect("election");
    assert_eq!(ended, Ended::LostLeadership);
    let stepped_down = cut.elapsed();
    wait_holder(&leases, "replica-c").await;
    let takeover = cut.elapsed();
    apply_cache(&admin, &ns, "three").await;
    wait_reconciled(&admin, &ns, "three").await;
    assert!(c.writes() > 0, "the replica that took over wrote nothing");
    b.cut_off.store(false, Ordering::SeqCst);
    assert_eq!(
        b.writes.load(Ordering::SeqCst),
        b_writes,
        "the cut-off replica wrote"
    );
    eprintln!(
        "leader: partitioned leader stepped down after {stepped_down:?}, new leader after \
         {takeover:?} (lease {LEASE:?})"
    );
    drop(c);
}
