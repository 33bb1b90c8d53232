//! S3 settings for the tests, from the `S3_*` variables `.ci/garage.sh start` prints, and
//! a private S3 server (same script, own directory and ports) for tests that stop it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use garretd::config::{S3Config, S3Credentials};

// Every test that includes this module also includes the harness (`mod common`).
use crate::common::skip;
#[allow(unused_imports)] // not every test that includes this module needs it
pub use skip::require;

/// The shared server from the environment. `None` (with a note) outside CI when it is not
/// configured; in CI a missing server is a failure, never a silent skip.
pub fn s3_from_env(test: &str) -> Option<S3Config> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        var("S3_ENDPOINT"),
        var("S3_REGION"),
        var("S3_BUCKET"),
        var("S3_ACCESS_KEY"),
        var("S3_SECRET_KEY"),
    ) {
        (Some(endpoint), Some(region), Some(bucket), Some(id), Some(secret)) => Some(S3Config {
            region,
            bucket,
            endpoint: Some(endpoint),
            credentials: Some(S3Credentials {
                access_key_id: id,
                secret_access_key: secret,
            }),
        }),
        _ => {
            skip::require(
                test,
                false,
                "no S3 server configured: S3_ENDPOINT/S3_REGION/S3_BUCKET/S3_ACCESS_KEY/\
                 S3_SECRET_KEY are unset; run `eval \"$(bash .ci/garage.sh start)\"` first",
            );
            None
        }
    }
}

/// The `[storage]` section garretd needs for `cfg`.
pub fn storage_toml(cfg: &S3Config) -> String {
    let creds = cfg.credentials.as_ref().expect("test credentials");
    format!(
        "[storage]\ntype = \"s3\"\nregion = {:?}\nbucket = {:?}\nendpoint = {:?}\n\n\
         [storage.credentials]\naccess_key_id = {:?}\nsecret_access_key = {:?}\n",
        cfg.region,
        cfg.bucket,
        cfg.endpoint.as_deref().unwrap_or_default(),
        creds.access_key_id,
        creds.secret_access_key
    )
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.ci/garage.sh")
}

/// A server of its own, started by `.ci/garage.sh` in a temporary directory on free ports,
/// so stopping it cannot disturb tests that use the shared one. Stopped on drop.
pub struct PrivateS3 {
    dir: tempfile::TempDir,
    port: u16,
    pub config: S3Config,
}

impl PrivateS3 {
    pub fn start() -> PrivateS3 {
        let dir = tempfile::Builder::new()
            .prefix("garret-s3-private-")
            .tempdir()
            .expect("tempdir");
        let port = free_port_block();
        let mut s = PrivateS3 {
            dir,
            port,
            config: S3Config {
                region: String::new(),
                bucket: String::new(),
                endpoint: None,
                credentials: None,
            },
        };
        let env = s.run("start");
        let get = |k: &str| {
            env.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} missing from garage.sh output: {env}"))
                .to_string()
        };
        s.config = S3Config {
            region: get("S3_REGION"),
            bucket: get("S3_BUCKET"),
            endpoint: Some(get("S3_ENDPOINT")),
            credentials: Some(S3Credentials {
                access_key_id: get("S3_ACCESS_KEY"),
                secret_access_key: get("S3_SECRET_KEY"),
            }),
        };
        s
    }

    /// Kills the server but keeps its data: an outage.
    pub fn halt(&self) {
        self.run("halt");
    }

    /// Brings it back on the same data after `halt`.
    pub fn resume(&self) {
        self.run("start");
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("s3")
    }

    fn run(&self, cmd: &str) -> String {
        let out = Command::new("bash")
            .arg(script())
            .arg(cmd)
            .env("GARRET_TEST_S3_DIR", self.state_dir())
            .env("GARRET_TEST_S3_PORT", self.port.to_string())
            .output()
            .expect("run .ci/garage.sh");
        assert!(
            out.status.success(),
            "garage.sh {cmd} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .env("GARRET_TEST_S3_DIR", self.state_dir())
            .output();
    }
}

/// A port P with P+1 and P+3 free too (Garage's S3, RPC and admin ports).
fn free_port_block() -> u16 {
    for _ in 0..200 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = l.local_addr().expect("addr").port();
        drop(l);
        if p < 60000
            && [p, p + 1, p + 3]
                .iter()
                .all(|q| std::net::TcpListener::bind(("127.0.0.1", *q)).is_ok())
        {
            return p;
        }
    }
    panic!("no free port block");
}
