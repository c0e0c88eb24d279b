-- 003-cold-index.sql: the cold tier's summary index. A block's key bounds
-- move out of its cold_blocks row, where they sat after the K/V blob (so
-- that reading them walked the blob's overflow pages), into cold_sums, and
-- groups of consecutive blocks get merged bounds (cold_groups) that a
-- recall scores first to skip whole groups (store-cold-index.c).
-- Forward only, one transaction.

-- One row per cold block: its bounds apart from its K/V rows.
CREATE TABLE cold_sums (
	id INTEGER PRIMARY KEY REFERENCES cold_blocks(id) ON DELETE CASCADE, -- the block's id
	session_id INTEGER NOT NULL,
	epoch INTEGER NOT NULL,
	pos0 INTEGER NOT NULL,           -- the block's first original position (ties rank by it)
	grp INTEGER,                     -- its cold_groups row; NULL: not grouped yet
	kmin BLOB NOT NULL,              -- (n_layer, n_head_kv, head_dim) float32 LE, as
	kmax BLOB NOT NULL               -- cold_blocks.kmin and kmax were
);
CREATE INDEX cold_sums_grp ON cold_sums(session_id, epoch, grp);

-- Up to a fixed number of consecutive blocks of one epoch (the writer's
-- group size, 32 by default) and bounds that hold every member's: the
-- channel-wise minimum of their kmin and maximum of their kmax. A dropped
-- member leaves the bounds as they were (still bounds, only looser); a
-- group with no member left is deleted.
CREATE TABLE cold_groups (
	id INTEGER PRIMARY KEY,
	session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
	epoch INTEGER NOT NULL,
	n_blocks INTEGER NOT NULL,       -- blocks ever added (the group is full at the size)
	kmin BLOB NOT NULL,              -- (n_layer, n_head_kv, head_dim) float32 LE
	kmax BLOB NOT NULL
);
CREATE INDEX cold_groups_session ON cold_groups(session_id, epoch);

-- Old rows: their bounds copied, ungrouped (the writer groups them when it
-- next attaches to the session; a recall scores ungrouped rows one by one).
-- Rows written from now on keep empty kmin and kmax in cold_blocks.
INSERT INTO cold_sums (id, session_id, epoch, pos0, grp, kmin, kmax)
	SELECT id, session_id, epoch, pos0, NULL, kmin, kmax FROM cold_blocks;
