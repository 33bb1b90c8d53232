//! Garbage collection against a real garretd: retention expiry, chunks shared with live
//! NARs surviving, an interrupted run finished by the next, and uploads racing GC.
//!
//! No test waits for the clock: GC compares whole-second timestamps with "now" minus a
//! period, so the tests move the recorded times of the data into the past instead
//! ([`Garretd::age_data`]); the boundaries themselves are unit-tested with an explicit
//! `now` in `src/gc/policy.rs`.

mod common;

use std::time::Duration;

use common::*;
use garret_core::nix::Sha256Hash;
use reqwest::{Method, StatusCode};

const CONFIG: &str = "[garbage-collection]\ninterval = 0\norphan-grace-period = 0\n";

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

async fn fetch_nar(api: &Api, token: &str, cache: &str, name: &str) -> (StatusCode, Vec<u8>) {
    let r = api
        .get(&format!("{cache}/nar/{}.nar", fake_hash(name)), Some(token))
        .await;
    let status = r.status();
    let body = r.bytes().await.unwrap();
    let nar = if status == StatusCode::OK {
        zstd::decode_all(&body[..]).unwrap()
    } else {
        Vec::new()
    };
    (status, nar)
}

/// No chunk reference may point at a chunk that is not valid, and every valid chunk's pack
/// is in storage.
fn assert_consistent(g: &Garretd) {
    let dangling = g.sql(
        "SELECT COUNT(*) FROM chunkrefs r JOIN chunks c ON c.id = r.chunk_id WHERE c.state != 'V'",
    );
    assert_eq!(dangling, "0", "chunk references to non-valid chunks");
    let files = g.storage_files();
    for key in g.sql_rows("SELECT DISTINCT storage_key FROM chunks WHERE state = 'V'") {
        assert!(
            files.contains(&key),
            "the pack of a valid chunk is gone: {key}"
        );
    }
}

fn gc(g: &Garretd, extra: &[&str]) {
    let mut args = vec!["gc"];
    args.extend_from_slice(extra);
    let out = g.run(&args);
    assert!(out.status.success(), "gc failed");
}

#[tokio::test]
async fn expired_objects_go_and_shared_chunks_stay() {
    let g = Garretd::start_with(Some(CONFIG), &[]);
    let api = g.client();
    let admin = g.admin_token();
    for c in ["short", "long"] {
        assert_eq!(
            api.create_cache(&admin, c, false).await.status(),
            StatusCode::OK
        );
    }
    set_retention(&api, &admin, "short", 3600).await;

    let base = noise(11, 3 << 20);
    let x = nar_of_file(&base);
    let y = nar_of_file(&[&base[..], b"tail"].concat());
    let z = nar_of_file(b"small and alone");
    let w = nar_of_file(&noise(12, 500_000));
    for (cache, name, nar) in [
        ("short", "x", &x),
        ("long", "y", &y),
        ("short", "z", &z),
        ("short", "w", &w),
    ] {
        api.upload_ok(&admin, cache, name, nar).await;
    }
    let files_before = g.chunk_files();
    // two hours pass: everything in `short` is past its retention
    g.age_data(2 * 3600);
    // a download counts as an access: w stays although it is as old as x
    let accessed = |g: &Garretd| {
        g.sql(&format!(
            "SELECT COALESCE(last_accessed_at, 0) FROM objects WHERE store_path_hash = '{}'",
            fake_hash("w")
        ))
        .parse::<i64>()
        .unwrap()
    };
    let before = accessed(&g);
    assert_eq!(fetch_nar(&api, &admin, "short", "w").await.1, w);
    // the access is recorded after the answer: wait until it is, then collect
    eventually(PATIENCE, "the download of w is recorded", || async {
        accessed(&g) > before
    })
    .await;

    gc(&g, &[]);
    assert_eq!(
        fetch_nar(&api, &admin, "short", "x").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        fetch_nar(&api, &admin, "short", "z").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        fetch_nar(&api, &admin, "short", "w").await.1,
        w,
        "recently accessed objects stay"
    );
    assert_eq!(
        fetch_nar(&api, &admin, "long", "y").await.1,
        y,
        "chunks shared with a live NAR stay"
    );
    assert_eq!(g.count("objects"), 2);
    assert_eq!(g.count("nars"), 2);
    let files_after = g.chunk_files();
    assert!(
        files_after < files_before,
        "expired data was deleted ({files_before} -> {files_after})"
    );
    assert_eq!(
        files_after as i64,
        g.packs(),
        "no pack is left without chunks"
    );
    assert_consistent(&g);

    // a second run finds nothing more to do
    gc(&g, &[]);
    assert_eq!(g.chunk_files(), files_after);
}

/// A server with caches `first` and `second`, NAR `a` uploaded to the first and `b` to the
/// second; both start with the same `head` bytes, then `a` has `a_tail` bytes of its own
/// and `b` 1 MiB of its own. Returns (server, client, admin token, b).
async fn two_nars_sharing_a_head(head: usize, a_tail: usize) -> (Garretd, Api, String, Vec<u8>) {
    let g = Garretd::start_with(Some(CONFIG), &[]);
    let api = g.client();
    let admin = g.admin_token();
    for c in ["first", "second"] {
        assert_eq!(
            api.create_cache(&admin, c, false).await.status(),
            StatusCode::OK
        );
    }
    let head = noise(31, head);
    let a = nar_of_file(&[&head[..], &noise(32, a_tail)[..]].concat());
    let b = nar_of_file(&[&head[..], &noise(33, 1 << 20)[..]].concat());
    for (cache, name, nar) in [("first", "a", &a), ("second", "b", &b)] {
        api.upload_ok(&admin, cache, name, nar).await;
    }
    (g, api, admin, b)
}

/// Chunks of one upload batch share a pack: GC must keep the pack while any of its chunks
/// is live, and delete it with the last one.
#[tokio::test]
async fn a_pack_lives_as_long_as_any_of_its_chunks() {
    // `b` shares the first 1.5 MiB of `a` (those chunks sit in a's packs), then differs.
    let (g, api, admin, b) = two_nars_sharing_a_head(3 << 19, 1 << 20).await;
    let shared_packs = g.sql(
        "SELECT COUNT(DISTINCT c.storage_key) FROM chunks c
         WHERE EXISTS (SELECT 1 FROM chunkrefs r JOIN nars n ON n.id = r.nar_id
                       JOIN objects o ON o.nar_id = n.id JOIN caches k ON k.id = o.cache_id
                       WHERE r.chunk_id = c.id AND k.name = 'second')
           AND EXISTS (SELECT 1 FROM chunks d WHERE d.storage_key = c.storage_key
                       AND NOT EXISTS (SELECT 1 FROM chunkrefs r JOIN nars n ON n.id = r.nar_id
                                       JOIN objects o ON o.nar_id = n.id JOIN caches k ON k.id = o.cache_id
                                       WHERE r.chunk_id = d.id AND k.name = 'second'))",
    );
    assert_ne!(
        shared_packs, "0",
        "the test needs a pack holding chunks of both a live and a dying NAR"
    );

    let destroy = |cache: &'static str| {
        let api = api.clone();
        let admin = admin.clone();
        async move {
            let r = api
                .send(
                    Method::DELETE,
                    &format!("_api/v1/cache-config/{cache}"),
                    Some(&admin),
                )
                .await;
            assert_eq!(r.status(), StatusCode::OK);
        }
    };
    destroy("first").await;
    // past the (zero) orphan grace period, whose whole-second clock would not have moved
    g.age_data(60);
    gc(&g, &[]);
    assert_eq!(
        fetch_nar(&api, &admin, "second", "b").await.1,
        b,
        "b intact"
    );
    assert_consistent(&g);
    assert_eq!(
        g.chunk_files() as i64,
        g.packs(),
        "a's own packs are gone, shared ones stay"
    );

    destroy("second").await;
    g.age_data(60);
    gc(&g, &[]);
    assert_eq!(g.count("chunks"), 0);
    assert_eq!(g.chunk_files(), 0, "the last chunk took its pack along");
}

/// A pack whose chunks are mostly dead is rewritten with just the live ones; the old pack
/// goes one run later (downloads that looked up the old location had time to finish).
#[tokio::test]
async fn a_mostly_dead_pack_is_compacted() {
    // a's first pack holds 0.5 MiB that b shares and 1.5 MiB only a uses
    let (g, api, admin, b) = two_nars_sharing_a_head(1 << 19, 2 << 20).await;
    let r = api
        .send(Method::DELETE, "_api/v1/cache-config/first", Some(&admin))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    g.age_data(60);
    let live_bytes = |g: &Garretd| -> u64 {
        g.sql("SELECT CAST(COALESCE(SUM(file_size), 0) AS BIGINT) FROM chunks WHERE state = 'V'")
            .parse()
            .unwrap()
    };

    gc(&g, &[]);
    let dead_rows: i64 = g
        .sql("SELECT COUNT(*) FROM chunks WHERE state = 'Z'")
        .parse()
        .unwrap();
    assert!(
        dead_rows > 0,
        "a's chunks in the shared pack are dead, not yet deleted"
    );
    assert_eq!(
        fetch_nar(&api, &admin, "second", "b").await.1,
        b,
        "b intact after the move"
    );
    assert_consistent(&g);
    let old_pack = g.sql("SELECT storage_key FROM chunks WHERE state = 'Z' LIMIT 1");
    assert!(
        g.storage_files().contains(&old_pack),
        "the old pack waits one run"
    );
    assert_eq!(
        g.sql(&format!(
            "SELECT COUNT(*) FROM chunks WHERE state = 'V' AND storage_key = '{old_pack}'"
        )),
        "0",
        "the live chunks moved out"
    );
    assert!(g.storage_bytes() > live_bytes(&g));

    gc(&g, &[]);
    assert_eq!(g.sql("SELECT COUNT(*) FROM chunks WHERE state = 'Z'"), "0");
    assert!(
        !g.storage_files().contains(&old_pack),
        "the old pack is gone"
    );
    assert_eq!(
        fetch_nar(&api, &admin, "second", "b").await.1,
        b,
        "b still intact"
    );
    assert_consistent(&g);
    assert_eq!(
        g.storage_bytes(),
        live_bytes(&g),
        "storage holds exactly the live chunks"
    );
}

#[tokio::test]
async fn an_interrupted_run_is_finished_by_the_next() {
    let g = Garretd::start_with(Some(CONFIG), &[]);
    let api = g.client();
    let admin = g.admin_token();
    assert_eq!(
        api.create_cache(&admin, "tmp", false).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        api.create_cache(&admin, "keep", false).await.status(),
        StatusCode::OK
    );
    let gone = nar_of_file(&noise(21, 1 << 20));
    let kept = nar_of_file(&noise(22, 1 << 20));
    api.upload_ok(&admin, "tmp", "gone", &gone).await;
    api.upload_ok(&admin, "keep", "kept", &kept).await;
    let r = api
        .send(Method::DELETE, "_api/v1/cache-config/tmp", Some(&admin))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    g.age_data(60);

    let files = g.chunk_files();
    gc(&g, &["--stop-after-mark"]);
    let marked: i64 = g
        .sql("SELECT COUNT(*) FROM chunks WHERE state = 'D'")
        .parse()
        .unwrap();
    assert!(marked > 0, "the orphaned chunks are marked");
    assert_eq!(
        g.chunk_files(),
        files,
        "nothing deleted yet: the run stopped early"
    );
    assert_consistent(&g);
    assert_eq!(fetch_nar(&api, &admin, "keep", "kept").await.1, kept);

    gc(&g, &[]);
    assert_eq!(g.sql("SELECT COUNT(*) FROM chunks WHERE state = 'D'"), "0");
    assert_eq!(
        g.chunk_files() as i64,
        g.packs(),
        "no pack is left without chunks"
    );
    assert!(g.chunk_files() < files);
    assert_consistent(&g);
    assert_eq!(fetch_nar(&api, &admin, "keep", "kept").await.1, kept);
}

#[tokio::test]
async fn uploads_racing_gc_end_intact() {
    let g = Garretd::start_with(Some(CONFIG), &[]);
    let api = g.client();
    let admin = g.admin_token();
    assert_eq!(
        api.create_cache(&admin, "keep", false).await.status(),
        StatusCode::OK
    );
    let base = noise(31, 2 << 20);

    // GC runs back to back while uploads reuse chunks that keep becoming orphans.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let mut gc_cmd = g.command();
    gc_cmd.arg("gc");
    let gc_loop = std::thread::spawn(move || {
        let mut runs = 0;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let out = gc_cmd.output().expect("gc");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            runs += 1;
        }
        runs
    });

    let mut raced = 0;
    for round in 0..6 {
        let eph = format!("eph{round}");
        assert_eq!(
            api.create_cache(&admin, &eph, false).await.status(),
            StatusCode::OK
        );
        let nar = nar_of_file(&[&base[..], format!("round {round}").as_bytes()].concat());
        let (status, tries) = upload_retrying(&api, &admin, &eph, &format!("e{round}"), &nar).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "round {round}: the ephemeral upload"
        );
        raced += tries - 1;
        // orphan it, past the (zero) grace period at once, then immediately upload a NAR
        // that shares almost all of its chunks while GC is collecting them
        let r = api
            .send(
                Method::DELETE,
                &format!("_api/v1/cache-config/{eph}"),
                Some(&admin),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "round {round}: destroying {eph}"
        );
        g.age_data(60);
        let keep = nar_of_file(&[&base[..], format!("kept {round}").as_bytes()].concat());
        let (status, tries) =
            upload_retrying(&api, &admin, "keep", &format!("k{round}"), &keep).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "round {round}: the upload ends intact (after retries)"
        );
        raced += tries - 1;
        // the destroyed cache serves nothing
        let r = api
            .get(
                &format!("{eph}/{}.narinfo", fake_hash(&format!("e{round}"))),
                Some(&admin),
            )
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "round {round}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = gc_loop.join().unwrap();
    assert!(runs >= 2, "GC actually ran concurrently ({runs} runs)");
    eprintln!("{runs} GC runs; {raced} uploads answered 503 (raced with GC) and were retried");

    gc(&g, &[]);
    assert_consistent(&g);
    assert_eq!(
        assert_served_nars_verify(&g, &api, &admin).await,
        6,
        "the six kept paths, nothing else"
    );
    for round in 0..6 {
        let keep = nar_of_file(&[&base[..], format!("kept {round}").as_bytes()].concat());
        assert_eq!(
            fetch_nar(&api, &admin, "keep", &format!("k{round}"))
                .await
                .1,
            keep,
            "round {round}"
        );
    }
}

/// Uploads `nar` as `name` into `cache`, retrying while the server answers 503 (an upload
/// that raced with GC; the only other answer allowed is 200). Returns the last status and
/// how many attempts it took.
async fn upload_retrying(
    api: &Api,
    token: &str,
    cache: &str,
    name: &str,
    nar: &[u8],
) -> (StatusCode, u32) {
    let info = upload_info(cache, name, nar, &[]);
    for attempt in 1..=5 {
        let r = api.upload(Some(token), &info, nar.to_vec()).await;
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert!(
            status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
            "uploading {name} into {cache}: {status} is neither success nor a retryable race: {body}"
        );
        if status == StatusCode::OK {
            return (status, attempt);
        }
    }
    (StatusCode::SERVICE_UNAVAILABLE, 5)
}

/// Every object the database holds in a live cache is served: its narinfo answers, and the
/// NAR it points at downloads, decompresses and matches the narinfo's NarHash and NarSize.
/// Returns how many were checked.
async fn assert_served_nars_verify(g: &Garretd, api: &Api, token: &str) -> usize {
    let rows = g.sql_rows(
        "SELECT k.name || '/' || o.store_path_hash FROM objects o
         JOIN caches k ON k.id = o.cache_id WHERE k.deleted_at IS NULL",
    );
    for row in &rows {
        let r = api.get(&format!("{row}.narinfo"), Some(token)).await;
        assert_eq!(r.status(), StatusCode::OK, "{row}.narinfo");
        let text = r.text().await.unwrap();
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(": "))
                .unwrap_or_else(|| panic!("{row}.narinfo has no {k}: {text}"))
                .to_string()
        };
        let cache = row.split('/').next().unwrap();
        let body = api
            .get(&format!("{cache}/{}", field("URL")), Some(token))
            .await;
        assert_eq!(body.status(), StatusCode::OK, "the NAR of {row}");
        let nar = zstd::decode_all(&body.bytes().await.unwrap()[..])
            .unwrap_or_else(|e| panic!("the NAR of {row} does not decompress: {e}"));
        assert_eq!(nar.len().to_string(), field("NarSize"), "{row}");
        assert_eq!(
            Sha256Hash::digest(&nar),
            Sha256Hash::parse_any(&field("NarHash")).unwrap(),
            "{row}: the NAR served matches its narinfo"
        );
    }
    rows.len()
}

/// A temporary file an interrupted upload left in `.incoming` (older than the hour every
/// sweep waits) goes with the server's next periodic GC run, without a restart; a fresh
/// one, as an upload in progress would own, stays.
#[tokio::test]
async fn gc_sweeps_stale_temporary_files_and_keeps_fresh_ones() {
    let g = Garretd::start_with(
        Some("[garbage-collection]\ninterval = \"1s\"\norphan-grace-period = 0\n"),
        &[],
    );
    let incoming = g.data_dir.join("storage").join(".incoming");
    let stale = incoming.join("interrupted.tmp");
    let fresh = incoming.join("in-progress.tmp");
    std::fs::write(&stale, b"left by kill -9").unwrap();
    std::fs::write(&fresh, b"still being written").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let api = g.client();
    // Poll the server's own count: the run that removed the file has reported it.
    eventually(
        PATIENCE,
        "a GC run reported sweeping one temporary file",
        || async { api.metric("garret_gc_temp_files_swept_total").await == Some(1.0) },
    )
    .await;
    assert!(!stale.exists(), "the stale temporary file was swept");
    assert!(fresh.exists(), "the fresh temporary file was kept");
}
