//! Deleting one store path through the real HTTP API and `garret cache delete-path`, with
//! real GC: the narinfo and the NAR are 404 from the next request on, a NAR sharing chunks
//! with it stays byte-identical, GC then removes only the chunks nothing else uses; the
//! delete right `d` is required, private caches keep hiding their existence, and a pinned
//! path is refused. Runs on SQLite, and on PostgreSQL with GARRET_TEST_DATABASE=postgres; the
//! GC run on local disk and on S3 (Garage in CI).

mod common;
mod s3_support;

use std::collections::BTreeSet;

use common::garret_cli::{base_name, store_path, GarretCli};
use common::*;
use garretd::backend::{LocalStorage, S3Storage, Storage};
use reqwest::{Method, StatusCode};

const CONFIG: &str = "[garbage-collection]\ninterval = 0\norphan-grace-period = 0\n";

async fn status(api: &Api, token: Option<&str>, path: &str) -> StatusCode {
    api.get(path, token).await.status()
}

/// The chunk ids of the NAR the object `name` points at.
fn chunks_of(g: &Garretd, name: &str) -> BTreeSet<String> {
    g.sql_rows(&format!(
        "SELECT r.chunk_id FROM chunkrefs r JOIN objects o ON o.nar_id = r.nar_id
         WHERE o.store_path_hash = '{}'",
        fake_hash(name)
    ))
    .into_iter()
    .collect()
}

fn in_list(ids: &BTreeSet<String>) -> String {
    ids.iter().cloned().collect::<Vec<_>>().join(", ")
}

#[tokio::test]
async fn a_deleted_path_is_gone_at_once_and_gc_keeps_what_other_nars_share() {
    let g = Garretd::start_with(Some(CONFIG), &[]);
    let storage = LocalStorage::open(&g.data_dir.join("storage"), false).expect("storage");
    deleted_path_gone_and_gc_keeps_shared_chunks(&g, &storage).await;
}

/// The same on S3 (Garage in CI): the deleted path's own packs leave the bucket.
#[tokio::test]
async fn on_s3_a_deleted_path_is_gone_at_once_and_gc_keeps_what_other_nars_share() {
    let Some(s3) = s3_support::s3_from_env("delete-path on S3") else {
        return;
    };
    let g = Garretd::start_with(
        Some(&format!("{CONFIG}{}", s3_support::storage_toml(&s3))),
        &[],
    );
    let storage = S3Storage::new(&s3).expect("S3 client");
    deleted_path_gone_and_gc_keeps_shared_chunks(&g, &storage).await;
}

async fn deleted_path_gone_and_gc_keeps_shared_chunks(g: &Garretd, storage: &dyn Storage) {
    let api = g.client();
    let admin = g.admin_token();
    let cli = GarretCli::new(g);
    assert_eq!(
        api.create_cache(&admin, "c", false).await.status(),
        StatusCode::OK
    );
    // x and y share all but their last chunks; z shares nothing
    let base = noise(21, 3 << 20);
    let x = nar_of_file(&base);
    let y = nar_of_file(&[&base[..], b"tail"].concat());
    let z = nar_of_file(&noise(22, 400_000));
    for (name, nar) in [("x", &x), ("y", &y), ("z", &z)] {
        api.upload_ok(&admin, "c", name, nar).await;
    }
    let (cx, cy, cz) = (chunks_of(g, "x"), chunks_of(g, "y"), chunks_of(g, "z"));
    let only_x: BTreeSet<String> = cx.difference(&cy).cloned().collect();
    assert!(
        !only_x.is_empty() && cx.intersection(&cy).count() > 0,
        "x and y share some chunks"
    );
    let narinfo = |n: &str| format!("c/{}.narinfo", fake_hash(n));
    let nar = |n: &str| format!("c/nar/{}.nar", fake_hash(n));
    // served once, so the narinfo is in the server's memory too
    assert_eq!(
        status(&api, Some(&admin), &narinfo("x")).await,
        StatusCode::OK
    );
    assert_eq!(api.nar(&nar("x"), Some(&admin)).await, x);

    let (_, err) = cli.ok(
        Some(&admin),
        &["cache", "delete-path", "c", &store_path("x")],
    );
    assert!(
        err.contains(&format!("Deleted {} from cache c", store_path("x"))),
        "{err}"
    );
    assert_eq!(
        status(&api, Some(&admin), &narinfo("x")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status(&api, Some(&admin), &nar("x")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(api.nar(&nar("y"), Some(&admin)).await, y, "y is untouched");
    let err = cli.fails(
        Some(&admin),
        &["cache", "delete-path", "c", &store_path("x")],
    );
    assert!(err.contains("does not exist"), "{err}");
    // z goes through the API, named by its hash
    let r = api
        .send(
            Method::DELETE,
            &format!("_api/v1/cache/c/path/{}", fake_hash("z")),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json(r).await["store_path"], store_path("z"));
    let z_packs = g.sql_rows(&format!(
        "SELECT DISTINCT storage_key FROM chunks WHERE id IN ({})",
        in_list(&cz)
    ));
    for key in &z_packs {
        assert!(storage.get(key).await.is_ok(), "GC has not run yet: {key}");
    }
    let packs_before = pack_keys(g);

    g.age_data(10);
    assert!(g.run(&["gc"]).status.success(), "gc failed");
    assert_eq!(
        api.nar(&nar("y"), Some(&admin)).await,
        y,
        "y is byte-identical after GC"
    );
    assert_eq!(g.count("objects"), 1);
    assert_eq!(g.count("nars"), 1, "the NARs of x and z are gone");
    let live_y = g.sql(&format!(
        "SELECT COUNT(*) FROM chunks WHERE state = 'V' AND id IN ({})",
        in_list(&cy)
    ));
    assert_eq!(live_y, cy.len().to_string(), "every chunk of y is live");
    let live_only_x = g.sql(&format!(
        "SELECT COUNT(*) FROM chunks WHERE state = 'V' AND id IN ({})",
        in_list(&only_x)
    ));
    assert_eq!(live_only_x, "0", "the chunks only x used are dead");
    let left_z = g.sql(&format!(
        "SELECT COUNT(*) FROM chunks WHERE id IN ({})",
        in_list(&cz)
    ));
    assert_eq!(left_z, "0", "z's chunks are forgotten");
    let packs_now = pack_keys(g);
    assert!(
        z_packs.iter().all(|k| !packs_now.contains(k)),
        "z's pack is released"
    );
    // What GC released is gone from storage; every pack still referenced is there.
    storage_follows_the_database(g, storage, &packs_before).await;

    // the path can be pushed again
    api.upload_ok(&admin, "c", "x", &x).await;
    assert_eq!(api.nar(&nar("x"), Some(&admin)).await, x);
}

/// Status and JSON error name of a DELETE.
async fn delete(api: &Api, token: Option<&str>, cache: &str, hash: &str) -> (StatusCode, String) {
    let path = format!("_api/v1/cache/{cache}/path/{hash}");
    answer(api, Method::DELETE, &path, token, None).await
}

#[tokio::test]
async fn deleting_needs_the_delete_right_and_hides_private_caches() {
    let g = Garretd::start();
    let api = g.client();
    let admin = g.admin_token();
    let cli = GarretCli::new(&g);
    for (c, public) in [("team", false), ("oss", true)] {
        assert_eq!(
            api.create_cache(&admin, c, public).await.status(),
            StatusCode::OK
        );
        api.upload_ok(&admin, c, "p", &nar_of_file(b"p")).await;
    }
    let writer = g.token("ci", "1 hour", &["--pull", "team", "--push", "team"]);
    let janitor = g.token("janitor", "1 hour", &["--delete", "team"]);
    let stranger = g.token("stranger", "1 hour", &["--pull", "elsewhere"]);
    let looker = g.token("looker", "1 hour", &["--delete", "*"]);
    let p = fake_hash("p");
    let unknown = fake_hash("unknown");

    assert_eq!(
        delete(&api, Some(&writer), "team", &p).await,
        (StatusCode::FORBIDDEN, "AccessError".into())
    );
    let err = cli.fails(
        Some(&writer),
        &["cache", "delete-path", "team", &store_path("p")],
    );
    assert!(err.contains("does not have permission"), "{err}");
    // no right at all: the same 401 for a path, a missing path, a missing cache
    for token in [Some(stranger.as_str()), None] {
        for (cache, hash) in [
            ("team", &p),
            ("team", &unknown),
            ("ghost", &p),
            ("team", &"bad".to_string()),
        ] {
            assert_eq!(
                delete(&api, token, cache, hash).await,
                (StatusCode::UNAUTHORIZED, "Unauthorized".into()),
                "{cache}/{hash}"
            );
        }
    }
    // anonymous callers may pull from a public cache, not delete
    assert_eq!(
        delete(&api, None, "oss", &p).await,
        (StatusCode::FORBIDDEN, "AccessError".into())
    );
    assert_eq!(
        delete(&api, Some(&looker), "ghost", &p).await,
        (StatusCode::NOT_FOUND, "NoSuchCache".into())
    );
    assert_eq!(
        delete(&api, Some(&janitor), "team", &unknown).await,
        (StatusCode::NOT_FOUND, "NoSuchObject".into())
    );
    assert_eq!(
        delete(&api, Some(&janitor), "team", "bad").await,
        (StatusCode::BAD_REQUEST, "RequestError".into())
    );
    // the delete right alone is enough, and the path is still there until then
    assert_eq!(
        status(&api, Some(&admin), &format!("team/{p}.narinfo")).await,
        StatusCode::OK
    );
    cli.ok(Some(&janitor), &["cache", "delete-path", "team", &p]);
    assert_eq!(
        status(&api, Some(&admin), &format!("team/{p}.narinfo")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status(&api, None, &format!("oss/{p}.narinfo")).await,
        StatusCode::OK,
        "other caches keep theirs"
    );
}

#[tokio::test]
async fn a_pinned_path_is_refused_until_its_pin_is_released() {
    let g = Garretd::start();
    let api = g.client();
    let admin = g.admin_token();
    let cli = GarretCli::new(&g);
    assert_eq!(
        api.create_cache(&admin, "c", false).await.status(),
        StatusCode::OK
    );
    api.upload_ok(&admin, "c", "lib", &nar_of_file(b"lib"))
        .await;
    let app = nar_of_file(b"app");
    let r = api
        .upload(
            Some(&admin),
            &upload_info("c", "app", &app, &[base_name("lib")]),
            app.clone(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    cli.ok(
        Some(&admin),
        &["pin", "create", "c", "rel", &store_path("app")],
    );
    cli.ok(
        Some(&admin),
        &["pin", "create", "c", "also", &store_path("lib")],
    );

    // lib is held twice: as app's reference and pinned itself
    assert_eq!(
        delete(&api, Some(&admin), "c", &fake_hash("lib")).await,
        (StatusCode::CONFLICT, "PathPinned".into())
    );
    let err = cli.fails(
        Some(&admin),
        &["cache", "delete-path", "c", &store_path("lib")],
    );
    assert!(err.contains("pinned by also, rel"), "{err}");
    assert_eq!(
        status(
            &api,
            Some(&admin),
            &format!("c/{}.narinfo", fake_hash("lib"))
        )
        .await,
        StatusCode::OK
    );

    cli.ok(Some(&admin), &["pin", "delete", "c", "rel"]);
    let err = cli.fails(
        Some(&admin),
        &["cache", "delete-path", "c", &store_path("lib")],
    );
    assert!(err.contains("pinned by also;"), "{err}");
    cli.ok(Some(&admin), &["pin", "delete", "c", "also"]);
    cli.ok(
        Some(&admin),
        &["cache", "delete-path", "c", &store_path("lib")],
    );
    cli.ok(
        Some(&admin),
        &["cache", "delete-path", "c", &store_path("app")],
    );
    assert_eq!(g.count("objects"), 0);
}
