//! Resumable, proxy-friendly uploads (docs/resumable-uploads.md). Behind Debian's nginx with
//! `client_max_body_size` below the NAR size, the single request gets 413 and `garret push`
//! in parts succeeds, and real Nix then substitutes the path byte for byte; a push killed
//! halfway resumes without sending a completed part again (the server's part counters say
//! so); a wrong part hash, a wrong NAR hash at commit and missing parts are refused with
//! nothing stored; a part sent twice is a no-op; an abandoned session is removed by GC;
//! and a private cache's sessions reveal nothing to anyone without push on it.

mod common;
mod s3_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::nginx::*;
use common::nix::*;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const PART: &str = "X-Garret-Part-Hash";

fn part_hash(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

async fn create_session(
    api: &Api,
    token: Option<&str>,
    info: &Value,
    part_size: u64,
) -> reqwest::Response {
    api.req(Method::POST, "_api/v1/upload-session", token)
        .json(&json!({ "nar_info": info, "part_size": part_size }))
        .send()
        .await
        .expect("send")
}

async fn put_part(
    api: &Api,
    token: Option<&str>,
    id: &str,
    n: u64,
    hash: &str,
    bytes: &[u8],
) -> reqwest::Response {
    api.req(
        Method::PUT,
        &format!("_api/v1/upload-session/{id}/part/{n}"),
        token,
    )
    .header(PART, hash)
    .body(bytes.to_vec())
    .send()
    .await
    .expect("send")
}

async fn commit(api: &Api, token: Option<&str>, id: &str) -> reqwest::Response {
    api.req(
        Method::POST,
        &format!("_api/v1/upload-session/{id}/commit"),
        token,
    )
    .send()
    .await
    .expect("send")
}

/// Staged part blobs in local storage (`<attempt>-<seq>.stage`).
fn staged_files(g: &Garretd) -> usize {
    g.storage_files()
        .iter()
        .filter(|f| f.ends_with(".stage"))
        .count()
}

async fn metric(api: &Api, name: &str) -> f64 {
    api.metric(name).await.unwrap_or(0.0)
}

#[tokio::test]
async fn parts_are_checked_idempotent_and_commit_like_one_upload() {
    let (g, api, admin) = server_with_cache("parts", true).await;
    let t = Some(admin.as_str());

    let caps = json(api.get("_api/v1/upload-session", None).await).await;
    assert_eq!(caps["version"], 1, "{caps}");
    let min = caps["min_part_size"].as_u64().expect("min_part_size");

    // three parts: two of `min` bytes and a shorter last one
    let nar = nar_of_file(&noise(7, 2 * min as usize + 1000));
    let info = upload_info("parts", "in-parts", &nar, &[]);
    let resp = create_session(&api, t, &info, min).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let s = json(resp).await;
    let id = s["session_id"].as_str().expect("id").to_string();
    assert_eq!(s["part_size"], min);
    assert_eq!(s["num_parts"], 3);
    assert_eq!(s["parts_present"], json!([]));
    let parts: Vec<&[u8]> = nar.chunks(min as usize).collect();

    // a wrong hash: refused, with nothing staged
    let resp = put_part(&api, t, &id, 0, &part_hash(b"other bytes"), parts[0]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let e = json(resp).await;
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Bad part hash or size: part 0 is"),
        "{e}"
    );
    assert_eq!(g.count("upload_session_parts"), 0);
    assert_eq!(g.count("upload_session_blobs"), 0);
    assert_eq!(staged_files(&g), 0);
    // a part of the wrong length, and a part past the end
    let resp = put_part(&api, t, &id, 0, &part_hash(parts[1]), &parts[0][1..]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = put_part(&api, t, &id, 3, &part_hash(parts[2]), parts[2]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(json(resp).await["message"]
        .as_str()
        .unwrap_or_default()
        .contains("this upload has 3 parts"));

    // a part stored, then sent again: a no-op
    let redundant = metric(&api, "garret_upload_parts_redundant_total").await;
    let resp = put_part(&api, t, &id, 1, &part_hash(parts[1]), parts[1]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json(resp).await, json!({"part": 1, "stored": true}));
    let staged = staged_files(&g);
    assert!(staged >= 1);
    let resp = put_part(&api, t, &id, 1, &part_hash(parts[1]), parts[1]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json(resp).await, json!({"part": 1, "stored": false}));
    assert_eq!(
        metric(&api, "garret_upload_parts_redundant_total").await,
        redundant + 1.0
    );
    assert_eq!(g.count("upload_session_parts"), 1);
    assert_eq!(staged_files(&g), staged, "nothing more was staged");
    // the same part with other bytes is refused
    let resp = put_part(&api, t, &id, 1, &part_hash(parts[0]), parts[0]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // commit with parts missing: refused, the session stays
    let resp = commit(&api, t, &id).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(json(resp).await["message"]
        .as_str()
        .unwrap_or_default()
        .contains("2 parts are missing (first: 0, 2)"));

    // the client asks again: the same session, with what it has
    let s = json(create_session(&api, t, &info, min).await).await;
    assert_eq!(s["session_id"], id.as_str());
    assert_eq!(s["parts_present"], json!([1]));
    let s = json(api.get(&format!("_api/v1/upload-session/{id}"), t).await).await;
    assert_eq!(s["parts_present"], json!([1]));

    // nothing is visible before the commit
    let hash = info["store_path_hash"].as_str().expect("hash").to_string();
    assert_eq!(
        api.get(&format!("parts/{hash}.narinfo"), None)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    for n in [0, 2] {
        let resp = put_part(
            &api,
            t,
            &id,
            n,
            &part_hash(parts[n as usize]),
            parts[n as usize],
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(
        api.get(&format!("parts/{hash}.narinfo"), None)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let resp = commit(&api, t, &id).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let r = json(resp).await;
    assert_eq!(r["kind"], "Uploaded", "{r}");
    assert_eq!(api.nar(&format!("parts/nar/{hash}.nar"), None).await, nar);
    let narinfo = api
        .get(&format!("parts/{hash}.narinfo"), None)
        .await
        .text()
        .await
        .expect("narinfo");
    assert!(
        narinfo.contains(&format!("NarSize: {}", nar.len())),
        "{narinfo}"
    );
    // the staging is gone with the session
    assert_eq!(g.count("upload_sessions"), 0);
    assert_eq!(g.count("upload_session_blobs"), 0);
    assert_eq!(staged_files(&g), 0);
    // the session is gone for a late retry of its commit
    assert_eq!(commit(&api, t, &id).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_wrong_nar_hash_is_refused_at_commit_and_nothing_is_visible() {
    let (g, api, admin) = server_with_cache("bad", true).await;
    let t = Some(admin.as_str());
    let min = json(api.get("_api/v1/upload-session", None).await).await["min_part_size"]
        .as_u64()
        .expect("min");
    let nar = nar_of_file(&noise(8, 3 * min as usize));
    // the declared hash is another NAR's of the same size
    let other = nar_of_file(&noise(9, 3 * min as usize));
    let mut info = upload_info("bad", "lies", &nar, &[]);
    info["nar_hash"] = json!(format!("sha256:{}", sha256_hex(&other)));
    let s = json(create_session(&api, t, &info, min).await).await;
    let id = s["session_id"].as_str().expect("id").to_string();
    for (n, part) in nar.chunks(min as usize).enumerate() {
        let resp = put_part(&api, t, &id, n as u64, &part_hash(part), part).await;
        assert_eq!(resp.status(), StatusCode::OK, "part {n}");
    }
    let resp = commit(&api, t, &id).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let e = json(resp).await;
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Bad NAR Hash or Size"),
        "{e}"
    );
    let hash = info["store_path_hash"].as_str().expect("hash");
    assert_eq!(
        api.get(&format!("bad/{hash}.narinfo"), None).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(g.count("objects"), 0);
    assert_eq!(g.count("nars"), 0);
    // refused for good: the parts are of no use and go at once
    assert_eq!(g.count("upload_sessions"), 0);
    assert_eq!(g.count("upload_session_blobs"), 0);
    assert_eq!(staged_files(&g), 0);
    eventually_blocking(PATIENCE, "the refused NAR's chunks are removed", || {
        g.count("chunks") == 0
    });
}

#[tokio::test]
async fn an_abandoned_session_is_removed_by_gc_and_a_live_one_is_kept() {
    let (g, api, admin) = server_with_cache("gc", true).await;
    let t = Some(admin.as_str());
    let min = json(api.get("_api/v1/upload-session", None).await).await["min_part_size"]
        .as_u64()
        .expect("min");
    let mut ids = Vec::new();
    for name in ["abandoned", "live"] {
        let nar = nar_of_file(&noise(name.len() as u64, 2 * min as usize));
        let info = upload_info("gc", name, &nar, &[]);
        let s = json(create_session(&api, t, &info, min).await).await;
        let id = s["session_id"].as_str().expect("id").to_string();
        let part = &nar[..min as usize];
        let resp = put_part(&api, t, &id, 0, &part_hash(part), part).await;
        assert_eq!(resp.status(), StatusCode::OK);
        ids.push(id);
    }
    let staged_each = staged_files(&g) / 2;
    assert!(staged_each >= 1);
    // the first session's last activity is a day and a second ago: past its expiry
    g.sql_exec(&format!(
        "UPDATE upload_sessions SET expires_at = expires_at - 86401 WHERE id = '{}'",
        ids[0]
    ));
    assert_eq!(
        api.get(&format!("_api/v1/upload-session/{}", ids[0]), t)
            .await
            .status(),
        StatusCode::NOT_FOUND,
        "an expired session is not served"
    );
    let out = g.run(&["gc"]);
    assert!(out.status.success(), "gc failed");
    assert_eq!(
        g.sql_rows("SELECT id FROM upload_sessions"),
        vec![ids[1].clone()]
    );
    assert_eq!(
        g.sql(&format!(
            "SELECT COUNT(*) FROM upload_session_blobs WHERE session_id = '{}'",
            ids[0]
        )),
        "0"
    );
    assert_eq!(
        staged_files(&g),
        staged_each,
        "only the live session's part is staged"
    );
    let s = json(
        api.get(&format!("_api/v1/upload-session/{}", ids[1]), t)
            .await,
    )
    .await;
    assert_eq!(s["parts_present"], json!([0]));
}

#[tokio::test]
async fn a_private_cache_s_sessions_reveal_nothing() {
    let (g, api, admin) = server_with_cache("secret", false).await;
    let t = Some(admin.as_str());
    let elsewhere = g.token("eve", "1 hour", &["--pull", "other", "--push", "other"]);
    let e = Some(elsewhere.as_str());
    let min = json(api.get("_api/v1/upload-session", None).await).await["min_part_size"]
        .as_u64()
        .expect("min");
    let nar = nar_of_file(&noise(3, 2 * min as usize));
    let info = upload_info("secret", "hidden", &nar, &[]);
    let s = json(create_session(&api, t, &info, min).await).await;
    let id = s["session_id"].as_str().expect("id").to_string();

    // starting a session: the private cache answers as a missing one
    let missing = upload_info("no-such-cache", "hidden", &nar, &[]);
    for token in [None, e] {
        let a = create_session(&api, token, &info, min).await;
        let b = create_session(&api, token, &missing, min).await;
        assert_eq!(a.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(a.status(), b.status());
        assert_eq!(a.text().await.ok(), b.text().await.ok());
    }
    // a caller who may push nowhere is refused before its body is read: a 401 and the
    // connection closed, which the sender of a large body may only see as the pipe breaking
    match api
        .req(Method::POST, "_api/v1/upload-session", None)
        .body(vec![b' '; 8 << 20])
        .send()
        .await
    {
        Ok(resp) => assert_eq!(resp.status(), StatusCode::UNAUTHORIZED),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e:?}"),
    }

    // the session's routes: the same answer as for an id that does not exist
    let nobody = uuid::Uuid::new_v4().simple().to_string();
    let part = &nar[..min as usize];
    for token in [None, e] {
        let want = if token.is_none() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::NOT_FOUND
        };
        for sid in [id.as_str(), nobody.as_str()] {
            let get = api
                .get(&format!("_api/v1/upload-session/{sid}"), token)
                .await;
            assert_eq!(get.status(), want, "GET {sid}");
            let put = put_part(&api, token, sid, 0, &part_hash(part), part).await;
            assert_eq!(put.status(), want, "PUT {sid}");
            let c = commit(&api, token, sid).await;
            assert_eq!(c.status(), want, "commit {sid}");
        }
    }
    assert_eq!(g.count("upload_session_parts"), 0, "nothing was staged");
    // the owner still can
    let resp = put_part(&api, t, &id, 0, &part_hash(part), part).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn on_s3_parts_are_staged_in_the_bucket_and_leave_nothing_behind() {
    let Some(s3) = s3_support::s3_from_env("resumable uploads on S3") else {
        return;
    };
    let g = Garretd::start_with(Some(&s3_support::storage_toml(&s3)), &[]);
    let api = g.client();
    let admin = g.admin_token();
    let t = Some(admin.as_str());
    assert_eq!(
        api.create_cache(&admin, "s3", true).await.status(),
        StatusCode::OK
    );
    let bucket = garretd::backend::S3Storage::new(&s3).expect("S3 client");
    use garretd::backend::{Storage, StorageError};
    let min = json(api.get("_api/v1/upload-session", None).await).await["min_part_size"]
        .as_u64()
        .expect("min");

    // one NAR committed, one abandoned halfway
    let nar = nar_of_file(&noise(21, 3 * min as usize));
    let info = upload_info("s3", "committed", &nar, &[]);
    let id = json(create_session(&api, t, &info, min).await).await["session_id"]
        .as_str()
        .expect("id")
        .to_string();
    for (n, part) in nar.chunks(min as usize).enumerate() {
        let resp = put_part(&api, t, &id, n as u64, &part_hash(part), part).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let other = nar_of_file(&noise(22, 2 * min as usize));
    let info2 = upload_info("s3", "abandoned", &other, &[]);
    let id2 = json(create_session(&api, t, &info2, min).await).await["session_id"]
        .as_str()
        .expect("id")
        .to_string();
    let part = &other[..min as usize];
    assert_eq!(
        put_part(&api, t, &id2, 0, &part_hash(part), part)
            .await
            .status(),
        StatusCode::OK
    );
    let blobs = g.sql_rows("SELECT storage_key FROM upload_session_blobs");
    assert!(blobs.len() >= 4, "{blobs:?}");
    for key in &blobs {
        bucket
            .get(key)
            .await
            .expect("a staged blob is in the bucket");
    }

    assert_eq!(commit(&api, t, &id).await.status(), StatusCode::OK);
    let hash = info["store_path_hash"].as_str().expect("hash");
    assert_eq!(api.nar(&format!("s3/nar/{hash}.nar"), None).await, nar);
    g.sql_exec(&format!(
        "UPDATE upload_sessions SET expires_at = expires_at - 86401 WHERE id = '{id2}'"
    ));
    assert!(g.run(&["gc"]).status.success(), "gc failed");
    assert_eq!(g.count("upload_sessions"), 0);
    assert_eq!(g.count("upload_session_blobs"), 0);
    for key in &blobs {
        assert!(
            matches!(bucket.get(key).await, Err(StorageError::NotFound(_))),
            "{key} is gone from the bucket"
        );
    }
}

// ---- the client, real Nix and real proxies ------------------------------------------------

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
            .prefix("garret-parts-")
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

    /// The client with its local Nix on store A, trusting `ca` (if any) for https.
    fn garret_cmd(&self, args: &[&str], ca: Option<&Path>) -> Command {
        let mut c = self.nix.cmd(workspace_bin("garret"));
        c.env("NIX_REMOTE", format!("local?root={}", self.store("A")))
            .env_remove("SSL_CERT_FILE")
            .env_remove("NIX_SSL_CERT_FILE")
            .env_remove("GARRET_PART_SIZE")
            .args(args);
        if let Some(ca) = ca {
            c.env("NIX_SSL_CERT_FILE", ca);
        }
        c
    }

    fn garret(&self, args: &[&str], ca: Option<&Path>) -> Output {
        let out = self.garret_cmd(args, ca).output().expect("spawn garret");
        eprintln!(
            "$ garret {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn garret_ok(&self, args: &[&str], ca: Option<&Path>) -> String {
        let out = self.garret(args, ca);
        assert!(out.status.success(), "garret {args:?} failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Builds top (with `bigsize` random bytes) → mid → leaf into store A; returns top.
    fn build_chain(&self, bigsize: u64) -> String {
        self.nix.ok(
            "nix-build",
            &[
                "--store",
                &self.store("A"),
                "--no-out-link",
                self.root.join("chain.nix").to_str().expect("utf8"),
                "--argstr",
                "nonce",
                &nonce(),
                "--argstr",
                "bigsize",
                &bigsize.to_string(),
            ],
        )
    }

    /// `garret use` (as a user would), then Nix substitutes `top` into a fresh store `name`
    /// and its blob must be byte for byte store A's.
    fn substitute_and_compare(&self, cache: &str, top: &str, name: &str, ca: Option<&Path>) {
        self.garret_ok(&["use", cache], ca);
        let store = self.store(name);
        let mut cmd = self.nix.cmd("nix-store");
        cmd.args(["--store", &store, "--realise", top])
            .env_remove("SSL_CERT_FILE");
        if let Some(ca) = ca {
            cmd.env("NIX_SSL_CERT_FILE", ca);
        }
        let out = cmd.output().expect("nix-store");
        assert!(
            out.status.success(),
            "substituting {top}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(format!("{store}{top}/blob")).expect("substituted blob"),
            std::fs::read(format!("{}{top}/blob", self.store("A"))).expect("blob A")
        );
    }
}

/// The NAR size of `path` in store A.
fn nar_size(env: &Env, path: &str) -> u64 {
    let out = env.nix.ok(
        "nix",
        &["path-info", "--store", &env.store("A"), "--json", path],
    );
    let v: Value = serde_json::from_str(&out).expect("path-info JSON");
    let entry = match &v {
        Value::Array(a) => a.first().cloned().unwrap_or_default(),
        Value::Object(o) => o.values().next().cloned().unwrap_or_default(),
        _ => Value::Null,
    };
    entry["narSize"].as_u64().expect("narSize")
}

#[tokio::test]
async fn behind_nginx_s_body_limit_the_single_request_gets_413_and_parts_pass() {
    let Some(env) = Env::new() else { return };
    let Some(bin) = require_nginx() else { return };
    let g = Garretd::start();
    let api = g.client();
    let ca = TestCa::new(&env.root, "proxy");
    let proxy = Nginx::start(&bin, &g.url, &ca, Some("1m"));
    let pem = Some(ca.ca_pem.as_path());
    let admin = g.admin_token();
    env.garret_ok(&["login", "main", &proxy.url, &admin], pem);
    env.garret_ok(&["cache", "create", "big", "--public"], pem);
    let top = env.build_chain(3 << 20);
    let size = nar_size(&env, &top);
    assert!(
        size > 1 << 20,
        "the NAR ({size} bytes) is above nginx's limit"
    );

    // whole NARs: the stock single request, refused by the proxy
    let out = env.garret(&["push", "big", "--part-size", "0", &top], pem);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/_api/v1/upload-path as too large (HTTP 413"),
        "{err}"
    );
    assert_eq!(g.count("objects"), 2, "the two small paths went through");

    // in parts of 256 KiB: every request is under the limit
    let stored = metric(&api, "garret_upload_parts_stored_total").await;
    let err = env.garret_ok(&["push", "big", "--part-size", "256K", &top], pem);
    assert!(err.contains(" 0 failed"), "{err}");
    let parts = size.div_ceil(256 << 10);
    assert_eq!(
        metric(&api, "garret_upload_parts_stored_total").await,
        stored + parts as f64
    );
    let log = proxy.access_log();
    let part_puts = log
        .lines()
        .filter(|l| l.contains("PUT /_api/v1/upload-session/") && l.contains("\" 200 "))
        .count();
    assert_eq!(part_puts as u64, parts, "{log}");
    assert!(
        log.contains("POST /_api/v1/upload-session HTTP/1.1\" 200"),
        "{log}"
    );
    assert_eq!(g.count("objects"), 3);
    assert_eq!(g.count("upload_sessions"), 0);
    assert_eq!(staged_files(&g), 0);

    // substituted through the proxy, byte for byte
    env.substitute_and_compare("big", &top, "B", pem);
}

#[tokio::test]
async fn a_killed_push_resumes_without_resending_completed_parts() {
    let Some(env) = Env::new() else { return };
    let g = Garretd::start();
    let api = g.client();
    let admin = g.admin_token();
    const PART_SIZE: u64 = 256 << 10;
    // The client reaches the server through a relay that forwards 2.5 parts' worth of
    // bytes and then holds the rest: parts 0 and 1 complete (each part is sent only after
    // the server acknowledged the one before), part 2 is in flight when the client dies.
    let proxy = common::proxy::StallingProxy::start(&g.url, PART_SIZE * 5 / 2);
    env.garret_ok(&["login", "main", &proxy.url, &admin], None);
    env.garret_ok(&["cache", "create", "big", "--public"], None);
    let top = env.build_chain(3 << 20);
    let parts = nar_size(&env, &top).div_ceil(PART_SIZE);
    let mut child = env
        .garret_cmd(
            &["push", "big", "--jobs", "1", "--part-size", "256K", &top],
            None,
        )
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
    eventually_blocking(PATIENCE, "the relay holding part of the push", || {
        proxy.stalled()
    });
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the push was cut short: {status:?}");
    proxy.cut();

    let done: u64 = g
        .sql("SELECT COUNT(*) FROM upload_session_parts")
        .parse()
        .expect("count");
    assert!(done >= 1 && done < parts, "{done} of {parts} parts stored");
    assert_eq!(
        g.count("objects"),
        0,
        "nothing is visible before the commit"
    );
    let stored = metric(&api, "garret_upload_parts_stored_total").await;
    let redundant = metric(&api, "garret_upload_parts_redundant_total").await;
    assert_eq!(stored, done as f64);

    // the same push, re-run straight to the server: only the parts it lacks are sent
    env.garret_ok(&["login", "main", &g.url, &admin], None);
    let err = env.garret_ok(
        &["push", "big", "--jobs", "1", "--part-size", "256K", &top],
        None,
    );
    assert!(err.contains(" 0 failed"), "{err}");
    assert_eq!(
        metric(&api, "garret_upload_parts_stored_total").await,
        stored + (parts - done) as f64,
        "parts sent by the re-run"
    );
    assert_eq!(
        metric(&api, "garret_upload_parts_redundant_total").await,
        redundant,
        "no completed part was sent again"
    );
    assert_eq!(g.count("upload_sessions"), 0);
    eventually_blocking(PATIENCE, "the cut-off part's blobs are removed", || {
        staged_files(&g) == 0
    });
    env.substitute_and_compare("big", &top, "B", None);
}
