//! `cargo bench -p garretd --bench push`: push a closure of ~200 paths (≥200 MiB of random
//! data, built with real Nix in a throwaway chroot store) with `garret push --jobs 1` and
//! `--jobs 4`, each into a fresh release `garretd`, and print wall time, throughput and the
//! speed-up. Fresh servers for each run so the second run isn't served by NAR dedup.
//! Override the shape with BENCH_PATHS (default 200) and BENCH_SIZE (bytes per path, 1 MiB).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Garretd;

const NIX_CONF: &str = "\
build-users-group =
sandbox = false
substituters =
trusted-public-keys =
require-sigs = true
experimental-features = nix-command
fsync-metadata = false
gc-reserved-space = 0
extra-sandbox-paths = /bin /usr /lib /lib64?
max-jobs = 4
";

const BENCH_NIX: &str = r#"{ nonce, n, size }:
let
  blob = i: derivation {
    name = "blob-${toString i}-${nonce}"; system = builtins.currentSystem;
    builder = "/bin/sh"; PATH = "/usr/bin:/bin";
    args = [ "-c" "head -c ${size} /dev/urandom > $out" ];
  };
  blobs = builtins.genList blob (builtins.fromJSON n);
in derivation {
  name = "top-${nonce}"; system = builtins.currentSystem;
  builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-c" "mkdir $out; echo ${builtins.concatStringsSep " " (map (b: "${b}") blobs)} > $out/refs" ];
}
"#;

fn nix_cmd(root: &Path, prog: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(prog);
    c.env("NIX_CONF_DIR", root.join("conf"))
        .env("XDG_CACHE_HOME", root.join("cache"))
        .env("XDG_CONFIG_HOME", root.join("xdg"))
        .env("HOME", root.join("home"))
        .env_remove("NIX_REMOTE")
        .env_remove("NIX_CONFIG")
        .stdin(Stdio::null());
    c
}

fn ok(mut c: Command) -> String {
    let out = c.output().expect("spawn");
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    if Command::new("nix-store").arg("--version").output().is_err() {
        eprintln!("skipping: nix-store not found (apt-get install -y nix-bin)");
        return;
    }
    let n: u64 = std::env::var("BENCH_PATHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let size: u64 = std::env::var("BENCH_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20);
    let tmp = tempfile::Builder::new()
        .prefix("garret-bench-")
        .tempdir()
        .expect("tempdir");
    let root = tmp.path();
    for d in ["conf", "cache", "home", "xdg"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::write(root.join("conf/nix.conf"), NIX_CONF).expect("nix.conf");
    std::fs::write(root.join("bench.nix"), BENCH_NIX).expect("bench.nix");
    let store = root.join("A");
    let store = store.to_str().expect("utf8");
    let nonce = common::nix::nonce();

    let t = Instant::now();
    let mut build = nix_cmd(root, "nix-build");
    build
        .args(["--store", store, "--no-out-link", "--quiet"])
        .arg(root.join("bench.nix"))
        .args([
            "--argstr",
            "nonce",
            &nonce,
            "--argstr",
            "n",
            &n.to_string(),
            "--argstr",
            "size",
            &size.to_string(),
        ])
        .stderr(Stdio::null());
    let top = ok(build);
    let mut info = nix_cmd(root, "nix");
    info.args(["path-info", "--store", store, "--json", "-r", &top]);
    let info: serde_json::Value = serde_json::from_str(&ok(info)).expect("path-info json");
    let entries = info.as_array().map(Vec::len).unwrap_or(0);
    let total: u64 = info
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["narSize"].as_u64()).sum())
        .unwrap_or(0);
    println!(
        "closure: {entries} paths, {:.1} MiB of NARs (built in {:.1}s)",
        total as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );

    let mut results: Vec<(u32, Duration)> = Vec::new();
    for jobs in [1u32, 4] {
        // Logging at warn: the harness default (debug, echoed line by line) costs per path.
        let server = Garretd::start_with(None, &[("GARRETD_LOG", "warn")]);
        let token = server.admin_token();
        let garret = |args: &[&str]| {
            let mut c = nix_cmd(root, common::workspace_bin("garret"));
            c.env("NIX_REMOTE", format!("local?root={store}"))
                .env("GARRET_SERVER", &server.url)
                .env("GARRET_TOKEN", &token)
                .args(args);
            c
        };
        ok(garret(&["cache", "create", "bench"]));
        let t = Instant::now();
        let mut push = garret(&["push", "bench", &top, "--jobs", &jobs.to_string()]);
        push.stderr(Stdio::piped());
        let out = push.output().expect("spawn garret push");
        let wall = t.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "push failed: {err}");
        let summary = err
            .lines()
            .rev()
            .find(|l| l.starts_with("pushed "))
            .unwrap_or("");
        println!(
            "--jobs {jobs}: {:.2}s wall, {:.1} MB/s ({:.1} MiB/s)\n  {summary}",
            wall.as_secs_f64(),
            total as f64 / 1e6 / wall.as_secs_f64(),
            total as f64 / 1048576.0 / wall.as_secs_f64()
        );
        results.push((jobs, wall));
    }
    if let [(_, one), (_, four)] = results[..] {
        println!(
            "speed-up --jobs 4 over --jobs 1: {:.2}x",
            one.as_secs_f64() / four.as_secs_f64()
        );
    }
    // Baseline: what garretd ingests from one stream of the same number of bytes (one NAR
    // PUT from memory by a plain HTTP client), on a fresh server.
    let server = Garretd::start_with(None, &[("GARRETD_LOG", "warn")]);
    let token = server.admin_token();
    let contents = common::noise(4242, total as usize);
    let nar = common::nar_of_file(&contents);
    drop(contents);
    let info = common::upload_info("bench", "single-stream", &nar, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let secs = rt.block_on(async {
        let api = server.client();
        let r = api
            .req(
                reqwest::Method::POST,
                "_api/v1/cache-config/bench",
                Some(&token),
            )
            .json(&serde_json::json!({"keypair": "Generate", "is_public": true, "store_dir": "/nix/store", "priority": 41, "upstream_cache_key_names": []}))
            .send()
            .await
            .expect("create cache");
        assert!(r.status().is_success());
        let t = Instant::now();
        let r = api
            .req(reqwest::Method::PUT, "_api/v1/upload-path", Some(&token))
            .header("X-Attic-Nar-Info", info.to_string())
            .body(nar)
            .send()
            .await
            .expect("upload");
        assert!(r.status().is_success(), "single-stream upload: {}", r.status());
        t.elapsed().as_secs_f64()
    });
    let single = total as f64 / 1e6 / secs;
    println!("single-stream ingest baseline: {secs:.2}s, {single:.1} MB/s");
    for (jobs, wall) in &results {
        println!(
            "--jobs {jobs}: {:.0}% of the single-stream ingest rate",
            100.0 * total as f64 / 1e6 / wall.as_secs_f64() / single
        );
    }
}
