-- 002-cold.sql: the cold tier: what the retention policy evicted, in blocks
-- with their raw K/V rows, per-channel key bounds and text, and a full-text
-- index (FTS5) over the text for recall. Forward only, one transaction.

-- The shapes a session's cold rows were written with: a cold tier is used
-- only by the same model (sha256) with the same KV layout.
CREATE TABLE cold_meta (
	session_id INTEGER PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
	model_sha256 TEXT NOT NULL,
	n_layer INTEGER NOT NULL,
	n_head_kv INTEGER NOT NULL,
	head_dim INTEGER NOT NULL,
	kv_type INTEGER NOT NULL,        -- enum engine_kv_type: 0 f16, 1 f32
	bytes_per_token INTEGER NOT NULL -- engine_kv_bytes_per_slot
);

CREATE TABLE cold_blocks (
	id INTEGER PRIMARY KEY,          -- rising: oldest first out (--cold-max)
	session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
	epoch INTEGER NOT NULL,          -- the cache's epoch (tokens.epoch)
	turn INTEGER NOT NULL,           -- the cache's turn id of its first token (kv_tok.turn)
	pos0 INTEGER NOT NULL,           -- original position of its first token
	pos1 INTEGER NOT NULL,           -- and of its last
	n_tokens INTEGER NOT NULL,
	created REAL NOT NULL,           -- seconds since the epoch
	text TEXT NOT NULL,              -- the tokens detokenized
	toks BLOB NOT NULL,              -- (n_tokens, 6) int32/float32 LE: orig_pos, token,
	                                 -- turn, role, surprisal, entropy
	kv BLOB NOT NULL,                -- (n_tokens, bytes_per_token) engine_kv_save rows:
	                                 -- (n_layer, 2, n_head_kv, head_dim), pre-RoPE keys
	kmin BLOB NOT NULL,              -- (n_layer, n_head_kv, head_dim) float32 LE: per-channel
	kmax BLOB NOT NULL               -- key minimum and maximum over the block (Quest bounds)
);
CREATE INDEX cold_blocks_session ON cold_blocks(session_id, epoch, pos0);

CREATE VIRTUAL TABLE cold_fts USING fts5(text, content = 'cold_blocks', content_rowid = 'id');
CREATE TRIGGER cold_blocks_ai AFTER INSERT ON cold_blocks BEGIN
	INSERT INTO cold_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER cold_blocks_ad AFTER DELETE ON cold_blocks BEGIN
	INSERT INTO cold_fts (cold_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
