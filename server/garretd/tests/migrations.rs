//! Upgrading a database that already holds data: each schema change must keep every row
//! and every reference. Runs on SQLite, and on PostgreSQL with GARRET_TEST_DATABASE=postgres.

mod common;

use garretd::db::Database;
use sqlx::Executor;

async fn open_old(dir: &std::path::Path, version: i64) -> Database {
    let url = common::database_env()
        .into_iter()
        .find(|(k, _)| k == "GARRETD_DATABASE__URL")
        .map(|(_, v)| v)
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.join("old.db").display()));
    let db = Database::connect(&url).await.expect("connect");
    db.migrate_up_to(version).await.expect("old schema");
    db
}

async fn scalar(db: &Database, sql: &str) -> i64 {
    let row = sqlx::query(sql).fetch_one(db.pool()).await.expect(sql);
    sqlx::Row::try_get::<i64, _>(&row, 0).expect("an integer")
}

#[tokio::test]
async fn packing_chunks_keeps_existing_chunks_and_references() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_old(dir.path(), 2).await;
    db.pool()
        .execute(
            "INSERT INTO nars (id, nar_hash, nar_size, compression, num_chunks, created_at)
             VALUES (7, 'sha256:aa', 30, 'zstd', 2, 0);
             INSERT INTO chunks (id, state, chunk_hash, chunk_size, file_size, compression, storage_key, created_at, last_used_at)
             VALUES (3, 'V', 'blake3:x', 20, 11, 'zstd', 'old-x.chunk', 0, 0),
                    (4, 'V', 'blake3:y', 10, 6, 'zstd', 'old-y.chunk', 0, 0);
             INSERT INTO chunkrefs (nar_id, seq, chunk_id) VALUES (7, 0, 4), (7, 1, 3);",
        )
        .await
        .expect("rows in the old schema");
    if common::on_postgres() {
        // the rows above chose their ids; move the sequences past them as real use would
        db.pool()
            .execute("SELECT setval('chunks_id_seq', 4); SELECT setval('nars_id_seq', 7);")
            .await
            .expect("sequences");
    }

    db.migrate().await.expect("upgrade");

    // every chunk kept its id and object, now at offset 0; the NAR still lists them in order
    let locs = db.nar_chunks(7).await.expect("the NAR's chunks");
    let got: Vec<(String, i64, i64)> = locs
        .iter()
        .map(|c| (c.storage_key.clone(), c.storage_offset, c.file_size))
        .collect();
    assert_eq!(
        got,
        vec![
            ("old-y.chunk".to_string(), 0, 6),
            ("old-x.chunk".to_string(), 0, 11)
        ]
    );
    assert!(locs.iter().all(|c| c.valid));

    // chunks may now share an object, at distinct offsets only
    let ids = db
        .insert_pending_chunks(&[
            new_chunk("blake3:p", "p.pack", 0),
            new_chunk("blake3:q", "p.pack", 11),
        ])
        .await
        .expect("two chunks in one pack");
    assert_eq!(ids.len(), 2);
    assert!(
        ids.iter().all(|id| *id > 4),
        "ids continue after the old rows"
    );
    assert!(
        db.insert_pending_chunks(&[new_chunk("blake3:r", "p.pack", 11)])
            .await
            .is_err(),
        "one location holds one chunk"
    );

    // references are still enforced, and still cascade from NARs
    assert!(
        db.pool()
            .execute("INSERT INTO chunkrefs (nar_id, seq, chunk_id) VALUES (7, 2, 999)")
            .await
            .is_err(),
        "a reference to a missing chunk is refused"
    );
    db.pool()
        .execute("DELETE FROM nars WHERE id = 7")
        .await
        .expect("delete the NAR");
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM chunkrefs").await, 0);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM chunks").await, 4);
}

fn new_chunk(hash: &str, key: &str, offset: i64) -> garretd::db::NewChunk {
    garretd::db::NewChunk {
        chunk_hash: hash.into(),
        chunk_size: 20,
        file_size: 11,
        compression: "zstd".into(),
        storage_key: key.into(),
        storage_offset: offset,
    }
}

/// Migration 7 keeps only valid chunks in the hash index: deduplication must still find
/// exactly the valid chunks (never a pending or doomed one), follow state changes, and on
/// SQLite look them up through the index rather than by scanning the table.
#[tokio::test]
async fn the_chunk_hash_index_holds_valid_chunks_and_serves_deduplication() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_old(dir.path(), 6).await;
    db.pool()
        .execute(
            "INSERT INTO chunks (id, state, chunk_hash, chunk_size, file_size, compression, storage_key, storage_offset, created_at, last_used_at)
             VALUES (1, 'V', 'blake3:a', 20, 11, 'zstd', 'pack-1', 0, 0, 0),
                    (2, 'P', 'blake3:a', 20, 12, 'zstd', 'pack-2', 0, 0, 0),
                    (3, 'D', 'blake3:b', 20, 13, 'zstd', 'pack-3', 0, 0, 0),
                    (4, 'V', 'blake3:c', 20, 20, 'none', 'pack-4', 0, 0, 0);",
        )
        .await
        .expect("rows in the old schema");
    if common::on_postgres() {
        db.pool()
            .execute("SELECT setval('chunks_id_seq', 4)")
            .await
            .expect("sequence");
    }
    db.migrate().await.expect("upgrade");

    let hashes: Vec<String> = ["blake3:a", "blake3:b", "blake3:c"]
        .map(String::from)
        .to_vec();
    let found = db.find_chunks(&hashes, "zstd").await.expect("lookup");
    assert_eq!(
        found,
        std::collections::HashMap::from([("blake3:a".to_string(), (1, 11))]),
        "only the valid chunk with this compression"
    );

    db.pool()
        .execute("UPDATE chunks SET state = 'V' WHERE id = 3; UPDATE chunks SET state = 'D' WHERE id = 1;")
        .await
        .expect("state changes");
    let found = db.find_chunks(&hashes, "zstd").await.expect("lookup");
    assert_eq!(
        found,
        std::collections::HashMap::from([("blake3:b".to_string(), (3, 13))]),
        "the index follows chunks into and out of the valid state"
    );

    if !common::on_postgres() {
        let sql = format!(
            "EXPLAIN QUERY PLAN {}",
            garretd::db::find_chunks_sql(garretd::db::Engine::Sqlite, 2)
        );
        let plan = sqlx::query(&sql)
            .bind("zstd")
            .bind("blake3:a")
            .bind("blake3:b")
            .fetch_all(db.pool())
            .await
            .expect("query plan");
        let details: Vec<String> = plan
            .iter()
            .map(|r| sqlx::Row::try_get::<String, _>(r, "detail").expect("detail"))
            .collect();
        assert!(
            details.iter().any(|d| d.contains("INDEX chunks_by_hash")),
            "deduplication lookups use the index: {details:?}"
        );
    }
}
