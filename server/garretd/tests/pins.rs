//! Pins through the real HTTP API and the `garret` client, with real GC: a pinned closure
//! survives a retention run that removes everything else, keep-N releases old versions,
//! releasing a pin hands its paths back to retention, and the rights and the 401/404 rules
//! of the other endpoints hold. Runs on SQLite, and on PostgreSQL with
//! GARRET_TEST_DATABASE=postgres; the GC run on local disk and on S3 (Garage in CI).
//!
//! No test waits for the clock: the recorded times are moved into the past
//! ([`Garretd::age_data`]) as in tests/gc.rs.

mod common;
mod s3_support;

use common::garret_cli::{base_name, store_path, GarretCli};
use common::*;
use garretd::backend::{LocalStorage, S3Storage, Storage};
use reqwest::{Method, StatusCode};

const CONFIG: &str = "[garbage-collection]\ninterval = 0\norphan-grace-period = 0\n";
const HOUR: i64 = 3600;

async fn set_retention(api: &Api, token: &str, cache: &str, secs: u32) {
    let r = api
        .patch_config(
            token,
            cache,
            serde_json::json!({"retention_period": {"Period": secs}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// Uploads `nar` as `name` with references to the other made-up paths `refs`.
async fn upload_with_refs(
    api: &Api,
    token: &str,
    cache: &str,
    name: &str,
    nar: &[u8],
    refs: &[&str],
) {
    let refs: Vec<String> = refs.iter().map(|r| base_name(r)).collect();
    let r = api
        .upload(
            Some(token),
            &upload_info(cache, name, nar, &refs),
            nar.to_vec(),
        )
        .await;
    let status = r.status();
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        r.text().await.unwrap_or_default()
    );
}

/// The NAR of `name` as served: status, and the decompressed bytes when 200. A download
/// counts as an access, recorded after the answer: this waits until it is, so a later
/// [`Garretd::age_data`] moves it into the past too.
async fn served(g: &Garretd, token: &str, cache: &str, name: &str) -> (StatusCode, Vec<u8>) {
    let accessed = format!(
        "SELECT COALESCE(last_accessed_at, 0) FROM objects WHERE store_path_hash = '{}'
         AND cache_id = (SELECT id FROM caches WHERE name = '{cache}')",
        fake_hash(name)
    );
    g.sql_exec(&format!(
        "UPDATE objects SET last_accessed_at = 0 WHERE store_path_hash = '{}'",
        fake_hash(name)
    ));
    let r = g
        .client()
        .get(&format!("{cache}/nar/{}.nar", fake_hash(name)), Some(token))
        .await;
    let status = r.status();
    let body = r.bytes().await.expect("body");
    if status != StatusCode::OK {
        return (status, Vec::new());
    }
    eventually(PATIENCE, "the download is recorded", || async {
        g.sql(&accessed).parse::<i64>().unwrap_or(0) > 0
    })
    .await;
    (status, zstd::decode_all(&body[..]).expect("zstd"))
}

async fn narinfo_status(api: &Api, token: &str, cache: &str, name: &str) -> StatusCode {
    api.get(&format!("{cache}/{}.narinfo", fake_hash(name)), Some(token))
        .await
        .status()
}

fn gc(g: &Garretd) {
    assert!(g.run(&["gc"]).status.success(), "gc failed");
}

#[tokio::test]
async fn a_pinned_closure_survives_the_gc_that_removes_the_rest() {
    let g = Garretd::start_with(Some(CONFIG), &[]);
    let storage = LocalStorage::open(&g.data_dir.join("storage"), false).expect("storage");
    pinned_closure_survives_gc(&g, &storage).await;
}

/// The same on S3 (Garage in CI): pinned packs stay in the bucket, the others are deleted.
#[tokio::test]
async fn on_s3_a_pinned_closure_survives_the_gc_that_removes_the_rest() {
    let Some(s3) = s3_support::s3_from_env("pins on S3") else {
        return;
    };
    let g = Garretd::start_with(
        Some(&format!("{CONFIG}{}", s3_support::storage_toml(&s3))),
        &[],
    );
    let storage = S3Storage::new(&s3).expect("S3 client");
    pinned_closure_survives_gc(&g, &storage).await;
}

async fn pinned_closure_survives_gc(g: &Garretd, storage: &dyn Storage) {
    let api = g.client();
    let admin = g.admin_token();
    let cli = GarretCli::new(g);
    assert_eq!(
        api.create_cache(&admin, "rel", false).await.status(),
        StatusCode::OK
    );
    set_retention(&api, &admin, "rel", HOUR as u32).await;

    // app -> mid -> lib (and app -> itself, and app -> ghost, which the cache lacks);
    // tool -> lib and other are not pinned
    let nars: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("lib", nar_of_file(&noise(1, 400_000)), vec![]),
        ("mid", nar_of_file(&noise(2, 300_000)), vec!["lib"]),
        (
            "app",
            nar_of_file(&noise(3, 500_000)),
            vec!["mid", "app", "ghost"],
        ),
        ("tool", nar_of_file(&noise(4, 300_000)), vec!["lib"]),
        ("other", nar_of_file(&noise(5, 600_000)), vec![]),
    ];
    for (name, nar, refs) in &nars {
        upload_with_refs(&api, &admin, "rel", name, nar, refs).await;
    }

    let (_, err) = cli.ok(
        Some(&admin),
        &["pin", "create", "rel", "release", &store_path("app")],
    );
    assert!(err.contains("as release version 1"), "{err}");
    assert!(err.contains("(3 paths)"), "app, mid and lib: {err}");
    assert!(
        err.contains("1 references are not in the cache"),
        "ghost: {err}"
    );
    let (out, _) = cli.ok(Some(&admin), &["pin", "list", "rel"]);
    assert!(
        out.starts_with(&format!(
            "release\t1\t{}\t3 paths\tkeep all\t",
            store_path("app")
        )),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with("\tadmin"),
        "the pinner is recorded: {out}"
    );

    let packs_before = pack_keys(g);
    g.age_data(2 * HOUR);
    gc(g);
    for (name, nar, _) in &nars[..3] {
        assert_eq!(
            served(g, &admin, "rel", name).await,
            (StatusCode::OK, nar.clone()),
            "{name} is in the pinned closure"
        );
    }
    for name in ["tool", "other"] {
        assert_eq!(
            narinfo_status(&api, &admin, "rel", name).await,
            StatusCode::NOT_FOUND,
            "{name}"
        );
        assert_eq!(
            served(g, &admin, "rel", name).await.0,
            StatusCode::NOT_FOUND,
            "{name}"
        );
    }
    assert_eq!(g.count("objects"), 3);
    assert!(
        pack_keys(g).len() < packs_before.len(),
        "the unpinned paths' packs are released"
    );
    storage_follows_the_database(g, storage, &packs_before).await;

    // released, the closure falls back to retention (the downloads above were accesses)
    let (_, err) = cli.ok(Some(&admin), &["pin", "delete", "rel", "release"]);
    assert!(err.contains("1 versions released"), "{err}");
    g.age_data(2 * HOUR);
    gc(g);
    assert_eq!(g.count("objects"), 0);
    assert_eq!(g.count("chunks"), 0);
    storage_follows_the_database(g, storage, &packs_before).await;
    let (out, err) = cli.ok(Some(&admin), &["pin", "list", "rel"]);
    assert_eq!(out, "");
    assert!(err.contains("has no pins"), "{err}");
}

#[tokio::test]
async fn keep_n_releases_the_older_versions_and_gc_then_takes_them() {
    let g = Garretd::start_with(Some(CONFIG), &[]);
    let api = g.client();
    let admin = g.admin_token();
    let cli = GarretCli::new(&g);
    assert_eq!(
        api.create_cache(&admin, "nightly", false).await.status(),
        StatusCode::OK
    );
    set_retention(&api, &admin, "nightly", HOUR as u32).await;
    let lib = nar_of_file(&noise(10, 200_000));
    upload_with_refs(&api, &admin, "nightly", "lib", &lib, &[]).await;
    let builds: Vec<(String, Vec<u8>)> = (1..=3)
        .map(|i| (format!("build{i}"), nar_of_file(&noise(10 + i, 200_000))))
        .collect();
    for (i, (name, nar)) in builds.iter().enumerate() {
        upload_with_refs(&api, &admin, "nightly", name, nar, &["lib"]).await;
        let (_, err) = cli.ok(
            Some(&admin),
            &[
                "pin",
                "create",
                "nightly",
                "main",
                &store_path(name),
                "--keep",
                "2",
            ],
        );
        assert!(err.contains(&format!("version {}", i + 1)), "{err}");
        if i == 2 {
            assert!(err.contains("Released versions 1 of main"), "{err}");
        } else {
            assert!(!err.contains("Released"), "{err}");
        }
    }
    // the bare hash names a path too, and a second name keeps every version
    cli.ok(
        Some(&admin),
        &["pin", "create", "nightly", "first", &fake_hash("build1")],
    );
    cli.ok(Some(&admin), &["pin", "delete", "nightly", "first"]);

    let (out, _) = cli.ok(Some(&admin), &["pin", "list", "nightly", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let versions: Vec<(u64, String)> = list["pins"][0]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["store_path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(list["pins"][0]["name"], "main");
    assert_eq!(list["pins"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        versions,
        vec![(3, store_path("build3")), (2, store_path("build2"))],
        "newest first, version 1 released"
    );

    g.age_data(2 * HOUR);
    gc(&g);
    assert_eq!(
        served(&g, &admin, "nightly", "build1").await.0,
        StatusCode::NOT_FOUND
    );
    for (name, nar) in &builds[1..] {
        assert_eq!(
            served(&g, &admin, "nightly", name).await,
            (StatusCode::OK, nar.clone())
        );
    }
    assert_eq!(
        served(&g, &admin, "nightly", "lib").await,
        (StatusCode::OK, lib)
    );

    // a fourth version releases the second
    upload_with_refs(
        &api,
        &admin,
        "nightly",
        "build4",
        &nar_of_file(b"four"),
        &["lib"],
    )
    .await;
    let (_, err) = cli.ok(
        Some(&admin),
        &[
            "pin",
            "create",
            "nightly",
            "main",
            &store_path("build4"),
            "--keep",
            "2",
        ],
    );
    assert!(err.contains("Released versions 2 of main"), "{err}");
    g.age_data(2 * HOUR);
    gc(&g);
    assert_eq!(
        served(&g, &admin, "nightly", "build2").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        served(&g, &admin, "nightly", "build3").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn pins_need_push_to_create_and_delete_to_release_and_hide_private_caches() {
    let g = Garretd::start();
    let api = g.client();
    let admin = g.admin_token();
    let cli = GarretCli::new(&g);
    for (c, public) in [("team", false), ("oss", true)] {
        assert_eq!(
            api.create_cache(&admin, c, public).await.status(),
            StatusCode::OK
        );
        upload_with_refs(&api, &admin, c, "app", &nar_of_file(b"app"), &[]).await;
    }
    let pull = g.token("reader", "1 hour", &["--pull", "team"]);
    let push = g.token("ci", "1 hour", &["--pull", "team", "--push", "team"]);
    let delete = g.token("janitor", "1 hour", &["--delete", "team"]);
    let stranger = g.token("stranger", "1 hour", &["--pull", "elsewhere"]);
    let looker = g.token("looker", "1 hour", &["--pull", "*"]);
    let body = |name: &str| serde_json::json!({"name": name, "store_path_hash": fake_hash("app")});
    let pins = |c: &str| format!("_api/v1/cache/{c}/pins");

    // create: push; pull alone is 403; no right at all is 401 whether or not the cache exists
    let (s, e) = answer(
        &api,
        Method::POST,
        &pins("team"),
        Some(&pull),
        Some(body("r")),
    )
    .await;
    assert_eq!((s, e.as_str()), (StatusCode::FORBIDDEN, "AccessError"));
    for cache in ["team", "ghost"] {
        for token in [Some(stranger.as_str()), None] {
            let got = answer(&api, Method::POST, &pins(cache), token, Some(body("r"))).await;
            assert_eq!(
                got,
                (StatusCode::UNAUTHORIZED, "Unauthorized".into()),
                "create on {cache}"
            );
            let got = answer(&api, Method::GET, &pins(cache), token, None).await;
            assert_eq!(
                got,
                (StatusCode::UNAUTHORIZED, "Unauthorized".into()),
                "list on {cache}"
            );
            let got = answer(
                &api,
                Method::DELETE,
                &format!("{}/r", pins(cache)),
                token,
                None,
            )
            .await;
            assert_eq!(
                got,
                (StatusCode::UNAUTHORIZED, "Unauthorized".into()),
                "delete on {cache}"
            );
        }
    }
    // whoever may see a cache learns that one is missing
    let got = answer(&api, Method::GET, &pins("ghost"), Some(&looker), None).await;
    assert_eq!(got, (StatusCode::NOT_FOUND, "NoSuchCache".into()));
    let (s, _) = answer(
        &api,
        Method::POST,
        &pins("team"),
        Some(&push),
        Some(body("r")),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // bad requests
    let missing = serde_json::json!({"name": "x", "store_path_hash": fake_hash("nope")});
    let got = answer(
        &api,
        Method::POST,
        &pins("team"),
        Some(&push),
        Some(missing),
    )
    .await;
    assert_eq!(got, (StatusCode::NOT_FOUND, "NoSuchObject".into()));
    let zero = serde_json::json!({"name": "x", "store_path_hash": fake_hash("app"), "keep": 0});
    let got = answer(&api, Method::POST, &pins("team"), Some(&push), Some(zero)).await;
    assert_eq!(got, (StatusCode::BAD_REQUEST, "RequestError".into()));
    let got = answer(
        &api,
        Method::POST,
        &pins("team"),
        Some(&push),
        Some(body("a/b")),
    )
    .await;
    assert_eq!(got, (StatusCode::BAD_REQUEST, "RequestError".into()));

    // list: pull
    let got = answer(&api, Method::GET, &pins("team"), Some(&pull), None).await;
    assert_eq!(got.0, StatusCode::OK);
    // release: the delete right; push alone is 403
    let got = answer(
        &api,
        Method::DELETE,
        &format!("{}/r", pins("team")),
        Some(&push),
        None,
    )
    .await;
    assert_eq!(got, (StatusCode::FORBIDDEN, "AccessError".into()));
    let err = cli.fails(Some(&push), &["pin", "delete", "team", "r"]);
    assert!(err.contains("does not have permission"), "{err}");
    let got = answer(
        &api,
        Method::DELETE,
        &format!("{}/nope", pins("team")),
        Some(&delete),
        None,
    )
    .await;
    assert_eq!(got, (StatusCode::NOT_FOUND, "NoSuchPin".into()));
    cli.ok(Some(&delete), &["pin", "delete", "team", "r"]);

    // a public cache: anyone lists, nobody without push pins
    let got = answer(&api, Method::GET, &pins("oss"), None, None).await;
    assert_eq!(got.0, StatusCode::OK);
    let got = answer(&api, Method::POST, &pins("oss"), None, Some(body("r"))).await;
    assert_eq!(got, (StatusCode::FORBIDDEN, "AccessError".into()));
    let err = cli.fails(None, &["pin", "create", "oss", "r", &store_path("app")]);
    assert!(err.contains("does not have permission"), "{err}");
    let err = cli.fails(Some(&stranger), &["pin", "list", "team"]);
    assert!(err.contains("Unauthorized"), "{err}");
}
