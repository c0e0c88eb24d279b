-- 004-squeeze.sql: sparse attention remembered with a session: the spec it
-- ran under (restored by --resume) and Squeezed Attention's clusters of its
-- pinned document's keys (restored without clustering again). Forward only,
-- one transaction.

-- engine_sparse_format of the session's sparse attention as of its last
-- commit ("off", "quest budget=1024 ...", "squeezed clusters=5 ..."); NULL
-- for a session saved before this column (dense).
ALTER TABLE sessions ADD COLUMN sparse TEXT;

-- The clusters of the document's keys (engine_squeeze_save), one row per
-- session: the newest clustering. Used only by the same model (sha256) over
-- the same document keys at the same positions (the blob says which).
CREATE TABLE squeeze (
	session_id INTEGER PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
	model_sha256 TEXT NOT NULL,
	spec TEXT NOT NULL,              -- engine_sparse_format when clustered
	n_keys INTEGER NOT NULL,         -- document keys clustered
	n_fine INTEGER NOT NULL,         -- fine clusters per (layer, KV head)
	n_coarse INTEGER NOT NULL,       -- coarse clusters per (layer, KV head)
	created REAL NOT NULL,           -- seconds since the epoch
	blob BLOB NOT NULL               -- "KVSQ", version, shapes, then centroids (f32),
	                                 -- positions, permutations and ranges (u32), host order
);
