//! Real Nix (Debian's nix-bin) against garretd: build a two-derivation closure in a
//! throwaway store, push it through the Attic upload API, substitute it into fresh stores
//! with signature checking (public cache, and private cache via netrc), and see a wrong
//! trusted key refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use reqwest::StatusCode;

const NIX_CONF: &str = "\
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

const TWO_NIX: &str = r#"{ nonce }:
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

pub struct Nix {
    root: PathBuf,
}

impl Nix {
    pub fn new(root: &Path) -> Nix {
        for d in ["conf", "cache", "home"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::write(root.join("conf/nix.conf"), NIX_CONF).expect("nix.conf");
        Nix {
            root: root.to_path_buf(),
        }
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("NIX_CONF_DIR", self.root.join("conf"))
            .env("XDG_CACHE_HOME", self.root.join("cache"))
            .env("HOME", self.root.join("home"))
            .env_remove("NIX_REMOTE")
            .env_remove("NIX_CONFIG");
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

    pub fn store(&self, name: &str) -> String {
        self.root
            .join(name)
            .to_str()
            .expect("utf8 path")
            .to_string()
    }
}

fn nix_available() -> bool {
    Command::new("nix-store")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Pushes one store path the way the attic client does: NAR from the local store, metadata
/// from `nix path-info`, PUT upload-path.
async fn push_path(
    nix: &Nix,
    store: &str,
    api: &Api,
    token: &str,
    cache: &str,
    path: &str,
) -> serde_json::Value {
    let info: serde_json::Value =
        serde_json::from_str(&nix.ok("nix", &["path-info", "--store", store, "--json", path]))
            .unwrap();
    let info = &info[0];
    let refs: Vec<String> = info["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().rsplit('/').next().unwrap().to_string())
        .collect();
    let nar = nix.bytes("nix", &["store", "dump-path", "--store", store, path]);
    assert_eq!(nar.len() as u64, info["narSize"].as_u64().unwrap());
    let base = path.rsplit('/').next().unwrap();
    let upload = serde_json::json!({
        "cache": cache,
        "store_path_hash": &base[..32],
        "store_path": path,
        "references": refs,
        "system": null, "deriver": null, "sigs": [], "ca": null,
        "nar_hash": format!("sha256:{}", sha256_hex(&nar)),
        "nar_size": nar.len(),
    });
    let resp = api.upload(Some(token), &upload, nar).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn push_with_attic_api_then_substitute_with_real_nix() {
    if !nix_available() {
        if std::env::var_os("CI").is_some() {
            panic!("nix-store not found on PATH: apt-get install -y nix-bin");
        }
        eprintln!("skipping: nix-store not found (apt-get install -y nix-bin)");
        return;
    }
    let nonce = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let tmp = tempfile::Builder::new()
        .prefix("garret-nix-")
        .tempdir()
        .unwrap();
    let nix = Nix::new(tmp.path());
    std::fs::write(tmp.path().join("two.nix"), TWO_NIX).unwrap();

    let g = Garretd::start();
    let api = g.client();
    let admin = g.admin_token();
    assert_eq!(
        api.create_cache(&admin, "pub", true).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        api.create_cache(&admin, "priv", false).await.status(),
        StatusCode::OK
    );

    let a = nix.store("A");
    let top = nix.ok(
        "nix-build",
        &[
            "--store",
            &a,
            "--no-out-link",
            tmp.path().join("two.nix").to_str().unwrap(),
            "--argstr",
            "nonce",
            &nonce,
        ],
    );
    let closure: Vec<String> = nix
        .ok("nix-store", &["--store", &a, "-qR", &top])
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(closure.len(), 2);
    for cache in ["pub", "priv"] {
        for path in &closure {
            push_path(&nix, &a, &api, &admin, cache, path).await;
        }
    }

    // public cache: no credentials needed, signature checked against the cache's key
    let key_of = |cfg: serde_json::Value| cfg["public_key"].as_str().unwrap().to_string();
    let cfg = api
        .req(reqwest::Method::GET, "_api/v1/cache-config/pub", None)
        .send()
        .await
        .unwrap();
    let pub_key = key_of(cfg.json().await.unwrap());
    let b = nix.store("B");
    let sub = format!("{}/pub", g.url);
    nix.ok(
        "nix-store",
        &[
            "--store",
            &b,
            "--realise",
            &top,
            "--option",
            "substituters",
            &sub,
            "--option",
            "trusted-public-keys",
            &pub_key,
        ],
    );
    assert_eq!(
        std::fs::read_to_string(format!("{b}{top}/data")).unwrap(),
        "top\n"
    );
    assert_eq!(
        nix.ok("nix-store", &["--store", &b, "-qR", &top])
            .lines()
            .count(),
        2
    );
    assert_eq!(
        std::fs::read(format!("{b}{top}/blob")).unwrap(),
        std::fs::read(format!("{a}{top}/blob")).unwrap()
    );

    // a key with the same name but other key material is refused
    let wrong = format!(
        "{}:9JwWjIvIxZ++emTefhvrh0lCM+RimmTooj9215Exnv8=",
        pub_key.split(':').next().unwrap()
    );
    let out = nix.run(
        "nix-store",
        &[
            "--store",
            &nix.store("C"),
            "--realise",
            &top,
            "--option",
            "substituters",
            &sub,
            "--option",
            "trusted-public-keys",
            &wrong,
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not signed by any of the keys"), "{err}");

    // private cache: without credentials Nix cannot see it; with a netrc it substitutes
    let cfg = api
        .req(
            reqwest::Method::GET,
            "_api/v1/cache-config/priv",
            Some(&admin),
        )
        .send()
        .await
        .unwrap();
    let priv_key = key_of(cfg.json().await.unwrap());
    let sub = format!("{}/priv", g.url);
    let out = nix.run(
        "nix-store",
        &[
            "--store",
            &nix.store("D"),
            "--realise",
            &top,
            "--option",
            "substituters",
            &sub,
            "--option",
            "trusted-public-keys",
            &priv_key,
        ],
    );
    assert!(
        !out.status.success(),
        "a private cache must not serve anonymous Nix"
    );
    let reader = g.token("ci", "1 hour", &["--pull", "priv"]);
    let netrc = tmp.path().join("netrc");
    std::fs::write(&netrc, format!("machine 127.0.0.1 password {reader}\n")).unwrap();
    let e = nix.store("E");
    nix.ok(
        "nix-store",
        &[
            "--store",
            &e,
            "--realise",
            &top,
            "--option",
            "substituters",
            &sub,
            "--option",
            "trusted-public-keys",
            &priv_key,
            "--option",
            "netrc-file",
            netrc.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(format!("{e}{top}/data")).unwrap(),
        "top\n"
    );
}
