-- Garret schema v1 (PostgreSQL). Timestamps are Unix seconds.
CREATE TABLE caches (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    keypair TEXT NOT NULL,
    is_public BIGINT NOT NULL,
    store_dir TEXT NOT NULL,
    priority BIGINT NOT NULL,
    upstream_cache_key_names TEXT NOT NULL,
    retention_period BIGINT,
    declared BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    deleted_at BIGINT
);

-- A NAR is global and content-addressed; objects in any cache point at it.
CREATE TABLE nars (
    id BIGSERIAL PRIMARY KEY,
    nar_hash TEXT NOT NULL,
    nar_size BIGINT NOT NULL,
    compression TEXT NOT NULL,
    num_chunks BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX nars_by_hash ON nars (nar_hash, compression);

-- state: 'P' written by an upload that has not committed (invisible, never reused),
--        'V' valid, 'D' unreferenced and awaiting deletion from storage.
CREATE TABLE chunks (
    id BIGSERIAL PRIMARY KEY,
    state TEXT NOT NULL,
    chunk_hash TEXT NOT NULL,
    chunk_size BIGINT NOT NULL,
    file_size BIGINT NOT NULL,
    compression TEXT NOT NULL,
    storage_key TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL
);
CREATE INDEX chunks_by_hash ON chunks (chunk_hash, compression, state);

CREATE TABLE chunkrefs (
    nar_id BIGINT NOT NULL REFERENCES nars (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    chunk_id BIGINT NOT NULL REFERENCES chunks (id),
    PRIMARY KEY (nar_id, seq)
);
CREATE INDEX chunkrefs_by_chunk ON chunkrefs (chunk_id);

CREATE TABLE objects (
    id BIGSERIAL PRIMARY KEY,
    cache_id BIGINT NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    nar_id BIGINT NOT NULL REFERENCES nars (id) ON DELETE CASCADE,
    store_path_hash TEXT NOT NULL,
    store_path TEXT NOT NULL,
    refs TEXT NOT NULL,
    deriver TEXT,
    sigs TEXT NOT NULL,
    ca TEXT,
    created_at BIGINT NOT NULL,
    last_accessed_at BIGINT,
    created_by TEXT,
    UNIQUE (cache_id, store_path_hash)
);
CREATE INDEX objects_by_nar ON objects (nar_id);
