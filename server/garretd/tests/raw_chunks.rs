//! Chunks that do not compress are stored as zstd frames of raw blocks (no zstd pass on
//! upload); chunks that do are compressed as before; chunks written by older versions
//! (zstd's own frames, whatever the data) keep reading and deduplicating. Every NAR is
//! still served as one zstd stream.

mod common;

use common::*;

/// Bytes a raw-block frame adds to a chunk of `n` bytes (header, one 3-byte header per
/// 128 KiB block).
fn raw_overhead(n: u64) -> u64 {
    9 + 3 * n.div_ceil(128 << 10)
}

/// (chunk_size, file_size) of every chunk row.
fn chunk_sizes(g: &Garretd) -> Vec<(u64, u64)> {
    g.sql_rows("SELECT chunk_size || ' ' || file_size FROM chunks ORDER BY id")
        .iter()
        .map(|r| {
            let (a, b) = r.split_once(' ').expect("two numbers");
            (a.parse().expect("size"), b.parse().expect("size"))
        })
        .collect()
}

/// Text-like bytes: compress well, and never mistaken for noise.
fn text(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 100);
    let mut i = 0u64;
    while out.len() < n {
        i += 1;
        let line = format!(
            "{i}: /nix/store/{:x}-package-{}.{}\n",
            i * 2654435761 % 1000003,
            i % 97,
            i % 13
        );
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(n);
    out
}

#[tokio::test]
async fn a_mixed_nar_stores_noise_raw_and_text_compressed_and_reads_back() {
    let (g, api, admin) = server_with_cache("c", true).await;
    let contents = [noise(1, 2 << 20), text(2 << 20), noise(2, 2 << 20)].concat();
    let nar = nar_of_file(&contents);
    api.upload_ok(&admin, "c", "mixed-1.0", &nar).await;

    let info = upload_info("c", "mixed-1.0", &nar, &[]);
    let hash = info["store_path_hash"].as_str().expect("hash");
    assert_eq!(api.nar(&format!("c/nar/{hash}.nar"), None).await, nar);

    let sizes = chunk_sizes(&g);
    let raw = sizes
        .iter()
        .filter(|(c, f)| *f == c + raw_overhead(*c))
        .count();
    let compressed = sizes.iter().filter(|(c, f)| f * 2 < *c).count();
    assert!(raw >= 20, "noise chunks stored raw: {raw} of {sizes:?}");
    assert!(
        compressed >= 5,
        "text chunks compressed: {compressed} of {sizes:?}"
    );
    // Only chunks straddling noise and text (and the NAR's ends) may be neither.
    assert!(sizes.len() - raw - compressed <= 4, "{sizes:?}");
    // What is on disk: the noise plus a little, the text next to nothing.
    let stored = g.storage_bytes();
    assert!(stored < (4 << 20) + (2 << 20) / 2, "stored {stored} bytes");
    assert!(stored > 4 << 20, "stored {stored} bytes");
}

/// Rewrites every stored chunk the way an older garretd wrote it (zstd's own frame, even
/// for noise), into a new pack file per chunk, and points the rows there.
fn rewrite_as_old_chunks(g: &Garretd) {
    let rows = g.sql_rows(
        "SELECT id || ' ' || storage_key || ' ' || storage_offset || ' ' || file_size FROM chunks",
    );
    let storage = g.data_dir.join("storage");
    let path_of = |key: &str| storage.join(&key[..1]).join(&key[..2]).join(key);
    let mut updates = String::new();
    for row in rows {
        let f: Vec<&str> = row.split(' ').collect();
        let (id, key, offset, len): (i64, &str, usize, usize) = (
            f[0].parse().expect("id"),
            f[1],
            f[2].parse().expect("offset"),
            f[3].parse().expect("length"),
        );
        let pack = std::fs::read(path_of(key)).expect("pack");
        let chunk = zstd::decode_all(&pack[offset..offset + len]).expect("a zstd frame");
        let old = zstd::encode_all(&chunk[..], 3).expect("compress");
        let new_key = format!("old{id:08}");
        let p = path_of(&new_key);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
        std::fs::write(&p, &old).expect("write pack");
        updates.push_str(&format!(
            "UPDATE chunks SET storage_key = '{new_key}', storage_offset = 0, file_size = {} WHERE id = {id};\n",
            old.len()
        ));
    }
    g.sql_exec(&updates);
}

#[tokio::test]
async fn chunks_written_by_older_versions_still_read_and_deduplicate() {
    let (g, api, admin) = server_with_cache("c", true).await;
    let shared = noise(3, 3 << 20);
    let first = nar_of_file(&[&shared[..], &text(1 << 20)].concat());
    api.upload_ok(&admin, "c", "old-1.0", &first).await;
    rewrite_as_old_chunks(&g);
    let old_rows = g.count("chunks");

    let first_hash = upload_info("c", "old-1.0", &first, &[])["store_path_hash"]
        .as_str()
        .expect("hash")
        .to_string();
    assert_eq!(
        api.nar(&format!("c/nar/{first_hash}.nar"), None).await,
        first
    );

    // A new version: the same noise at the start, then new noise. Its leading chunks are
    // the old rows (deduplicated), the rest new raw frames: one NAR, both kinds of frame.
    let second = nar_of_file(&[&shared[..], &noise(4, 2 << 20)].concat());
    let info = upload_info("c", "old-2.0", &second, &[]);
    let r = json(api.upload(Some(&admin), &info, second.clone()).await).await;
    assert_eq!(r["kind"], "Uploaded", "{r}");
    let dedup = r["frac_deduplicated"].as_f64().expect("a fraction");
    assert!(dedup > 0.4, "the shared noise was deduplicated: {r}");
    assert!(g.count("chunks") > old_rows);
    let hash = info["store_path_hash"].as_str().expect("hash");
    assert_eq!(api.nar(&format!("c/nar/{hash}.nar"), None).await, second);
    let new = &chunk_sizes(&g)[old_rows as usize..];
    let raw = new
        .iter()
        .filter(|(c, f)| *f == c + raw_overhead(*c))
        .count();
    // The NAR's last chunk may be too short to judge; every other new one is noise.
    assert!(
        raw + 1 >= new.len(),
        "new noise chunks are raw frames: {new:?}"
    );
}
