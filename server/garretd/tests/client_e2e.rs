//! The `garret` client end to end, against a real `garretd` and real Nix (Debian's nix-bin):
//! make-token → login → cache create/info/configure → use (nix.conf + netrc) → push a
//! closure → substitute into a fresh store with signature checks (public, and private via
//! the netrc `use` wrote); an interrupted push that serves nothing and is re-run; and bad
//! input.
//!
//! Every process gets its own HOME / XDG_CONFIG_HOME / NIX_CONF_DIR / XDG_CACHE_HOME, and
//! `NIX_REMOTE` points the client's `nix` calls at the test's chroot store.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::nix::*;
use common::*;

struct Env {
    nix: Nix,
    root: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Option<Env> {
        if !require_nix() {
            return None;
        }
        let tmp = tempfile::Builder::new()
            .prefix("garret-client-")
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().to_path_buf();
        let nix = Nix::new(&root);
        std::fs::write(root.join("chain.nix"), CHAIN_NIX).expect("chain.nix");
        Some(Env {
            nix,
            root,
            _tmp: tmp,
        })
    }

    fn store(&self, name: &str) -> String {
        self.nix.store(name)
    }

    fn cmd(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        self.nix.cmd(prog)
    }

    fn nix(&self, prog: &str, args: &[&str]) -> Output {
        self.nix.run(prog, args)
    }

    fn nix_ok(&self, prog: &str, args: &[&str]) -> String {
        self.nix.ok(prog, args)
    }

    /// The client, with its local Nix pointed at chroot store A.
    fn garret_cmd(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = self.cmd(common::workspace_bin("garret"));
        c.env("NIX_REMOTE", format!("local?root={}", self.store("A")))
            .args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn garret_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let out = self.garret_cmd(args, env).output().expect("spawn garret");
        eprintln!(
            "$ garret {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn garret(&self, args: &[&str]) -> Output {
        self.garret_env(args, &[])
    }

    fn garret_ok(&self, args: &[&str]) -> (String, String) {
        let out = self.garret(args);
        assert!(out.status.success(), "garret {args:?} failed");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Builds the chain into store A; returns (top, closure).
    fn build_chain(&self, bigsize: u64) -> (String, Vec<String>) {
        let nonce = common::nix::nonce();
        let a = self.store("A");
        let top = self.nix_ok(
            "nix-build",
            &[
                "--store",
                &a,
                "--no-out-link",
                self.root.join("chain.nix").to_str().expect("utf8"),
                "--argstr",
                "nonce",
                &nonce,
                "--argstr",
                "bigsize",
                &bigsize.to_string(),
            ],
        );
        let closure: Vec<String> = self
            .nix_ok("nix-store", &["--store", &a, "-qR", &top])
            .lines()
            .map(String::from)
            .collect();
        (top, closure)
    }

    fn conf(&self, file: &str) -> String {
        std::fs::read_to_string(self.root.join("conf").join(file)).unwrap_or_default()
    }

    /// Substitutes `top` into a fresh store using only nix.conf (as `garret use` left it).
    fn substitute(&self, store: &str, top: &str, extra: &[&str]) -> Output {
        let mut args = vec!["--store", store, "--realise", top];
        args.extend_from_slice(extra);
        self.nix("nix-store", &args)
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn public_cache_login_create_configure_use_push_substitute() {
    let Some(env) = Env::new() else { return };
    let g = Garretd::start();
    let admin = g.admin_token();

    env.garret_ok(&["login", "main", &g.url, &admin]);
    let cfg_path = env.root.join("xdg/garret/config.toml");
    assert_eq!(mode(&cfg_path), 0o600);
    let cfg = std::fs::read_to_string(&cfg_path).expect("config");
    assert!(cfg.contains("default-server = \"main\""), "{cfg}");
    assert!(cfg.contains("[servers.main]"), "{cfg}");

    env.garret_ok(&["cache", "create", "main:pub"]);
    let (info, _) = env.garret_ok(&["cache", "info", "pub"]);
    assert!(info.contains("Visibility: private"), "{info}");
    let key = info
        .lines()
        .find_map(|l| l.strip_prefix("Public key: "))
        .expect("public key line")
        .to_string();
    assert!(key.starts_with("pub:"), "{key}");
    assert!(
        info.contains(&format!("Substituter: {}/pub", g.url)),
        "{info}"
    );
    assert!(info.contains("cache.nixos.org-1"), "{info}");

    // --public needs only the configure-cache right: retention is not sent unasked.
    let configurer = g.token(
        "cfg",
        "1 hour",
        &["--configure-cache", "pub", "--pull", "pub"],
    );
    let out = env.garret_env(
        &["cache", "configure", "pub", "--public", "--priority", "30"],
        &[("GARRET_TOKEN", &configurer)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (info, _) = env.garret_ok(&["cache", "info", "pub"]);
    assert!(info.contains("Visibility: public"), "{info}");
    assert!(info.contains("Priority: 30"), "{info}");

    env.garret_ok(&["use", "pub"]);
    let conf = env.conf("nix.conf");
    let sub = format!("{}/pub", g.url);
    assert!(
        conf.contains(&format!("\nsubstituters = {sub}\n")),
        "{conf}"
    );
    assert!(
        conf.contains(&format!("\ntrusted-public-keys = {key}\n")),
        "{conf}"
    );
    assert!(
        conf.contains("sandbox = false\n"),
        "other lines kept: {conf}"
    );
    let netrc_path = env.root.join("conf/netrc");
    assert!(
        conf.contains(&format!("netrc-file = {}\n", netrc_path.display())),
        "{conf}"
    );
    assert_eq!(
        env.conf("netrc"),
        format!("machine 127.0.0.1 password {admin}\n")
    );
    assert_eq!(mode(&netrc_path), 0o600);
    env.garret_ok(&["use", "pub"]);
    assert_eq!(env.conf("nix.conf"), conf, "use is idempotent");
    assert_eq!(
        env.conf("netrc"),
        format!("machine 127.0.0.1 password {admin}\n")
    );

    let (top, closure) = env.build_chain(200_000);
    assert_eq!(closure.len(), 3);
    // push through a ./result-style symlink
    let link = env.root.join("result");
    std::os::unix::fs::symlink(&top, &link).expect("symlink");
    let (_, err) = env.garret_ok(&["push", "pub", link.to_str().expect("utf8")]);
    assert!(err.contains("3 paths to push"), "{err}");
    assert!(err.contains("pushed 3 "), "{err}");
    let (_, err) = env.garret_ok(&["push", "pub", &format!("{top}/data")]);
    assert!(
        err.contains("0 paths to push to pub (3 already there"),
        "{err}"
    );

    // substitute with the nix.conf that `use` wrote, no credentials (public cache)
    let b = env.store("B");
    let none = env.root.join("no-netrc");
    let out = env.substitute(
        &b,
        &top,
        &["--option", "netrc-file", none.to_str().expect("utf8")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(format!("{b}{top}/blob")).expect("blob B"),
        std::fs::read(format!("{}{top}/blob", env.store("A"))).expect("blob A")
    );
    assert_eq!(
        env.nix_ok("nix-store", &["--store", &b, "-qR", &top])
            .lines()
            .count(),
        3
    );
    let sigs = env.nix_ok("nix", &["path-info", "--store", &b, "--json", "-r", &top]);
    assert!(sigs.contains("\"pub:"), "{sigs}");
}

#[test]
fn private_cache_substitutes_with_the_netrc_use_wrote() {
    let Some(env) = Env::new() else { return };
    let g = Garretd::start();
    let admin = g.admin_token();
    // a CI-style token: no config file at all, GARRET_SERVER + GARRET_TOKEN
    let ci = g.token(
        "ci",
        "1 hour",
        &["--pull", "priv", "--push", "priv", "--create-cache", "priv"],
    );
    let ci_env = [
        ("GARRET_SERVER", g.url.as_str()),
        ("GARRET_TOKEN", ci.as_str()),
    ];
    let out = env.garret_env(
        &[
            "cache",
            "create",
            "priv",
            "--upstream-cache-key-name",
            "up-1",
        ],
        &ci_env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!env.root.join("xdg/garret/config.toml").exists());

    env.garret_ok(&["login", "ci", &g.url]);
    let out = env.garret_env(&["use", "priv"], &[("GARRET_TOKEN", ci.as_str())]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        env.conf("netrc"),
        format!("machine 127.0.0.1 password {ci}\n")
    );

    let (top, closure) = env.build_chain(100_000);
    let out = env.garret_env(
        &["push", "ci:priv", &top, "-j", "2", "--force-preamble"],
        &[("GARRET_TOKEN", ci.as_str())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("pushed {} ", closure.len())),
        "{}",
        stderr(&out)
    );

    // without credentials Nix cannot use the private cache
    let none = env.root.join("no-netrc");
    let out = env.substitute(
        &env.store("C"),
        &top,
        &["--option", "netrc-file", none.to_str().expect("utf8")],
    );
    assert!(
        !out.status.success(),
        "a private cache must not serve anonymous Nix"
    );
    // with the netrc that `use` wrote (nix.conf's netrc-file) it works, signatures checked
    let b = env.store("B");
    let out = env.substitute(&b, &top, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(format!("{b}{top}/data")).expect("data"),
        "top\n"
    );
    let _ = admin;
}

#[test]
fn interrupted_push_is_completed_by_a_rerun() {
    let Some(env) = Env::new() else { return };
    let g = Garretd::start();
    let admin = g.admin_token();
    // The client reaches the server through a relay that forwards its first 8 MiB and then
    // holds the rest: the upload of the 50 MiB path stays in flight until the test cuts it.
    let proxy = common::proxy::StallingProxy::start(&g.url, 8 << 20);
    env.garret_ok(&["login", "main", &proxy.url, &admin]);
    env.garret_ok(&["cache", "create", "big", "--public"]);
    let (top, closure) = env.build_chain(50 * 1024 * 1024);
    let hash = &top["/nix/store/".len()..][..32];

    // --jobs 1 pushes the biggest path first
    let mut child = env
        .garret_cmd(&["push", "big", "--jobs", "1", &top], &[])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn garret");
    let pipe = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("[garret] {line}");
        }
    });
    eventually_blocking(
        PATIENCE,
        "the server storing chunks of the upload the relay holds",
        || proxy.stalled() && g.count("chunks") > 0,
    );
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the push was cut short: {status:?}");
    proxy.cut();

    // nothing half-uploaded is served, nor kept
    eventually_blocking(
        PATIENCE,
        "the interrupted upload's chunks are removed",
        || g.count("chunks") == 0 && g.chunk_files() == 0,
    );
    assert_eq!(g.count("objects"), 0, "no path was committed");
    assert_eq!(g.count("nars"), 0);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for file in [format!("{hash}.narinfo"), format!("nar/{hash}.nar")] {
        let status = rt
            .block_on(reqwest::get(format!("{}/big/{file}", g.url)))
            .expect("GET")
            .status();
        assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "{file}");
    }

    // the same push, re-run (straight to the server), completes
    env.garret_ok(&["login", "main", &g.url, &admin]);
    let out = env.garret(&["push", "big", &top]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(" 0 failed"), "{err}");
    env.garret_ok(&["use", "big"]);
    let b = env.store("B");
    let out = env.substitute(&b, &top, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(format!("{b}{top}/blob")).expect("blob B"),
        std::fs::read(format!("{}{top}/blob", env.store("A"))).expect("blob A")
    );
    assert_eq!(closure.len(), 3);
}

#[test]
fn bad_input_gives_clear_errors_and_exit_code_1() {
    let Some(env) = Env::new() else { return };
    let g = Garretd::start();
    let admin = g.admin_token();
    env.garret_ok(&["login", "main", &g.url, &admin]);
    env.garret_ok(&["cache", "create", "c1"]);

    let check = |out: Output, needle: &str| {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in {err}");
    };
    // wrong token (overriding the stored one)
    check(
        env.garret_env(&["cache", "info", "c1"], &[("GARRET_TOKEN", "not-a-jwt")]),
        "Unauthorized",
    );
    // unknown cache
    check(env.garret(&["cache", "info", "nope"]), "nope");
    // unknown server and bad cache name
    check(
        env.garret(&["cache", "info", "other:c1"]),
        "unknown server \"other\"",
    );
    let out = env.garret(&["cache", "info", "bad/name"]);
    assert_ne!(out.status.code(), Some(0));
    // a path that is not in the store
    let fake = format!("/nix/store/{}-missing", fake_hash("missing"));
    check(env.garret(&["push", "c1", &fake]), &fake);
    let plain = env.root.join("plain-file");
    std::fs::write(&plain, "x").expect("write");
    check(
        env.garret(&["push", "c1", plain.to_str().expect("utf8")]),
        "is not in the Nix store",
    );
    // a token without push rights names the problem
    let reader = g.token("r", "1 hour", &["--pull", "c1"]);
    let (top, _) = env.build_chain(10);
    check(
        env.garret_env(&["push", "c1", &top], &[("GARRET_TOKEN", &reader)]),
        "asking the server which paths are missing",
    );
    // destroy: no TTY → refuse unless --no-confirm
    check(env.garret(&["cache", "destroy", "c1"]), "--no-confirm");
    env.garret_ok(&["cache", "destroy", "c1", "--no-confirm"]);
    check(env.garret(&["cache", "info", "c1"]), "c1");
    // nothing to configure
    check(
        env.garret(&["cache", "configure", "c1"]),
        "nothing to change",
    );
}

/// A child process killed (and reaped) when the test is done with it, also on a panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn watch_store_pushes_new_paths() {
    let Some(env) = Env::new() else { return };
    let g = Garretd::start();
    let admin = g.admin_token();
    env.garret_ok(&["login", "main", &g.url, &admin]);
    env.garret_ok(&["cache", "create", "w", "--public"]);
    // make sure the chroot store exists before watching it
    let (_, _) = env.build_chain(10);
    let watch_dir = env.root.join("A/nix/store");
    let mut child = env
        .garret_cmd(
            &[
                "watch-store",
                "w",
                "--watch-dir",
                watch_dir.to_str().expect("utf8"),
            ],
            &[],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watch-store");
    let pipe = child.stderr.take().expect("stderr");
    let child = KillOnDrop(child);
    // it has listed the store once it says it is watching: what appears after is new
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("[garret] {line}");
            if line.starts_with("Watching ") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(PATIENCE)
        .expect("watch-store says it is watching");
    let (top, closure) = env.build_chain(1000);
    // uploads run in parallel: wait until the whole closure is there, not just the top
    let urls: Vec<String> = closure
        .iter()
        .map(|p| format!("{}/w/{}.narinfo", g.url, &p["/nix/store/".len()..][..32]))
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    eventually_blocking(PATIENCE, &format!("watch-store pushing {top}"), || {
        urls.iter().all(|url| {
            rt.block_on(reqwest::get(url))
                .map(|r| r.status())
                .is_ok_and(|s| s.is_success())
        })
    });
    drop(child);
    env.garret_ok(&["use", "w"]);
    let out = env.substitute(&env.store("B"), &top, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(closure.len(), 3);
}
