-- Chunks are now packed: several chunks of one upload share a storage object, each at its
-- own offset; a location is (storage_key, storage_offset).
ALTER TABLE chunks ADD COLUMN storage_offset BIGINT NOT NULL DEFAULT 0;
ALTER TABLE chunks DROP CONSTRAINT chunks_storage_key_key;
ALTER TABLE chunks ADD CONSTRAINT chunks_storage_location UNIQUE (storage_key, storage_offset);
