//! What the server benches share: a release `garretd` on a fresh data directory, a token
//! for it, and the measures read from `/proc`. Each bench uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `name` from the environment as a number, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) a process has used so far: unlike wall time, this barely
/// moves when something else shares the machine.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the parenthesised command name; utime and stime are the 12th and 13th
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// "N cores, <CPU model>", for the first line of a bench's report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

/// The garretd to run: `GARRET_BENCH_GARRETD` when set (a copy of another build, for an A/B
/// in one run or a sweep that must not see a rebuild), else the bench profile's own.
pub fn garretd_bin() -> std::ffi::OsString {
    std::env::var_os("GARRET_BENCH_GARRETD").unwrap_or_else(|| env!("CARGO_BIN_EXE_garretd").into())
}

/// A garretd started by [`start_server`]; killed when dropped.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:<port>`
    pub url: String,
    /// `127.0.0.1:<port>`
    pub addr: String,
    pub data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bench profile's garretd on a fresh data directory (under `GARRET_BENCH_DIR` when set,
/// e.g. `/dev/shm` to separate the server's speed from the disk's), with `env` added.
pub fn start_server(env: &[(&str, String)]) -> Server {
    let data = match std::env::var_os("GARRET_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("tempdir"),
        None => tempfile::tempdir().expect("tempdir"),
    };
    let mut child = Command::new(garretd_bin())
        .arg("--data-dir")
        .arg(data.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("GARRETD_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn garretd");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("garretd listening on ") {
                let _ = tx.send(url.trim_end_matches('/').to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("garretd listening");
    let addr = url.trim_start_matches("http://").to_string();
    Server {
        child,
        url,
        addr,
        data,
    }
}

/// A day-long token that may create, pull and push every cache of `s`.
pub fn token(s: &Server) -> String {
    let out = Command::new(garretd_bin())
        .arg("--data-dir")
        .arg(s.data.path())
        .args(["make-token", "--sub", "bench", "--validity", "1 day"])
        .args(["--pull", "*", "--push", "*", "--create-cache", "*"])
        .output()
        .expect("make-token");
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

/// Creates the public cache `bench` (generated key) on the server at `base`.
pub async fn create_bench_cache(http: &reqwest::Client, base: &str, tok: &str) {
    let r = http
        .post(format!("{base}/_api/v1/cache-config/bench"))
        .bearer_auth(tok)
        .json(&serde_json::json!({"keypair": "Generate", "is_public": true, "store_dir": "/nix/store", "priority": 41, "upstream_cache_key_names": []}))
        .send()
        .await
        .expect("create cache");
    assert!(r.status().is_success(), "create cache: {}", r.status());
}
