-- 006-cold-kv-file.sql: the cold blocks' K/V rows move to a file of their
-- own beside the database (PATH-cold, attached as `cold`, store-cold-kv.c),
-- so that the database keeps what a recall ranks with (text, tokens, the
-- summary index, the sketches, the full-text index: about 50 KiB a block)
-- in pages of its own that stay in the page cache, while the K/V (1.4 MiB
-- a block of 64 tokens for the default model) grows in the other file.
-- Forward only, one transaction; nothing is copied: blocks written before
-- keep their K/V in cold_blocks.kv (kv_at 0) and are read from there.

-- Where a block's K/V rows are: 0 in cold_blocks.kv, 1 in the cold file's
-- cold_kv row of the same id (cold_blocks.kv then empty).
ALTER TABLE cold_blocks ADD COLUMN kv_at INTEGER NOT NULL DEFAULT 0;
