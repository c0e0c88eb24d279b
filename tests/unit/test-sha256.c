/*
 * test-sha256.c: SHA-256 (src/base/sha256.c) against published digests.
 *
 *   - the FIPS 180-2 examples (appendix B): "abc" (one block), the 448-bit
 *     message "abcdbcdecdef...nopq" (two blocks: its padding does not fit
 *     the first), and one million 'a'; with them the empty message;
 *   - messages of 'a' whose lengths sit at the padding edges (55, 56, 63,
 *     64, 65, 119, 120 bytes): digests taken from an independent
 *     implementation (Python's hashlib);
 *   - the same digest whatever pieces the message is fed in (every piece
 *     size from 1 to 130 bytes);
 *   - file_sha256 (src/base/file.c) on a file holding "abc", and a missing
 *     file refused with its path in the message.
 */
#include "base/base.h"
#include "tests/unit/test.h"

#include <unistd.h>

/* Hex digest of data[0, n) fed to the hash in pieces of piece bytes. */
static void hex_of(const void *data, size_t n, size_t piece, char out[65])
{
	struct sha256 s;
	uint8_t d[32];
	sha256_init(&s);
	for (size_t i = 0; i < n; i += piece)
		sha256_update(&s, (const uint8_t *)data + i, KVS_MIN(piece, n - i));
	sha256_final(&s, d);
	sha256_hex(d, out);
}

/* The FIPS 180-2 examples and the empty message, whole and in pieces of 3. */
static void test_fips(void)
{
	static const struct {
		const char *msg, *hex;
	} v[] = {
		{ "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
		{ "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
		{ "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
		  "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1" },
	};
	char h[65];
	for (size_t i = 0; i < KVS_ARRAY_LEN(v); i++) {
		size_t n = strlen(v[i].msg);
		hex_of(v[i].msg, n, n ? n : 1, h);
		T_EQ_STR(h, v[i].hex);
		hex_of(v[i].msg, n, 3, h);
		T_EQ_STR(h, v[i].hex);
	}
	T_EQ_INT(strlen(v[2].msg) * 8, 448);
	/* one million 'a', whole and in uneven pieces */
	char *a = xmalloc(1000000);
	memset(a, 'a', 1000000);
	hex_of(a, 1000000, 1000000, h);
	T_EQ_STR(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
	hex_of(a, 1000000, 777, h);
	T_EQ_STR(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
	free(a);
}

/* Lengths around the 64-byte block and its 9 bytes of padding. */
static void test_padding_edges(void)
{
	static const struct {
		size_t n;
		const char *hex;
	} v[] = {
		{ 55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318" },
		{ 56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a" },
		{ 63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34" },
		{ 64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb" },
		{ 65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0" },
		{ 119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb" },
		{ 120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c" },
	};
	char a[128], h[65];
	memset(a, 'a', sizeof a);
	for (size_t i = 0; i < KVS_ARRAY_LEN(v); i++) {
		hex_of(a, v[i].n, v[i].n, h);
		T_EQ_STR(h, v[i].hex);
		hex_of(a, v[i].n, 1, h);
		T_EQ_STR(h, v[i].hex);
	}
}

/* Any split of a message gives its digest. */
static void test_pieces(void)
{
	uint8_t msg[300];
	char whole[65], h[65];
	for (size_t i = 0; i < sizeof msg; i++)
		msg[i] = (uint8_t)(i * 7 + 1);
	hex_of(msg, sizeof msg, sizeof msg, whole);
	for (size_t piece = 1; piece <= 130; piece++) {
		hex_of(msg, sizeof msg, piece, h);
		T_CHECK(strcmp(h, whole) == 0, "pieces of %zu: %s, whole: %s", piece, h, whole);
	}
}

/* file_sha256 hashes a file's bytes; a missing file is an error naming it. */
static void test_file(void)
{
	char path[256], out[65];
	struct err e;
	snprintf(path, sizeof path, "%s/kvs-sha256-XXXXXX",
	         getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	int fd = mkstemp(path);
	T_CHECK(fd >= 0, "mkstemp %s", path);
	if (fd < 0)
		return;
	T_EQ_INT(write(fd, "abc", 3), 3);
	close(fd);
	T_EQ_INT(file_sha256(path, out, &e), KVS_OK);
	T_EQ_STR(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	unlink(path);
	T_CHECK(file_sha256(path, out, &e) != KVS_OK, "missing file accepted");
	T_CHECK(strstr(e.msg, path) != NULL, "message \"%s\" does not name %s", e.msg, path);
}

int main(void)
{
	test_fips();
	test_padding_edges();
	test_pieces();
	test_file();
	return t_done("test-sha256");
}
