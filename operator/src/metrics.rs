//! The operator's own metrics and health endpoints, on one small HTTP listener:
//! `/metrics` (Prometheus text format), `/healthz` (the process serves) and `/readyz` (it has
//! reached the API server once; a standby replica is ready too: it is healthy, just not
//! leading, and `garret_operator_leader` says which one leads).
//!
//! One process-wide registry, so the controllers record without carrying a handle around.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

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
    ready: AtomicBool,
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
        Metrics {
            registry,
            reconciles,
            duration,
            in_flight,
            leader,
            token_expiry,
            ready: AtomicBool::new(false),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
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
    fn readyz_waits_for_the_api_server_and_unknown_paths_are_404() {
        assert_eq!(respond("/healthz").status(), StatusCode::OK);
        assert_eq!(respond("/nope").status(), StatusCode::NOT_FOUND);
        // (Readiness is process-wide; the other test never sets it.)
        assert_eq!(respond("/readyz").status(), StatusCode::SERVICE_UNAVAILABLE);
        global().set_ready();
        assert_eq!(respond("/readyz").status(), StatusCode::OK);
    }
}
