-- The chunk-hash index now holds valid chunks only, and no longer carries `state`.
-- Deduplication looks up valid chunks only (`state = 'V'`, which implies this index's
-- condition). Before, every pending chunk an upload recorded went into the index at a
-- random place (the hashes are random), a batch at a time, and moved again when the upload
-- committed and the row became valid: most of the pages an upload wrote were this index's.
-- Now a commit enters all of the upload's new chunks once, in one transaction. GC reads
-- chunks by state and never used this index.
DROP INDEX chunks_by_hash;
CREATE INDEX chunks_by_hash ON chunks (chunk_hash, compression) WHERE state = 'V';
