/*
 * packcache.c: the packed-weights cache, on disk.
 *
 * Packing is most of a model load: the arena's fresh pages must be zeroed
 * by the kernel, then every weight rewritten, and the result depends only
 * on the model file and the packed layout. So the
 * arena is also written to $XDG_CACHE_HOME/kvscope/packed/, and a later
 * load of the same file maps that instead (read-only, from the page cache).
 * The arena starts 2 MiB into the file (a hole after the header page) and
 * is mapped at a 2 MiB-aligned address, so that a kernel whose page cache
 * holds the file in large folios maps it with huge pages, as the repacked
 * arena gets them (MADV_HUGEPAGE on anonymous memory).
 * A cache file is named after the model file's identity (device, inode,
 * size, modification time) and starts with a page-sized header repeating
 * it with the layout version and the arena's size; a header or a file size
 * that does not match exactly is ignored, and the file rewritten. Files are
 * written whole under a temporary name, then renamed. Files under
 * PACKCACHE_MIN (test models) are never cached; KVSCOPE_PACK_CACHE=0
 * turns the cache off. The folder is kept under a size cap (default
 * PACKCACHE_CAP, KVSCOPE_PACK_CACHE_MAX in MiB): a load touches the file
 * it maps, and a write removes the least recently used others until the
 * folder fits; a file that would not fit, or would leave the disk with less
 * than PACKCACHE_SPARE free, is not written. This file knows files,
 * headers and the folder, nothing of what an arena holds: the CPU backend
 * (cpu_pack_weights) decides what is packed, where, and when to ask.
 */
#include "engine/packcache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <dirent.h>
#include <unistd.h>

#define PACKCACHE_VERSION 4   /* bump when kern_pack, cpu.c's arena order or the file changes */
#define PACKCACHE_HEADER 4096 /* bytes of the header written */
#define PACKCACHE_HUGE (2u << 20)
#define PACKCACHE_DATA PACKCACHE_HUGE /* the arena's offset: a hole after the header */
#define PACKCACHE_MIN (16u << 20)
#define PACKCACHE_CAP (16ull << 30)
#define PACKCACHE_SPARE (1ull << 30)

/* The cache file's header for this model and arena, and its path; NULL
 * when the model is not cached. */
char *packcache_path(const struct gguf_file *f, uint64_t arena_bytes, uint64_t total,
                     struct packcache_header *h)
{
	const char *env = getenv("KVSCOPE_PACK_CACHE");
	struct stat st;
	if (f == NULL || f->path == NULL || f->size < PACKCACHE_MIN ||
	    (env != NULL && strcmp(env, "0") == 0) || stat(f->path, &st) != 0 ||
	    (uint64_t)st.st_size != f->size)
		return NULL;
	memset(h, 0, sizeof *h);
	memcpy(h->magic, "KVSPACK", 8);
	h->version = PACKCACHE_VERSION;
	h->dev = (uint64_t)st.st_dev;
	h->ino = (uint64_t)st.st_ino;
	h->size = (uint64_t)st.st_size;
	h->mtime_ns = (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec;
	h->arena_bytes = arena_bytes;
	h->total = total;
	char *dir = file_xdg_path("XDG_CACHE_HOME", ".cache", "kvscope/packed");
	char *path = xasprintf("%s/%016llx-%016llx-%016llx.bin", dir, (unsigned long long)h->ino,
	                       (unsigned long long)h->size, (unsigned long long)h->mtime_ns);
	free(dir);
	return path;
}

/* Map n bytes of fd from offset off (a multiple of PACKCACHE_HUGE) read-only
 * at an address that is a multiple of PACKCACHE_HUGE too, so the kernel can
 * map the file's large page-cache folios with huge pages: streaming 92 MiB
 * of weights through 4 KiB pages cost decode 20-30 % in TLB misses on a VM.
 * The map, or MAP_FAILED. */
static void *packcache_map_aligned(int fd, uint64_t n, off_t off)
{
	size_t span = (size_t)n + PACKCACHE_HUGE;
	uint8_t *va = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (va == MAP_FAILED)
		return MAP_FAILED;
	uint8_t *at =
	        (uint8_t *)(((uintptr_t)va + PACKCACHE_HUGE - 1) & ~(uintptr_t)(PACKCACHE_HUGE - 1));
	void *map = mmap(at, (size_t)n, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, off);
	if (map == MAP_FAILED) {
		munmap(va, span);
		return MAP_FAILED;
	}
	if (at > va)
		munmap(va, (size_t)(at - va));
	if (va + span > at + n)
		munmap(at + n, (size_t)(va + span - (at + n)));
	(void)madvise(map, (size_t)n, MADV_HUGEPAGE);
	return map;
}

/* Map the cached arena at path when its header is h; the map, or NULL. */
void *packcache_load(const char *path, const struct packcache_header *h)
{
	void *arena = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct packcache_header got;
	struct stat st;
	bool ok = fd >= 0 && fstat(fd, &st) == 0 &&
	        (uint64_t)st.st_size == PACKCACHE_DATA + h->arena_bytes &&
	        pread(fd, &got, sizeof got, 0) == (ssize_t)sizeof got &&
	        memcmp(&got, h, sizeof got) == 0;
	if (ok) {
		void *map = packcache_map_aligned(fd, h->arena_bytes, PACKCACHE_DATA);
		ok = map != MAP_FAILED;
		if (ok) {
			arena = map;
			(void)futimens(fd, NULL); /* recently used: the last to be evicted */
		}
	}
	if (fd >= 0)
		close(fd);
	return arena;
}

/* The cache folder's size cap in bytes. */
static uint64_t packcache_cap(void)
{
	const char *env = getenv("KVSCOPE_PACK_CACHE_MAX");
	char *end;
	unsigned long long mib = env != NULL ? strtoull(env, &end, 10) : 0;
	if (env == NULL || *env == '\0' || *end != '\0' || mib == 0 || mib > (1ull << 40)) {
		if (env != NULL)
			log_warn("KVSCOPE_PACK_CACHE_MAX='%s': expected a size in MiB; using %llu MiB", env,
			         (unsigned long long)(PACKCACHE_CAP >> 20));
		return PACKCACHE_CAP;
	}
	return (uint64_t)mib << 20;
}

struct packcache_file {
	char *path;
	uint64_t bytes;
	int64_t mtime_ns;
};

/* Older first (by modification time, the last use). */
static int packcache_file_cmp(const void *a, const void *b)
{
	const struct packcache_file *x = a, *y = b;
	return (x->mtime_ns > y->mtime_ns) - (x->mtime_ns < y->mtime_ns);
}

/* Remove the least recently used cache files in dir but keep until the
 * folder holds at most cap - incoming bytes; false when even that cannot make
 * room (the files in use by other processes stay valid: unlink only drops
 * the name). */
static bool packcache_trim(const char *dir, const char *keep, uint64_t incoming, uint64_t cap)
{
	if (incoming > cap)
		return false;
	struct dirent **names = NULL;
	int n = scandir(dir, &names, NULL, NULL);
	struct packcache_file *files = xcalloc((size_t)(n > 0 ? n : 1), sizeof *files);
	size_t nf = 0;
	uint64_t total = 0;
	for (int i = 0; i < n; i++) {
		size_t l = strlen(names[i]->d_name);
		struct stat st;
		char *p = xasprintf("%s/%s", dir, names[i]->d_name);
		if (l > 4 && strcmp(names[i]->d_name + l - 4, ".bin") == 0 &&
		    (keep == NULL || strcmp(p, keep) != 0) && stat(p, &st) == 0 && S_ISREG(st.st_mode)) {
			files[nf].path = p;
			files[nf].bytes = (uint64_t)st.st_size;
			files[nf].mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
			total += files[nf++].bytes;
		} else {
			free(p);
		}
		free(names[i]);
	}
	free(names);
	qsort(files, nf, sizeof *files, packcache_file_cmp);
	for (size_t i = 0; i < nf && total + incoming > cap; i++)
		if (unlink(files[i].path) == 0) {
			log_info("packed-weights cache: removed %s (least recently used)", files[i].path);
			total -= files[i].bytes;
		}
	for (size_t i = 0; i < nf; i++)
		free(files[i].path);
	free(files);
	return total + incoming <= cap;
}

/* Write the arena to the cache file path (whole, under a temporary name,
 * then renamed); whether it was written. */
bool packcache_store(const char *path, const struct packcache_header *h, const void *arena)
{
	char *dir = xstrdup(path), *tmp = xasprintf("%s.tmp%ld", path, (long)getpid());
	*strrchr(dir, '/') = '\0';
	uint8_t head[PACKCACHE_HEADER] = { 0 };
	memcpy(head, h, sizeof *h);
	uint64_t bytes = PACKCACHE_DATA + h->arena_bytes; /* on disk: the hole takes no blocks */
	struct statvfs vfs;
	if (file_mkdirs(dir, 0700) != 0 || !packcache_trim(dir, path, bytes, packcache_cap()) ||
	    statvfs(dir, &vfs) != 0 ||
	    (uint64_t)vfs.f_bavail * vfs.f_frsize < bytes + PACKCACHE_SPARE) {
		log_info("packed-weights cache: %s not written (%.0f MiB would not fit under the cap "
		         "or would leave under %llu MiB free)",
		         path, (double)bytes / (1 << 20), (unsigned long long)(PACKCACHE_SPARE >> 20));
		free(tmp);
		free(dir);
		return false;
	}
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	bool ok = fd >= 0 && write(fd, head, sizeof head) == (ssize_t)sizeof head;
	for (uint64_t off = 0; ok && off < h->arena_bytes;) {
		ssize_t w = pwrite(fd, (const uint8_t *)arena + off,
		                   (size_t)KVS_MIN(h->arena_bytes - off, (uint64_t)(64u << 20)),
		                   (off_t)(PACKCACHE_DATA + off));
		ok = w > 0;
		off += ok ? (uint64_t)w : 0;
	}
	if (fd >= 0 && close(fd) != 0)
		ok = false;
	if (ok && rename(tmp, path) != 0)
		ok = false;
	if (!ok) {
		log_debug("packed-weights cache %s not written: %s", path, strerror(errno));
		unlink(tmp);
	}
	free(tmp);
	free(dir);
	return ok;
}
