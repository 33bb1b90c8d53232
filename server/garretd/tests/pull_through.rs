//! Pull-through upstreams (docs/pull-through.md) with real Nix: the upstream is a static
//! directory written by `nix copy --to file://…`, served by a small HTTP server in the test
//! that counts every request; garretd fetches from it on a miss, and real Nix substitutes
//! through garretd, later with the upstream answering nothing.

mod common;
mod s3_support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{StatusCode as AxStatus, Uri};
use axum::response::{IntoResponse, Response};
use common::nix::*;
use common::*;
use reqwest::StatusCode;
use serde_json::json;

/// A static binary cache over HTTP: files of `dir`, every request counted by path. While
/// `down`, it answers 503 to everything (still counted), as an outage would.
#[derive(Clone)]
struct Upstream {
    dir: PathBuf,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    down: Arc<AtomicBool>,
    url: String,
}

async fn serve_file(State(u): State<Upstream>, uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/').to_string();
    *u.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    if u.down.load(Ordering::SeqCst) || path.contains("..") {
        return AxStatus::SERVICE_UNAVAILABLE.into_response();
    }
    match tokio::fs::read(u.dir.join(&path)).await {
        Ok(bytes) => bytes.into_response(),
        Err(_) => AxStatus::NOT_FOUND.into_response(),
    }
}

impl Upstream {
    /// Runs on its own thread and runtime: the tests block theirs while Nix runs.
    async fn start(dir: PathBuf) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let u = Upstream {
            dir,
            hits: Arc::default(),
            down: Arc::default(),
            url,
        };
        let app = axum::Router::new()
            .fallback(serve_file)
            .with_state(u.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await
            })
        });
        u
    }

    /// Requests for paths ending in `suffix` (e.g. `.narinfo`, or a NAR's file name).
    fn count(&self, suffix: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.ends_with(suffix))
            .map(|(_, n)| n)
            .sum()
    }

    fn total(&self) -> usize {
        self.count("")
    }
}

/// A Nix closure (top → dep) in store A, copied to a `file://` cache with `compression`,
/// signed with a fresh key unless `signed` is false.
struct Fixture {
    _tmp: tempfile::TempDir,
    nix: Nix,
    store_a: String,
    top: String,
    dep: String,
    upstream_dir: PathBuf,
    /// `name:base64` of the key that signed the upstream.
    upstream_key: String,
}

fn fixture(compression: &str, signed: bool) -> Fixture {
    let tmp = tempfile::Builder::new()
        .prefix("garret-pull-")
        .tempdir()
        .unwrap();
    let nix = Nix::new(tmp.path());
    let store_a = nix.store("A");
    let top = nix.build_two(&store_a, &nonce());
    let closure: Vec<String> = nix
        .ok("nix-store", &["--store", &store_a, "-qR", &top])
        .lines()
        .map(String::from)
        .collect();
    let dep = closure.iter().find(|p| **p != top).unwrap().clone();
    let sk = tmp.path().join("sk");
    let pk = tmp.path().join("pk");
    nix.ok(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "upstream-1",
            sk.to_str().unwrap(),
            pk.to_str().unwrap(),
        ],
    );
    let upstream_dir = tmp.path().join("bc");
    let mut to = format!(
        "file://{}?compression={compression}",
        upstream_dir.display()
    );
    if signed {
        to.push_str(&format!("&secret-key={}", sk.display()));
    }
    nix.ok("nix", &["copy", "--store", &store_a, "--to", &to, &top]);
    Fixture {
        upstream_key: std::fs::read_to_string(&pk).unwrap().trim().to_string(),
        _tmp: tmp,
        nix,
        store_a,
        top,
        dep,
        upstream_dir,
    }
}

fn hash_of(path: &str) -> String {
    path.rsplit('/').next().unwrap()[..32].to_string()
}

/// Points `cache` at `upstream`, trusting `key`, through the API's cache config.
/// `f`'s upstream served, and a fresh server whose public cache `mirror` pulls through it:
/// the upstream, the server, its API and an all-rights token.
async fn mirror_of(f: &Fixture) -> (Upstream, Garretd, Api, String) {
    let up = Upstream::start(f.upstream_dir.clone()).await;
    let (g, api, admin) = server_with_cache("mirror", true).await;
    set_upstream(&api, &admin, "mirror", &up.url, &f.upstream_key).await;
    (up, g, api, admin)
}

/// The upstream's NAR of the path with hash `h`: its narinfo's `URL:` and the file.
fn upstream_nar(f: &Fixture, h: &str) -> (String, std::path::PathBuf) {
    let narinfo = std::fs::read_to_string(f.upstream_dir.join(format!("{h}.narinfo"))).unwrap();
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_string();
    let file = f.upstream_dir.join(&url);
    (url, file)
}

async fn set_upstream(api: &Api, admin: &str, cache: &str, url: &str, key: &str) {
    let r = api
        .patch_config(
            admin,
            cache,
            json!({ "upstreams": [{ "url": url, "public_keys": [key], "priority": 40 }] }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn nix_substitutes_through_garret_first_from_upstream_then_from_garret_alone() {
    if !require_nix() {
        return;
    }
    let f = fixture("xz", true);
    let (up, g, api, admin) = mirror_of(&f).await;

    // The extension field reads back; caches without upstreams do not carry it at all.
    let (_, cfg) = api.cache_config(Some(&admin), "mirror").await;
    assert_eq!(cfg["upstreams"][0]["url"], up.url.as_str());
    assert_eq!(
        cfg["upstreams"][0]["public_keys"][0],
        f.upstream_key.as_str()
    );
    assert_eq!(
        api.create_cache(&admin, "plain", true).await.status(),
        StatusCode::OK
    );
    let (_, plain) = api.cache_config(Some(&admin), "plain").await;
    assert!(plain.get("upstreams").is_none(), "{plain}");

    // Nix trusts only Garret's key: the narinfos it gets are signed by the cache.
    let key = api.public_key(None, "mirror").await;
    let sub = format!("{}/mirror", g.url);
    let b = f.nix.store("B");
    let out = f.nix.realise_from(&b, &f.top, &sub, &key, &[]);
    assert!(out.status.success(), "first substitution through garret");
    assert_eq!(
        std::fs::read(format!("{b}{}/blob", f.top)).unwrap(),
        std::fs::read(format!("{}{}/blob", f.store_a, f.top)).unwrap()
    );
    assert_eq!(up.count(".nar.xz"), 2, "one NAR fetch per path");
    let text = api
        .get(&format!("mirror/{}.narinfo", hash_of(&f.top)), None)
        .await
        .text()
        .await
        .unwrap();
    let key_name = key.split(':').next().unwrap();
    assert!(text.contains(&format!("Sig: {key_name}:")), "{text}");
    assert!(!text.contains("upstream-1:"), "{text}");

    // Pulled paths are ordinary objects of the cache.
    assert_eq!(g.count("objects"), 2);

    // The upstream goes down; a second client still gets everything, from Garret alone.
    up.down.store(true, Ordering::SeqCst);
    let before = up.total();
    let c = f.nix.store("C");
    let out = f.nix.realise_from(&c, &f.top, &sub, &key, &[]);
    assert!(
        out.status.success(),
        "second substitution with the upstream down"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{c}{}/data", f.top)).unwrap(),
        "top\n"
    );
    assert_eq!(
        up.total(),
        before,
        "the second client caused no upstream request"
    );

    // An upstream outage is a miss, not an error.
    let r = api
        .get(&format!("mirror/{}.narinfo", fake_hash("nowhere")), None)
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unsigned_or_wrongly_signed_upstream_answers_are_refused() {
    if !require_nix() {
        return;
    }
    let signed = fixture("none", true);
    let unsigned = fixture("none", false);
    let up_signed = Upstream::start(signed.upstream_dir.clone()).await;
    let up_unsigned = Upstream::start(unsigned.upstream_dir.clone()).await;
    let (g, api, admin) = server_with_cache("wrongkey", true).await;
    assert_eq!(
        api.create_cache(&admin, "nosig", true).await.status(),
        StatusCode::OK
    );
    // Same key name, other key material.
    let other = format!(
        "upstream-1:{}",
        unsigned.upstream_key.split(':').nth(1).unwrap()
    );
    set_upstream(&api, &admin, "wrongkey", &up_signed.url, &other).await;
    set_upstream(
        &api,
        &admin,
        "nosig",
        &up_unsigned.url,
        &unsigned.upstream_key,
    )
    .await;

    for (cache, f, up) in [
        ("wrongkey", &signed, &up_signed),
        ("nosig", &unsigned, &up_unsigned),
    ] {
        let h = hash_of(&f.top);
        for _ in 0..3 {
            let r = api.get(&format!("{cache}/{h}.narinfo"), None).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{cache}");
            let r = api.get(&format!("{cache}/nar/{h}.nar"), None).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{cache}");
        }
        // Asked once; the refusal is remembered (negative TTL), the NAR never fetched.
        assert_eq!(up.count(&format!("{h}.narinfo")), 1, "{cache}");
        assert_eq!(up.count(".nar"), 0, "{cache}");
        let key = api.public_key(None, cache).await;
        let out = f.nix.realise_from(
            &f.nix.store("B"),
            &f.top,
            &format!("{}/{cache}", g.url),
            &key,
            &[],
        );
        assert!(!out.status.success(), "{cache}: nothing to substitute");
    }
    assert_eq!(g.count("objects"), 0);
    assert!(g.logged("no signature verifies"));
    assert!(g.logged("the narinfo is not signed"));
}

#[tokio::test]
async fn concurrent_first_requests_make_one_upstream_fetch() {
    if !require_nix() {
        return;
    }
    let f = fixture("zstd", true);
    let (up, g, api, _admin) = mirror_of(&f).await;
    let h = hash_of(&f.top);
    const N: usize = 8;

    let narinfo_path = format!("mirror/{h}.narinfo");
    let nar_path = format!("mirror/nar/{h}.nar");
    let narinfos = futures::future::join_all((0..N).map(|_| api.get(&narinfo_path, None))).await;
    let mut texts = Vec::new();
    for r in narinfos {
        assert_eq!(r.status(), StatusCode::OK);
        texts.push(r.text().await.unwrap());
    }
    assert!(texts.iter().all(|t| *t == texts[0]));
    let nar_hash = texts[0]
        .lines()
        .find_map(|l| l.strip_prefix("NarHash: sha256:"))
        .unwrap()
        .to_string();

    let nars = futures::future::join_all((0..N).map(|_| api.nar(&nar_path, None))).await;
    for nar in &nars {
        assert_eq!(sha256_hex(nar), nar_hash, "every client gets the whole NAR");
    }
    assert_eq!(up.count(&format!("{h}.narinfo")), 1);
    assert_eq!(up.count(".nar.zst"), 1, "one upstream NAR fetch");
    // What garretd stored is what Nix dumps.
    let dumped = f.nix.bytes(
        "nix",
        &["store", "dump-path", "--store", &f.store_a, &f.top],
    );
    assert_eq!(sha256_hex(&dumped), nar_hash);
    assert_eq!(g.count("objects"), 1);

    // Served locally (and the same narinfo) once stored, with the upstream down.
    up.down.store(true, Ordering::SeqCst);
    let before = up.total();
    let again = api.get(&format!("mirror/{h}.narinfo"), None).await;
    assert_eq!(again.text().await.unwrap(), texts[0]);
    assert_eq!(
        sha256_hex(&api.nar(&format!("mirror/nar/{h}.nar"), None).await),
        nar_hash
    );
    assert_eq!(up.total(), before);
}

#[tokio::test]
async fn private_cache_without_token_never_asks_the_upstream() {
    if !require_nix() {
        return;
    }
    let f = fixture("xz", true);
    let up = Upstream::start(f.upstream_dir.clone()).await;
    let (g, api, admin) = server_with_cache("team", false).await;
    set_upstream(&api, &admin, "team", &up.url, &f.upstream_key).await;
    let h = hash_of(&f.top);
    let bogus = "not-a-token";
    for token in [None, Some(bogus)] {
        for path in [format!("team/{h}.narinfo"), format!("team/nar/{h}.nar")] {
            let r = api.get(&path, token).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        }
        let r = api
            .req(reqwest::Method::POST, "_api/v1/get-missing-paths", token)
            .json(&json!({ "cache": "team", "store_path_hashes": [h] }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // A caller with rights on another cache only learns nothing either.
    let other = g.token("other", "1 hour", &["--pull", "elsewhere"]);
    let r = api.get(&format!("team/{h}.narinfo"), Some(&other)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        up.total(),
        0,
        "no upstream request for an unauthorized caller"
    );

    // The same request with a pull token does reach the upstream.
    let reader = g.token("ci", "1 hour", &["--pull", "team"]);
    let r = api.get(&format!("team/{h}.narinfo"), Some(&reader)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(up.count(".narinfo"), 1);
}

#[tokio::test]
async fn get_missing_paths_skips_what_an_upstream_has() {
    if !require_nix() {
        return;
    }
    let f = fixture("xz", true);
    let (up, _g, api, admin) = mirror_of(&f).await;
    let absent = fake_hash("absent");
    let ask = || async {
        let r = api
            .req(
                reqwest::Method::POST,
                "_api/v1/get-missing-paths",
                Some(&admin),
            )
            .json(&json!({
                "cache": "mirror",
                "store_path_hashes": [hash_of(&f.top), hash_of(&f.dep), absent],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        json(r).await["missing_paths"].clone()
    };
    assert_eq!(ask().await, json!([absent]));
    assert_eq!(up.count(".narinfo"), 3);
    // Remembered: asking again costs the upstream nothing.
    assert_eq!(ask().await, json!([absent]));
    assert_eq!(up.count(".narinfo"), 3);
    assert_eq!(up.count(".nar.xz"), 0, "no NAR is fetched to answer");
}

/// The upstream declared in `server.toml` (kebab-case keys), chunks on Garage (S3).
#[tokio::test]
async fn declared_upstream_with_garage_storage() {
    if !require_nix() {
        return;
    }
    let Some(s3) = s3_support::s3_from_env("pull-through on S3") else {
        return;
    };
    let f = fixture("bzip2", true);
    let up = Upstream::start(f.upstream_dir.clone()).await;
    let config = format!(
        "{}\n[[caches]]\nname = \"mirror\"\npublic = true\n\
         upstreams = [{{ url = \"{}/\", public-keys = [\"{}\"], priority = 30 }}]\n\n\
         [pull-through]\nnegative-ttl = \"5 s\"\n",
        s3_support::storage_toml(&s3),
        up.url,
        f.upstream_key
    );
    let g = Garretd::start_with(Some(&config), &[]);
    let api = g.client();
    let key = api.public_key(None, "mirror").await;
    let (_, cfg) = api.cache_config(None, "mirror").await;
    assert_eq!(cfg["upstreams"][0]["priority"], 30);
    let sub = format!("{}/mirror", g.url);
    let b = f.nix.store("B");
    assert!(f
        .nix
        .realise_from(&b, &f.top, &sub, &key, &[])
        .status
        .success());
    assert_eq!(up.count(".nar.bz2"), 2);
    up.down.store(true, Ordering::SeqCst);
    let c = f.nix.store("C");
    assert!(f
        .nix
        .realise_from(&c, &f.top, &sub, &key, &[])
        .status
        .success());
    assert_eq!(
        std::fs::read(format!("{c}{}/blob", f.top)).unwrap(),
        std::fs::read(format!("{}{}/blob", f.store_a, f.top)).unwrap()
    );
}

/// A NAR that does not match its signed narinfo is never stored: the first client's body
/// breaks off, and the next request asks the upstream again.
#[tokio::test]
async fn a_nar_not_matching_its_narinfo_is_not_stored() {
    if !require_nix() {
        return;
    }
    let f = fixture("none", true);
    // Flip one byte inside the top path's NAR (its blob of random data).
    let h = hash_of(&f.top);
    let (url, nar_file) = upstream_nar(&f, &h);
    let mut bytes = std::fs::read(&nar_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&nar_file, &bytes).unwrap();

    let (up, g, api, _admin) = mirror_of(&f).await;
    let r = api.get(&format!("mirror/{h}.narinfo"), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    for round in 1..=2 {
        let r = api.get(&format!("mirror/nar/{h}.nar"), None).await;
        // Either the status already says so or the body breaks off; never a clean NAR.
        if r.status() == StatusCode::OK {
            assert!(
                r.bytes().await.is_err(),
                "round {round}: the body must not end cleanly"
            );
        }
        assert_eq!(g.count("objects"), 0, "round {round}: nothing stored");
        assert_eq!(
            up.count(&url),
            round,
            "round {round}: asked again after a failure"
        );
    }
    assert!(g.logged("pull from upstream failed; nothing stored"));
    // Nix refuses it too.
    let key = api.public_key(None, "mirror").await;
    let out = f.nix.realise_from(
        &f.nix.store("B"),
        &f.top,
        &format!("{}/mirror", g.url),
        &key,
        &[],
    );
    assert!(!out.status.success());
}

/// Upstreams are asked by ascending priority, and a miss at one falls through to the next.
#[tokio::test]
async fn upstreams_are_asked_in_priority_order() {
    if !require_nix() {
        return;
    }
    let f = fixture("xz", true);
    let empty = tempfile::tempdir().unwrap();
    let holder = Upstream::start(f.upstream_dir.clone()).await;
    let nothing = Upstream::start(empty.path().to_path_buf()).await;
    let (_g, api, admin) = server_with_cache("a", true).await;
    assert_eq!(
        api.create_cache(&admin, "b", true).await.status(),
        StatusCode::OK
    );
    let both = |first: &Upstream, second: &Upstream| {
        json!({ "upstreams": [
            { "url": second.url, "public_keys": [f.upstream_key], "priority": 20 },
            { "url": first.url, "public_keys": [f.upstream_key], "priority": 10 },
        ] })
    };
    let ok = |r: reqwest::Response| assert_eq!(r.status(), StatusCode::OK);
    ok(api.patch_config(&admin, "a", both(&nothing, &holder)).await);
    ok(api.patch_config(&admin, "b", both(&holder, &nothing)).await);
    let top = hash_of(&f.top);
    let dep = hash_of(&f.dep);

    // a: the empty upstream first (a miss), then the one that has it.
    ok(api.get(&format!("a/{top}.narinfo"), None).await);
    assert_eq!(nothing.count(&format!("{top}.narinfo")), 1);
    assert_eq!(holder.count(&format!("{top}.narinfo")), 1);
    // b: the holder first; the empty one is never asked.
    ok(api.get(&format!("b/{dep}.narinfo"), None).await);
    assert_eq!(holder.count(&format!("{dep}.narinfo")), 1);
    assert_eq!(nothing.count(&format!("{dep}.narinfo")), 0);
}

/// An upstream that accepts connections and never answers is a miss once
/// `[pull-through] timeout` has passed, not a hung request or a 5xx.
#[tokio::test]
async fn a_silent_upstream_is_a_miss() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // Accepts and holds every connection, answering nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let key = garret_core::nix::signing::Keypair::generate("up-1")
        .unwrap()
        .public_key()
        .to_string();
    let config = format!(
        "[[caches]]\nname = \"mirror\"\npublic = true\n\
         upstreams = [{{ url = \"{url}\", public-keys = [\"{key}\"] }}]\n\n\
         [pull-through]\ntimeout = \"1 s\"\n"
    );
    let g = Garretd::start_with(Some(&config), &[]);
    let api = g.client();
    let h = fake_hash("silent");
    let r = api.get(&format!("mirror/{h}.narinfo"), None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = api.get(&format!("mirror/nar/{h}.nar"), None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(g.logged("no narinfo answer within"));
}

/// Pulled paths are ordinary objects: retention expires them and GC frees them; once gone,
/// the next miss pulls them again.
#[tokio::test]
async fn retention_and_gc_treat_pulled_paths_like_pushed_ones() {
    if !require_nix() {
        return;
    }
    let f = fixture("zstd", true);
    let up = Upstream::start(f.upstream_dir.clone()).await;
    let g = Garretd::start_with(
        Some("[garbage-collection]\ninterval = 0\norphan-grace-period = 0\n"),
        &[],
    );
    let api = g.client();
    let admin = g.admin_token();
    assert_eq!(
        api.create_cache(&admin, "mirror", true).await.status(),
        StatusCode::OK
    );
    set_upstream(&api, &admin, "mirror", &up.url, &f.upstream_key).await;
    let r = api
        .patch_config(
            &admin,
            "mirror",
            json!({"retention_period": {"Period": 3600}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let h = hash_of(&f.top);
    let nar = api.nar(&format!("mirror/nar/{h}.nar"), None).await;
    assert!(!nar.is_empty());
    assert_eq!(g.count("objects"), 1);
    let chunks = g.count("chunks");
    assert!(chunks > 0);

    // Past its retention, GC removes the object and its chunks.
    g.age_data(2 * 3600);
    let out = g.run(&["gc"]);
    assert!(out.status.success(), "gc failed");
    assert_eq!(g.count("objects"), 0);
    assert_eq!(g.sql("SELECT COUNT(*) FROM chunks WHERE state = 'V'"), "0");
    // With the upstream down, a path never looked up before is a plain miss.
    up.down.store(true, Ordering::SeqCst);
    let fetches = up.count(".nar.zst");
    let r = api
        .get(&format!("mirror/nar/{}.nar", hash_of(&f.dep)), None)
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Back up: the next request for the collected path pulls it again.
    up.down.store(false, Ordering::SeqCst);
    let again = api.nar(&format!("mirror/nar/{h}.nar"), None).await;
    assert_eq!(again, nar);
    assert_eq!(up.count(".nar.zst"), fetches + 1);
    assert_eq!(g.count("objects"), 1);
}

/// `garret push` to a pull-through cache uploads nothing an upstream has, and fetches no
/// NAR to find that out.
#[tokio::test]
async fn garret_push_skips_paths_an_upstream_has() {
    if !require_nix() {
        return;
    }
    let f = fixture("xz", true);
    let (up, g, _api, admin) = mirror_of(&f).await;
    let out = f
        .nix
        .cmd(workspace_bin("garret"))
        .args(["push", "mirror", &f.top])
        .env("NIX_REMOTE", format!("local?root={}", f.store_a))
        .env("GARRET_SERVER", format!("{}/", g.url))
        .env("GARRET_TOKEN", &admin)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert!(out.status.success(), "garret push failed");
    assert!(err.contains("0 paths to push to mirror"), "{err}");
    assert_eq!(up.count(".narinfo"), 2);
    assert_eq!(up.count(".nar.xz"), 0);
    assert_eq!(
        g.count("objects"),
        0,
        "nothing uploaded, nothing pulled yet"
    );
}

/// An upstream whose narinfo is there but whose NAR is not: a retryable 503 (Nix retries
/// transient errors), nothing stored.
#[tokio::test]
async fn a_missing_upstream_nar_is_a_503_and_nothing_is_stored() {
    if !require_nix() {
        return;
    }
    let f = fixture("xz", true);
    let h = hash_of(&f.top);
    let (url, nar_file) = upstream_nar(&f, &h);
    std::fs::remove_file(nar_file).unwrap();
    let (up, g, api, _admin) = mirror_of(&f).await;
    let r = api.get(&format!("mirror/nar/{h}.nar"), None).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.count(&url), 1);
    assert_eq!(g.count("objects"), 0);
}
