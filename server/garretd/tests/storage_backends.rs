//! One storage contract, every backend: the same suite runs on local disk and on a real
//! S3 server (Garage in CI, see `.ci/garage.sh`), plus S3 failure modes.

mod common;
mod s3_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use garretd::backend::{new_pack_key, LocalStorage, S3Storage, Storage, StorageError};
use garretd::config::{S3Config, S3Credentials};
use s3_support::s3_from_env;

/// Incompressible bytes, distinct per seed.
fn blob(seed: u64, n: usize) -> Bytes {
    Bytes::from(common::noise(seed, n))
}

/// The contract every backend must keep. Keys are fresh UUIDs, so runs can share a bucket.
async fn storage_contract(s: &dyn Storage) {
    s.check().await.expect("check on a healthy backend");

    // put / get
    let key = new_pack_key();
    let data = blob(1, 1000);
    s.put(&key, data.clone()).await.expect("put");
    assert_eq!(s.get(&key).await.expect("get"), data);

    // overwrite: the last write wins, whole
    let newer = blob(2, 300);
    s.put(&key, newer.clone()).await.expect("overwrite");
    assert_eq!(s.get(&key).await.expect("get after overwrite"), newer);

    // delete, then it is gone; deleting again is fine
    s.delete(&key).await.expect("delete");
    assert!(
        matches!(s.get(&key).await, Err(StorageError::NotFound(_))),
        "deleted blob must be NotFound"
    );
    s.delete(&key)
        .await
        .expect("deleting a missing blob is not an error");

    // missing
    let missing = new_pack_key();
    match s.get(&missing).await {
        Err(StorageError::NotFound(k)) => assert_eq!(k, missing),
        other => panic!("missing blob: {other:?}"),
    }

    // empty and large (8 MiB, above any chunk size) blobs
    let empty = new_pack_key();
    s.put(&empty, Bytes::new()).await.expect("put empty");
    assert!(s.get(&empty).await.expect("get empty").is_empty());
    let big_key = new_pack_key();
    let big = blob(3, 8 << 20);
    s.put(&big_key, big.clone()).await.expect("put 8 MiB");
    let back = s.get(&big_key).await.expect("get 8 MiB");
    assert_eq!(back.len(), big.len());
    assert!(back == big, "8 MiB blob came back different");

    // ranges: how packed chunks are read back
    for (offset, len) in [
        (0u64, 1u64),
        (0, 4096),
        (12345, 700_000),
        ((8 << 20) - 10, 10),
    ] {
        let part = s.get_range(&big_key, offset, len).await.expect("range");
        assert!(
            part == big.slice(offset as usize..(offset + len) as usize),
            "range {offset}+{len} came back different"
        );
    }
    assert!(
        s.get_range(&big_key, (8 << 20) - 10, 11).await.is_err(),
        "a range past the end must fail, not come back short"
    );
    assert!(matches!(
        s.get_range(&missing, 0, 1).await,
        Err(StorageError::NotFound(_))
    ));

    // concurrent writers and readers on distinct keys
    let keys: Vec<String> = (0..16).map(|_| new_pack_key()).collect();
    futures::future::try_join_all(
        keys.iter()
            .enumerate()
            .map(|(i, k)| s.put(k, blob(100 + i as u64, 4096 + i))),
    )
    .await
    .expect("parallel puts");
    let got = futures::future::try_join_all(keys.iter().map(|k| s.get(k)))
        .await
        .expect("parallel gets");
    for (i, g) in got.iter().enumerate() {
        assert_eq!(*g, blob(100 + i as u64, 4096 + i), "blob {i}");
    }

    // bad keys are refused before reaching the backend
    let long = "a".repeat(200);
    for bad in [
        "", "../x", "a/b", ".hidden", "x\0y", "sp ace", "ä.chunk", &long,
    ] {
        assert!(
            matches!(
                s.put(bad, Bytes::from_static(b"x")).await,
                Err(StorageError::BadKey(_))
            ),
            "put {bad:?}"
        );
        assert!(
            matches!(s.get(bad).await, Err(StorageError::BadKey(_))),
            "get {bad:?}"
        );
        assert!(
            matches!(s.delete(bad).await, Err(StorageError::BadKey(_))),
            "delete {bad:?}"
        );
    }

    for k in keys.iter().chain([&empty, &big_key]) {
        s.delete(k).await.expect("cleanup");
    }
    assert!(matches!(
        s.get(&big_key).await,
        Err(StorageError::NotFound(_))
    ));
}

/// Guard against a call that never returns (only a failing run waits this long).
const HANG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn local_storage_contract() {
    // direct I/O where the filesystem takes it, and the buffered fallback
    for direct_io in [true, false] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let s = LocalStorage::open(dir.path(), direct_io).expect("open");
        if direct_io {
            // The target dir sits on the build's disk (ext4 in CI), which takes O_DIRECT.
            s3_support::require(
                "local_storage_contract (O_DIRECT)",
                s.uses_direct_io(),
                "the target dir's filesystem refuses O_DIRECT; only buffered writes were tested",
            );
        }
        storage_contract(&s).await;
    }
}

#[tokio::test]
async fn s3_storage_contract() {
    let Some(cfg) = s3_from_env("s3_storage_contract") else {
        return;
    };
    let s = S3Storage::new(&cfg).expect("client");
    let t = Instant::now();
    storage_contract(&s).await;
    eprintln!("S3 contract took {:?}", t.elapsed());
}

/// Credentials may come from the standard AWS variables instead of the config file, and
/// with neither the backend refuses to start, naming what to set. One test, because it
/// is the only one that touches these process-wide variables.
#[tokio::test]
async fn s3_credentials_from_aws_env() {
    let aws_unset = std::env::var_os("AWS_ACCESS_KEY_ID").is_none();
    if s3_support::require(
        "s3_credentials_from_aws_env (no credentials at all)",
        aws_unset,
        "AWS_ACCESS_KEY_ID is set in this environment",
    ) {
        let cfg = S3Config {
            region: "garage".into(),
            bucket: "b".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            credentials: None,
        };
        let err = S3Storage::new(&cfg).expect_err("no credentials");
        assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
    }
    let Some(mut cfg) = s3_from_env("s3_credentials_from_aws_env") else {
        return;
    };
    let creds = cfg.credentials.take().expect("creds");
    std::env::set_var("AWS_ACCESS_KEY_ID", &creds.access_key_id);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", &creds.secret_access_key);
    let s = S3Storage::new(&cfg).expect("client from env credentials");
    std::env::remove_var("AWS_ACCESS_KEY_ID");
    std::env::remove_var("AWS_SECRET_ACCESS_KEY");
    let key = new_pack_key();
    s.put(&key, Bytes::from_static(b"env")).await.expect("put");
    assert_eq!(&s.get(&key).await.expect("get")[..], b"env");
    s.delete(&key).await.expect("delete");
}

/// A wrong secret is a configuration error (not an outage), and makes the server unready.
#[tokio::test]
async fn s3_wrong_secret_is_refused() {
    let Some(mut cfg) = s3_from_env("s3_wrong_secret_is_refused") else {
        return;
    };
    if let Some(c) = cfg.credentials.as_mut() {
        c.secret_access_key = "not-the-secret-0000000000000000".into();
    }
    let s = S3Storage::new(&cfg).expect("client");
    let err = s
        .put(&new_pack_key(), Bytes::from_static(b"x"))
        .await
        .expect_err("a wrong secret must fail");
    assert!(matches!(err, StorageError::Io { .. }), "{err:?}");
    assert!(matches!(s.check().await, Err(StorageError::Unavailable(_))));
    let shown = format!("{err} {err:?} {s:?}");
    assert!(!shown.contains("not-the-secret"), "secret leaked: {shown}");
}

/// Nothing listening: every call is `Unavailable`, quickly, never a hang.
#[tokio::test]
async fn s3_unreachable_is_unavailable_fast() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let cfg = S3Config {
        region: "garage".into(),
        bucket: "nowhere".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        credentials: Some(S3Credentials {
            access_key_id: "GKunreachable".into(),
            secret_access_key: "unreachable-secret-000".into(),
        }),
    };
    let s = S3Storage::new(&cfg).expect("client");
    let key = new_pack_key();
    // Each call gives up on its own: the guard only turns a hang into a failure.
    let calls = async {
        assert!(matches!(s.check().await, Err(StorageError::Unavailable(_))));
        assert!(matches!(
            s.put(&key, Bytes::from_static(b"x")).await,
            Err(StorageError::Unavailable(_))
        ));
        assert!(matches!(
            s.get(&key).await,
            Err(StorageError::Unavailable(_))
        ));
        assert!(matches!(
            s.delete(&key).await,
            Err(StorageError::Unavailable(_))
        ));
    };
    tokio::time::timeout(HANG, calls)
        .await
        .expect("an unreachable S3 is reported, not waited on");
}

/// S3 accepts connections but never answers (a wedged server): the readiness check gives
/// up within its short deadline instead of hanging the probe.
#[tokio::test]
async fn s3_silent_server_fails_check_in_time() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().map_while(Result::ok) {
            held.push(conn); // never read, never answer
        }
    });
    let cfg = S3Config {
        region: "garage".into(),
        bucket: "silent".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        credentials: Some(S3Credentials {
            access_key_id: "GKsilent".into(),
            secret_access_key: "silent-secret-00000000".into(),
        }),
    };
    let s = S3Storage::new(&cfg).expect("client");
    let t = Instant::now();
    let checked = tokio::time::timeout(HANG, s.check())
        .await
        .expect("the readiness check gives up on a silent S3 instead of hanging");
    assert!(matches!(checked, Err(StorageError::Unavailable(_))));
    eprintln!("silent S3: check failed after {:?}", t.elapsed());
}

/// A bucket that does not exist is a configuration error, never "chunk not found" (which
/// the server would take for lost data), and it makes the server unready.
#[tokio::test]
async fn s3_missing_bucket_is_not_a_missing_chunk() {
    let Some(mut cfg) = s3_from_env("s3_missing_bucket_is_not_a_missing_chunk") else {
        return;
    };
    // s3s-fs writes into any bucket name and answers NoSuchKey for it; AWS and Garage
    // answer NoSuchBucket, which is what this test is about.
    if !s3_support::require(
        "s3_missing_bucket_is_not_a_missing_chunk",
        std::env::var("GARRET_TEST_S3_SERVER").as_deref() != Ok("s3s-fs"),
        "s3s-fs does not answer NoSuchBucket",
    ) {
        return;
    }
    cfg.bucket = format!("no-such-bucket-{}", std::process::id());
    let s = S3Storage::new(&cfg).expect("client");
    let key = new_pack_key();
    let err = s.get(&key).await.expect_err("no bucket");
    assert!(matches!(err, StorageError::Io { .. }), "get: {err:?}");
    let err = s
        .put(&key, Bytes::from_static(b"x"))
        .await
        .expect_err("no bucket");
    assert!(matches!(err, StorageError::Io { .. }), "put: {err:?}");
    assert!(matches!(s.check().await, Err(StorageError::Unavailable(_))));
}
