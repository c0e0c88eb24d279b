/*
 * base.h: the bottom layer every other layer may include.
 *
 * It owns four small things: allocation (where running out of memory is
 * fatal, in exactly one place), status codes with a one-line message that
 * names what was wrong and what was expected, logging to stderr, and a few
 * helpers for time, overflow-checked arithmetic and UTF-8.
 *
 * Status convention: a function that can fail on input returns an int status
 * (KVS_OK == 0) and, when it fails, fills a caller-provided struct err.
 * Invariants of our own code, never input, are checked with ALWAYS/NEVER
 * (or assert()).
 */
#ifndef KVS_BASE_H
#define KVS_BASE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes (err.c) ---- */

enum kvs_status {
	KVS_OK = 0,
	KVS_EFORMAT,      /* input data is malformed (file, text, command) */
	KVS_EUNSUPPORTED, /* well-formed but not something we handle */
	KVS_EIO,          /* the operating system refused (open, read, mmap) */
	KVS_EARG,         /* a caller or user argument is out of range */
	KVS_ERANGE,       /* a computed size or count overflows a limit */
	KVS_ESTATE,       /* the operation is not valid in the current state */
	KVS_ENOTFOUND,    /* a named thing (key, tensor, file) does not exist */
	KVS_ECHECKSUM,    /* content does not match its pinned digest */
	KVS_ENOMEM,       /* the system refused memory a size the user chose needs (--ctx) */
};

#define ERR_MSG_MAX 512

/* A failed operation's status and its one-line message. */
struct err {
	int code;
	char msg[ERR_MSG_MAX];
};

/* Fill e (may be NULL) with code and a printf-style message; return code. */
int err_set(struct err *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prepend "prefix: " to e's message (used to add a file name on the way up). */
void err_prefix(struct err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Reset e to KVS_OK with an empty message. */
void err_clear(struct err *e);
/* A short name for a status code, e.g. "format error". */
const char *err_name(int code);

/* ---- invariants (err.c) ---- */

/*
 * ALWAYS(X) and NEVER(X) mark conditions our own code believes always true
 * or never true, never conditions on input (SQLite's idiom). In a debug
 * build (configure --enable-debug defines KVS_DEBUG) a violated one aborts,
 * naming the condition, the file and the line, so the test suites find it;
 * in a release build each is X itself, so guarded code stays harmless:
 * `if (NEVER(n > budget)) return err_set(e, KVS_ESTATE, ...);`.
 */
#ifdef KVS_DEBUG
#define ALWAYS(X) ((X) ? true : (err_invariant("ALWAYS(" #X ")", __FILE__, __LINE__), false))
#define NEVER(X) ((X) ? (err_invariant("NEVER(" #X ")", __FILE__, __LINE__), true) : false)
#else
#define ALWAYS(X) (X)
#define NEVER(X) (X)
#endif
/* Report a broken invariant (what failed, where) on stderr and abort. */
void err_invariant(const char *what, const char *file, int line) __attribute__((noreturn));

/* ---- allocation (xmalloc.c): out of memory is fatal here and only here ---- */

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
/* Allocate count * size bytes, fatal on overflow as on exhaustion. */
void *xmallocarray(size_t count, size_t size);
void *xreallocarray(void *p, size_t count, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* printf into a new string (caller owns). */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* 64-byte aligned allocation for SIMD buffers; release with xfree_aligned. */
void *xmalloc_aligned(size_t n);
void xfree_aligned(void *p);

/* ---- logging (log.c) ---- */

enum log_level { LOG_QUIET = 0, LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* "error", "warning", "info", "debug" ("" for LOG_QUIET). */
const char *log_level_name(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
/* Keep the log lines instead of writing them (any thread may log), for a
 * program that owns the screen; log_capture_next hands out the next line not
 * yet handed out (caller frees; NULL: none) and its level (may be NULL);
 * log_capture_stop writes every kept line to stderr and ends the capture. */
void log_capture_start(void);
char *log_capture_next(enum log_level *level);
void log_capture_stop(void);

/* ---- time (clock.c) ---- */

/* Monotonic time in seconds / milliseconds since an arbitrary origin. */
double clock_now_s(void);
double clock_now_ms(void);

/* ---- checked arithmetic: return false on overflow ---- */

static inline bool ck_mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
	return !__builtin_mul_overflow(a, b, out);
}
static inline bool ck_add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
	return !__builtin_add_overflow(a, b, out);
}
/* Round n up to a multiple of align (a power of two); false on overflow. */
static inline bool ck_align_u64(uint64_t n, uint64_t align, uint64_t *out)
{
	uint64_t t;
	if (!ck_add_u64(n, align - 1, &t))
		return false;
	*out = t & ~(align - 1);
	return true;
}

/* ---- UTF-8 (utf8.c) ---- */

/*
 * Decode one code point from s[0..n). Returns the sequence length (1..4) and
 * stores the code point in *cp; on an invalid or truncated sequence returns 0
 * and leaves *cp untouched. Overlong forms and surrogates are invalid.
 */
size_t utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);
/* Length of the sequence lead byte c announces: 1 for ASCII, 2..4 for a byte
 * that can start a valid sequence, 0 for a continuation byte and for bytes
 * that never lead (0xC0, 0xC1, 0xF5..0xFF). The one lead-byte table. */
size_t utf8_lead_len(uint8_t c);
/* Encode cp into out (>= 4 bytes); return the number of bytes (0 if invalid). */
size_t utf8_encode(uint32_t cp, char *out);
/* The same, surrogates (0xD800..0xDFFF) encoded too: the tokenizers' byte
 * tables and escapes name them; 0 only past 0x10FFFF. */
size_t utf8_encode_any(uint32_t cp, char *out);
/* Length of the longest prefix of s[0..n) that is complete, valid UTF-8 up to
 * an incomplete (but so far valid) trailing sequence. */
size_t utf8_complete_prefix(const uint8_t *s, size_t n);
/* True if s[0..n) is entirely valid UTF-8. */
bool utf8_valid(const uint8_t *s, size_t n);

/* ---- files (file.c) ---- */

/* $VAR/rel when the XDG variable VAR holds an absolute path, else
 * $HOME/fallback/rel (caller owns). E.g. ("XDG_DATA_HOME", ".local/share", "kvscope"). */
char *file_xdg_path(const char *var, const char *fallback, const char *rel);
/* mkdir -p: create dir and its missing parents with mode; 0 or -1 (errno). */
int file_mkdirs(const char *dir, unsigned mode);
/* A new private folder $TMPDIR/NAME-XXXXXX (/tmp without TMPDIR), caller
 * owns the path; NULL with a message naming what (the feature) when it
 * cannot be made. */
char *file_mkdtemp(const char *name, const char *what, struct err *e);
/* Open path read-only (close-on-exec), never blocking on a FIFO, and refuse
 * anything but a regular file with a message naming what it is and what was
 * expected (`what`, e.g. "a GGUF file"); a missing file is KVS_ENOTFOUND,
 * another failed open KVS_EIO. On KVS_OK, *fd is the descriptor
 * (the caller owns it) and *size (when not NULL) the file's size. */
int file_open_regular(const char *path, const char *what, int *fd, uint64_t *size, struct err *e);
/* The largest file read whole by file_read_all: 256 MiB. */
#define FILE_READ_MAX ((size_t)256 << 20)
/* Read a whole regular file ("-": standard input, whatever it is) of at most
 * max bytes into a NUL-terminated buffer (the caller owns it); *len excludes
 * the NUL. Any failure to open, a missing file included, is KVS_EIO. */
int file_read_max(const char *path, size_t max, char **out, size_t *len, struct err *e);
/* file_read_max with FILE_READ_MAX. */
int file_read_all(const char *path, char **out, size_t *len, struct err *e);

/* Hex SHA-256 of a whole file into out (65 bytes with the NUL). */
int file_sha256(const char *path, char out[65], struct err *e);

/* ---- SHA-256 (sha256.c) ---- */

struct sha256 {
	uint32_t h[8];
	uint8_t buf[64];
	size_t n;     /* bytes in buf */
	uint64_t len; /* bytes hashed so far */
};

void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, size_t len);
void sha256_final(struct sha256 *s, uint8_t out[32]);
/* 64 lowercase hex digits and a NUL. */
void sha256_hex(const uint8_t d[32], char out[65]);

/* ---- thread pool (pool.c) ---- */

/*
 * A fork-join pool for the compute kernels: pool_run calls fn(arg, ith, nth)
 * on all nth threads at once (the caller is thread 0) and returns when every
 * call has returned. Inside fn, pool_barrier waits for all nth threads, so
 * one pool_run can hold a whole forward pass with barriers between steps.
 * Idle workers spin briefly, then sleep. One pool_run at a time per pool.
 */
struct pool;
typedef void (*pool_fn)(void *arg, int ith, int nth);

/* Start a pool of n_threads (0 = number of online cores; capped at 256). */
struct pool *pool_create(int n_threads);
void pool_free(struct pool *p);
int pool_size(const struct pool *p);
void pool_run(struct pool *p, pool_fn fn, void *arg);
/* Same with nth threads: 1 runs fn(arg, 0, 1) on the caller alone (the
 * workers stay idle), anything else uses every thread. */
void pool_run_n(struct pool *p, int nth, pool_fn fn, void *arg);
/* Wait until all threads of the running pool_run reach this barrier. */
void pool_barrier(struct pool *p);
/* Number of online CPU cores (>= 1). */
int pool_n_cores(void);
/* Split n items into nth nearly equal ranges; range ith is [*lo, *hi). */
void pool_split(int64_t n, int ith, int nth, int64_t *lo, int64_t *hi);

#define KVS_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define KVS_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KVS_MAX(a, b) ((a) > (b) ? (a) : (b))

#ifdef __cplusplus
}
#endif

#endif
