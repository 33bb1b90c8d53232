//! `cargo bench -p garretd --bench small_paths`: the shape of real closures, many small
//! paths. 5,000 NARs of one file each (1–64 KiB, sizes and bytes from a fixed seed) are
//! built in-process and pushed through `PUT /_api/v1/upload-path` over N concurrent
//! keep-alive connections, then pulled back as Nix does (narinfo GET, then the NAR at its
//! `URL:`), over N connections. Reported: requests/s and garretd's CPU per path (from
//! /proc/<pid>/stat, which barely moves when something else shares the machine), next to a
//! baseline from the same run on the same connections: `GET /healthz`.
//! Then, if Nix is installed, `garret push --jobs 1` and `--jobs 4` of a closure of
//! GARRET_BENCH_PUSH_PATHS (500) small source paths, each into a fresh server.
//!
//!   cargo bench -p garretd --bench small_paths                      # SQLite
//!   GARRET_TEST_DATABASE=postgres cargo bench -p garretd --bench small_paths
//!       # after eval "$(bash .ci/postgres.sh start)": a fresh database per server
//!
//! GARRET_BENCH_PATHS (5000), GARRET_BENCH_CONNS (8) and GARRET_BENCH_REPEAT (2) scale it.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use common::Garretd;
use support::{cpu_secs, create_bench_cache, env_usize, machine};

/// A made-up path: its name, upload info and NAR.
struct SmallPath {
    hash: String,
    info: String,
    nar: bytes::Bytes,
}

/// `n` one-file NARs of 1–64 KiB; sizes and contents depend only on `seed`.
fn small_paths(seed: u64, n: usize) -> Vec<SmallPath> {
    let mut sizes = common::Noise::new(seed);
    (0..n)
        .map(|i| {
            let mut word = [0u8; 8];
            sizes.fill(&mut word);
            let size = 1024 + (u64::from_le_bytes(word) % (63 * 1024 + 1)) as usize;
            let nar = common::nar_of_file(&common::noise(seed * 1_000_003 + i as u64, size));
            let name = format!("small-{seed}-{i}");
            let info = common::upload_info("bench", &name, &nar, &[]);
            SmallPath {
                hash: common::fake_hash(&name),
                info: info.to_string(),
                nar: nar.into(),
            }
        })
        .collect()
}

/// Runs `work(i)` for i in 0..n on `conns` concurrent tasks; returns the wall seconds.
async fn fan_out<F, Fut>(n: usize, conns: usize, work: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let work = Arc::new(work);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (work, next) = (work.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    work(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("bench task");
    }
    start.elapsed().as_secs_f64()
}

/// One measured phase: requests/s and the server's CPU per unit (path or request).
struct Phase {
    per_sec: f64,
    cpu_ms: f64,
}

async fn healthz(http: &reqwest::Client, s: &Garretd, requests: usize, conns: usize) -> Phase {
    let (http, url) = (http.clone(), format!("{}/healthz", s.url));
    let cpu = cpu_secs(s.pid());
    let secs = fan_out(requests, conns, move |_| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.get(&url).send().await.expect("healthz");
            assert!(r.status().is_success());
            r.bytes().await.expect("healthz body");
        }
    })
    .await;
    Phase {
        per_sec: requests as f64 / secs,
        cpu_ms: (cpu_secs(s.pid()) - cpu) * 1000.0 / requests as f64,
    }
}

async fn push(
    http: &reqwest::Client,
    s: &Garretd,
    tok: &str,
    paths: &Arc<Vec<SmallPath>>,
    conns: usize,
) -> Phase {
    let (http, url, tok, all) = (
        http.clone(),
        format!("{}/_api/v1/upload-path", s.url),
        tok.to_string(),
        paths.clone(),
    );
    let cpu = cpu_secs(s.pid());
    let secs = fan_out(paths.len(), conns, move |i| {
        let (http, url, tok, all) = (http.clone(), url.clone(), tok.clone(), all.clone());
        async move {
            let p = &all[i];
            let r = http
                .put(&url)
                .bearer_auth(&tok)
                .header("X-Attic-Nar-Info", &p.info)
                .body(p.nar.clone())
                .send()
                .await
                .expect("upload");
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            assert!(status.is_success(), "upload: {status} {text}");
        }
    })
    .await;
    Phase {
        per_sec: paths.len() as f64 / secs,
        cpu_ms: (cpu_secs(s.pid()) - cpu) * 1000.0 / paths.len() as f64,
    }
}

/// Pulled NARs whose bytes differ from what was pushed.
static MISMATCHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// narinfo then NAR for every path; `per_sec` counts both requests.
async fn pull(
    http: &reqwest::Client,
    s: &Garretd,
    paths: &Arc<Vec<SmallPath>>,
    conns: usize,
) -> Phase {
    let (http, base, all) = (http.clone(), s.url.clone(), paths.clone());
    let cpu = cpu_secs(s.pid());
    let secs = fan_out(paths.len(), conns, move |i| {
        let (http, base, all) = (http.clone(), base.clone(), all.clone());
        async move {
            let p = &all[i];
            let r = http
                .get(format!("{base}/bench/{}.narinfo", p.hash))
                .send()
                .await
                .expect("narinfo");
            assert!(r.status().is_success(), "narinfo: {}", r.status());
            let text = r.text().await.expect("narinfo body");
            let field = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(str::to_string)
            };
            let url = field("URL: ").expect("narinfo URL");
            // Nix undoes the narinfo's `Compression` (Attic's `zstd`), so the bench does too.
            let compression = field("Compression: ").unwrap_or_else(|| "bzip2".into());
            let r = http
                .get(format!("{base}/bench/{url}"))
                .send()
                .await
                .expect("nar");
            assert!(r.status().is_success(), "nar: {}", r.status());
            let body = r.bytes().await.expect("nar body");
            let nar = match compression.as_str() {
                "zstd" => zstd::decode_all(&body[..]).unwrap_or_default(),
                "none" => body.to_vec(),
                other => panic!("narinfo Compression {other}: not what garretd serves"),
            };
            // Every NAR must come back as it went in: count the ones that do not.
            if nar != p.nar[..] {
                MISMATCHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                eprintln!(
                    "NAR {url} of {} ({compression}): got {} bytes after decoding, uploaded {}",
                    p.hash,
                    nar.len(),
                    p.nar.len()
                );
            }
        }
    })
    .await;
    Phase {
        per_sec: 2.0 * paths.len() as f64 / secs,
        cpu_ms: (cpu_secs(s.pid()) - cpu) * 1000.0 / paths.len() as f64,
    }
}

fn bench_server() -> (Garretd, String) {
    let s = Garretd::start_with(None, &[("GARRETD_LOG", "warn")]);
    let tok = s.admin_token();
    (s, tok)
}

async fn create_cache(http: &reqwest::Client, s: &Garretd, tok: &str) {
    create_bench_cache(http, &s.url, tok).await;
}

/// `garret push` of `n` small source paths added to a chroot store in one `nix-store
/// --add`, with `--jobs 1` and `--jobs 4`, each into a fresh server: (jobs, seconds,
/// garretd CPU ms per path).
fn garret_push(n: usize) -> Option<Vec<(u32, f64, f64)>> {
    if Command::new("nix-store").arg("--version").output().is_err() {
        eprintln!("skipping garret push: nix-store not found (apt-get install -y nix-bin)");
        return None;
    }
    let tmp = tempfile::Builder::new()
        .prefix("garret-bench-")
        .tempdir()
        .expect("tempdir");
    let nix = common::nix::Nix::new(tmp.path());
    let store = nix.store("A");
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).expect("mkdir");
    let nonce = common::nix::nonce();
    let mut sizes = common::Noise::new(7);
    let mut args = vec!["--store".to_string(), store.clone(), "--add".to_string()];
    for i in 0..n {
        let mut word = [0u8; 8];
        sizes.fill(&mut word);
        let size = 1024 + (u64::from_le_bytes(word) % (63 * 1024 + 1)) as usize;
        let f = files.join(format!("small-{nonce}-{i}"));
        std::fs::write(&f, common::noise(7_000 + i as u64, size)).expect("write");
        args.push(f.to_str().expect("utf8").to_string());
    }
    let out = nix
        .cmd("nix-store")
        .args(&args)
        .output()
        .expect("nix-store --add");
    assert!(
        out.status.success(),
        "nix-store --add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added = String::from_utf8(out.stdout).expect("utf8");
    let roots: Vec<&str> = added.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(roots.len(), n);
    let mut out = Vec::new();
    for jobs in [1u32, 4] {
        let (server, token) = bench_server();
        let garret = |extra: &[&str]| {
            let mut c = nix.cmd(common::workspace_bin("garret"));
            c.env("NIX_REMOTE", format!("local?root={store}"))
                .env("GARRET_SERVER", &server.url)
                .env("GARRET_TOKEN", &token)
                .args(extra)
                .stdout(Stdio::null());
            c
        };
        let status = garret(&["cache", "create", "bench"])
            .stderr(Stdio::null())
            .status()
            .expect("garret cache create");
        assert!(status.success());
        let cpu = cpu_secs(server.pid());
        let t = Instant::now();
        let mut push = garret(&["push", "bench", "--jobs", &jobs.to_string(), "--stdin"]);
        push.stdin(Stdio::piped()).stderr(Stdio::piped());
        let mut child = push.spawn().expect("garret push");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(added.as_bytes()).expect("paths");
        }
        let res = child.wait_with_output().expect("garret push");
        let secs = t.elapsed().as_secs_f64();
        assert!(
            res.status.success(),
            "push failed: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        out.push((
            jobs,
            secs,
            (cpu_secs(server.pid()) - cpu) * 1000.0 / n as f64,
        ));
    }
    Some(out)
}

fn main() {
    let n = env_usize("GARRET_BENCH_PATHS", 5000);
    let conns = env_usize("GARRET_BENCH_CONNS", 8);
    let repeat = env_usize("GARRET_BENCH_REPEAT", 2).max(1);
    let push_paths = env_usize("GARRET_BENCH_PUSH_PATHS", 500);
    let database = if common::on_postgres() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!(
        "machine: {}; database: {database}; {n} paths, {conns} connections",
        machine()
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let http = reqwest::Client::new();
        println!();
        println!("| run | /healthz (baseline) | push | garretd CPU per pushed path | pull (narinfo + NAR) | garretd CPU per pulled path | push / healthz | pull / healthz |");
        println!("|---|---|---|---|---|---|---|---|");
        for run in 1..=repeat {
            // A fresh server and new NARs each run: no dedup against an earlier run.
            let paths = Arc::new(small_paths(run as u64, n));
            let mib = paths.iter().map(|p| p.nar.len()).sum::<usize>() as f64 / 1048576.0;
            let (s, tok) = bench_server();
            create_cache(&http, &s, &tok).await;
            let _ = healthz(&http, &s, 1000, conns).await; // warm-up
            let base = healthz(&http, &s, 2 * n, conns).await;
            let up = push(&http, &s, &tok, &paths, conns).await;
            let down = pull(&http, &s, &paths, conns).await;
            println!(
                "| {run} ({mib:.0} MiB) | {:.0} req/s ({:.3} ms CPU/req) | {:.0} paths/s | {:.2} ms | {:.0} req/s | {:.2} ms | {:.2} | {:.2} |",
                base.per_sec, base.cpu_ms, up.per_sec, up.cpu_ms, down.per_sec, down.cpu_ms,
                up.per_sec / base.per_sec, down.per_sec / base.per_sec,
            );
        }
    });
    println!(
        "pulled NARs that differ from the pushed bytes: {}",
        MISMATCHED.load(std::sync::atomic::Ordering::Relaxed)
    );
    if push_paths > 0 {
        if let Some(runs) = garret_push(push_paths) {
            println!();
            println!("| `garret push` of {push_paths} small paths | wall time | paths/s | garretd CPU per path |");
            println!("|---|---|---|---|");
            for (jobs, secs, cpu_ms) in &runs {
                println!(
                    "| `--jobs {jobs}` | {secs:.2} s | {:.0} | {cpu_ms:.2} ms |",
                    push_paths as f64 / secs
                );
            }
            if let [(_, one, _), (_, four, _)] = runs[..] {
                println!("| speed-up | {:.2}× | | |", one / four);
            }
        }
    }
}
