//! Pull-through: what a first miss costs over fetching the upstream directly, and how fast
//! pulled paths are served afterwards. The upstream is a static cache (signed narinfos,
//! zstd NARs, half noise and half text so compression matters) served over loopback by a
//! small HTTP server in this process, on its own thread. Every number has its baseline from
//! the same run: the same narinfo + NAR fetched and decoded straight from the upstream.
//!
//!   cargo bench -p garretd --bench pull_through   # GARRET_BENCH_PULL_PATHS, _PULL_MIB, _PULL_SMALL scale it

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine;
use futures::StreamExt;
use garret_core::nix::narinfo::NarInfo;
use garret_core::nix::signing::{fingerprint, Keypair};
use garret_core::nix::Sha256Hash;
use support::{cpu_secs, env_usize, machine, start_server};

const MIB: usize = 1 << 20;

/// A NAR of one file: `size` bytes, the first half noise, the rest text.
fn nar(seed: u64, size: usize) -> Vec<u8> {
    let mut body = common::noise(seed, size / 2);
    let line = format!("line of text {seed} that compresses well\n");
    while body.len() < size {
        body.extend_from_slice(line.as_bytes());
    }
    body.truncate(size);
    common::nar_of_file(&body)
}

fn store_hash(seed: u64) -> String {
    common::fake_hash(&format!("pull-bench-{seed}"))
}

/// Writes path `seed` into the static cache at `dir`: a signed narinfo and a zstd NAR.
fn write_path(dir: &Path, kp: &Keypair, seed: u64, size: usize) -> String {
    let nar = nar(seed, size);
    let hash = store_hash(seed);
    let store_path = format!("/nix/store/{hash}-bench-{seed}");
    let nar_hash = Sha256Hash::digest(&nar);
    let file = zstd::encode_all(&nar[..], 3).expect("zstd");
    let file_name = format!("nar/{}.nar.zst", Sha256Hash::digest(&file).to_nix32());
    std::fs::write(dir.join(&file_name), &file).expect("write NAR");
    let fp = fingerprint(&store_path, &nar_hash, nar.len() as u64, &[]).expect("fingerprint");
    let info = NarInfo {
        store_path,
        url: file_name,
        compression: "zstd".into(),
        file_hash: None,
        file_size: Some(file.len() as u64),
        nar_hash,
        nar_size: nar.len() as u64,
        references: vec![],
        deriver: None,
        sigs: vec![kp.sign(&fp)],
        ca: None,
        system: None,
    };
    std::fs::write(dir.join(format!("{hash}.narinfo")), info.render()).expect("write narinfo");
    hash
}

/// Serves `dir` over HTTP on its own thread; returns the base URL.
fn serve(dir: PathBuf) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
                let dir = dir.clone();
                async move {
                    let path = uri.path().trim_start_matches('/').to_string();
                    match tokio::fs::read(dir.join(path)).await {
                        Ok(b) => axum::response::IntoResponse::into_response(b),
                        Err(_) => axum::response::IntoResponse::into_response(
                            axum::http::StatusCode::NOT_FOUND,
                        ),
                    }
                }
            });
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await
        })
    });
    url
}

/// What Nix does for one path from `base`: the narinfo, then its NAR, decoded; returns the
/// NAR's length (checked against the narinfo).
async fn substitute(http: &reqwest::Client, base: &str, hash: &str) -> usize {
    let text = http
        .get(format!("{base}/{hash}.narinfo"))
        .send()
        .await
        .expect("narinfo")
        .error_for_status()
        .expect("narinfo status")
        .text()
        .await
        .expect("narinfo body");
    let info = NarInfo::parse(&text).expect("narinfo parses");
    let mut body = http
        .get(format!("{base}/{}", info.url))
        .send()
        .await
        .expect("NAR")
        .error_for_status()
        .expect("NAR status")
        .bytes_stream();
    let mut dec = zstd::stream::write::Decoder::new(Counter(0)).expect("decoder");
    while let Some(piece) = body.next().await {
        std::io::Write::write_all(&mut dec, &piece.expect("NAR body")).expect("zstd");
    }
    std::io::Write::flush(&mut dec).expect("zstd flush");
    let n = dec.into_inner().0;
    assert_eq!(n as u64, info.nar_size, "whole NAR");
    n
}

/// Counts what is written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Milliseconds per path, alternating: the first of each pair straight from `upstream`, the
/// second through `garret`.
async fn alternate<T>(
    http: &reqwest::Client,
    upstream: &str,
    garret: &str,
    hashes: &[(String, T)],
) -> (Vec<f64>, Vec<f64>) {
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for pair in hashes.chunks(2) {
        let [(d, _), (g, _)] = pair else { continue };
        let t = Instant::now();
        substitute(http, upstream, d).await;
        direct.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        substitute(http, garret, g).await;
        through.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (direct, through)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

#[tokio::main]
async fn main() {
    let paths = env_usize("GARRET_BENCH_PULL_PATHS", 12);
    let big = env_usize("GARRET_BENCH_PULL_MIB", 16) * MIB;
    let small = env_usize("GARRET_BENCH_PULL_SMALL", 4096);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("upstream");
    std::fs::create_dir_all(dir.join("nar")).expect("mkdir");
    std::fs::write(dir.join("nix-cache-info"), "StoreDir: /nix/store\n").expect("info");
    let kp = Keypair::generate("upstream-1").expect("key");
    // Seeds 0..paths are large, paths..2*paths small; even seeds go direct, odd through garret.
    let hashes: Vec<(String, usize)> = (0..2 * paths as u64)
        .map(|seed| {
            let size = if seed < paths as u64 { big } else { small };
            (write_path(&dir, &kp, seed, size), size)
        })
        .collect();
    let upstream = serve(dir);
    let config = format!(
        "[[caches]]\nname = \"mirror\"\npublic = true\n\
         upstreams = [{{ url = \"{upstream}\", public-keys = [\"{}\"] }}]\n",
        kp.public_key()
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(config);
    let s = start_server(&[("ATTIC_SERVER_CONFIG_BASE64", b64)]);
    let garret = format!("{}/mirror", s.url);
    let http = reqwest::Client::new();
    // The declared cache appears once the declarations are applied.
    for _ in 0..100 {
        if http
            .get(format!("{garret}/nix-cache-info"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    println!("pull-through bench: {}", machine());
    println!(
        "upstream: static zstd cache on loopback; {paths} paths of {} MiB and {paths} of {small} B \
         per side, alternating direct / through garret",
        big / MIB
    );
    let cpu0 = cpu_secs(s.child.id());
    for (label, range) in [("large", 0..paths), ("small", paths..2 * paths)] {
        let (direct, first) = alternate(&http, &upstream, &garret, &hashes[range]).await;
        let (d, f) = (median(direct), median(first));
        println!(
            "first miss, {label}: direct {d:.2} ms, through garret {f:.2} ms (median of {} each): {:.2}x direct",
            paths / 2,
            f / d
        );
    }
    let cpu_pull = cpu_secs(s.child.id()) - cpu0;

    // A hit on a small pulled path against the same request straight to the upstream.
    let (direct, hit) = alternate(&http, &upstream, &garret, &hashes[paths..2 * paths]).await;
    let (d, h) = (median(direct), median(hit));
    println!(
        "hit, small: direct {d:.2} ms, garret {h:.2} ms (median of {} each): {:.2}x direct",
        paths / 2,
        h / d
    );

    // Hits: the pulled paths again, 4 at a time, against the same paths fetched directly.
    let pulled: Vec<&String> = hashes.iter().skip(1).step_by(2).map(|(h, _)| h).collect();
    let direct_paths: Vec<&String> = hashes.iter().step_by(2).map(|(h, _)| h).collect();
    let rounds = 3;
    let mut rates = Vec::new();
    for (base, set) in [(&upstream, &direct_paths), (&garret, &pulled)] {
        let t = Instant::now();
        let mut bytes = 0usize;
        for _ in 0..rounds {
            let got: Vec<usize> = futures::stream::iter(set.iter())
                .map(|h| substitute(&http, base, h))
                .buffer_unordered(4)
                .collect()
                .await;
            bytes += got.iter().sum::<usize>();
        }
        rates.push(bytes as f64 / MIB as f64 / t.elapsed().as_secs_f64());
    }
    println!(
        "hits (narinfo + NAR + decode, 4 at a time): direct {:.0} MiB/s, garret {:.0} MiB/s: {:.2}x direct",
        rates[0],
        rates[1],
        rates[1] / rates[0]
    );
    let pulled_mib = (paths / 2) as f64 * (big + small) as f64 / MIB as f64;
    println!(
        "garretd CPU while pulling: {:.2} s for {:.0} MiB ({:.3} s per MiB pulled)",
        cpu_pull,
        pulled_mib,
        cpu_pull / pulled_mib
    );
}
