//! Shared test harness: a real `garretd` process on a random loopback port with its own
//! data directory, tokens minted by its own `make-token`, and small NAR builders.
#![allow(dead_code)]

pub mod garret_cli;
pub mod nginx;
pub mod nix;
pub mod poll;
pub mod proxy;
pub mod skip;

#[allow(unused_imports)]
pub use poll::{eventually, eventually_blocking, eventually_some, PATIENCE};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub const ALL_RIGHTS: &[&str] = &[
    "--pull",
    "*",
    "--push",
    "*",
    "--delete",
    "*",
    "--create-cache",
    "*",
    "--configure-cache",
    "*",
    "--configure-cache-retention",
    "*",
    "--destroy-cache",
    "*",
];

pub struct Garretd {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub config: Option<PathBuf>,
    /// Environment every garretd command of this server gets (e.g. its database URL).
    pub env: Vec<(String, String)>,
    /// Every line the server has logged so far (stderr).
    pub log: Arc<Mutex<Vec<String>>>,
    _tmp: Option<tempfile::TempDir>,
}

/// With `GARRET_TEST_DATABASE=postgres`, every test server gets a fresh database on the
/// cluster at `GARRET_TEST_POSTGRES_URL` (see .ci/postgres.sh); else SQLite in its data dir.
pub fn database_env() -> Vec<(String, String)> {
    if std::env::var("GARRET_TEST_DATABASE").as_deref() != Ok("postgres") {
        return Vec::new();
    }
    let base = std::env::var("GARRET_TEST_POSTGRES_URL")
        .expect("GARRET_TEST_POSTGRES_URL (eval \"$(bash .ci/postgres.sh start)\")");
    let name = format!("garret_test_{}", uuid::Uuid::new_v4().simple());
    let out = Command::new("psql")
        .arg(format!("{base}/postgres"))
        .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "creating a test database: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    vec![("GARRETD_DATABASE__URL".into(), format!("{base}/{name}"))]
}

pub fn on_postgres() -> bool {
    std::env::var("GARRET_TEST_DATABASE").as_deref() == Ok("postgres")
}

impl Drop for Garretd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn garretd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_garretd")
}

/// A binary of another workspace package (e.g. the client's `garret`), which cargo does not
/// hand to this package's tests: taken from `GARRET_BIN_DIR`, else from the profile directory
/// this test binary runs from (`target/<profile>/deps/..`). `.ci/test.sh` builds every
/// workspace binary before the tests.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let dir = match std::env::var_os("GARRET_BIN_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent()?.parent().map(|p| p.to_path_buf()))
            .expect("the test binary's own path"),
    };
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is not built: run `cargo build --workspace --bins` (with the same profile) first, \
         or point GARRET_BIN_DIR at a directory holding it",
        bin.display()
    );
    bin
}

impl Garretd {
    /// Embedded defaults in a fresh data directory.
    pub fn start() -> Garretd {
        Self::start_with(None, &[])
    }

    /// Starts with an optional config file text (written into the data dir) and extra env.
    pub fn start_with(config: Option<&str>, env: &[(&str, &str)]) -> Garretd {
        let tmp = tempfile::Builder::new()
            .prefix("garretd-test-")
            .tempdir()
            .expect("tempdir");
        let data_dir = tmp.path().join("data");
        let config_path = config.map(|text| {
            let p = tmp.path().join("server.toml");
            std::fs::write(&p, text).expect("write config");
            p
        });
        let mut all_env = database_env();
        all_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut g = Self::spawn(&data_dir, config_path.as_deref(), all_env);
        g._tmp = Some(tmp);
        g
    }

    /// A `garretd` command for this server: same data dir, config and environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(garretd_bin());
        cmd.arg("--data-dir").arg(&self.data_dir);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts another server process on the same data dir, config and database.
    pub fn sibling(&self) -> Garretd {
        Self::spawn(&self.data_dir, self.config.as_deref(), self.env.clone())
    }

    /// Stops the server (SIGKILL) and starts it again on the same state.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let tmp = self._tmp.take();
        *self = self.sibling();
        self._tmp = tmp;
    }

    pub fn spawn(data_dir: &Path, config: Option<&Path>, env: Vec<(String, String)>) -> Garretd {
        let mut cmd = Command::new(garretd_bin());
        cmd.arg("--data-dir").arg(data_dir);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env("GARRETD_LOG", "garret=debug,info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().expect("spawn garretd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("garretd listening on ") {
                    let _ = tx.send(url.trim_end_matches('/').to_string());
                }
                eprintln!("[garretd] {line}");
                if let Ok(mut v) = lines.lock() {
                    v.push(line);
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("garretd did not start listening");
            }
        };
        Garretd {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            config: config.map(Path::to_path_buf),
            env,
            log,
            _tmp: None,
        }
    }

    /// Whether a line the server logged so far contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log
            .lock()
            .map(|v| v.iter().any(|l| l.contains(needle)))
            .unwrap_or(false)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `garretd make-token` against this server's key.
    pub fn token(&self, sub: &str, validity: &str, rights: &[&str]) -> String {
        let out = self
            .command()
            .args(["make-token", "--sub", sub, "--validity", validity])
            .args(rights)
            .output()
            .expect("run make-token");
        assert!(
            out.status.success(),
            "make-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_string()
    }

    /// Runs another garretd command (e.g. `gc`) on this server's data dir and config.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        let out = self
            .command()
            .args(args)
            .env("GARRETD_LOG", "info")
            .output()
            .expect("run garretd");
        eprintln!(
            "$ garretd {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// One value from the server's database (SQLite file or PostgreSQL).
    pub fn sql(&self, query: &str) -> String {
        self.sql_rows(query).into_iter().next().unwrap_or_default()
    }

    /// The first column of every row a query returns.
    pub fn sql_rows(&self, query: &str) -> Vec<String> {
        let out = self.database_command(
            &["-tA", "-c"],
            "import sqlite3,sys\nfor r in sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchall(): print(r[0])",
            query,
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Runs statements that change the server's database (committed at once).
    pub fn sql_exec(&self, statements: &str) {
        self.database_command(
            &["-q", "-v", "ON_ERROR_STOP=1", "-c"],
            "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1], timeout=60)\nc.executescript(sys.argv[2])\nc.commit()",
            statements,
        );
    }

    /// Runs `sql` against the server's database: `psql <psql_args> sql` on PostgreSQL,
    /// `python3 -c <sqlite_script> server.db sql` on SQLite; fails the test on an error.
    fn database_command(
        &self,
        psql_args: &[&str],
        sqlite_script: &str,
        sql: &str,
    ) -> std::process::Output {
        let out =
            if let Some((_, url)) = self.env.iter().find(|(k, _)| k == "GARRETD_DATABASE__URL") {
                Command::new("psql")
                    .arg(url)
                    .args(psql_args)
                    .arg(sql)
                    .output()
                    .expect("psql")
            } else {
                Command::new("python3")
                    .arg("-c")
                    .arg(sqlite_script)
                    .arg(self.data_dir.join("server.db"))
                    .arg(sql)
                    .output()
                    .expect("python3")
            };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Moves every recorded time of the stored data (objects, NARs, chunks, pending Nix
    /// uploads) `secs` seconds into the past: to retention and GC's grace periods, the same
    /// as the clock having moved on that far, without waiting for it.
    pub fn age_data(&self, secs: i64) {
        self.sql_exec(&format!(
            "UPDATE objects SET created_at = created_at - {secs}, last_accessed_at = last_accessed_at - {secs};
             UPDATE nars SET created_at = created_at - {secs};
             UPDATE chunks SET created_at = created_at - {secs}, last_used_at = last_used_at - {secs};
             UPDATE nix_uploads SET created_at = created_at - {secs};"
        ));
    }

    pub fn count(&self, table: &str) -> i64 {
        self.sql(&format!("SELECT COUNT(*) FROM {table}"))
            .parse()
            .expect("a count")
    }

    /// Names of the files in local storage (one per pack of chunks), temporary ones aside.
    pub fn storage_files(&self) -> std::collections::BTreeSet<String> {
        fn walk(p: &Path, out: &mut std::collections::BTreeSet<String>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with('.') {
                    continue; // .incoming: temporary files and the readiness probe
                }
                if e.path().is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.insert(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        let mut out = Default::default();
        walk(&self.data_dir.join("storage"), &mut out);
        out
    }

    /// Total size of the files in local storage.
    pub fn storage_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.data_dir.join("storage"))
    }

    /// Number of files in local storage.
    pub fn chunk_files(&self) -> usize {
        self.storage_files().len()
    }

    /// Number of distinct packs the chunk rows point at.
    pub fn packs(&self) -> i64 {
        self.sql("SELECT COUNT(DISTINCT storage_key) FROM chunks")
            .parse()
            .expect("a count")
    }

    pub fn admin_token(&self) -> String {
        self.token("admin", "1 hour", ALL_RIGHTS)
    }

    pub fn client(&self) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: self.url.clone(),
        }
    }
}

/// The packs the chunk rows point at.
pub fn pack_keys(g: &Garretd) -> std::collections::BTreeSet<String> {
    g.sql_rows("SELECT DISTINCT storage_key FROM chunks")
        .into_iter()
        .collect()
}

/// Every pack the database still points at is in storage, every other one of `before` is
/// gone from it: what GC deleted, it deleted from the backend too.
pub async fn storage_follows_the_database(
    g: &Garretd,
    storage: &dyn garretd::backend::Storage,
    before: &std::collections::BTreeSet<String>,
) {
    let now = pack_keys(g);
    for key in before {
        let got = storage.get(key).await;
        if now.contains(key) {
            assert!(got.is_ok(), "pack {key} is still referenced: {got:?}");
        } else {
            assert!(
                matches!(got, Err(garretd::backend::StorageError::NotFound(_))),
                "pack {key} is no longer referenced and must be deleted"
            );
        }
    }
}

/// A thin HTTP helper for the Attic API.
/// The test's end of a streamed request body.
pub type BodySender = futures::channel::mpsc::Sender<Result<Vec<u8>, std::io::Error>>;

#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

/// Status and JSON error name (`error`) of a request, with an optional JSON body.
pub async fn answer(
    api: &Api,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (reqwest::StatusCode, String) {
    let mut r = api.req(method, path, token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.expect("send");
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    (status, v["error"].as_str().unwrap_or_default().to_string())
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let r = self.http.request(method, self.url(path));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Starts a `PUT upload-path` (header form) whose body the test feeds piece by piece
    /// through the returned sender (`buffer` pieces in flight); the task ends with the
    /// server's answer once the sender is dropped.
    pub fn upload_streaming(
        &self,
        token: &str,
        info: &serde_json::Value,
        buffer: usize,
    ) -> (
        BodySender,
        tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
    ) {
        let (tx, rx) = futures::channel::mpsc::channel(buffer);
        let request = self
            .req(reqwest::Method::PUT, "_api/v1/upload-path", Some(token))
            .header("X-Attic-Nar-Info", info.to_string())
            .body(reqwest::Body::wrap_stream(rx));
        (tx, tokio::spawn(request.send()))
    }

    /// Sends a request without a body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::Response {
        self.req(method, path, token).send().await.expect("send")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        self.send(reqwest::Method::GET, path, token).await
    }

    /// PUTs a body (a NAR, a narinfo) at `path`.
    pub async fn put(
        &self,
        path: &str,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.req(reqwest::Method::PUT, path, token)
            .body(body)
            .send()
            .await
            .expect("send")
    }

    /// The value of an unlabelled metric in the server's `/metrics` (e.g.
    /// `garret_declared_config_applied`), `None` when it is not there.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.get("metrics", None).await.text().await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// GETs a NAR as served (zstd) and returns it decompressed; the status is not checked.
    pub async fn nar(&self, path: &str, token: Option<&str>) -> Vec<u8> {
        let body = self.get(path, token).await.bytes().await.expect("NAR body");
        zstd::decode_all(&body[..]).expect("zstd NAR")
    }

    /// GET cache-config: the status and the JSON body (null when there is none).
    pub async fn cache_config(
        &self,
        token: Option<&str>,
        cache: &str,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let r = self
            .req(
                reqwest::Method::GET,
                &format!("_api/v1/cache-config/{cache}"),
                token,
            )
            .send()
            .await
            .expect("send");
        let status = r.status();
        (status, r.json().await.unwrap_or_default())
    }

    /// PATCH cache-config with a JSON body.
    pub async fn patch_config(
        &self,
        token: &str,
        cache: &str,
        body: serde_json::Value,
    ) -> reqwest::Response {
        self.req(
            reqwest::Method::PATCH,
            &format!("_api/v1/cache-config/{cache}"),
            Some(token),
        )
        .json(&body)
        .send()
        .await
        .expect("send")
    }

    /// The cache's public signing key, as `nix.conf` wants it.
    pub async fn public_key(&self, token: Option<&str>, cache: &str) -> String {
        let (status, cfg) = self.cache_config(token, cache).await;
        assert_eq!(status, reqwest::StatusCode::OK, "cache-config of {cache}");
        cfg["public_key"].as_str().expect("public_key").to_string()
    }

    pub async fn create_cache(&self, token: &str, name: &str, public: bool) -> reqwest::Response {
        self.req(
            reqwest::Method::POST,
            &format!("_api/v1/cache-config/{name}"),
            Some(token),
        )
        .json(&serde_json::json!({
            "keypair": "Generate", "is_public": public, "store_dir": "/nix/store",
            "priority": 41, "upstream_cache_key_names": ["cache.nixos.org-1"]
        }))
        .send()
        .await
        .expect("send")
    }

    /// Uploads with the `X-Attic-Nar-Info` header form.
    pub async fn upload(
        &self,
        token: Option<&str>,
        info: &serde_json::Value,
        nar: Vec<u8>,
    ) -> reqwest::Response {
        self.req(reqwest::Method::PUT, "_api/v1/upload-path", token)
            .header("X-Attic-Nar-Info", info.to_string())
            .body(nar)
            .send()
            .await
            .expect("send")
    }

    /// Uploads `nar` as `name` into `cache` (header form) and asserts it was accepted.
    pub async fn upload_ok(&self, token: &str, cache: &str, name: &str, nar: &[u8]) {
        let r = self
            .upload(
                Some(token),
                &upload_info(cache, name, nar, &[]),
                nar.to_vec(),
            )
            .await;
        let status = r.status();
        assert_eq!(
            status,
            reqwest::StatusCode::OK,
            "{}",
            r.text().await.unwrap_or_default()
        );
    }

    /// Uploads with the body preamble form.
    pub async fn upload_preamble(
        &self,
        token: Option<&str>,
        info: &serde_json::Value,
        nar: Vec<u8>,
    ) -> reqwest::Response {
        let json = info.to_string().into_bytes();
        let mut body = json.clone();
        body.extend_from_slice(&nar);
        self.req(reqwest::Method::PUT, "_api/v1/upload-path", token)
            .header("X-Attic-Nar-Info-Preamble-Size", json.len().to_string())
            .body(body)
            .send()
            .await
            .expect("send")
    }
}

/// A fresh server with one cache on it: the server, its API and an all-rights token.
pub async fn server_with_cache(cache: &str, public: bool) -> (Garretd, Api, String) {
    let g = Garretd::start();
    let api = g.client();
    let admin = g.admin_token();
    assert_eq!(
        api.create_cache(&admin, cache, public).await.status(),
        reqwest::StatusCode::OK
    );
    (g, api, admin)
}

/// A response's JSON body.
pub async fn json(resp: reqwest::Response) -> serde_json::Value {
    resp.json().await.expect("JSON body")
}

/// Polls `done` every `every` until it holds or `timeout` has passed; the caller asserts.
pub async fn wait_for(timeout: Duration, every: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() && std::time::Instant::now() < deadline {
        tokio::time::sleep(every).await;
    }
}

// ---- NARs -------------------------------------------------------------------------------

fn nar_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    let pad = (8 - s.len() % 8) % 8;
    out.extend(std::iter::repeat_n(0u8, pad));
}

/// What comes before the `size` contents bytes in the NAR of one regular file.
pub fn nar_file_head(size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for t in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"contents",
    ] {
        nar_str(&mut out, t);
    }
    out.extend_from_slice(&(size as u64).to_le_bytes());
    out
}

/// What comes after the `size` contents bytes in the NAR of one regular file.
pub fn nar_file_tail(size: usize) -> Vec<u8> {
    let mut out = vec![0u8; (8 - size % 8) % 8];
    nar_str(&mut out, b")");
    out
}

/// A NAR holding one regular file.
pub fn nar_of_file(contents: &[u8]) -> Vec<u8> {
    let mut out = nar_file_head(contents.len());
    out.extend_from_slice(contents);
    out.extend_from_slice(&nar_file_tail(contents.len()));
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Deterministic pseudo-random bytes (incompressible, no two seeds alike).
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    Noise::new(seed).fill(&mut v);
    v
}

/// The byte stream behind [`noise`], for data too large to hold at once: filling buffers
/// whose sizes are multiples of 8 one after another yields `noise(seed, total)`.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Noise {
        // an odd state for xorshift, distinct for every seed
        Noise(seed.wrapping_mul(0x9e3779b97f4a7c15) | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// A valid-looking store path hash derived from a seed.
pub fn fake_hash(seed: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let d = Sha256::digest(seed.as_bytes());
    (0..32)
        .map(|i| ALPHABET[(d[i] % 32) as usize] as char)
        .collect()
}

/// Upload info for a NAR under a made-up store path.
pub fn upload_info(
    cache: &str,
    name: &str,
    nar: &[u8],
    references: &[String],
) -> serde_json::Value {
    let hash = fake_hash(name);
    serde_json::json!({
        "cache": cache,
        "store_path_hash": hash,
        "store_path": format!("/nix/store/{hash}-{name}"),
        "references": references,
        "system": null, "deriver": null, "sigs": [], "ca": null,
        "nar_hash": format!("sha256:{}", sha256_hex(nar)),
        "nar_size": nar.len(),
    })
}
