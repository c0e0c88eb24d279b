-- 001-init.sql: the first schema of kvscope's dialogue memory.
-- Migrations are forward only; each runs in one transaction and sets
-- PRAGMA user_version to its number (store.c embeds these files).

CREATE TABLE sessions (
	id INTEGER PRIMARY KEY,
	title TEXT NOT NULL,
	model_path TEXT NOT NULL,
	model_sha256 TEXT NOT NULL,
	arch TEXT NOT NULL,
	policy TEXT NOT NULL,          -- "sirllm mode=paper sinks=4 ..."
	budget INTEGER NOT NULL,       -- KV budget in tokens
	n_ctx INTEGER NOT NULL,
	sampler TEXT NOT NULL,
	system TEXT,                   -- system prompt
	created REAL NOT NULL,         -- seconds since the epoch
	updated REAL NOT NULL,
	-- the KV cache between turns, as of the last committed turn
	epoch INTEGER NOT NULL DEFAULT 0,      -- conversation restarts (cache cleared)
	next_pos INTEGER NOT NULL DEFAULT 0,   -- original position of the next token
	kv_turn INTEGER NOT NULL DEFAULT 0,    -- the cache's turn counter
	n_seen INTEGER NOT NULL DEFAULT 0,
	n_evicted INTEGER NOT NULL DEFAULT 0,
	n_evictions INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_title ON sessions(title);

CREATE TABLE turns (
	session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
	idx INTEGER NOT NULL,          -- 0, 1, ... within the session
	role TEXT NOT NULL DEFAULT 'user',
	user_text TEXT NOT NULL,
	reply TEXT NOT NULL,
	n_prompt INTEGER NOT NULL,     -- tokens fed for the user part
	n_reply INTEGER NOT NULL,      -- tokens sampled
	prefill_ms REAL NOT NULL,
	decode_ms REAL NOT NULL,
	stop TEXT NOT NULL,            -- eos, max-tokens, context, user
	complete INTEGER NOT NULL,     -- 0: interrupted or failed
	started REAL NOT NULL,
	committed REAL NOT NULL,
	PRIMARY KEY (session_id, idx)
) WITHOUT ROWID;

CREATE TABLE tokens (
	session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
	epoch INTEGER NOT NULL,
	orig_pos INTEGER NOT NULL,     -- position in the stream since the epoch began
	turn INTEGER NOT NULL,         -- turns.idx that brought it in
	kv_turn INTEGER NOT NULL,      -- the cache's turn id
	token INTEGER NOT NULL,        -- token id
	role INTEGER NOT NULL,         -- enum kv_role
	pos INTEGER NOT NULL,          -- RoPE position as of the last commit
	flags INTEGER NOT NULL,        -- enum kv_flag
	pinned INTEGER NOT NULL,
	surprisal REAL,                -- nats; NULL unknown
	entropy REAL,
	score REAL,                    -- final retention score (at eviction, or latest)
	kept INTEGER NOT NULL,         -- 1: in the cache as of the last commit
	evicted_turn INTEGER,          -- turns.idx during which it left
	evicted_event INTEGER,         -- memory_events.id of its eviction
	PRIMARY KEY (session_id, epoch, orig_pos)
) WITHOUT ROWID;

CREATE TABLE memory_events (
	id INTEGER PRIMARY KEY,
	session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
	turn INTEGER NOT NULL,         -- turns.idx during which it happened
	at REAL NOT NULL,              -- seconds since the epoch
	kind TEXT NOT NULL,            -- evict, pin, unpin, policy, reset
	cause TEXT,                    -- evict: turn, prefill, decode, budget
	policy TEXT,                   -- the policy (or score provider) in charge
	n_tokens INTEGER NOT NULL,     -- tokens evicted, pinned, ...
	n_incoming INTEGER,            -- evict: the tokens room was made for
	fallback TEXT,                 -- why the score provider was not used
	detail TEXT NOT NULL           -- JSON: [[orig_pos, token, score], ...] or the policy
);
CREATE INDEX memory_events_session ON memory_events(session_id, turn);

CREATE TABLE snapshots (
	session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
	turn INTEGER NOT NULL,         -- the turn after which it was taken
	sha256 TEXT NOT NULL,          -- of the file's bytes; the file is PATH-kv/SHA256.kvs
	n_tokens INTEGER NOT NULL,
	bytes INTEGER NOT NULL,
	created REAL NOT NULL,
	PRIMARY KEY (session_id, turn)
) WITHOUT ROWID;

CREATE TABLE model_files (
	path TEXT PRIMARY KEY,
	size INTEGER NOT NULL,
	mtime_ns INTEGER NOT NULL,
	sha256 TEXT NOT NULL
);
