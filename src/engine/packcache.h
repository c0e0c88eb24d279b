/*
 * packcache.h: the packed-weights cache (internal to the engine layer).
 *
 * The CPU backend's packed arena, saved once per model file under
 * $XDG_CACHE_HOME/kvscope/packed/ and mapped read-only by later loads of
 * the same file; packcache.c has the rules (identity, size cap, LRU
 * eviction, KVSCOPE_PACK_CACHE and KVSCOPE_PACK_CACHE_MAX). A caller asks
 * for the entry's path and header, tries packcache_load, and after packing
 * an arena itself offers it to packcache_store. Every failure only costs
 * the next load a repack.
 */
#ifndef KVS_PACKCACHE_H
#define KVS_PACKCACHE_H

#include "base/base.h"
#include "model/model.h"

/* The first bytes of a cache file (a page is reserved for it); a file is
 * used only when it repeats the header the current model asks for. */
struct packcache_header {
	char magic[8]; /* "KVSPACK" */
	uint64_t version, dev, ino, size, mtime_ns, arena_bytes, total;
};

/* The cache file's header h for model file f and an arena of arena_bytes
 * (total of them used), and its path (the caller frees it); NULL when this
 * model is not cached (no file, a small one, or the cache turned off). */
char *packcache_path(const struct gguf_file *f, uint64_t arena_bytes, uint64_t total,
                     struct packcache_header *h);
/* Map the arena cached at path (h->arena_bytes, read-only) when its header
 * is h; the map, or NULL. */
void *packcache_load(const char *path, const struct packcache_header *h);
/* Write arena (h->arena_bytes) to path, after evicting older files to fit
 * the cap; whether it was written. */
bool packcache_store(const char *path, const struct packcache_header *h, const void *arena);

#endif
