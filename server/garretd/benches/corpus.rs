//! Storage efficiency and speed on real files rather than noise: NARs of this machine's
//! shared libraries, binaries and text trees (two versions: the files as installed and a
//! "rebuild" of them, see [`rebuild`]), pushed into a fresh release `garretd` per
//! configuration: its embedded defaults and Attic's zstd level 8, side by side.
//!
//! Reports per configuration: bytes stored per logical NAR byte, how much of the second
//! version was deduplicated against the first, upload and download MB/s, and garretd's CPU
//! per MiB uploaded (from `/proc/<pid>/stat`, steadier than wall time on a shared machine).
//!
//!   cargo bench -p garretd --bench corpus
//!   GARRET_CORPUS_MIB (default 160: MiB of files per version), GARRET_CORPUS_LEVELS (extra
//!   zstd levels to compare, e.g. "1,5"), GARRET_CORPUS_CONFIGS (other settings to compare,
//!   "name:GARRETD_X=1,GARRETD_Y=2;name2:…"), GARRET_BENCH_DIR (where data directories live)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use futures::StreamExt;
use sha2::{Digest, Sha256};

mod support;

use support::{cpu_secs, create_bench_cache, env_usize, machine, start_server, token, Server};

const MIB: f64 = (1u64 << 20) as f64;
/// A store path of the corpus holds about this many bytes of files.
const PACKAGE_BYTES: u64 = 6 << 20;

/// Where the files come from, and which share of the corpus each source gets.
const SOURCES: &[(&str, &str, u64)] = &[
    ("lib", "/usr/lib/x86_64-linux-gnu", 40),
    ("bin", "/usr/bin", 30),
    ("text", "/usr/share/perl", 10),
    ("text", "/usr/lib/python3.11", 10),
    ("text", "/usr/share/doc", 10),
];

/// Regular files under `root`, in a stable order, until `budget` bytes.
fn pick_files(root: &Path, budget: u64) -> Vec<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    let mut files = Vec::new();
    let mut total = 0;
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                if total >= budget {
                    return files;
                }
                if len > 0 && len < 64 << 20 {
                    total += len;
                    files.push(e.path());
                }
            }
        }
    }
    files
}

/// What a rebuild does to a file, decided from its path (deterministic across runs): most
/// files come out identical; some get their embedded store hashes changed (32 bytes
/// rewritten at a few places, as a new dependency hash would), some grow at the end (a
/// changed version string or an added symbol), some get a small insertion in the middle.
fn rebuild(path: &Path, data: &[u8]) -> Vec<u8> {
    let seed = Sha256::digest(path.as_os_str().as_encoded_bytes());
    let mut out = data.to_vec();
    let pick = |i: usize| u64::from_le_bytes(seed[i..i + 8].try_into().unwrap_or([0; 8]));
    match seed[0] % 10 {
        0..=5 => {}
        6 | 7 => {
            for k in 0..4 {
                if out.len() > 32 {
                    let at = (pick(1 + k * 4) % (out.len() as u64 - 32)) as usize;
                    out[at..at + 32].copy_from_slice(&seed[..32]);
                }
            }
        }
        8 => out.extend_from_slice(b"\0garret-corpus-rebuild-2\0"),
        _ => {
            let at = (pick(3) % (out.len() as u64 + 1)) as usize;
            out.splice(at..at, b"inserted by the rebuild".iter().copied());
        }
    }
    out
}

/// Builds the corpus: `version` 1 is the files as they are, 2 is their rebuild. Each store
/// path is a directory of about [`PACKAGE_BYTES`]; returns the NAR files.
fn build_nars(work: &Path, total_mib: u64, version: u32) -> Vec<PathBuf> {
    let mut nars = Vec::new();
    let weights: u64 = SOURCES.iter().map(|s| s.2).sum();
    for (si, (kind, root, weight)) in SOURCES.iter().enumerate() {
        let files = pick_files(Path::new(root), (total_mib << 20) * weight / weights);
        let mut pkg = 0;
        let mut dir: Option<(PathBuf, u64)> = None;
        for f in files {
            let Ok(data) = std::fs::read(&f) else {
                continue;
            };
            let data = if version == 2 {
                rebuild(&f, &data)
            } else {
                data
            };
            if dir.as_ref().is_none_or(|(_, n)| *n >= PACKAGE_BYTES) {
                pkg += 1;
                let d = work.join(format!("v{version}-{kind}{si}-{pkg}"));
                std::fs::create_dir_all(&d).expect("package dir");
                dir = Some((d, 0));
            }
            if let Some((d, n)) = dir.as_mut() {
                let name = f
                    .strip_prefix(root)
                    .unwrap_or(&f)
                    .to_string_lossy()
                    .replace('/', "_");
                std::fs::write(d.join(name), &data).expect("write file");
                *n += data.len() as u64;
            }
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(work)
        .expect("work dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("v{version}-")))
        })
        .collect();
    dirs.sort();
    for d in dirs {
        let nar = d.with_extension("nar");
        let out = std::fs::File::create(&nar).expect("nar file");
        let status = Command::new("nix-store")
            .arg("--dump")
            .arg(&d)
            .stdout(out)
            .status()
            .expect("nix-store --dump");
        assert!(status.success(), "nix-store --dump {}", d.display());
        std::fs::remove_dir_all(&d).expect("remove package dir");
        nars.push(nar);
    }
    nars
}

/// Bytes of every file under `dir` (the stored chunk packs).
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

fn store_hash(name: &str) -> String {
    const A: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let d = Sha256::digest(name.as_bytes());
    (0..32).map(|i| A[(d[i] % 32) as usize] as char).collect()
}

struct Nar {
    hash: String,
    bytes: bytes::Bytes,
    sha: String,
}

fn load(nars: &[PathBuf]) -> Vec<Nar> {
    nars.iter()
        .map(|p| {
            let bytes = bytes::Bytes::from(std::fs::read(p).expect("read nar"));
            let sha = hex::encode(Sha256::digest(&bytes));
            Nar {
                hash: store_hash(&p.to_string_lossy()),
                bytes,
                sha,
            }
        })
        .collect()
}

/// One version's NARs through `PUT /_api/v1/upload-path`, one after the other; returns the
/// wall time and the deduplicated bytes the server reported.
async fn upload_all(http: &reqwest::Client, s: &Server, tok: &str, nars: &[Nar]) -> (f64, f64) {
    let start = Instant::now();
    let mut dedup = 0.0;
    for n in nars {
        let info = serde_json::json!({
            "cache": "bench", "store_path_hash": n.hash,
            "store_path": format!("/nix/store/{}-corpus", n.hash),
            "references": [], "sigs": [], "nar_hash": format!("sha256:{}", n.sha),
            "nar_size": n.bytes.len(),
        });
        let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = (0..n.bytes.len())
            .step_by(1 << 20)
            .map(|o| Ok(n.bytes.slice(o..(o + (1 << 20)).min(n.bytes.len()))))
            .collect();
        let resp = http
            .put(format!("{}/_api/v1/upload-path", s.url))
            .bearer_auth(tok)
            .header("X-Attic-Nar-Info", info.to_string())
            .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
            .send()
            .await
            .expect("upload");
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        assert!(status.is_success(), "upload failed: {status} {body}");
        let frac = body["frac_deduplicated"].as_f64().unwrap_or(0.0);
        dedup += frac * n.bytes.len() as f64;
    }
    (start.elapsed().as_secs_f64(), dedup)
}

/// Every NAR back through `/nar/<hash>.nar` (the compressed stream, as Nix fetches it).
async fn download_all(http: &reqwest::Client, s: &Server, nars: &[Nar]) -> f64 {
    let start = Instant::now();
    for n in nars {
        let resp = http
            .get(format!("{}/bench/nar/{}.nar", s.url, n.hash))
            .send()
            .await
            .expect("download");
        assert!(resp.status().is_success());
        let mut stream = resp.bytes_stream();
        while let Some(piece) = stream.next().await {
            piece.expect("body");
        }
    }
    start.elapsed().as_secs_f64()
}

struct Row {
    name: String,
    stored_per_byte: f64,
    v2_new_per_byte: f64,
    v2_dedup: f64,
    up_mbs: f64,
    down_mbs: f64,
    cpu_ms: f64,
}

async fn measure(name: &str, env: &[(&str, String)], v1: &[Nar], v2: &[Nar]) -> Row {
    let s = start_server(env);
    let tok = token(&s);
    let http = reqwest::Client::new();
    create_bench_cache(&http, &s.url, &tok).await;
    let storage = s.data.path().join("storage");
    let logical = |v: &[Nar]| v.iter().map(|n| n.bytes.len() as f64).sum::<f64>();
    let (l1, l2) = (logical(v1), logical(v2));

    let cpu0 = cpu_secs(s.child.id());
    let (t1, _) = upload_all(&http, &s, &tok, v1).await;
    let after_v1 = du(&storage) as f64;
    let (t2, dedup2) = upload_all(&http, &s, &tok, v2).await;
    let cpu = cpu_secs(s.child.id()) - cpu0;
    let after_v2 = du(&storage) as f64;
    let down = download_all(&http, &s, v1).await + download_all(&http, &s, v2).await;
    Row {
        name: name.to_string(),
        stored_per_byte: after_v2 / (l1 + l2),
        v2_new_per_byte: (after_v2 - after_v1) / l2,
        v2_dedup: dedup2 / l2,
        up_mbs: (l1 + l2) / MIB / (t1 + t2),
        down_mbs: (l1 + l2) / MIB / down,
        cpu_ms: cpu * 1000.0 / ((l1 + l2) / MIB),
    }
}

fn main() {
    let mib = env_usize("GARRET_CORPUS_MIB", 160) as u64;
    let work = tempfile::tempdir().expect("work dir");
    let t = Instant::now();
    let v1 = load(&build_nars(work.path(), mib, 1));
    let v2 = load(&build_nars(work.path(), mib, 2));
    let size = |v: &[Nar]| v.iter().map(|n| n.bytes.len()).sum::<usize>() as f64 / MIB;
    println!(
        "corpus: {} + {} NARs, {:.1} + {:.1} MiB (built in {:.0} s)",
        v1.len(),
        v2.len(),
        size(&v1),
        size(&v2),
        t.elapsed().as_secs_f64()
    );
    let sets = std::env::var("GARRET_CORPUS_CONFIGS").unwrap_or_default();
    let mut configs: Vec<(String, Vec<(&str, String)>)> = vec![
        ("defaults".into(), vec![]),
        (
            "zstd 8 (Attic's)".into(),
            vec![("GARRETD_COMPRESSION__LEVEL", "8".into())],
        ),
    ];
    if let Ok(levels) = std::env::var("GARRET_CORPUS_LEVELS") {
        for l in levels.split(',').map(str::trim).filter(|l| !l.is_empty()) {
            configs.push((
                format!("zstd {l}"),
                vec![("GARRETD_COMPRESSION__LEVEL", l.to_string())],
            ));
        }
    }
    // Any other garretd settings, e.g. "z3 128k:GARRETD_CHUNKING__AVG_SIZE=131072,GARRETD_COMPRESSION__LEVEL=3;…"
    for set in sets.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, vars) = set.split_once(':').unwrap_or((set, ""));
        let env = vars
            .split(',')
            .filter_map(|kv| kv.trim().split_once('='))
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        configs.push((name.to_string(), env));
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!("machine: {}", machine());
    println!();
    println!("| garretd | stored / logical byte (v1+v2) | v2: new bytes / logical byte | v2 deduplicated | upload MB/s | download MB/s | CPU per MiB up |");
    println!("|---|---|---|---|---|---|---|");
    // Each row as soon as it is measured: a long sweep that fails late keeps what it had.
    let mut rows: Vec<Row> = Vec::new();
    for (name, env) in &configs {
        let r = rt.block_on(measure(name, env, &v1, &v2));
        println!(
            "| {} | {:.3} | {:.3} | {:.1} % | {:.0} | {:.0} | {:.2} ms |",
            r.name,
            r.stored_per_byte,
            r.v2_new_per_byte,
            r.v2_dedup * 100.0,
            r.up_mbs,
            r.down_mbs,
            r.cpu_ms
        );
        rows.push(r);
    }
    let (d, a) = (&rows[0], &rows[1]);
    println!();
    println!(
        "defaults vs zstd 8: stored bytes {:.3}×, upload speed {:.2}×, CPU per MiB {:.2}× (MB = MiB)",
        d.stored_per_byte / a.stored_per_byte,
        d.up_mbs / a.up_mbs,
        d.cpu_ms / a.cpu_ms
    );
}
