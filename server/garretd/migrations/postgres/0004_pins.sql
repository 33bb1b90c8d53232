-- Pins (issue 13): a named, versioned root whose closure GC and retention leave alone.
-- One row per version; pinning a name again adds a version, and `keep` versions of a
-- name survive (NULL = all). The closure is resolved when the version is made, from the
-- references the cache holds then, and stored in `pin_paths`.
CREATE TABLE pins (
    id BIGSERIAL PRIMARY KEY,
    cache_id BIGINT NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    store_path_hash TEXT NOT NULL,
    store_path TEXT NOT NULL,
    keep BIGINT,
    created_at BIGINT NOT NULL,
    created_by TEXT,
    UNIQUE (cache_id, name, version)
);

-- Every store path hash of a pin version's closure (the root included) that was in the
-- cache when the version was made.
CREATE TABLE pin_paths (
    pin_id BIGINT NOT NULL REFERENCES pins (id) ON DELETE CASCADE,
    store_path_hash TEXT NOT NULL,
    PRIMARY KEY (pin_id, store_path_hash)
);
CREATE INDEX pin_paths_by_hash ON pin_paths (store_path_hash);
