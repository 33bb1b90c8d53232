-- Chunks are now packed: several chunks of one upload batch share a storage object, each
-- at its own offset, so a chunk's location is (storage_key, storage_offset).
-- SQLite cannot drop the old UNIQUE (storage_key) constraint, so `chunks` is rebuilt. This
-- runs inside the migration's transaction, where foreign keys stay enforced: the child
-- table `chunkrefs` is set aside first and rebuilt last, so no reference ever dangles.
CREATE TABLE chunks_packed (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    chunk_hash TEXT NOT NULL,
    chunk_size BIGINT NOT NULL,
    file_size BIGINT NOT NULL,
    compression TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    storage_offset BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    UNIQUE (storage_key, storage_offset)
);
INSERT INTO chunks_packed (id, state, chunk_hash, chunk_size, file_size, compression,
                           storage_key, storage_offset, created_at, last_used_at)
    SELECT id, state, chunk_hash, chunk_size, file_size, compression,
           storage_key, 0, created_at, last_used_at
    FROM chunks;

CREATE TABLE chunkrefs_saved AS SELECT nar_id, seq, chunk_id FROM chunkrefs;
DROP TABLE chunkrefs;
DROP TABLE chunks;
ALTER TABLE chunks_packed RENAME TO chunks;
CREATE INDEX chunks_by_hash ON chunks (chunk_hash, compression, state);

CREATE TABLE chunkrefs (
    nar_id BIGINT NOT NULL REFERENCES nars (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    chunk_id BIGINT NOT NULL REFERENCES chunks (id),
    PRIMARY KEY (nar_id, seq)
);
INSERT INTO chunkrefs (nar_id, seq, chunk_id) SELECT nar_id, seq, chunk_id FROM chunkrefs_saved;
DROP TABLE chunkrefs_saved;
CREATE INDEX chunkrefs_by_chunk ON chunkrefs (chunk_id);
