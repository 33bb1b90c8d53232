//! The whole user story over HTTPS, behind a real TLS reverse proxy: Debian's nginx on
//! loopback with a throwaway CA, proxying to `garretd` (which derives its https URLs from
//! `Host` and `X-Forwarded-Proto`). `garret login https://…`, create, configure, push, `use`,
//! then real Nix substituting over HTTPS with signature checks, and `nix copy --to https://…`
//! with a netrc token. Also: the CA chosen by NIX_SSL_CERT_FILE / SSL_CERT_FILE (in that
//! order), an untrusted CA's clear error, and nginx's default 1 MiB body limit giving a clear
//! 413 error from the client with nothing half-uploaded served.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::nginx::*;
use common::nix::*;
use common::*;
use reqwest::StatusCode;

/// garretd behind nginx, a CA the proxy's certificate comes from and one it does not, and a
/// hermetic Nix for the client and for substituting.
struct Env {
    nix: Nix,
    root: PathBuf,
    g: Garretd,
    proxy: Nginx,
    ca: TestCa,
    other_ca: TestCa,
    _tmp: tempfile::TempDir,
}

impl Env {
    fn new(client_max_body_size: Option<&str>) -> Option<Env> {
        if !require_nix() {
            return None;
        }
        let bin = require_nginx()?;
        let tmp = tempfile::Builder::new()
            .prefix("garret-tls-")
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().to_path_buf();
        let nix = Nix::new(&root);
        std::fs::write(root.join("chain.nix"), CHAIN_NIX).expect("chain.nix");
        let ca = TestCa::new(&root, "proxy");
        let other_ca = TestCa::new(&root, "other");
        let g = Garretd::start();
        let proxy = Nginx::start(&bin, &g.url, &ca, client_max_body_size);
        Some(Env {
            nix,
            root,
            g,
            proxy,
            ca,
            other_ca,
            _tmp: tmp,
        })
    }

    fn store(&self, name: &str) -> String {
        self.nix.store(name)
    }

    /// `garret` with local Nix on chroot store A; `env` adds variables (e.g. the CA).
    fn garret_env(&self, args: &[&str], env: &[(&str, &Path)]) -> Output {
        let mut c = self.nix.cmd(workspace_bin("garret"));
        c.env("NIX_REMOTE", format!("local?root={}", self.store("A")))
            .env_remove("SSL_CERT_FILE")
            .env_remove("NIX_SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("spawn garret");
        eprintln!(
            "$ garret {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `garret` trusting the proxy's CA through SSL_CERT_FILE; must succeed.
    fn garret_ok(&self, args: &[&str]) -> (String, String) {
        let out = self.garret_env(args, &[("SSL_CERT_FILE", &self.ca.ca_pem)]);
        assert!(out.status.success(), "garret {args:?} failed");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr(&out),
        )
    }

    /// A Nix command trusting the proxy's CA through NIX_SSL_CERT_FILE (as Nix users do).
    fn nix_tls(&self, prog: &str, args: &[&str], ca: &Path) -> Output {
        let out = self
            .nix
            .cmd(prog)
            .args(args)
            .env_remove("SSL_CERT_FILE")
            .env("NIX_SSL_CERT_FILE", ca)
            .output()
            .expect("spawn nix");
        eprintln!(
            "$ {prog} {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Builds the chain into store A; returns (top, closure).
    fn build_chain(&self, bigsize: u64) -> (String, Vec<String>) {
        let a = self.store("A");
        let top = self.nix.ok(
            "nix-build",
            &[
                "--store",
                &a,
                "--no-out-link",
                self.root.join("chain.nix").to_str().expect("utf8"),
                "--argstr",
                "nonce",
                &nonce(),
                "--argstr",
                "bigsize",
                &bigsize.to_string(),
            ],
        );
        let closure = self
            .nix
            .ok("nix-store", &["--store", &a, "-qR", &top])
            .lines()
            .map(String::from)
            .collect();
        (top, closure)
    }

    fn conf(&self, file: &str) -> String {
        std::fs::read_to_string(self.root.join("conf").join(file)).unwrap_or_default()
    }

    /// Asks garretd directly (plain HTTP, behind the proxy) for a narinfo's status.
    async fn narinfo_status(&self, cache: &str, path: &str, token: &str) -> StatusCode {
        self.g
            .client()
            .req(
                reqwest::Method::GET,
                &format!("{cache}/{}.narinfo", hash(path)),
                Some(token),
            )
            .send()
            .await
            .expect("send")
            .status()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn hash(store_path: &str) -> &str {
    &store_path["/nix/store/".len()..][..32]
}

#[tokio::test]
async fn https_login_create_configure_push_use_and_nix_substitutes_through_nginx() {
    let Some(env) = Env::new(Some("50g")) else {
        return;
    };
    let admin = env.g.admin_token();
    let https = &env.proxy.url;

    // login with a doubled trailing slash: stored normalised
    env.garret_ok(&["login", "main", &format!("{https}//"), &admin]);
    let cfg = std::fs::read_to_string(env.root.join("xdg/garret/config.toml")).expect("config");
    assert!(cfg.contains(&format!("endpoint = \"{https}/\"")), "{cfg}");

    env.garret_ok(&["cache", "create", "team"]);
    env.garret_ok(&["cache", "configure", "team", "--priority", "35"]);
    let (info, _) = env.garret_ok(&["cache", "info", "team"]);
    // garretd behind the proxy hands out https URLs (Host + X-Forwarded-Proto)
    assert!(
        info.contains(&format!("Substituter: {https}/team")),
        "{info}"
    );
    assert!(info.contains(&format!("API endpoint: {https}/")), "{info}");
    assert!(info.contains("Visibility: private"), "{info}");
    assert!(info.contains("Priority: 35"), "{info}");
    let key = info
        .lines()
        .find_map(|l| l.strip_prefix("Public key: "))
        .expect("public key line")
        .to_string();

    // NIX_SSL_CERT_FILE wins over SSL_CERT_FILE, as in Nix
    let out = env.garret_env(
        &["cache", "info", "team"],
        &[
            ("NIX_SSL_CERT_FILE", &env.ca.ca_pem),
            ("SSL_CERT_FILE", &env.other_ca.ca_pem),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.garret_env(
        &["cache", "info", "team"],
        &[
            ("NIX_SSL_CERT_FILE", &env.other_ca.ca_pem),
            ("SSL_CERT_FILE", &env.ca.ca_pem),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "the client trusts the CAs in NIX_SSL_CERT_FILE={}",
            env.other_ca.ca_pem.display()
        )),
        "{}",
        stderr(&out)
    );

    // push a real closure over HTTPS; top (3 MB) is above nginx's default body limit
    let (top, closure) = env.build_chain(3_000_000);
    assert_eq!(closure.len(), 3);
    let (_, err) = env.garret_ok(&["push", "team", &top]);
    assert!(err.contains("3 paths to push"), "{err}");
    assert!(err.contains("pushed 3 "), "{err}");
    assert!(err.contains(" 0 failed"), "{err}");
    let uploads = env
        .proxy
        .access_log()
        .lines()
        .filter(|l| l.contains("PUT /_api/v1/upload-path") && l.contains("\" 200 "))
        .count();
    assert_eq!(uploads, 3, "the uploads went through the proxy");

    // `use` writes the https substituter, the key and a netrc for 127.0.0.1
    env.garret_ok(&["use", "team"]);
    let conf = env.conf("nix.conf");
    assert!(
        conf.contains(&format!("\nsubstituters = {https}/team\n")),
        "{conf}"
    );
    assert!(
        conf.contains(&format!("\ntrusted-public-keys = {key}\n")),
        "{conf}"
    );
    assert_eq!(
        env.conf("netrc"),
        format!("machine 127.0.0.1 password {admin}\n")
    );

    // real Nix substitutes over HTTPS with the CA trusted, signatures checked
    let b = env.store("B");
    let out = env.nix_tls(
        "nix-store",
        &["--store", &b, "--realise", &top],
        &env.ca.ca_pem,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(format!("{b}{top}/blob")).expect("blob B"),
        std::fs::read(format!("{}{top}/blob", env.store("A"))).expect("blob A")
    );
    let sigs = env
        .nix
        .ok("nix", &["path-info", "--store", &b, "--json", "-r", &top]);
    assert!(sigs.contains("\"team:"), "{sigs}");
    // ... and Nix that does not trust the CA gets nothing
    let out = env.nix_tls(
        "nix-store",
        &["--store", &env.store("C"), "--realise", &top],
        &env.other_ca.ca_pem,
    );
    assert!(
        !out.status.success(),
        "Nix must refuse a proxy whose CA it does not trust"
    );
    assert!(
        stderr(&out).contains("SSL peer certificate"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn untrusted_ca_and_plain_http_to_the_tls_port_give_clear_errors() {
    let Some(env) = Env::new(Some("50g")) else {
        return;
    };
    let admin = env.g.admin_token();
    let https = &env.proxy.url;
    env.garret_ok(&["login", "main", https, &admin]);
    env.garret_ok(&["cache", "create", "c1"]);

    // a CA that did not sign the proxy's certificate
    let out = env.garret_env(
        &["cache", "info", "c1"],
        &[("SSL_CERT_FILE", &env.other_ca.ca_pem)],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("TLS connection to {https}/ failed")),
        "{err}"
    );
    assert!(err.contains("not signed by a trusted CA"), "{err}");
    assert!(
        err.contains(&format!(
            "the client trusts the CAs in SSL_CERT_FILE={}",
            env.other_ca.ca_pem.display()
        )),
        "{err}"
    );
    assert!(err.contains("NIX_SSL_CERT_FILE"), "{err}");
    // the same through NIX_SSL_CERT_FILE, for a push (not retried: there is nothing to retry)
    let (top, _) = env.build_chain(10);
    let out = env.garret_env(
        &["push", "c1", &top],
        &[("NIX_SSL_CERT_FILE", &env.other_ca.ca_pem)],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not signed by a trusted CA"), "{err}");
    assert!(!err.contains("retrying"), "{err}");

    // a CA file that does not exist is named
    let missing = env.root.join("no-such-ca.pem");
    let out = env.garret_env(&["cache", "info", "c1"], &[("SSL_CERT_FILE", &missing)]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("loading the CAs that SSL_CERT_FILE names"),
        "{err}"
    );
    assert!(err.contains("no-such-ca.pem"), "{err}");
    // ... but only matters for https, as in Nix: plain http to garretd itself still works
    env.garret_ok(&["login", "direct", &env.g.url, &admin]);
    let out = env.garret_env(
        &["cache", "info", "direct:c1"],
        &[("SSL_CERT_FILE", &missing)],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // plain http:// to the TLS port: nginx's 400 page, named
    let plain = https.replacen("https://", "http://", 1);
    let out = env.garret_env(
        &["cache", "info", "c1"],
        &[("GARRET_SERVER", Path::new(&plain))],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("The plain HTTP request was sent to HTTPS port"),
        "{err}"
    );

    // an ftp:// endpoint is refused at login
    let out = env.garret_env(&["login", "x", "ftp://127.0.0.1/"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("must be http:// or https://, not ftp:"),
        "{err}"
    );
}

#[tokio::test]
async fn nix_copy_to_https_with_a_netrc_token() {
    let Some(env) = Env::new(Some("50g")) else {
        return;
    };
    let admin = env.g.admin_token();
    let api = env.g.client();
    assert_eq!(
        api.create_cache(&admin, "priv", false).await.status(),
        StatusCode::OK
    );
    let a = env.store("A");
    let top = env.nix.build_two(&a, &nonce());
    let url = format!("{}/priv", env.proxy.url);
    let netrc = env.root.join("netrc-push");
    let pusher = env
        .g
        .token("ci", "1 hour", &["--pull", "priv", "--push", "priv"]);
    std::fs::write(&netrc, format!("machine 127.0.0.1 password {pusher}\n")).expect("netrc");
    let netrc = netrc.to_str().expect("utf8");

    let out = env.nix_tls(
        "nix",
        &[
            "copy",
            "--from",
            &a,
            "--to",
            &format!("{url}?compression=zstd"),
            &top,
            "--option",
            "netrc-file",
            netrc,
        ],
        &env.ca.ca_pem,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        env.narinfo_status("priv", &top, &admin).await,
        StatusCode::OK
    );

    // and back into a fresh store over HTTPS, signed by the cache's key
    let key = api.public_key(Some(&admin), "priv").await;
    let b = env.store("B");
    let out = env.nix_tls(
        "nix-store",
        &[
            "--store",
            &b,
            "--realise",
            &top,
            "--option",
            "substituters",
            &url,
            "--option",
            "trusted-public-keys",
            &key,
            "--option",
            "netrc-file",
            netrc,
        ],
        &env.ca.ca_pem,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(format!("{b}{top}/blob")).expect("blob B"),
        std::fs::read(format!("{a}{top}/blob")).expect("blob A")
    );
}

#[tokio::test]
async fn nginx_default_body_limit_gives_a_clear_413_and_stores_nothing_half() {
    let Some(env) = Env::new(None) else {
        return;
    };
    let admin = env.g.admin_token();
    let https = &env.proxy.url;
    env.garret_ok(&["login", "main", https, &admin]);
    env.garret_ok(&["cache", "create", "small"]);
    let (top, closure) = env.build_chain(3_000_000);
    assert_eq!(closure.len(), 3);

    let out = env.garret_env(
        &["push", "small", &top],
        &[("SSL_CERT_FILE", &env.ca.ca_pem)],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "failed: {top}: the server or a proxy in front of it refused the upload to \
             {https}/_api/v1/upload-path as too large (HTTP 413 Request Entity Too Large); \
             raise its body limit, e.g. nginx's client_max_body_size"
        )),
        "{err}"
    );
    assert!(
        err.contains("pushed 2 "),
        "the small paths went through: {err}"
    );
    assert!(err.contains("1 of 3 paths failed to push"), "{err}");
    assert!(!err.contains("retrying"), "a 413 is not retried: {err}");
    assert!(
        env.proxy
            .error_log()
            .contains("client intended to send too large chunked body"),
        "nginx enforced its limit: {}",
        env.proxy.error_log()
    );

    // nothing half-uploaded is served, and the path is still missing for the next push
    assert_eq!(
        env.narinfo_status("small", &top, &admin).await,
        StatusCode::NOT_FOUND
    );
    for path in closure.iter().filter(|p| **p != top) {
        assert_eq!(
            env.narinfo_status("small", path, &admin).await,
            StatusCode::OK
        );
    }
    let missing: serde_json::Value = env
        .g
        .client()
        .req(
            reqwest::Method::POST,
            "_api/v1/get-missing-paths",
            Some(&admin),
        )
        .json(&serde_json::json!({"cache": "small", "store_path_hashes": [hash(&top)]}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(missing["missing_paths"], serde_json::json!([hash(&top)]));
}
