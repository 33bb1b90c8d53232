-- Pull-through upstreams (docs/pull-through.md): the caches a miss is fetched from, as a
-- JSON array of {url, public_keys, priority}. Empty for every existing cache.
ALTER TABLE caches ADD COLUMN upstreams TEXT NOT NULL DEFAULT '[]';
