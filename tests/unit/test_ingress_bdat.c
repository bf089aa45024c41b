/*
 * test_ingress_bdat - the BDAT command line and the chunk reader.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ingress_bdat.h"
#include "ingress_parse.h"

static void
bdat_ok(const char *args, uint64_t size, bool last)
{
	char err[INGRESS_REPLY_MAX] = "";
	uint64_t n;
	bool l;

	if (ingress_parse_bdat(args, &n, &l, err) != 0)
		fail_msg("'%s' rejected: %s", args, err);
	assert_true(n == size);
	assert_int_equal(l, last);
}

static void
bdat_bad(const char *args, const char *reply)
{
	char err[INGRESS_REPLY_MAX] = "";
	uint64_t n;
	bool l;

	if (ingress_parse_bdat(args, &n, &l, err) == 0)
		fail_msg("'%s' accepted", args);
	assert_string_equal(err, reply);
}

#define SYNTAX "501 5.5.4 Syntax: BDAT chunk-size [LAST]"

static void
test_bdat_command(void **state)
{
	(void)state;
	bdat_ok("0", 0, false);
	bdat_ok("0 LAST", 0, true);
	bdat_ok("1000 LAST", 1000, true);
	bdat_ok("86 last", 86, true);
	bdat_ok("86 \tLAST", 86, true);
	bdat_ok("007", 7, false);
	bdat_ok("9223372036854775807", INT64_MAX, false); /* 2^63 - 1 */
	bdat_ok("0000000000000000000000009223372036854775807 LAST", INT64_MAX, true);
	bdat_bad("9223372036854775808", "501 5.5.4 BDAT chunk size too large");
	bdat_bad("18446744073709551616", "501 5.5.4 BDAT chunk size too large");
	bdat_bad("99999999999999999999999999 LAST", "501 5.5.4 BDAT chunk size too large");
	bdat_bad("", SYNTAX);
	bdat_bad("LAST", SYNTAX);
	bdat_bad("x", SYNTAX);
	bdat_bad("-1", SYNTAX);
	bdat_bad("+1", SYNTAX);
	bdat_bad("10x", SYNTAX);
	bdat_bad("10 LASTX", SYNTAX);
	bdat_bad("10 LAST x", SYNTAX);
	bdat_bad("10 FIRST", SYNTAX);
	bdat_bad("10 20", SYNTAX);
	bdat_bad("1.5", SYNTAX);
}

/* --- the reader ----------------------------------------------------------- */

struct read {
	struct ingress_buf out;
	struct ingress_bdat b;
};

/* Read CHUNKS (n of them) as BDATs, each fed in pieces of at most STEP bytes. */
static void
read_chunks(struct read *r, const char *const *chunks, size_t n, size_t step, size_t limit, bool binary)
{
	memset(r, 0, sizeof(*r));
	ingress_bdat_init(&r->b, &r->out, limit, binary);
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(chunks[i]), off = 0;
		ingress_bdat_chunk(&r->b, len);
		while (!ingress_bdat_chunk_done(&r->b)) {
			size_t want = step && len - off > step ? step : len - off;
			size_t used = ingress_bdat_feed(&r->b, chunks[i] + off, want);
			assert_int_equal(used, want);
			off += used;
		}
		assert_int_equal(off, len);
	}
}

/* Every piece size gives the same stored message. */
static void
expect_stored(const char *const *chunks, size_t n, bool binary, const char *want)
{
	size_t total = 0;

	for (size_t i = 0; i < n; i++)
		total += strlen(chunks[i]);
	for (size_t step = 0; step <= total; step++) {
		struct read r;
		read_chunks(&r, chunks, n, step, 1 << 20, binary);
		if (r.out.len != strlen(want) || memcmp(r.out.data, want, r.out.len) != 0)
			fail_msg("step %zu: stored '%.*s'", step, (int)r.out.len, r.out.data);
		assert_true(r.b.size == strlen(want));
		ingress_buf_free(&r.out);
	}
}

static void
test_bdat_raw(void **state)
{
	const char *c1[] = { "Subject: x\r\n\r\n", "..dots stay\r\n.\r\n", "end" };
	const char *c2[] = { "a\r", "\nb\r\n" }; /* a CRLF split between chunks */
	const char *c3[] = { "a\rb\r\r\n" };      /* bare CRs are content */
	struct read r;

	(void)state;
	/* No dot-unstuffing, no end marker, no final CRLF added. */
	expect_stored(c1, 3, false, "Subject: x\r\n\r\n..dots stay\r\n.\r\nend");
	expect_stored(c2, 2, false, "a\r\nb\r\n");
	expect_stored(c3, 1, false, "a\rb\r\r\n");
	read_chunks(&r, c2, 2, 0, 100, false);
	assert_false(r.b.bare_lf);
	ingress_buf_free(&r.out);
}

static void
test_bdat_bare_lf(void **state)
{
	const char *c1[] = { "a\nb\r\n", "\nc\n" };
	const char *c2[] = { "\n\n" };
	struct read r;

	(void)state;
	/* Text bodies: a bare LF is stored as CRLF, as DATA does. */
	expect_stored(c1, 2, false, "a\r\nb\r\n\r\nc\r\n");
	expect_stored(c2, 1, false, "\r\n\r\n");
	read_chunks(&r, c1, 2, 1, 100, false);
	assert_true(r.b.bare_lf);
	assert_int_equal(r.b.size, 11);
	ingress_buf_free(&r.out);
	/* BINARYMIME: octets as sent. */
	expect_stored(c1, 2, true, "a\nb\r\n\nc\n");
	read_chunks(&r, c1, 2, 3, 100, true);
	assert_true(r.b.bare_lf);
	ingress_buf_free(&r.out);
}

static void
test_bdat_stops_at_chunk_end(void **state)
{
	struct ingress_buf out = { 0 };
	struct ingress_bdat b;
	const char *in = "hello\r\nQUIT\r\n";

	(void)state;
	ingress_bdat_init(&b, &out, 100, false);
	assert_true(ingress_bdat_chunk_done(&b)); /* nothing announced yet */
	assert_int_equal(ingress_bdat_feed(&b, in, strlen(in)), 0);
	ingress_bdat_chunk(&b, 7);
	assert_int_equal(ingress_bdat_feed(&b, in, 3), 3);
	assert_int_equal(b.remaining, 4);
	assert_int_equal(ingress_bdat_feed(&b, in + 3, strlen(in) - 3), 4); /* QUIT is a command */
	assert_true(ingress_bdat_chunk_done(&b));
	assert_int_equal(out.len, 7);
	assert_memory_equal(out.data, "hello\r\n", 7);
	ingress_buf_free(&out);
}

static void
test_bdat_limits(void **state)
{
	char line[1100], err[INGRESS_REPLY_MAX];
	const char *chunks[2];
	struct read r;

	(void)state;
	/* Size: counted to the end, stored only up to the limit. */
	chunks[0] = "0123456789\r\n";
	chunks[1] = "0123456789\r\n";
	read_chunks(&r, chunks, 2, 5, 12, false);
	assert_true(r.b.too_big);
	assert_int_equal(r.b.size, 24);
	assert_true(r.out.len <= 12);
	assert_true(ingress_bdat_failed(&r.b, err));
	assert_string_equal(err, "552 5.3.4 Message size exceeds fixed limit");
	ingress_buf_free(&r.out);
	read_chunks(&r, chunks, 2, 0, 24, false);
	assert_false(ingress_bdat_failed(&r.b, err));
	ingress_buf_free(&r.out);
	/* A bare LF that becomes CRLF counts as two bytes. */
	chunks[0] = "0123456789\n";
	read_chunks(&r, chunks, 1, 0, 11, false);
	assert_true(r.b.too_big);
	ingress_buf_free(&r.out);

	/* Line length: 998 then CRLF is fine, split or not. */
	memset(line, 'x', INGRESS_TEXT_LINE_MAX);
	strcpy(line + INGRESS_TEXT_LINE_MAX, "\r\n");
	chunks[0] = line;
	read_chunks(&r, chunks, 1, 7, 1 << 20, false);
	assert_false(ingress_bdat_failed(&r.b, err));
	ingress_buf_free(&r.out);
	/* 998 then a bare CR and more: the CR is a character of the line. */
	strcpy(line + INGRESS_TEXT_LINE_MAX, "\ry\r\n");
	read_chunks(&r, chunks, 1, 0, 1 << 20, false);
	assert_true(r.b.line_too_long);
	assert_true(ingress_bdat_failed(&r.b, err));
	assert_string_equal(err, "550 5.6.0 Message rejected: line too long (more than 998 characters)");
	ingress_buf_free(&r.out);
	/* 999 with no line end at all (the last chunk need not end in CRLF). */
	memset(line, 'x', INGRESS_TEXT_LINE_MAX + 1);
	line[INGRESS_TEXT_LINE_MAX + 1] = '\0';
	read_chunks(&r, chunks, 1, 100, 1 << 20, false);
	assert_true(r.b.line_too_long);
	ingress_buf_free(&r.out);
	/* ... which in a binary body is no fault. */
	read_chunks(&r, chunks, 1, 100, 1 << 20, true);
	assert_false(ingress_bdat_failed(&r.b, err));
	assert_int_equal(r.out.len, INGRESS_TEXT_LINE_MAX + 1);
	ingress_buf_free(&r.out);
}

static void
test_bdat_nul(void **state)
{
	struct ingress_buf out = { 0 };
	struct ingress_bdat b;
	char err[INGRESS_REPLY_MAX];

	(void)state;
	ingress_bdat_init(&b, &out, 100, false);
	ingress_bdat_chunk(&b, 5);
	assert_int_equal(ingress_bdat_feed(&b, "a\0b\r\n", 5), 5);
	assert_true(b.nul);
	assert_true(ingress_bdat_failed(&b, err));
	assert_string_equal(err, "554 5.6.0 Message rejected: NUL character in data");
	ingress_buf_free(&out);
	/* Binary: NUL is data and is kept. */
	ingress_bdat_init(&b, &out, 100, true);
	ingress_bdat_chunk(&b, 5);
	assert_int_equal(ingress_bdat_feed(&b, "a\0b\r\n", 5), 5);
	assert_false(ingress_bdat_failed(&b, err));
	assert_int_equal(out.len, 5);
	assert_memory_equal(out.data, "a\0b\r\n", 5);
	ingress_buf_free(&out);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bdat_command),
		cmocka_unit_test(test_bdat_raw),
		cmocka_unit_test(test_bdat_bare_lf),
		cmocka_unit_test(test_bdat_stops_at_chunk_end),
		cmocka_unit_test(test_bdat_limits),
		cmocka_unit_test(test_bdat_nul),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
