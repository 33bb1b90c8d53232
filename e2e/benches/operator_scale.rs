//! The operator at scale, on the real control plane (etcd + kube-apiserver), with the release
//! `garret-operator` binary running under the chart's ClusterRole as its ServiceAccount.
//!
//! 1. A BinaryCache applied while the operator is quiet: time until its status is written
//!    (the operator writes status after every child is applied).
//! 2. One BinaryCache and N CacheTokens (default 1,000) applied at once: time until every
//!    token is Ready for its generation, apiserver requests per token (from the apiserver's
//!    `apiserver_request_total`, minus the benchmark's own requests), operator CPU.
//! 3. All N tokens patched (a permission added): time until every token is re-issued, with a
//!    BinaryCache applied right after the patches (latency while busy).
//! 4. Right after the churn: another BinaryCache's latency, and the operator's CPU seconds in
//!    the next `GARRET_BENCH_IDLE_SECS` (60) seconds; it should be about zero.
//!
//! Operator peak RSS is `VmHWM` from `/proc/<pid>/status`; CPU is utime+stime from
//! `/proc/<pid>/stat`. Not a test: it asserts nothing and prints a table.
//!
//! ```sh
//! cargo build --release -p garret-operator
//! GARRET_TESTBIN_DIR=$(bash tools/k8s-testbin/build.sh --print-dir) \
//!   cargo run --release -p garret-e2e --features bench --bin operator-scale
//! ```
//!
//! (A binary behind the `bench` feature rather than a `cargo bench` target: it needs none of
//! the test-only dependencies, so it builds without garretd.)
//!
//! Environment: `GARRET_OPERATOR_BIN` (default `$CARGO_TARGET_DIR/release/garret-operator`,
//! else `target/release/garret-operator`), `GARRET_BENCH_TOKENS` (1000),
//! `GARRET_BENCH_IDLE_SECS` (60).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt, TryStreamExt};
use garret_e2e::{ControlPlane, Identity, Options};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::Client;
use serde_json::json;

const OPERATOR_USER: &str = "system:serviceaccount:garret-system:garret-operator";
const WAIT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(250);

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, Error>;

/// Requests this benchmark itself sent, by (verb, resource), to subtract from the apiserver's.
#[derive(Default)]
struct Own {
    token_patches: AtomicU64,
    token_lists: AtomicU64,
    cache_patches: AtomicU64,
    cache_gets: AtomicU64,
}

impl Own {
    fn snapshot(&self) -> BTreeMap<(String, String), u64> {
        let mut m = BTreeMap::new();
        let mut put = |verb: &str, res: &str, n: &AtomicU64| {
            m.insert(
                (verb.to_string(), res.to_string()),
                n.load(Ordering::Relaxed),
            );
        };
        put("APPLY", "cachetokens", &self.token_patches);
        put("LIST", "cachetokens", &self.token_lists);
        put("APPLY", "binarycaches", &self.cache_patches);
        put("GET", "binarycaches", &self.cache_gets);
        m
    }
}

/// `apiserver_request_total` summed by (verb, resource[/subresource]); non-resource requests
/// (the /metrics scrape itself) are left out.
async fn apiserver_requests(client: &Client) -> Result<BTreeMap<(String, String), u64>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let resource = label("resource");
        if resource.is_empty() {
            continue;
        }
        let sub = label("subresource");
        let res = if sub.is_empty() {
            resource
        } else {
            format!("{resource}/{sub}")
        };
        let n: f64 = value.trim().parse().unwrap_or(0.0);
        *out.entry((label("verb"), res)).or_insert(0) += n as u64;
    }
    Ok(out)
}

/// The operator's requests between two snapshots: apiserver delta minus our own delta.
fn operator_requests(
    before: &BTreeMap<(String, String), u64>,
    after: &BTreeMap<(String, String), u64>,
    own_before: &BTreeMap<(String, String), u64>,
    own_after: &BTreeMap<(String, String), u64>,
) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for (k, v) in after {
        let d = v.saturating_sub(*before.get(k).unwrap_or(&0));
        let own = own_after
            .get(k)
            .unwrap_or(&0)
            .saturating_sub(*own_before.get(k).unwrap_or(&0));
        let n = d.saturating_sub(own);
        if n > 0 {
            out.insert(k.clone(), n);
        }
    }
    out
}

/// The operator process and what /proc says about it.
struct Operator {
    child: Child,
}

impl Operator {
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        (ticks(11) + ticks(12)) as f64 / hz
    }

    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn operator_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GARRET_OPERATOR_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    target.join("release/garret-operator")
}

/// The chart's ClusterRole and binding, rendered by helm, as one YAML stream.
fn chart_rbac() -> Result<String> {
    let helm = garret_e2e::testbin_dir()?.join("helm");
    let out = Command::new(&helm)
        .args(["template", "garret-operator"])
        .arg(repo().join("charts/garret-operator"))
        .args(["--namespace", "garret-system"])
        .output()?;
    if !out.status.success() {
        return Err(format!("helm template: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&String::from_utf8(out.stdout)?)?;
    Ok(docs
        .into_iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some("ClusterRole" | "ClusterRoleBinding")
            )
        })
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n"))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn binary_cache(name: &str) -> serde_json::Value {
    json!({"apiVersion": "garret.dev/v1alpha1", "kind": "BinaryCache",
           "metadata": {"name": name}, "spec": {"caches": [{"name": "c"}]}})
}

fn cache_token(i: usize, push: bool) -> serde_json::Value {
    let mut perms = json!({"pull": ["c"]});
    if push {
        perms["push"] = json!(["c"]);
    }
    json!({"apiVersion": "garret.dev/v1alpha1", "kind": "CacheToken",
           "metadata": {"name": format!("t{i}")},
           "spec": {"binaryCacheRef": {"name": "main"}, "subject": format!("ci-{i}"),
                    "permissions": perms, "secretName": format!("t{i}-token")}})
}

/// An Api for one of Garret's kinds, untyped (this binary needs none of the operator's code).
fn garret_api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("garret.dev", "v1alpha1", kind);
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

/// Status written for the current generation, with a `Ready` condition (`True` if `ready`).
fn observed(obj: &DynamicObject, ready: bool) -> bool {
    let status = &obj.data["status"];
    status["observedGeneration"].as_i64() == obj.metadata.generation
        && status["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && (!ready || c["status"] == "True"))
        })
}

fn ready_for_generation(ct: &DynamicObject, min_revision: i64) -> bool {
    observed(ct, true) && ct.data["status"]["revision"].as_i64().unwrap_or(0) >= min_revision
}

/// Poll until `n` tokens are Ready at `min_revision` or later.
async fn wait_tokens(
    api: &Api<DynamicObject>,
    own: &Own,
    n: usize,
    min_revision: i64,
) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        own.token_lists.fetch_add(1, Ordering::Relaxed);
        let list = api.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|t| ready_for_generation(t, min_revision))
            .count();
        if ready >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("only {ready} of {n} tokens ready after {WAIT:?}").into());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Apply BinaryCache `name` and return the time until its status is written for its
/// generation (after all its children are applied).
async fn cache_latency(api: &Api<DynamicObject>, own: &Own, name: &str) -> Result<Duration> {
    let start = Instant::now();
    own.cache_patches.fetch_add(1, Ordering::Relaxed);
    api.patch(
        name,
        &PatchParams::apply("bench").force(),
        &Patch::Apply(binary_cache(name)),
    )
    .await?;
    loop {
        own.cache_gets.fetch_add(1, Ordering::Relaxed);
        let bc = api.get(name).await?;
        if observed(&bc, false) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > WAIT {
            return Err(format!("BinaryCache {name} never got status").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn apply_tokens(api: &Api<DynamicObject>, own: &Own, n: usize, push: bool) -> Result<()> {
    stream::iter(0..n)
        .map(|i| async move {
            own.token_patches.fetch_add(1, Ordering::Relaxed);
            api.patch(
                &format!("t{i}"),
                &PatchParams::apply("bench").force(),
                &Patch::Apply(cache_token(i, push)),
            )
            .await
            .map(drop)
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn print_requests(title: &str, reqs: &BTreeMap<(String, String), u64>, n: usize) {
    let total: u64 = reqs.values().sum();
    println!(
        "{title}: {total} operator requests, {:.2} per token",
        total as f64 / n as f64
    );
    for ((verb, res), count) in reqs {
        println!("    {verb:<7} {res:<32} {count}");
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::var("GARRET_BENCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let idle = Duration::from_secs(
        std::env::var("GARRET_BENCH_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let bin = operator_bin();
    if !bin.is_file() {
        return Err(format!(
            "{} missing: cargo build --release -p garret-operator (or set GARRET_OPERATOR_BIN)",
            bin.display()
        )
        .into());
    }
    let cp = ControlPlane::start(
        Options::new().identity(Identity::new(OPERATOR_USER).group("system:serviceaccounts")),
    )
    .await?;
    let admin = cp.admin_client().await?;
    garret_e2e::install_garret_crds(&admin, WAIT).await?;
    garret_e2e::apply_yaml(
        &admin,
        &chart_rbac()?,
        &garret_e2e::ApplyYaml {
            force: true,
            ..Default::default()
        },
    )
    .await?;
    let ns = cp.create_namespace("scale").await?;
    let port = free_port()?;
    let log = std::fs::File::create(cp.dir().join("operator.log"))?;
    let op = Operator {
        child: Command::new(&bin)
            .env("KUBECONFIG", cp.kubeconfig_path_for(OPERATOR_USER)?)
            .env("WATCH_NAMESPACE", &ns)
            .env("GARRET_OPERATOR_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("GARRET_OPERATOR_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    };
    let caches = garret_api(&admin, &ns, "BinaryCache");
    let tokens = garret_api(&admin, &ns, "CacheToken");
    let own = Own::default();
    println!(
        "operator {} (pid {}), {n} CacheTokens, namespace {ns}",
        bin.display(),
        op.child.id()
    );
    // Let it start its watches.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let cpu0 = op.cpu_seconds();
    let quiet = cache_latency(&caches, &own, "probe-quiet").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let probe_cpu = op.cpu_seconds() - cpu0;

    // Phase 1: one BinaryCache and n tokens at once.
    let req0 = apiserver_requests(&admin).await?;
    let own0 = own.snapshot();
    let cpu1 = op.cpu_seconds();
    let start = Instant::now();
    own.cache_patches.fetch_add(1, Ordering::Relaxed);
    let (pp, main_cache) = (
        PatchParams::apply("bench").force(),
        Patch::Apply(binary_cache("main")),
    );
    let bc = caches.patch("main", &pp, &main_cache);
    let (bc, toks) = futures::join!(bc, apply_tokens(&tokens, &own, n, false));
    bc?;
    toks?;
    let applied_in = start.elapsed();
    wait_tokens(&tokens, &own, n, 1).await?;
    let ready_in = start.elapsed();
    let cpu_apply = op.cpu_seconds() - cpu1;
    let req1 = apiserver_requests(&admin).await?;
    let own1 = own.snapshot();
    let create_reqs = operator_requests(&req0, &req1, &own0, &own1);
    let rss_after_create = op.status_kib("VmHWM:");

    // Phase 2: patch all n, with a BinaryCache applied right after the patches.
    let cpu2 = op.cpu_seconds();
    let start = Instant::now();
    apply_tokens(&tokens, &own, n, true).await?;
    let patched_in = start.elapsed();
    let busy = cache_latency(&caches, &own, "probe-busy").await?;
    wait_tokens(&tokens, &own, n, 2).await?;
    let reissued_in = start.elapsed();
    let cpu_churn = op.cpu_seconds() - cpu2;
    let req2 = apiserver_requests(&admin).await?;
    let own2 = own.snapshot();
    let churn_reqs = operator_requests(&req1, &req2, &own1, &own2);

    // Phase 3: right after the churn, one more BinaryCache, then idle.
    let cpu3 = op.cpu_seconds();
    let after = cache_latency(&caches, &own, "probe-after").await?;
    tokio::time::sleep(idle.saturating_sub(after)).await;
    let cpu_idle = op.cpu_seconds() - cpu3;
    let req3 = apiserver_requests(&admin).await?;
    let own3 = own.snapshot();
    let idle_reqs = operator_requests(&req2, &req3, &own2, &own3);
    let hwm = op.status_kib("VmHWM:");
    let rss = op.status_kib("VmRSS:");

    let metrics = http_get(port, "/metrics").await.unwrap_or_default();
    let queue: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("garret_operator_queue_depth"))
        .collect();

    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| BinaryCache applied while quiet → status written | {:.2} s |",
        quiet.as_secs_f64()
    );
    println!(
        "| operator CPU for that BinaryCache (incl. RSA key generation, +3 s) | {probe_cpu:.2} s |"
    );
    println!(
        "| 1 BinaryCache + {n} CacheTokens: all applied by the client | {:.1} s |",
        applied_in.as_secs_f64()
    );
    println!("| … all Ready | {:.1} s |", ready_in.as_secs_f64());
    println!("| … operator CPU until then | {cpu_apply:.1} s |");
    println!(
        "| … operator requests per token | {:.2} |",
        create_reqs.values().sum::<u64>() as f64 / n as f64
    );
    println!(
        "| operator peak RSS (VmHWM) after that | {:.1} MiB |",
        rss_after_create as f64 / 1024.0
    );
    println!(
        "| patch all {n} (add a permission): all patched by the client | {:.1} s |",
        patched_in.as_secs_f64()
    );
    println!("| … all re-issued | {:.1} s |", reissued_in.as_secs_f64());
    println!("| … operator CPU until then | {cpu_churn:.1} s |");
    println!(
        "| … operator requests per token | {:.2} |",
        churn_reqs.values().sum::<u64>() as f64 / n as f64
    );
    println!(
        "| BinaryCache applied during the churn → status written | {:.2} s |",
        busy.as_secs_f64()
    );
    println!(
        "| BinaryCache applied right after the churn → status written | {:.2} s |",
        after.as_secs_f64()
    );
    println!(
        "| operator CPU in the {} s after the churn (incl. that BinaryCache) | {cpu_idle:.2} s |",
        idle.as_secs()
    );
    println!(
        "| operator requests in those {} s | {} |",
        idle.as_secs(),
        idle_reqs.values().sum::<u64>()
    );
    println!(
        "| operator peak RSS (VmHWM) / RSS at the end | {:.1} / {:.1} MiB |",
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    println!();
    print_requests("apply", &create_reqs, n);
    print_requests("churn", &churn_reqs, n);
    print_requests("idle", &idle_reqs, n);
    for l in queue {
        println!("{l}");
    }
    drop(op);
    cp.shutdown();
    Ok(())
}

/// GET `path` from the operator's metrics listener (plain HTTP/1.0, no client needed).
async fn http_get(port: u16, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}
