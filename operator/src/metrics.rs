//! The operator's own metrics and health endpoints, on one small HTTP listener:
//! `/metrics` (Prometheus text format), `/healthz` (the process serves) and `/readyz` (it has
//! reached the API server once; a standby replica is ready too: it is healthy, just not
//! leading, and `garret_operator_leader` says which one leads).
//!
//! One process-wide registry, so the controllers record without carrying a handle around.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub namespace: String,
    pub name: String,
}

/// Everything the operator counts.
pub struct Metrics {
    registry: Registry,
    /// Reconciles finished, by kind and `success`/`error`.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Reconcile durations by kind.
    pub duration: Family<KindLabel, Histogram>,
    /// Reconciles running now, by kind (the work the controllers have taken off their queue).
    pub in_flight: Family<KindLabel, Gauge>,
    /// 1 while this replica holds the leader Lease (or runs without election).
    pub leader: Gauge,
    /// Each CacheToken's current token's expiry as a Unix time; `x - time()` is the time
    /// left, as cert-manager exposes certificates.
    pub token_expiry: Family<TokenLabels, Gauge>,
    /// Revocation lists pushed to garretd pods, by `ok`/`failed` (one per pod and push).
    pub revocation_pushes: Family<ResultLabel, Counter>,
    /// Objects waiting to reconcile, by kind: set from [`Metrics::queues`] on every render.
    queue_depth: Family<KindLabel, Gauge>,
    queues: Mutex<BTreeMap<&'static str, Queue>>,
    ready: AtomicBool,
}

/// Whether the object with this key still exists (the controller's store knows it).
pub type Exists = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// A kind's [`QueueDepth`], and how to tell that one of its objects is gone (a deleted object
/// is dropped from the controller's queue without a reconcile).
#[derive(Default)]
struct Queue {
    depth: QueueDepth,
    /// One per controller of the kind (tests run several in one process): an object exists
    /// when one of them knows it.
    exists: Vec<Exists>,
}

/// What waits to reconcile, for one kind: objects a watch event woke (their own change, a
/// child's, a related object's) whose reconcile has not started yet, plus objects whose
/// requeue time has come and whose reconcile has not started yet. An object is counted once
/// however often it was woken (the controller's queue also holds it once), and one woken while
/// its reconcile runs is counted: the controller runs it again afterwards. Requeues still in
/// the future are not waiting, and are not counted.
#[derive(Debug, Default)]
pub struct QueueDepth {
    woken: HashSet<String>,
    due: HashMap<String, Instant>,
}

impl QueueDepth {
    /// A watch event woke `key`.
    pub fn woken(&mut self, key: &str) {
        if !self.woken.contains(key) {
            self.woken.insert(key.to_string());
        }
    }

    /// The reconcile of `key` starts: it no longer waits.
    pub fn started(&mut self, key: &str) {
        self.woken.remove(key);
        self.due.remove(key);
    }

    /// `key` asked to be reconciled again at `at` (its next renewal, a retry).
    pub fn requeued(&mut self, key: &str, at: Instant) {
        self.due.insert(key.to_string(), at);
    }

    /// `key` is gone: nothing of it waits.
    pub fn forget(&mut self, key: &str) {
        self.started(key);
    }

    /// Drop every object for which `exists` says no.
    pub fn retain(&mut self, exists: impl Fn(&str) -> bool) {
        self.woken.retain(|k| exists(k));
        self.due.retain(|k, _| exists(k));
    }

    /// How many objects wait at `now`.
    pub fn depth(&self, now: Instant) -> usize {
        let due = self
            .due
            .iter()
            .filter(|(k, at)| **at <= now && !self.woken.contains(*k))
            .count();
        self.woken.len() + due
    }
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("garret_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register("reconciles", "Reconciles finished", reconciles.clone());
        let duration = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        let in_flight = Family::<KindLabel, Gauge>::default();
        registry.register(
            "reconciles_in_flight",
            "Reconciles running now",
            in_flight.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica leads (holds the Lease)",
            leader.clone(),
        );
        let token_expiry = Family::<TokenLabels, Gauge>::default();
        registry.register(
            "token_expiry_timestamp_seconds",
            "When each CacheToken's current token expires (Unix time)",
            token_expiry.clone(),
        );
        let revocation_pushes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "revocation_pushes",
            "Revocation lists pushed to garretd pods (one per pod); a failed push waits for the mounted list",
            revocation_pushes.clone(),
        );
        let queue_depth = Family::<KindLabel, Gauge>::default();
        registry.register(
            "queue_depth",
            "Objects waiting to reconcile: woken by a watch event or due for a requeue, not started yet",
            queue_depth.clone(),
        );
        Metrics {
            registry,
            reconciles,
            duration,
            in_flight,
            leader,
            token_expiry,
            revocation_pushes,
            queue_depth,
            queues: Mutex::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
        }
    }

    /// Run `f` on the queue of `kind`.
    fn queue<T>(&self, kind: &'static str, f: impl FnOnce(&mut QueueDepth) -> T) -> T {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut queues.entry(kind).or_default().depth)
    }

    /// One more way to tell that an object of `kind` still exists (see [`Queue`]).
    pub fn queue_exists(&self, kind: &'static str, exists: Exists) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.entry(kind).or_default().exists.push(exists);
    }

    /// A watch event woke object `key` of `kind`.
    pub fn woken(&self, kind: &'static str, key: &str) {
        self.queue(kind, |q| q.woken(key));
    }

    /// Object `key` of `kind` is to be reconciled again after `delay` (ignored for a kind
    /// whose queue is not counted).
    pub fn requeued(&self, kind: &str, key: &str, delay: Duration) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = queues.get_mut(kind) {
            q.depth.requeued(key, Instant::now() + delay);
        }
    }

    /// Object `key` of `kind` was deleted.
    pub fn forget(&self, kind: &'static str, key: &str) {
        self.queue(kind, |q| q.forget(key));
    }

    /// Objects of `kind` waiting to reconcile now (deleted ones dropped first).
    pub fn queue_depth(&self, kind: &str) -> usize {
        let now = Instant::now();
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(q) = queues.get_mut(kind) else {
            return 0;
        };
        if !q.exists.is_empty() {
            let exists = &q.exists;
            q.depth.retain(|k| exists.iter().any(|e| e(k)));
        }
        q.depth.depth(now)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let kinds: Vec<&'static str> = {
            let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            queues.keys().copied().collect()
        };
        for kind in kinds {
            let depth = i64::try_from(self.queue_depth(kind)).unwrap_or(i64::MAX);
            self.queue_depth
                .get_or_create(&KindLabel { kind })
                .set(depth);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Mark the process ready (`/readyz` answers 200 from now on).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Record the token of CacheToken `namespace/name` expiring at `exp` (Unix seconds).
    pub fn token_expires(&self, namespace: &str, name: &str, exp: u64) {
        let labels = TokenLabels {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.token_expiry
            .get_or_create(&labels)
            .set(i64::try_from(exp).unwrap_or(i64::MAX));
    }

    /// Forget CacheToken `namespace/name` (deleted).
    pub fn token_gone(&self, namespace: &str, name: &str) {
        self.token_expiry.remove(&TokenLabels {
            namespace: namespace.to_string(),
            name: name.to_string(),
        });
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// [`timed`], for a kind whose wake-ups are counted in `queue_depth`: object `key` leaves the
/// queue as its reconcile starts.
pub async fn timed_queued<T, E, F>(kind: &'static str, key: &str, reconcile: F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
{
    global().queue(kind, |q| q.started(key));
    timed(kind, reconcile).await
}

/// Run one reconcile of `kind`, counting it, its result and its duration.
pub async fn timed<T, E, F>(kind: &'static str, reconcile: F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
{
    let m = global();
    let label = KindLabel { kind };
    m.in_flight.get_or_create(&label).inc();
    let start = Instant::now();
    let result = reconcile.await;
    m.in_flight.get_or_create(&label).dec();
    m.duration
        .get_or_create(&label)
        .observe(start.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "success" } else { "error" };
    m.reconciles
        .get_or_create(&ReconcileLabels {
            kind,
            result: outcome,
        })
        .inc();
    result
}

/// The answer for one request to the metrics listener.
fn respond(path: &str) -> Response<Full<Bytes>> {
    let m = global();
    let (status, body, content_type) = match path {
        "/metrics" => (
            StatusCode::OK,
            m.render(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/healthz" => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
        "/readyz" if m.ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, "ok\n".to_string(), "text/plain")
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not yet connected to the API server\n".to_string(),
            "text/plain",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found\n".to_string(),
            "text/plain",
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics and health endpoints listening");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                let response = respond(req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(std::time::Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(io, service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reconciles_are_counted_by_kind_and_result() {
        let ok: Result<(), ()> = timed("TestKind", async { Ok(()) }).await;
        assert!(ok.is_ok());
        let err: Result<(), ()> = timed("TestKind", async { Err(()) }).await;
        assert!(err.is_err());
        global().token_expires("ns", "t", 1_900_000_000);
        let text = global().render();
        assert!(
            text.contains(
                r#"garret_operator_reconciles_total{kind="TestKind",result="success"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"garret_operator_reconciles_total{kind="TestKind",result="error"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"garret_operator_token_expiry_timestamp_seconds{namespace="ns",name="t"} 1900000000"#),
            "{text}"
        );
        assert!(text.contains(r#"garret_operator_reconciles_in_flight{kind="TestKind"} 0"#));
        global().token_gone("ns", "t");
        assert!(!global().render().contains(r#"name="t""#));
    }

    #[test]
    fn queue_depth_counts_each_waiting_object_once() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        let mut q = QueueDepth::default();
        assert_eq!(q.depth(t0), 0);
        q.woken("ns/a");
        q.woken("ns/a");
        q.woken("ns/b");
        assert_eq!(q.depth(t0), 2, "woken twice is waiting once");
        q.started("ns/a");
        assert_eq!(q.depth(t0), 1);
        // Woken while its reconcile runs: it runs again, so it waits.
        q.woken("ns/a");
        assert_eq!(q.depth(t0), 2);
        q.started("ns/a");
        q.started("ns/b");
        assert_eq!(q.depth(t0), 0);
        // A requeue waits only once it is due, and once even if also woken.
        q.requeued("ns/a", t0 + Duration::from_secs(30));
        assert_eq!(q.depth(t0), 0);
        assert_eq!(q.depth(later), 1);
        q.woken("ns/a");
        assert_eq!(q.depth(later), 1);
        q.started("ns/a");
        assert_eq!(q.depth(later), 0);
        q.requeued("ns/c", t0);
        q.forget("ns/c");
        assert_eq!(q.depth(later), 0);
        // Deleted objects leave the queue without a reconcile.
        q.woken("ns/gone");
        q.requeued("ns/gone-too", t0);
        q.woken("ns/here");
        q.retain(|k| k == "ns/here");
        assert_eq!(q.depth(later), 1);
    }

    #[tokio::test]
    async fn queue_depth_is_exported_per_kind() {
        let m = global();
        m.woken("QueueKind", "ns/x");
        m.woken("QueueKind", "ns/y");
        assert_eq!(m.queue_depth("QueueKind"), 2);
        assert!(m
            .render()
            .contains(r#"garret_operator_queue_depth{kind="QueueKind"} 2"#));
        let ok: Result<(), ()> = timed_queued("QueueKind", "ns/x", async { Ok(()) }).await;
        assert!(ok.is_ok());
        assert_eq!(m.queue_depth("QueueKind"), 1);
        m.requeued("QueueKind", "ns/y", Duration::from_secs(3600));
        m.requeued("UncountedKind", "ns/y", Duration::ZERO);
        assert_eq!(m.queue_depth("UncountedKind"), 0);
        let _: Result<(), ()> = timed_queued("QueueKind", "ns/y", async { Ok(()) }).await;
        m.woken("QueueKind", "ns/deleted");
        m.queue_exists("QueueKind", Box::new(|k: &str| k != "ns/deleted"));
        assert!(m
            .render()
            .contains(r#"garret_operator_queue_depth{kind="QueueKind"} 0"#));
    }

    #[test]
    fn readyz_waits_for_the_api_server_and_unknown_paths_are_404() {
        assert_eq!(respond("/healthz").status(), StatusCode::OK);
        assert_eq!(respond("/nope").status(), StatusCode::NOT_FOUND);
        // (Readiness is process-wide; the other test never sets it.)
        assert_eq!(respond("/readyz").status(), StatusCode::SERVICE_UNAVAILABLE);
        global().set_ready();
        assert_eq!(respond("/readyz").status(), StatusCode::OK);
    }
}
