-- 005-cold-sketch.sql: the first stage of a summary recall. Per cold block
-- a sketch of its key bounds on every other layer, 4 bits a channel
-- (store-cold-sketch.c says the layout), 3 KiB where the bounds in
-- cold_sums are 46 KiB: a recall scores every block's sketch,
-- then the exact scorer reads only the best candidates' bounds.
-- Forward only, one transaction.

-- One row per cold block (the block's id: rows are in the order blocks
-- were written, so one session's epoch is a run of ids that a recall
-- reads in order). Blocks written before this migration have none until
-- the writer next attaches to their session (store_cold_attach builds
-- them from cold_sums); while a block of an epoch has none, a recall of
-- that epoch runs the exact search alone.
CREATE TABLE cold_sketch (
	id INTEGER PRIMARY KEY REFERENCES cold_blocks(id) ON DELETE CASCADE, -- the block's id
	session_id INTEGER NOT NULL,
	epoch INTEGER NOT NULL,
	pos0 INTEGER NOT NULL,           -- the block's first original position (ties rank by it)
	sk BLOB NOT NULL                 -- per probe layer and KV head: scale of the centres
	                                 -- and of the radii (float32 LE), then a byte a
	                                 -- channel: centre (high 4 bits), radius (low 4)
);
