//! Prometheus metrics. One process-wide registry, so the store and GC count where the work
//! happens without threading handles through every call; `GET /metrics` renders it.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template (`/{cache}/{file}`), never a cache name or token.
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UploadLabels {
    /// `new` (a NAR being received and stored) or `stored-nar` (the body of an already
    /// stored NAR being read to prove possession).
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram>,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub nars_uploaded: Counter,
    pub nars_deduplicated: Counter,
    pub chunks_stored: Counter,
    pub chunks_deduplicated: Counter,
    pub storage_bytes: Gauge,
    pub gc_runs: Counter,
    pub gc_bytes_freed: Counter,
    pub gc_temp_files_swept: Counter,
    pub http_connections_open: Gauge,
    pub http_accept_errors: Counter,
    pub nar_read_buffered_bytes: Gauge,
    pub nar_read_buffer_budget: Gauge,
    pub uploads_in_progress: Family<UploadLabels, Gauge>,
    pub declared_config_applied: Gauge,
    /// Pushed revocations the mounted list does not carry yet (api/revocations.rs).
    pub revocations_held: Gauge,
    /// Resumable uploads (store/parts.rs): parts staged, parts sent again (no-ops), and
    /// sessions GC removed unfinished.
    pub upload_parts_stored: Counter,
    pub upload_parts_redundant: Counter,
    pub upload_sessions_abandoned: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Registers a metric and hands it back (metrics are shared handles).
fn add<M: prometheus_client::registry::Metric + Clone>(
    r: &mut Registry,
    name: &str,
    help: &str,
    m: M,
) -> M {
    r.register(name, help, m.clone());
    m
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("garret");
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        Metrics {
            requests: add(
                &mut r,
                "http_requests",
                "HTTP requests by route, method and status",
                Family::default(),
            ),
            latency: add(
                &mut r,
                "http_request_duration_seconds",
                "HTTP request latency by route",
                latency,
            ),
            bytes_in: add(
                &mut r,
                "nar_bytes_received",
                "Uncompressed NAR bytes received by uploads",
                Counter::default(),
            ),
            bytes_out: add(
                &mut r,
                "nar_bytes_sent",
                "NAR file bytes sent to clients",
                Counter::default(),
            ),
            nars_uploaded: add(
                &mut r,
                "nars_uploaded",
                "NARs stored by uploads",
                Counter::default(),
            ),
            nars_deduplicated: add(
                &mut r,
                "nars_deduplicated",
                "Uploads answered by an already stored NAR",
                Counter::default(),
            ),
            chunks_stored: add(
                &mut r,
                "chunks_stored",
                "Chunks written to storage",
                Counter::default(),
            ),
            chunks_deduplicated: add(
                &mut r,
                "chunks_deduplicated",
                "Chunks reused instead of written",
                Counter::default(),
            ),
            storage_bytes: add(
                &mut r,
                "storage_bytes",
                "Compressed bytes of the chunks in storage (as of the last scrape)",
                Gauge::default(),
            ),
            gc_runs: add(
                &mut r,
                "gc_runs",
                "Garbage collection runs",
                Counter::default(),
            ),
            gc_bytes_freed: add(
                &mut r,
                "gc_bytes_freed",
                "Compressed bytes of the chunks garbage collection deleted",
                Counter::default(),
            ),
            gc_temp_files_swept: add(
                &mut r,
                "gc_temp_files_swept",
                "Temporary files of interrupted uploads garbage collection removed",
                Counter::default(),
            ),
            http_connections_open: add(
                &mut r,
                "http_connections_open",
                "Client connections being served",
                Gauge::default(),
            ),
            http_accept_errors: add(
                &mut r,
                "http_accept_errors",
                "Failed accepts on the listener (e.g. out of file descriptors)",
                Counter::default(),
            ),
            nar_read_buffered_bytes: add(
                &mut r,
                "nar_read_buffered_bytes",
                "NAR bytes read for downloads and not yet sent (counted against the budget)",
                Gauge::default(),
            ),
            uploads_in_progress: add(
                &mut r,
                "uploads_in_progress",
                "Uploads reading their body, by kind (new NAR, or proof of possession of a stored one)",
                Family::default(),
            ),
            nar_read_buffer_budget: add(
                &mut r,
                "nar_read_buffer_budget_bytes",
                "The budget of NAR bytes downloads may hold at once ([http] nar-read-buffer-budget)",
                Gauge::default(),
            ),
            declared_config_applied: add(
                &mut r,
                "declared_config_applied",
                "1 when every cache the config file declares is applied as declared, 0 while \
                 some are not (the file is invalid, or a key file is missing; retried with backoff)",
                Gauge::default(),
            ),
            revocations_held: add(
                &mut r,
                "revocations_held",
                "Revocations pushed by the operator that the mounted revocation list does not \
                 carry yet; they are honoured meanwhile (stays above 0 if the file never updates)",
                Gauge::default(),
            ),
            upload_parts_stored: add(
                &mut r,
                "upload_parts_stored",
                "Parts of resumable uploads received, checked and staged",
                Counter::default(),
            ),
            upload_parts_redundant: add(
                &mut r,
                "upload_parts_redundant",
                "Parts of resumable uploads sent again although already staged (no-ops)",
                Counter::default(),
            ),
            upload_sessions_abandoned: add(
                &mut r,
                "upload_sessions_abandoned",
                "Unfinished resumable upload sessions garbage collection removed",
                Counter::default(),
            ),
            registry: r,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_families() {
        METRICS.gc_runs.inc();
        METRICS
            .requests
            .get_or_create(&RequestLabels {
                route: "/healthz".into(),
                method: "GET".into(),
                status: 200,
            })
            .inc();
        let text = METRICS.render();
        assert!(text.contains("garret_gc_runs_total"), "{text}");
        assert!(
            text.contains(
                "garret_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"}"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
