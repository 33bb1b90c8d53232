-- NARs that plain Nix (`nix copy --to`) PUT into a cache and whose narinfo has not arrived
-- yet. A narinfo may only claim a NAR its cache actually received (proof of possession).
CREATE TABLE nix_uploads (
    cache_id BIGINT NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    nar_hash TEXT NOT NULL,
    nar_id BIGINT NOT NULL REFERENCES nars (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (cache_id, nar_hash)
);
