//! The `garret` client binary against a test server, without a config file: every run gets
//! `GARRET_SERVER` (and `GARRET_TOKEN` when given) and a HOME of its own.

use std::process::{Command, Output};

use super::{workspace_bin, Garretd};

pub struct GarretCli {
    url: String,
    home: tempfile::TempDir,
}

impl GarretCli {
    pub fn new(g: &Garretd) -> GarretCli {
        GarretCli {
            url: format!("{}/", g.url),
            home: tempfile::Builder::new()
                .prefix("garret-cli-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    /// Runs `garret <args>` with `token` (none: anonymous) and logs what it printed.
    pub fn run(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new(workspace_bin("garret"));
        cmd.args(args)
            .env("GARRET_SERVER", &self.url)
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env_remove("NIX_STORE_DIR")
            .env_remove("GARRET_TOKEN");
        if let Some(t) = token {
            cmd.env("GARRET_TOKEN", t);
        }
        let out = cmd.output().expect("spawn garret");
        eprintln!(
            "$ garret {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs and asserts success; returns (stdout, stderr).
    pub fn ok(&self, token: Option<&str>, args: &[&str]) -> (String, String) {
        let out = self.run(token, args);
        assert!(out.status.success(), "garret {} failed", args.join(" "));
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, token: Option<&str>, args: &[&str]) -> String {
        let out = self.run(token, args);
        assert!(
            !out.status.success(),
            "garret {} should have failed",
            args.join(" ")
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// The store path the test helpers (`upload_info`) give a made-up path `name`.
pub fn store_path(name: &str) -> String {
    format!("/nix/store/{}-{name}", super::fake_hash(name))
}

/// Its base name, as narinfo references list it.
pub fn base_name(name: &str) -> String {
    format!("{}-{name}", super::fake_hash(name))
}
