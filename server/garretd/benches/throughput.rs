//! Server throughput: narinfo requests/s at 64 connections, upload and download MB/s of an
//! incompressible 256 MiB NAR, and garretd's peak RSS across a 1 GiB upload + download.
//! Each number comes with a baseline measured in the same run on the same machine:
//! `/healthz` requests/s for narinfo, and one in-process SHA-256 pass over the same bytes
//! for upload/download (the least work any verifying server must do); garretd's CPU per
//! uploaded MiB is compared with that pass's own CPU time (not its wall time, which a
//! loaded machine stretches).
//!
//!   cargo bench -p garretd --bench throughput   # GARRET_BENCH_NAR_MIB, _RSS_MIB, _SECS, _REPEAT scale it;
//!                                              # GARRET_BENCH_DIR picks the data directory's disk

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use support::{cpu_secs, create_bench_cache, env_usize, machine, start_server, token, Server};

const MIB: usize = 1 << 20;

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The median of some measurements, and every one of them (in run order) as text.
fn median(v: &[f64]) -> (f64, String) {
    let each: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
    let mut sorted = v.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mid = sorted.len() / 2;
    let m = if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    };
    (m, each.join(", "))
}

/// The NAR of a single regular file of `size` noise bytes (the test harness's
/// `nar_of_file(&noise(seed, size))`), as a stream of 1 MiB pieces.
fn nar_pieces(seed: u64, size: usize) -> impl Iterator<Item = Bytes> {
    let mut noise = common::Noise::new(seed);
    let mut left = size;
    std::iter::once(Bytes::from(common::nar_file_head(size)))
        .chain(std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let n = left.min(MIB);
            left -= n;
            let mut buf = vec![0u8; n];
            noise.fill(&mut buf);
            Some(Bytes::from(buf))
        }))
        .chain(std::iter::once(Bytes::from(common::nar_file_tail(size))))
}

fn nar_digest(seed: u64, size: usize) -> (String, u64) {
    let mut h = Sha256::new();
    let mut n = 0u64;
    for p in nar_pieces(seed, size) {
        n += p.len() as u64;
        h.update(&p);
    }
    (hex::encode(h.finalize()), n)
}

fn store_hash(seed: u64) -> String {
    const A: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let d = Sha256::digest(seed.to_le_bytes());
    (0..32).map(|i| A[(d[i] % 32) as usize] as char).collect()
}

async fn upload(
    http: &reqwest::Client,
    s: &Server,
    tok: &str,
    seed: u64,
    size: usize,
) -> (f64, u64) {
    let (hex, nar_size) = nar_digest(seed, size);
    let hash = store_hash(seed);
    let info = serde_json::json!({
        "cache": "bench", "store_path_hash": hash, "store_path": format!("/nix/store/{hash}-bench-{seed}"),
        "references": [], "sigs": [], "nar_hash": format!("sha256:{hex}"), "nar_size": nar_size,
    });
    // Pre-generate when small enough, so the client's generator is not what is measured.
    let pieces: Vec<Bytes> = if size <= 512 * MIB {
        nar_pieces(seed, size).collect()
    } else {
        Vec::new()
    };
    let body = if pieces.is_empty() {
        reqwest::Body::wrap_stream(futures::stream::iter(
            nar_pieces(seed, size).map(Ok::<_, std::io::Error>),
        ))
    } else {
        reqwest::Body::wrap_stream(futures::stream::iter(
            pieces.into_iter().map(Ok::<_, std::io::Error>),
        ))
    };
    let start = Instant::now();
    let resp = http
        .put(format!("{}/_api/v1/upload-path", s.url))
        .bearer_auth(tok)
        .header("X-Attic-Nar-Info", info.to_string())
        .body(body)
        .send()
        .await
        .expect("upload");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert!(status.is_success(), "upload failed: {status} {text}");
    (start.elapsed().as_secs_f64(), nar_size)
}

async fn download(http: &reqwest::Client, s: &Server, seed: u64) -> (f64, u64) {
    let start = Instant::now();
    let resp = http
        .get(format!("{}/bench/nar/{}.nar", s.url, store_hash(seed)))
        .send()
        .await
        .expect("download");
    assert!(resp.status().is_success());
    let mut n = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(piece) = stream.next().await {
        n += piece.expect("body").len() as u64;
    }
    (start.elapsed().as_secs_f64(), n)
}

/// Requests/s of `GET path` over `conns` keep-alive connections for `secs` seconds.
async fn hammer(addr: &str, path: &str, conns: usize, secs: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let addr = addr.to_string();
        let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            stream.set_nodelay(true).ok();
            let (r, mut w) = stream.into_split();
            let mut r = tokio::io::BufReader::new(r);
            let mut count = 0u64;
            let mut line = String::new();
            let mut body = vec![0u8; 64 * 1024];
            while Instant::now() < deadline {
                w.write_all(&req).await.expect("write");
                let mut len = 0usize;
                line.clear();
                r.read_line(&mut line).await.expect("status");
                assert!(line.contains(" 200 "), "unexpected status: {line}");
                loop {
                    line.clear();
                    r.read_line(&mut line).await.expect("header");
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().expect("length");
                    }
                }
                r.read_exact(&mut body[..len]).await.expect("body");
                count += 1;
            }
            count
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    total as f64 / secs
}

/// CPU seconds this thread has used: the SHA-256 baseline's cost without the time other
/// processes on a shared machine take from it.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// One in-process SHA-256 pass over the NAR: MB/s (wall clock) and CPU ms per MiB.
fn sha256_baseline(seed: u64, size: usize) -> (f64, f64) {
    let pieces: Vec<Bytes> = nar_pieces(seed, size).collect();
    let start = Instant::now();
    let cpu = thread_cpu_secs();
    let mut h = Sha256::new();
    for p in &pieces {
        h.update(p);
    }
    std::hint::black_box(h.finalize());
    let mib = size as f64 / MIB as f64;
    (
        mib / start.elapsed().as_secs_f64(),
        (thread_cpu_secs() - cpu) * 1000.0 / mib,
    )
}

fn main() {
    let nar_mib = env_usize("GARRET_BENCH_NAR_MIB", 256);
    let rss_mib = env_usize("GARRET_BENCH_RSS_MIB", 1024);
    let secs = env_usize("GARRET_BENCH_SECS", 5) as f64;
    let repeat = env_usize("GARRET_BENCH_REPEAT", 3).max(1);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let s = start_server(&[]);
        let tok = token(&s);
        let http = reqwest::Client::new();
        create_bench_cache(&http, &s.url, &tok).await;

        let (hash_mbs, hash_ms) = sha256_baseline(99, nar_mib * MIB);
        // Several different NARs: on a VM the cost of fresh page-cache memory varies from
        // run to run, so one upload is an anecdote; the median of a few is a measurement.
        let mut ups = Vec::new();
        let mut downs = Vec::new();
        let mut cpu_ms = Vec::new();
        for seed in 1..=repeat as u64 {
            let cpu_before = cpu_secs(s.child.id());
            let (up_s, n) = upload(&http, &s, &tok, seed, nar_mib * MIB).await;
            let mib = n as f64 / MIB as f64;
            ups.push(mib / up_s);
            // garretd's CPU per uploaded MiB, compared with one in-process SHA-256 pass
            cpu_ms.push((cpu_secs(s.child.id()) - cpu_before) * 1000.0 / mib);
            let (down_s, dn) = download(&http, &s, seed).await;
            downs.push(dn as f64 / MIB as f64 / down_s);
        }
        let (up, up_each) = median(&ups);
        let (down, down_each) = median(&downs);
        let (up_cpu_ms, _) = median(&cpu_ms);
        let cpu_each = cpu_ms.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", ");
        let rss_small = vm_hwm_kib(s.child.id()) / 1024;

        let narinfo_path = format!("/bench/{}.narinfo", store_hash(1));
        let _ = hammer(&s.addr, &narinfo_path, 64, 1.0).await; // warm-up
        let healthz = hammer(&s.addr, "/healthz", 64, secs).await;
        let narinfo = hammer(&s.addr, &narinfo_path, 64, secs).await;

        let big_seed = repeat as u64 + 1;
        let (big_up_s, big_n) = upload(&http, &s, &tok, big_seed, rss_mib * MIB).await;
        let (big_down_s, _) = download(&http, &s, big_seed).await;
        let rss_big = vm_hwm_kib(s.child.id()) / 1024;

        println!("machine: {}", machine());
        println!();
        println!("| measure | result | baseline (same run) | ratio |");
        println!("|---|---|---|---|");
        println!("| narinfo GET, 64 connections | {narinfo:.0} req/s | /healthz {healthz:.0} req/s | {:.2} |", narinfo / healthz);
        println!("| upload {nar_mib} MiB incompressible NAR, median of {repeat}: {up_each} | {up:.0} MB/s | SHA-256 in-process {hash_mbs:.0} MB/s | {:.2} |", up / hash_mbs);
        println!("| download {nar_mib} MiB NAR, median of {repeat}: {down_each} | {down:.0} MB/s | SHA-256 in-process {hash_mbs:.0} MB/s | {:.2} |", down / hash_mbs);
        println!("| garretd CPU per MiB uploaded, median ({cpu_each}) | {up_cpu_ms:.2} ms | SHA-256 in-process {hash_ms:.2} ms CPU | {:.2} |", up_cpu_ms / hash_ms);
        println!("| upload {rss_mib} MiB NAR | {:.0} MB/s | | |", big_n as f64 / MIB as f64 / big_up_s);
        println!("| download {rss_mib} MiB NAR | {:.0} MB/s | | |", big_n as f64 / MIB as f64 / big_down_s);
        println!("| garretd peak RSS after {nar_mib} MiB up+down | {rss_small} MiB | | |");
        println!("| garretd peak RSS after {rss_mib} MiB up+down | {rss_big} MiB | after {nar_mib} MiB: {rss_small} MiB | {:.2} |", rss_big as f64 / rss_small.max(1) as f64);
        println!("(MB = MiB here)");
    });
}
