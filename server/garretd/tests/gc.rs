//! Garbage collection against a real garretd: retention expiry, chunks shared with live
//! NARs surviving, an interrupted run finished by the next, and uploads racing GC.

mod common;

use std::time::Duration;

use common::*;
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
    set_retention(&api, &admin, "short", 1).await;

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
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // a download counts as an access: w stays although it is as old as x
    assert_eq!(fetch_nar(&api, &admin, "short", "w").await.1, w);
    tokio::time::sleep(Duration::from_millis(300)).await;

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

    // a second run finds nothing more to do (with a retention w cannot outlive meanwhile)
    set_retention(&api, &admin, "short", 3600).await;
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
    tokio::time::sleep(Duration::from_millis(1100)).await;
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
    tokio::time::sleep(Duration::from_millis(1100)).await;
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
    tokio::time::sleep(Duration::from_millis(1100)).await;
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
    api.upload(
        Some(&admin),
        &upload_info("tmp", "gone", &gone, &[]),
        gone.clone(),
    )
    .await;
    api.upload(
        Some(&admin),
        &upload_info("keep", "kept", &kept, &[]),
        kept.clone(),
    )
    .await;
    let r = api
        .send(Method::DELETE, "_api/v1/cache-config/tmp", Some(&admin))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;

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

    for round in 0..6 {
        let eph = format!("eph{round}");
        assert_eq!(
            api.create_cache(&admin, &eph, false).await.status(),
            StatusCode::OK
        );
        let nar = nar_of_file(&[&base[..], format!("round {round}").as_bytes()].concat());
        api.upload(
            Some(&admin),
            &upload_info(&eph, &format!("e{round}"), &nar, &[]),
            nar.clone(),
        )
        .await;
        // orphan it, then immediately upload a NAR that shares almost all of its chunks
        api.send(
            Method::DELETE,
            &format!("_api/v1/cache-config/{eph}"),
            Some(&admin),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let keep = nar_of_file(&[&base[..], format!("kept {round}").as_bytes()].concat());
        let mut status = StatusCode::SERVICE_UNAVAILABLE;
        for _ in 0..5 {
            let r = api
                .upload(
                    Some(&admin),
                    &upload_info("keep", &format!("k{round}"), &keep, &[]),
                    keep.clone(),
                )
                .await;
            status = r.status();
            if status != StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
        }
        assert_eq!(
            status,
            StatusCode::OK,
            "round {round}: the upload ends intact (after retries)"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = gc_loop.join().unwrap();
    assert!(runs >= 2, "GC actually ran concurrently ({runs} runs)");

    gc(&g, &[]);
    assert_consistent(&g);
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
    let mut swept = false;
    for _ in 0..600 {
        let metrics = api.get("metrics", None).await.text().await.unwrap();
        if metrics
            .lines()
            .any(|l| l.starts_with("garret_gc_temp_files_swept_total 1"))
        {
            swept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(swept, "a GC run reported sweeping one temporary file");
    assert!(!stale.exists(), "the stale temporary file was swept");
    assert!(fresh.exists(), "the fresh temporary file was kept");
}
