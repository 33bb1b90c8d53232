//! Caches declared in the config file, applied at start and on every change; the token
//! revocation list, re-read while the server runs; and two replicas on one database and
//! one storage behaving as one cache.

mod common;

use base64::Engine;
use common::*;
use reqwest::StatusCode;

fn jti_of(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&json).unwrap();
    claims["jti"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn declared_caches_follow_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = garret_core::nix::signing::Keypair::generate("team-key-1").unwrap();
    let key_file = dir.path().join("team.key");
    std::fs::write(&key_file, key.to_canonical_string()).unwrap();
    let config = |team_public: bool, team_priority: i32, extra: &str| {
        format!(
            "[[caches]]\nname = \"team\"\npublic = {team_public}\npriority = {team_priority}\nsigning-key-file = \"{}\"\nretention-period = \"30 days\"\n\n[[caches]]\nname = \"ci\"\n{extra}",
            key_file.display()
        )
    };
    let g = Garretd::start_with(Some(&config(true, 30, "")), &[]);
    let api = g.client();
    let admin = g.admin_token();

    let (status, team) = api.cache_config(None, "team").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "declared public cache exists at start"
    );
    assert_eq!(team["public_key"], key.public_key().to_canonical_string());
    assert_eq!(team["priority"], 30);
    assert_eq!(team["retention_period"]["Period"], 30 * 86400);
    let (status, ci) = api.cache_config(Some(&admin), "ci").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ci["is_public"], false);
    let ci_key = ci["public_key"].clone();

    // a cache made through the API is never touched by declarations of the same name
    assert_eq!(
        api.create_cache(&admin, "manual", false).await.status(),
        StatusCode::OK
    );
    let manual_before = api.cache_config(Some(&admin), "manual").await.1;

    let path = g.config.clone().unwrap();
    std::fs::write(&path, config(false, 20, "priority = 50\n\n[[caches]]\nname = \"manual\"\npublic = true\n\n[[caches]]\nname = \"fresh\"\n")).unwrap();
    eventually(PATIENCE, "team becomes private", || async {
        api.cache_config(None, "team").await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    eventually(PATIENCE, "fresh is created", || async {
        api.cache_config(Some(&admin), "fresh").await.0 == StatusCode::OK
    })
    .await;
    let team = api.cache_config(Some(&admin), "team").await.1;
    assert_eq!(team["priority"], 20);
    assert_eq!(team["public_key"], key.public_key().to_canonical_string());
    let ci = api.cache_config(Some(&admin), "ci").await.1;
    assert_eq!(ci["priority"], 50);
    assert_eq!(
        ci["public_key"], ci_key,
        "a generated key is kept across updates"
    );
    assert_eq!(
        api.cache_config(Some(&admin), "manual").await.1,
        manual_before
    );

    // An invalid file changes nothing already served (not even the valid parts of it), the
    // error is reported, and the watcher applies the next good file.
    assert_eq!(
        api.metric("garret_declared_config_applied").await,
        Some(1.0)
    );
    let served = served_configs(&api, &admin).await;
    std::fs::write(
        &path,
        config(true, 99, "priority = 51\n\n[[caches]]\nname = \"../bad\"\n"),
    )
    .unwrap();
    // The metric and the log line are written one after the other: wait for both.
    eventually(PATIENCE, "the invalid file is reported", || async {
        api.metric("garret_declared_config_applied").await == Some(0.0)
            && g.logged("config file changed but is invalid")
    })
    .await;
    assert_eq!(
        served_configs(&api, &admin).await,
        served,
        "nothing served changed"
    );
    assert_eq!(
        api.cache_config(None, "team").await.0,
        StatusCode::UNAUTHORIZED,
        "team stays private"
    );
    std::fs::write(&path, config(false, 20, "priority = 60\n")).unwrap();
    eventually(PATIENCE, "the next valid file is applied", || async {
        api.cache_config(Some(&admin), "ci").await.1["priority"] == 60
    })
    .await;
    eventually(PATIENCE, "the applied state is reported", || async {
        api.metric("garret_declared_config_applied").await == Some(1.0)
    })
    .await;

    // a restart applies the same declarations idempotently
    let mut g = g;
    g.restart();
    let api = g.client();
    let ci = api.cache_config(Some(&admin), "ci").await.1;
    assert_eq!(ci["public_key"], ci_key);
    assert_eq!(ci["priority"], 60);
}

/// Every cache's config as served, for comparing before and after.
async fn served_configs(api: &Api, admin: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for name in ["team", "ci", "manual", "fresh"] {
        let (status, cfg) = api.cache_config(Some(admin), name).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        out.push(cfg);
    }
    out
}

fn declare(name: &str, key_file: Option<&std::path::Path>) -> String {
    match key_file {
        Some(k) => format!(
            "[[caches]]\nname = \"{name}\"\nsigning-key-file = \"{}\"\n\n",
            k.display()
        ),
        None => format!("[[caches]]\nname = \"{name}\"\n\n"),
    }
}

/// Writes a file the way Kubernetes updates a mounted volume: whole, in one rename.
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Kubernetes gives no ordering between volumes: a cache added live may name a key file
/// that lands after the config. The server keeps serving the rest, says the declared state
/// is not applied, and serves the cache once the key is there, with no change to the config.
#[tokio::test]
async fn a_cache_whose_key_file_lands_after_the_config_is_served_once_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let g = Garretd::start_with(Some(&declare("team", None)), &[]);
    let api = g.client();
    let admin = g.admin_token();
    assert_eq!(
        api.metric("garret_declared_config_applied").await,
        Some(1.0)
    );

    let key_file = dir.path().join("late.key");
    let key = garret_core::nix::signing::Keypair::generate("late-1").unwrap();
    let text = [
        declare("team", None),
        declare("late", Some(&key_file)),
        declare("other", None),
    ]
    .concat();
    write_atomically(g.config.as_ref().unwrap(), &text);
    let key_path = key_file.display().to_string();
    eventually(PATIENCE, "the missing key file is reported", || async {
        api.metric("garret_declared_config_applied").await == Some(0.0)
            && g.logged("declared caches not applied yet")
            && g.logged(&key_path)
    })
    .await;
    assert_eq!(
        api.cache_config(Some(&admin), "other").await.0,
        StatusCode::OK,
        "the other declarations of the same file apply"
    );
    assert_eq!(
        api.cache_config(Some(&admin), "late").await.0,
        StatusCode::NOT_FOUND,
        "no cache without its key"
    );

    write_atomically(&key_file, &key.to_canonical_string());
    let served = eventually_some(PATIENCE, "late is served", || async {
        let (status, cfg) = api.cache_config(Some(&admin), "late").await;
        (status == StatusCode::OK).then_some(cfg)
    })
    .await;
    assert_eq!(
        served["public_key"],
        key.public_key().to_canonical_string(),
        "with the key from the file"
    );
    eventually(PATIENCE, "the applied state is reported", || async {
        api.metric("garret_declared_config_applied").await == Some(1.0)
            && g.logged("declared caches applied")
    })
    .await;
}

/// The same at start: a server whose config names a key file not there yet starts, serves
/// the other caches, and converges once the file appears.
#[tokio::test]
async fn a_server_started_before_a_key_file_serves_the_rest_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("late.key");
    let text = [declare("late", Some(&key_file)), declare("other", None)].concat();
    let g = Garretd::start_with(Some(&text), &[]);
    let api = g.client();
    let admin = g.admin_token();
    assert_eq!(
        api.metric("garret_declared_config_applied").await,
        Some(0.0)
    );
    assert_eq!(
        api.cache_config(Some(&admin), "other").await.0,
        StatusCode::OK
    );
    assert_eq!(
        api.cache_config(Some(&admin), "late").await.0,
        StatusCode::NOT_FOUND
    );
    let key = garret_core::nix::signing::Keypair::generate("late-1").unwrap();
    write_atomically(&key_file, &key.to_canonical_string());
    eventually(PATIENCE, "late is served", || async {
        api.cache_config(Some(&admin), "late").await.0 == StatusCode::OK
    })
    .await;
    eventually(PATIENCE, "the applied state is reported", || async {
        api.metric("garret_declared_config_applied").await == Some(1.0)
    })
    .await;
}

/// A server reading the revocation list `initial` from a file, with one private cache `c`:
/// the server, its API, an all-rights token and the list's path (the tempdir holds it).
async fn with_revocation_list(
    initial: &str,
) -> (Garretd, Api, String, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("revoked");
    std::fs::write(&list, initial).unwrap();
    let g = Garretd::start_with(
        Some(&format!(
            "[jwt]\nrevocation-list = \"{}\"\n",
            list.display()
        )),
        &[],
    );
    let api = g.client();
    let admin = g.admin_token();
    assert_eq!(
        api.create_cache(&admin, "c", false).await.status(),
        StatusCode::OK
    );
    (g, api, admin, list, dir)
}

#[tokio::test]
async fn revoked_tokens_are_refused_within_seconds() {
    let (g, api, _admin, list, _dir) = with_revocation_list("# nothing revoked yet\n").await;
    let alice = g.token("alice", "1 hour", &["--pull", "c"]);
    let alice2 = g.token("alice", "1 hour", &["--pull", "c"]);
    let bob = g.token("bob", "1 hour", &["--pull", "c"]);
    let bob2 = g.token("bob", "1 hour", &["--pull", "c"]);
    for t in [&alice, &alice2, &bob, &bob2] {
        assert_eq!(api.cache_config(Some(t), "c").await.0, StatusCode::OK);
    }

    std::fs::write(
        &list,
        format!("{}\nsub:bob # left the team\n", jti_of(&alice)),
    )
    .unwrap();
    eventually(PATIENCE, "alice's first token is revoked", || async {
        api.cache_config(Some(&alice), "c").await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    let (_, body) = api.cache_config(Some(&alice), "c").await;
    assert!(
        body["message"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    assert_eq!(
        api.cache_config(Some(&alice2), "c").await.0,
        StatusCode::OK,
        "only that jti is revoked"
    );
    assert_eq!(
        api.cache_config(Some(&bob), "c").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.cache_config(Some(&bob2), "c").await.0,
        StatusCode::UNAUTHORIZED
    );

    // un-revoking works the same way
    std::fs::write(&list, "").unwrap();
    eventually(PATIENCE, "bob is allowed again", || async {
        api.cache_config(Some(&bob), "c").await.0 == StatusCode::OK
    })
    .await;
}

/// A revocation push declaring `len` bytes of which only 1 KiB is sent; the answer read
/// until the server closes the connection.
fn declared_but_unsent(g: &Garretd, token: &str, len: usize) -> String {
    use std::io::{Read, Write};
    let host = g.url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut req = format!(
        "POST /_api/v1/revocations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {len}\r\n\r\n"
    )
    .into_bytes();
    req.extend(std::iter::repeat_n(b'x', 1024));
    s.write_all(&req).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The operator's push (`POST /_api/v1/revocations`): refused without the server right
/// before the body is read, effective on the very next request, held until the mounted
/// file carries the entry, after which the file decides again.
#[tokio::test]
async fn pushed_revocations_apply_at_once_and_the_file_takes_over() {
    let (g, api, admin, list, _dir) = with_revocation_list("").await;
    let alice = g.token("alice", "1 hour", &["--pull", "c"]);
    let carol = g.token("carol", "1 hour", &["--pull", "c"]);
    let pusher = g.token("garret-operator", "2 minutes", &["--push-revocations"]);
    let exp = garret_core::clock::unix_now() + 3600;
    let entry = format!("{} {exp}  # default/alice Deleted\n", jti_of(&alice));
    let push = |token: Option<String>, body: Vec<u8>| {
        let api = api.clone();
        async move {
            let r = api
                .req(
                    reqwest::Method::POST,
                    "_api/v1/revocations",
                    token.as_deref(),
                )
                .body(body)
                .send()
                .await
                .expect("send");
            let status = r.status();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };

    // No token, a cache admin's token, the pusher's token gone bad: 401, nothing revoked.
    let mut forged = pusher.clone();
    forged.pop();
    for token in [None, Some(admin.clone()), Some(alice.clone()), Some(forged)] {
        let (status, _) = push(token, entry.clone().into_bytes()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(api.cache_config(Some(&alice), "c").await.0, StatusCode::OK);
    // Too large (declared 3 MiB, 1 KiB sent: answered without reading the rest; a client
    // still writing could see the connection close instead), not UTF-8: refused.
    let answer = declared_but_unsent(&g, &pusher, 3 << 20);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let (status, _) = push(Some(pusher.clone()), vec![0xff, 0xfe, b'\n']).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(api.cache_config(Some(&alice), "c").await.0, StatusCode::OK);

    // The push is in effect when its answer arrives: no polling in between.
    let (status, body) = push(Some(pusher.clone()), entry.clone().into_bytes()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["received"].as_u64(), body["held"].as_u64()),
        (Some(1), Some(1))
    );
    let (status, body) = api.cache_config(Some(&alice), "c").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["message"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    assert_eq!(api.cache_config(Some(&carol), "c").await.0, StatusCode::OK);
    assert_eq!(api.metric("garret_revocations_held").await, Some(1.0));
    // The file (not yet synced) re-read for another reason keeps the pushed entry.
    std::fs::write(&list, "unrelated-jti\n").unwrap();
    eventually(PATIENCE, "the file's own entry is read", || async {
        let unrelated = api.cache_config(Some(&carol), "c").await.0 == StatusCode::OK;
        unrelated && g.logged("revocation list reloaded")
    })
    .await;
    assert_eq!(
        api.cache_config(Some(&alice), "c").await.0,
        StatusCode::UNAUTHORIZED
    );

    // The kubelet delivers the file: the entry is no longer held ...
    std::fs::write(&list, &entry).unwrap();
    eventually(PATIENCE, "the file carries the pushed entry", || async {
        api.metric("garret_revocations_held").await == Some(0.0)
    })
    .await;
    assert_eq!(
        api.cache_config(Some(&alice), "c").await.0,
        StatusCode::UNAUTHORIZED
    );
    // ... so the file decides: taking the line out by hand un-revokes, as before.
    std::fs::write(&list, "").unwrap();
    eventually(PATIENCE, "alice is allowed again", || async {
        api.cache_config(Some(&alice), "c").await.0 == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn two_replicas_act_as_one_cache() {
    let g = Garretd::start_with(Some("[[caches]]\nname = \"shared\"\n\n[garbage-collection]\ninterval = 0\norphan-grace-period = 0\n"), &[]);
    let h = g.sibling();
    let (a, b) = (g.client(), h.client());
    let admin = g.admin_token();
    // both applied the same declaration: one cache, one key
    let ka = a.cache_config(Some(&admin), "shared").await.1["public_key"].clone();
    let kb = b.cache_config(Some(&admin), "shared").await.1["public_key"].clone();
    assert_eq!(ka, kb);

    // the same NAR to both replicas at once ends as one NAR
    let nar = nar_of_file(&noise(77, 3 << 20));
    let info = upload_info("shared", "both", &nar, &[]);
    let (ra, rb) = tokio::join!(
        a.upload(Some(&admin), &info, nar.clone()),
        b.upload(Some(&admin), &info, nar.clone())
    );
    assert_eq!(ra.status(), StatusCode::OK);
    assert_eq!(rb.status(), StatusCode::OK);
    let kinds = [
        ra.json::<serde_json::Value>().await.unwrap()["kind"].clone(),
        rb.json::<serde_json::Value>().await.unwrap()["kind"].clone(),
    ];
    assert!(
        kinds.contains(&"Uploaded".into()) || kinds.iter().all(|k| k == "Deduplicated"),
        "{kinds:?}"
    );
    assert_eq!(g.count("nars"), 1);
    assert_eq!(g.count("objects"), 1);

    // GC in both at once is safe; everything is served by both
    let (mut c1, mut c2) = (g.command(), h.command());
    let (p1, p2) = (c1.arg("gc").spawn().unwrap(), c2.arg("gc").spawn().unwrap());
    let (o1, o2) = (
        p1.wait_with_output().unwrap(),
        p2.wait_with_output().unwrap(),
    );
    assert!(o1.status.success() && o2.status.success());
    for api in [&a, &b] {
        assert_eq!(
            api.nar(
                &format!("shared/nar/{}.nar", fake_hash("both")),
                Some(&admin)
            )
            .await,
            nar
        );
    }
    let dangling = g.sql(
        "SELECT COUNT(*) FROM chunkrefs r JOIN chunks c ON c.id = r.chunk_id WHERE c.state != 'V'",
    );
    assert_eq!(dangling, "0");
}
