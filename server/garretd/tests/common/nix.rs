//! Real Nix (Debian's nix-bin 2.8) as a test client, fully hermetic: every call gets its own
//! NIX_CONF_DIR, XDG_CACHE_HOME and HOME inside the test's directory, and chroot stores.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const NIX_CONF: &str = "\
build-users-group =
sandbox = false
substituters =
trusted-public-keys =
require-sigs = true
experimental-features = nix-command
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0
download-attempts = 1
stalled-download-timeout = 15
fsync-metadata = false
gc-reserved-space = 0
extra-sandbox-paths = /bin /usr /lib /lib64?
";

pub const TWO_NIX: &str = r#"{ nonce }:
let
  dep = derivation {
    name = "dep-${nonce}"; system = builtins.currentSystem;
    builder = "/bin/sh"; PATH = "/usr/bin:/bin";
    args = [ "-c" "echo dependency ${nonce} > $out" ];
  };
in derivation {
  name = "top-${nonce}"; system = builtins.currentSystem;
  builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-c" "mkdir $out; echo ${dep} > $out/ref; echo top > $out/data; head -c 3000000 /dev/urandom > $out/blob" ];
}
"#;

/// A three-path chain top → mid → leaf; `bigsize` bytes of random data go into top.
pub const CHAIN_NIX: &str = r#"{ nonce, bigsize ? "1000" }:
let
  mk = name: script: derivation {
    name = "${name}-${nonce}"; system = builtins.currentSystem;
    builder = "/bin/sh"; PATH = "/usr/bin:/bin";
    args = [ "-c" script ];
  };
  leaf = mk "leaf" "echo leaf ${nonce} > $out";
  mid = mk "mid" "mkdir $out; echo ${leaf} > $out/ref; echo mid > $out/data";
in mk "top" "mkdir $out; echo ${mid} > $out/ref; echo top > $out/data; head -c ${bigsize} /dev/urandom > $out/blob"
"#;

pub struct Nix {
    pub root: PathBuf,
}

impl Nix {
    pub fn new(root: &Path) -> Nix {
        for d in ["conf", "cache", "home", "xdg"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::write(root.join("conf/nix.conf"), NIX_CONF).expect("nix.conf");
        Nix {
            root: root.to_path_buf(),
        }
    }

    pub fn cmd(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(prog);
        c.env("NIX_CONF_DIR", self.root.join("conf"))
            .env("XDG_CACHE_HOME", self.root.join("cache"))
            .env("HOME", self.root.join("home"))
            .env("XDG_CONFIG_HOME", self.root.join("xdg"))
            .env_remove("NIX_REMOTE")
            .env_remove("NIX_CONFIG")
            .env_remove("GARRET_TOKEN")
            .env_remove("GARRET_SERVER")
            .stdin(std::process::Stdio::null());
        c
    }

    pub fn run(&self, prog: &str, args: &[&str]) -> Output {
        let out = self.cmd(prog).args(args).output().expect("spawn nix");
        eprintln!(
            "$ {prog} {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn ok(&self, prog: &str, args: &[&str]) -> String {
        let out = self.run(prog, args);
        assert!(out.status.success(), "{prog} {args:?} failed");
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_string()
    }

    pub fn bytes(&self, prog: &str, args: &[&str]) -> Vec<u8> {
        let out = self.cmd(prog).args(args).output().expect("spawn nix");
        assert!(
            out.status.success(),
            "{prog} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Builds `TWO_NIX` (two derivations, `top` referencing `dep`) into `store`; returns
    /// top's path. A fresh `nonce` makes fresh paths.
    pub fn build_two(&self, store: &str, nonce: &str) -> String {
        let file = self.root.join("two.nix");
        std::fs::write(&file, TWO_NIX).expect("two.nix");
        let file = file.to_str().expect("utf8 path").to_string();
        self.ok(
            "nix-build",
            &[
                "--store",
                store,
                "--no-out-link",
                &file,
                "--argstr",
                "nonce",
                nonce,
            ],
        )
    }

    /// `nix-store --realise path` into `store`, substituting from `substituter` only and
    /// trusting `key`; `extra` adds arguments (e.g. a netrc file option).
    pub fn realise_from(
        &self,
        store: &str,
        path: &str,
        substituter: &str,
        key: &str,
        extra: &[&str],
    ) -> Output {
        let mut args = vec![
            "--store",
            store,
            "--realise",
            path,
            "--option",
            "substituters",
            substituter,
            "--option",
            "trusted-public-keys",
            key,
        ];
        args.extend_from_slice(extra);
        self.run("nix-store", &args)
    }

    pub fn store(&self, name: &str) -> String {
        self.root
            .join(name)
            .to_str()
            .expect("utf8 path")
            .to_string()
    }
}

pub fn nix_available() -> bool {
    Command::new("nix-store")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Skips (locally) or fails (in CI) when Nix is missing.
pub fn require_nix() -> bool {
    super::skip::require(
        "real Nix",
        nix_available(),
        "nix-store not found on PATH: apt-get install -y nix-bin",
    )
}

/// A unique nonce so store paths never collide between runs.
pub fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}", t.as_nanos())
}
