//! What the client needs from the local Nix store, through the `nix` commands themselves (no
//! daemon protocol): closures, path metadata, and NARs streamed from `nix-store --serve`
//! sessions or `nix store dump-path`.
//! The store used is whatever Nix would use (`NIX_REMOTE`, `store =` in nix.conf).

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::Stream;
use serde_json::Value;
use tokio::process::Command;

use garret_core::nix::hash::Sha256Hash;
use garret_core::nix::store_path::StorePath;

/// Paths per `nix` invocation, far below ARG_MAX even for long names.
const ARG_BATCH: usize = 500;

/// The local store directory (`NIX_STORE_DIR`, as Nix reads it, else `/nix/store`).
pub fn store_dir() -> String {
    std::env::var("NIX_STORE_DIR")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('/').to_string())
        .unwrap_or_else(|| "/nix/store".to_string())
}

/// Metadata of one valid store path, as `nix path-info --json` reports it.
#[derive(Debug, Clone)]
pub struct PathInfo {
    pub path: StorePath,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    /// Full paths.
    pub references: Vec<String>,
    pub deriver: Option<String>,
    pub sigs: Vec<String>,
    pub ca: Option<String>,
}

impl PathInfo {
    /// Whether any signature's key name (text before `:`) is one of `names`.
    pub fn signed_by_any(&self, names: &[String]) -> bool {
        self.sigs
            .iter()
            .filter_map(|s| s.split_once(':').map(|(n, _)| n))
            .any(|n| names.iter().any(|k| k == n))
    }
}

/// Turns a command-line argument into a top-level store path: symlinks such as `./result`
/// are followed (without requiring the target to exist here, so chroot stores work), and a
/// path inside a store object is cut to the object.
pub fn resolve_store_path(arg: &Path, store_dir: &str) -> Result<String> {
    let mut p = absolute(arg)?;
    for _ in 0..40 {
        if let Some(top) = top_level(&p, store_dir) {
            return Ok(top);
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p)
                    .with_context(|| format!("reading symlink {}", p.display()))?;
                let base = p.parent().map(Path::to_path_buf).unwrap_or_default();
                p = normalize(&base.join(target));
            }
            Ok(_) => {
                let c = std::fs::canonicalize(&p)
                    .with_context(|| format!("resolving {}", arg.display()))?;
                return top_level(&c, store_dir).ok_or_else(|| {
                    anyhow!("{} is not in the Nix store ({store_dir})", arg.display())
                });
            }
            Err(e) => return Err(anyhow!("{}: {e}", arg.display())),
        }
    }
    bail!("{}: too many levels of symbolic links", arg.display())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(normalize(p))
    } else {
        Ok(normalize(
            &std::env::current_dir()
                .context("reading the current directory")?
                .join(p),
        ))
    }
}

/// Lexical `.`/`..` removal (only used for paths we then check against the store dir).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

fn top_level(p: &Path, store_dir: &str) -> Option<String> {
    let rest = p.strip_prefix(store_dir).ok()?;
    let first = rest.components().next()?;
    match first {
        Component::Normal(name) => Some(format!("{store_dir}/{}", name.to_str()?)),
        _ => None,
    }
}

async fn run(program: &str, args: &[&str], paths: &[String]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .args(paths)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {program} (is Nix installed?)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim();
        let err = err.strip_prefix("error: ").unwrap_or(err);
        bail!("{program} {}: {err}", args.join(" "));
    }
    String::from_utf8(out.stdout).with_context(|| format!("{program} printed non-UTF-8"))
}

/// Metadata for every path, via `nix path-info --json`.
pub async fn path_info(paths: &[String]) -> Result<Vec<PathInfo>> {
    let mut infos = Vec::with_capacity(paths.len());
    for batch in paths.chunks(ARG_BATCH) {
        let out = run(
            "nix",
            &[
                "--extra-experimental-features",
                "nix-command",
                "path-info",
                "--json",
            ],
            batch,
        )
        .await?;
        infos.extend(parse_path_info_json(&out)?);
    }
    Ok(infos)
}

/// Metadata for the closure of `roots` from one `nix path-info --json --recursive` per
/// batch of roots (not `nix-store -qR` then a second query): each Nix start costs tens of ms.
pub async fn closure_info(roots: &[String]) -> Result<Vec<PathInfo>> {
    let mut all = std::collections::BTreeMap::new();
    for batch in roots.chunks(ARG_BATCH) {
        let out = run(
            "nix",
            &[
                "--extra-experimental-features",
                "nix-command",
                "path-info",
                "--json",
                "--recursive",
            ],
            batch,
        )
        .await?;
        for info in parse_path_info_json(&out)? {
            all.insert(info.path.as_str().to_string(), info);
        }
    }
    Ok(all.into_values().collect())
}

/// Parses both shapes: Nix < 2.19 prints an array of objects with a `path` field, newer Nix
/// an object keyed by path (with `null` for invalid paths).
pub fn parse_path_info_json(text: &str) -> Result<Vec<PathInfo>> {
    let v: Value = serde_json::from_str(text).context("parsing `nix path-info --json` output")?;
    let entries: Vec<(String, Value)> = match v {
        Value::Array(items) => items
            .into_iter()
            .map(|e| {
                let p = e
                    .get("path")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("path-info entry without a path"))?;
                Ok((p, e))
            })
            .collect::<Result<_>>()?,
        Value::Object(map) => map.into_iter().collect(),
        _ => bail!("unexpected `nix path-info --json` output"),
    };
    entries
        .into_iter()
        .map(|(path, e)| entry_to_info(&path, &e))
        .collect()
}

fn entry_to_info(path: &str, e: &Value) -> Result<PathInfo> {
    if e.is_null() || e.get("valid").and_then(Value::as_bool) == Some(false) {
        bail!("path '{path}' is not valid in the local store");
    }
    let store_path =
        StorePath::parse(path).map_err(|err| anyhow!("bad store path {path:?}: {err}"))?;
    let s = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
    let list = |k: &str| -> Vec<String> {
        e.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let nar_hash = s("narHash").ok_or_else(|| anyhow!("{path}: no narHash"))?;
    let nar_hash =
        Sha256Hash::parse_any(&nar_hash).map_err(|err| anyhow!("{path}: narHash: {err}"))?;
    let nar_size = e
        .get("narSize")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("{path}: no narSize"))?;
    Ok(PathInfo {
        path: store_path,
        nar_hash,
        nar_size,
        references: list("references"),
        deriver: s("deriver"),
        sigs: list("signatures"),
        ca: s("ca"),
    })
}

/// The NAR of `path` as a byte stream straight from the dumping child's stdout. The child is
/// killed if the stream is dropped (e.g. the upload failed), and a non-zero exit turns into
/// a stream error so a truncated NAR is never passed off as complete.
pub fn dump(path: &str) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static> {
    // `nix store dump-path` rather than `nix-store --dump`: the latter reads the real
    // filesystem path, bypassing the configured store (wrong for chroot/remote stores).
    let mut child = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "store",
            "dump-path",
            path,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run nix store dump-path")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("nix store dump-path: no stdout"))?;
    let reader = tokio_util::io::ReaderStream::with_capacity(stdout, 256 * 1024);
    let path = path.to_string();
    Ok(futures::stream::unfold(
        (reader, Some(child), path),
        |(mut reader, child, path)| async move {
            use futures::StreamExt;
            let child = child?;
            match reader.next().await {
                Some(item) => Some((item, (reader, Some(child), path))),
                None => {
                    let out = child.wait_with_output().await;
                    match out {
                        Ok(o) if o.status.success() => None,
                        Ok(o) => Some((
                            Err(std::io::Error::other(format!(
                                "nix store dump-path {path} failed: {}",
                                String::from_utf8_lossy(&o.stderr).trim()
                            ))),
                            (reader, None, path),
                        )),
                        Err(e) => Some((Err(e), (reader, None, path))),
                    }
                }
            }
        },
    ))
}

/// `nix-store --serve` speaks Nix's legacy SSH-store protocol on stdin/stdout: u64 words
/// (little-endian) and length-prefixed strings padded to 8 bytes.
const SERVE_MAGIC_1: u64 = 0x390c_9deb;
const SERVE_MAGIC_2: u64 = 0x5452_eecb;
/// The client version Nix 2.8's own legacy SSH store announces; dumping needs nothing newer.
const SERVE_CLIENT_VERSION: u64 = 0x206;
const SERVE_CMD_DUMP_STORE_PATH: u64 = 3;
/// Read size for NAR pieces: large enough that a 1 MiB NAR is a few reads.
const DUMP_READ: u64 = 256 * 1024;

/// One long-lived `nix-store --serve` child that dumps NAR after NAR on request. Starting
/// a Nix process costs ~25 ms of CPU (its own startup, opening the store database), more
/// than uploading a 1 MiB path; a session pays it once for many paths. It reads through the
/// configured store like `nix store dump-path` does (chroot stores, the daemon).
pub struct DumpSession {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    /// The last few KiB of the child's stderr, drained continuously so it never blocks.
    stderr: tokio::task::JoinHandle<String>,
}

fn serve_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
}

impl DumpSession {
    /// Spawns `nix-store --serve` and exchanges the greeting.
    pub async fn start() -> Result<DumpSession> {
        Self::start_with(&[]).await
    }

    /// [`start`](Self::start) with extra `nix-store` arguments (e.g. `--store`).
    async fn start_with(extra: &[&str]) -> Result<DumpSession> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut child = Command::new("nix-store")
            .arg("--serve")
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot run nix-store --serve")?;
        let (Some(stdin), Some(stdout), Some(mut err)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            bail!("nix-store --serve: missing pipes");
        };
        let stderr = tokio::spawn(async move {
            let mut tail = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                let excess = tail.len().saturating_sub(4096);
                tail.drain(..excess);
            }
            String::from_utf8_lossy(&tail).trim().to_string()
        });
        let mut session = DumpSession {
            child,
            stdin,
            stdout,
            stderr,
        };
        let mut hello = Vec::with_capacity(16);
        hello.extend_from_slice(&SERVE_MAGIC_1.to_le_bytes());
        hello.extend_from_slice(&SERVE_CLIENT_VERSION.to_le_bytes());
        let mut words = [0u8; 16];
        let greeting = async {
            session.stdin.write_all(&hello).await?;
            session.stdin.flush().await?;
            session.stdout.read_exact(&mut words).await
        };
        if let Err(e) = greeting.await {
            return Err(session.failure(&format!("greeting: {e}")).await.into());
        }
        if words[..8] != SERVE_MAGIC_2.to_le_bytes() {
            bail!("nix-store --serve: protocol mismatch");
        }
        Ok(session)
    }

    /// Why the child stopped answering: its exit status and the end of its stderr.
    async fn failure(mut self, what: &str) -> std::io::Error {
        // Closed stdin ends a child that is still waiting for a request.
        drop(self.stdin);
        let status = self.child.wait().await;
        let err = self.stderr.await.unwrap_or_default();
        let err = err.strip_prefix("error: ").unwrap_or(&err);
        let status = match status {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        std::io::Error::other(format!("nix-store --serve ({what}, {status}): {err}"))
    }

    /// The NAR of `path` (`nar_size` bytes, as path-info reported) as a byte stream. When the
    /// stream has yielded the whole NAR, checked to be a complete archive of exactly that
    /// size, the session goes back to `idle` for the next path; a stream dropped early or
    /// failed takes the child with it (it would be out of step).
    pub fn nar(
        self,
        path: &str,
        nar_size: u64,
        idle: std::sync::Arc<std::sync::Mutex<Vec<DumpSession>>>,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        struct State {
            session: Option<DumpSession>,
            path: String,
            left: u64,
            sent: bool,
            validator: garret_core::nix::NarValidator,
            idle: std::sync::Arc<std::sync::Mutex<Vec<DumpSession>>>,
        }
        async fn step(st: &mut State) -> Option<std::io::Result<Bytes>> {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut session = st.session.take()?;
            if !st.sent {
                let mut req = SERVE_CMD_DUMP_STORE_PATH.to_le_bytes().to_vec();
                serve_string(&mut req, &st.path);
                let sent = async {
                    session.stdin.write_all(&req).await?;
                    session.stdin.flush().await
                };
                if let Err(e) = sent.await {
                    return Some(Err(session
                        .failure(&format!("sending a request: {e}"))
                        .await));
                }
                st.sent = true;
            }
            if st.left == 0 {
                if !st.validator.is_complete() {
                    return Some(Err(std::io::Error::other(format!(
                        "the NAR of {} is longer than its NAR size",
                        st.path
                    ))));
                }
                if let Ok(mut idle) = st.idle.lock() {
                    idle.push(session);
                }
                return None;
            }
            let mut buf = bytes::BytesMut::with_capacity(st.left.min(DUMP_READ) as usize);
            let n = match session.stdout.read_buf(&mut buf).await {
                Ok(0) => return Some(Err(session.failure(&format!("dumping {}", st.path)).await)),
                Ok(n) => n as u64,
                Err(e) => return Some(Err(e)),
            };
            if let Err(e) = st.validator.feed(&buf) {
                return Some(Err(std::io::Error::other(format!(
                    "the dump of {} is not a valid NAR: {e}",
                    st.path
                ))));
            }
            st.left -= n;
            if st.left > 0 && st.validator.is_complete() {
                return Some(Err(std::io::Error::other(format!(
                    "the NAR of {} is shorter than its NAR size",
                    st.path
                ))));
            }
            st.session = Some(session);
            Some(Ok(buf.freeze()))
        }
        let state = State {
            session: Some(self),
            path: path.to_string(),
            left: nar_size,
            sent: false,
            validator: garret_core::nix::NarValidator::new(),
            idle,
        };
        futures::stream::unfold(state, |mut st| async move {
            let item = step(&mut st).await?;
            Some((item, st))
        })
    }
}

/// NAR dumps for concurrent uploads: idle [`DumpSession`]s are reused, one is started
/// when none is free, and if `nix-store --serve` cannot be started the pool falls back to
/// one `nix store dump-path` per NAR.
#[derive(Default)]
pub struct DumpPool {
    idle: std::sync::Arc<std::sync::Mutex<Vec<DumpSession>>>,
    unavailable: std::sync::atomic::AtomicBool,
}

impl DumpPool {
    pub async fn nar(
        &self,
        path: &str,
        nar_size: u64,
    ) -> Result<futures::stream::BoxStream<'static, std::io::Result<Bytes>>> {
        use futures::StreamExt;
        use std::sync::atomic::Ordering;
        if !self.unavailable.load(Ordering::Relaxed) {
            let reused = self.idle.lock().ok().and_then(|mut v| v.pop());
            let session = match reused {
                Some(s) => Some(s),
                None => match DumpSession::start().await {
                    Ok(s) => Some(s),
                    Err(_) => {
                        self.unavailable.store(true, Ordering::Relaxed);
                        None
                    }
                },
            };
            if let Some(s) = session {
                return Ok(s.nar(path, nar_size, self.idle.clone()).boxed());
            }
        }
        Ok(dump(path)?.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: &str = "/nix/store/0vjj8p3mlp2gnq2qxcfj70bx79jqg7f9-dep-a1";
    const P2: &str = "/nix/store/igkz4v2m1rk89630xf8dhxa5qbcg9vy0-top-a1";

    #[test]
    fn parses_array_shape_of_nix_2_8() {
        let text = format!(
            r#"[{{"path":"{P2}","narHash":"sha256-4cmz+PlDn6A1XcIPc0BQuCDh0Bpy3vjBr1n4OSZNyfo=","narSize":728,"references":["{P1}"],"deriver":"/nix/store/pslxfd6zddg5cvkv5r1pzxincjyr10p9-top-a1.drv","registrationTime":1,"signatures":["cache.nixos.org-1:abc"]}}]"#
        );
        let infos = parse_path_info_json(&text).unwrap();
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].path.as_str(), P2);
        assert_eq!(infos[0].nar_size, 728);
        assert_eq!(infos[0].references, vec![P1.to_string()]);
        assert!(infos[0].signed_by_any(&["cache.nixos.org-1".into()]));
        assert!(!infos[0].signed_by_any(&["other".into()]));
    }

    #[test]
    fn parses_object_shape_of_newer_nix() {
        let text = format!(
            r#"{{"{P1}":{{"narHash":"sha256:0mcn2skmkmcmca2h6qf0wx1qbi5lydqbrza34ahd94j3z7wb7jg1","narSize":5,"references":[],"ca":"fixed:r:sha256:abc","signatures":[]}}}}"#
        );
        let infos = parse_path_info_json(&text).unwrap();
        assert_eq!(infos[0].path.as_str(), P1);
        assert_eq!(infos[0].ca.as_deref(), Some("fixed:r:sha256:abc"));
        let bad = format!(r#"{{"{P1}":null}}"#);
        assert!(parse_path_info_json(&bad)
            .unwrap_err()
            .to_string()
            .contains("not valid"));
    }

    async fn collect(s: impl Stream<Item = std::io::Result<Bytes>>) -> std::io::Result<Vec<u8>> {
        use futures::StreamExt;
        let mut out = Vec::new();
        let mut s = std::pin::pin!(s);
        while let Some(piece) = s.next().await {
            out.extend_from_slice(&piece?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_serve_session_dumps_nar_after_nar_and_drops_out_on_a_wrong_size() {
        let have_nix = std::process::Command::new("nix-store")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have_nix {
            assert!(
                std::env::var_os("CI").is_none(),
                "nix-store is required under CI"
            );
            eprintln!("SKIPPED: nix-store not found");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let store = store.to_str().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, vec![7u8; 100_000]).unwrap();
        std::fs::write(&b, b"small").unwrap();
        let nix = |args: &[&str]| {
            let out = std::process::Command::new("nix-store")
                .args(["--store", store])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        let added =
            String::from_utf8(nix(&["--add", a.to_str().unwrap(), b.to_str().unwrap()])).unwrap();
        let paths: Vec<&str> = added.lines().collect();
        let nars: Vec<Vec<u8>> = paths
            .iter()
            .map(|p| nix(&["--dump", &format!("{store}{p}")]))
            .collect();
        let idle = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut session = DumpSession::start_with(&["--store", store]).await.unwrap();
        // Twice through both paths on one child: each NAR byte for byte, back to idle.
        for _ in 0..2 {
            for (p, nar) in paths.iter().zip(&nars) {
                let got = collect(session.nar(p, nar.len() as u64, idle.clone()))
                    .await
                    .unwrap();
                assert_eq!(&got, nar);
                session = idle.lock().unwrap().pop().expect("session back to idle");
            }
        }
        // A size that is too small or too large is an error, never a hang or a short NAR,
        // and the session is not reused.
        let short = collect(session.nar(paths[0], nars[0].len() as u64 - 8, idle.clone())).await;
        assert!(short
            .unwrap_err()
            .to_string()
            .contains("longer than its NAR size"));
        assert!(idle.lock().unwrap().is_empty());
        let session = DumpSession::start_with(&["--store", store]).await.unwrap();
        let long = collect(session.nar(paths[1], nars[1].len() as u64 + 8, idle.clone())).await;
        assert!(long
            .unwrap_err()
            .to_string()
            .contains("shorter than its NAR size"));
        assert!(idle.lock().unwrap().is_empty());
        // A path the store does not have: Nix's own message.
        let session = DumpSession::start_with(&["--store", store]).await.unwrap();
        let missing = format!("{}x", &paths[1][..paths[1].len() - 1]);
        let err = collect(session.nar(&missing, 10, idle.clone()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is not valid"), "{err}");
    }

    #[test]
    fn resolves_paths_inside_the_store_without_touching_disk() {
        let sd = "/nix/store";
        assert_eq!(
            resolve_store_path(Path::new(&format!("{P1}/bin/x")), sd).unwrap(),
            P1
        );
        assert_eq!(resolve_store_path(Path::new(P1), sd).unwrap(), P1);
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("result");
        std::os::unix::fs::symlink(P2, &link).unwrap();
        assert_eq!(resolve_store_path(&link, sd).unwrap(), P2);
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        assert!(resolve_store_path(&file, sd)
            .unwrap_err()
            .to_string()
            .contains("not in the Nix store"));
        assert!(resolve_store_path(&dir.path().join("missing"), sd).is_err());
    }
}
