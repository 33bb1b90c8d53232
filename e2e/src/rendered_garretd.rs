//! A real `garretd` process started from what the operator rendered: the `server.toml` of
//! the config ConfigMap, with the pod's mount roots (config, cache keys, revocations, data)
//! moved under a temporary directory. Control-plane tests use it where a pod would run, so
//! they exercise garretd reading exactly the files the kubelet would mount.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use garret_operator::desired::{CACHE_KEYS_DIR, CONFIG_DIR, DATA_DIR, REVOCATIONS_DIR};

/// A running garretd; killed when dropped.
pub struct RenderedGarretd {
    child: Child,
    /// Where it listens, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub url: String,
}

impl Drop for RenderedGarretd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `path` (an absolute path inside the pod) re-rooted under `root`.
pub fn rerooted(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The garretd binary next to the test binary (or in `GARRET_BIN_DIR`).
fn garretd_bin() -> PathBuf {
    let dir = match std::env::var_os("GARRET_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => crate::default_bin_dir().expect("the test binary's own path"),
    };
    let bin = dir.join("garretd");
    assert!(
        bin.is_file(),
        "{} is not built: run `cargo build -p garretd --bins` first",
        bin.display()
    );
    bin
}

/// Starts garretd on a random loopback port from `server_toml` (as rendered into the config
/// ConfigMap), with the token key the pod gets from its Secret, and waits until it listens.
/// Key and revocation files are read from under `root` (see [`rerooted`]).
pub fn start_rendered_garretd(root: &Path, server_toml: &str, token_key: &str) -> RenderedGarretd {
    let at = |p: &str| rerooted(root, p).display().to_string();
    let toml = server_toml
        .replace(REVOCATIONS_DIR, &at(REVOCATIONS_DIR))
        .replace(CACHE_KEYS_DIR, &at(CACHE_KEYS_DIR))
        .replace(DATA_DIR, &at(DATA_DIR))
        // Files beside server.toml in the config ConfigMap (e.g. the cluster's JWKS).
        .replace(&format!("{CONFIG_DIR}/"), &format!("{}/", at(CONFIG_DIR)));
    std::fs::create_dir_all(at(DATA_DIR)).expect("data dir");
    let config_dir = rerooted(root, CONFIG_DIR);
    std::fs::create_dir_all(&config_dir).expect("config dir");
    let config = config_dir.join("server.toml");
    std::fs::write(&config, toml).expect("server.toml");
    let mut child = Command::new(garretd_bin())
        .arg("--config")
        .arg(&config)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64", token_key)
        .env("GARRETD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn garretd");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("garretd listening on ") {
                let _ = tx.send(url.trim_end_matches('/').to_string());
            }
            eprintln!("[garretd] {line}");
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("garretd listening");
    RenderedGarretd { child, url }
}
