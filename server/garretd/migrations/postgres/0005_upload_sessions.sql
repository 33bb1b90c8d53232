-- Resumable uploads (docs/resumable-uploads.md): one NAR sent as parts. A session names the
-- NAR it will become; its parts are staged in storage as blobs of a few MiB, each recorded
-- here before it is written, so a crash leaves rows GC can follow, never an unknown blob.
-- Nothing here is visible to readers: the commit streams the parts through the normal
-- ingest and then forgets the session. No foreign key to caches: a destroyed cache's
-- sessions must outlive it until GC has deleted their blobs.
CREATE TABLE upload_sessions (
    id TEXT PRIMARY KEY,
    cache_id BIGINT NOT NULL,
    cache_name TEXT NOT NULL,
    created_by TEXT,
    store_path_hash TEXT NOT NULL,
    nar_hash TEXT NOT NULL,
    nar_size BIGINT NOT NULL,
    part_size BIGINT NOT NULL,
    nar_info TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX upload_sessions_by_path ON upload_sessions (cache_id, store_path_hash);
CREATE INDEX upload_sessions_by_expiry ON upload_sessions (expires_at);

-- A part is present once its bytes are staged and its hash and size checked; `attempt`
-- names the blobs (of upload_session_blobs) that hold it.
CREATE TABLE upload_session_parts (
    session_id TEXT NOT NULL REFERENCES upload_sessions (id) ON DELETE CASCADE,
    part BIGINT NOT NULL,
    attempt TEXT NOT NULL,
    part_hash TEXT NOT NULL,
    part_size BIGINT NOT NULL,
    PRIMARY KEY (session_id, part)
);

-- Every staged blob, of finished parts and of attempts that failed or were cut off.
CREATE TABLE upload_session_blobs (
    storage_key TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES upload_sessions (id) ON DELETE CASCADE,
    attempt TEXT NOT NULL,
    seq BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX upload_session_blobs_by_attempt ON upload_session_blobs (session_id, attempt, seq);
