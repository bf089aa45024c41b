/*
 * fuzz_ingress - libFuzzer target for the ingress's pure parsers: the command
 * line reader and splitter, MAIL/RCPT paths and parameters, xtext and
 * utf-8-addr-xtext, the DATA and BDAT readers and the header scanner.
 *
 * The first input byte picks the mode; the rest is the input. Besides the
 * sanitizers, each mode checks what the parsers promise (an accepted
 * recipient has a domain the router can shard on, no reply echoes client
 * bytes, a reader gives the same message however its input is split, ...)
 * and aborts when a promise is broken. Built and run by bench/fuzz/run; not
 * part of the CMake build.
 */
/* System */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* common/ */
#include "hk_domain.h"

/* This role */
#include "ingress_bdat.h"
#include "ingress_headers.h"
#include "ingress_param.h"
#include "ingress_parse.h"

#define CHECK(cond) do {                                                        \
		if (!(cond)) {                                                  \
			fprintf(stderr, "%s:%d: broken promise: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                \
		}                                                               \
	} while (0)

/* A reply we built: "ddd d.d.d text", printable ASCII, bounded. */
static void
check_reply(const char *err)
{
	size_t n = strnlen(err, INGRESS_REPLY_MAX);

	CHECK(n > 10 && n < INGRESS_REPLY_MAX);
	CHECK(err[0] >= '4' && err[0] <= '5' && err[3] == ' ' && err[4] == err[0] && err[5] == '.');
	for (size_t i = 0; i < n; i++)
		CHECK(err[i] >= 32 && err[i] <= 126);
}

static bool
all_utf8(const char *p, size_t n)
{
	for (size_t i = 0; i < n;) {
		size_t k = ingress_utf8_char(p + i, n - i);
		if (k == 0)
			return false;
		i += k;
	}
	return true;
}

/* --- paths ---------------------------------------------------------------- */

/* No control characters (and with ascii, nothing above '~'). */
static bool
no_ctl(const char *s, bool ascii)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c < 32 || c == 127 || (ascii && c > 126))
			return false;
	}
	return true;
}

static void
one_path(const char *args, enum ingress_path_kind kind, unsigned flags)
{
	struct ingress_path p;
	char err[INGRESS_REPLY_MAX], dom[HK_DOMAIN_MAX];

	if (ingress_parse_path2(args, kind, flags, &p, err) != 0) {
		check_reply(err);
		return;
	}
	size_t alen = strnlen(p.addr, sizeof(p.addr));
	CHECK(alen <= INGRESS_ADDR_MAX);
	CHECK(p.n_params <= INGRESS_PARAMS_MAX);
	for (size_t i = 0; i < p.n_params; i++)
		CHECK(p.params[i].text >= args && p.params[i].text + p.params[i].len <= args + strlen(args));
	if (kind == INGRESS_PATH_RCPT)
		CHECK(alen > 0);
	if (alen == 0)
		return;
	const char *at = strrchr(p.addr, '@');
	CHECK(at != NULL && at > p.addr);
	/* The router shards on the domain: it must have one. */
	if (!p.literal)
		CHECK(hk_domain_of(p.addr, dom) == 0);
	CHECK(p.literal == ((flags & INGRESS_PATH_LITERAL_OK) && at[1] == '['));
	/* No UTF-8 outside SMTPUTF8, and none ill-formed inside. */
	CHECK(all_utf8(p.addr, alen));
	if (!(flags & INGRESS_PATH_UTF8_OK) && !p.smtputf8) {
		for (size_t i = 0; i < alen; i++)
			CHECK((unsigned char)p.addr[i] < 0x80);
	}
	/* No routing characters in a recipient's local part, quoted or not. */
	if (kind == INGRESS_PATH_RCPT) {
		size_t llen = (size_t)(at - p.addr);
		CHECK(memchr(p.addr, '%', llen) == NULL && memchr(p.addr, '!', llen) == NULL);
	}
	/* Decoded values: no controls, RFC 3461 ones ASCII, the rest UTF-8. */
	if (p.orcpt_type != INGRESS_ORCPT_NONE)
		CHECK(all_utf8(p.orcpt, strlen(p.orcpt)) && no_ctl(p.orcpt, p.orcpt_type == INGRESS_ORCPT_RFC822));
	if (p.has_envid)
		CHECK(no_ctl(p.envid, true));
	if (p.has_auth)
		CHECK(all_utf8(p.auth, strlen(p.auth)) && no_ctl(p.auth, false));
}

static void
all_paths(const char *args)
{
	for (unsigned flags = 0; flags < 4; flags++) {
		one_path(args, INGRESS_PATH_MAIL, flags);
		one_path(args, INGRESS_PATH_RCPT, flags);
	}
}

static char *
cstr(const uint8_t *data, size_t size, const char *prefix)
{
	size_t pl = strlen(prefix);
	char *s = malloc(pl + size + 1);

	memcpy(s, prefix, pl);
	memcpy(s + pl, data, size);
	s[pl + size] = '\0';
	return s;
}

static void
fuzz_path(const uint8_t *data, size_t size, const char *prefix)
{
	char *s = cstr(data, size, prefix);

	all_paths(s);
	free(s);
}

/* --- command lines -------------------------------------------------------- */

static void
one_command(const char *line, size_t len)
{
	char buf[INGRESS_LINE_MAX + 1], err[INGRESS_REPLY_MAX];
	struct ingress_cmdline cl;
	uint64_t size;
	bool last;

	CHECK(len < INGRESS_LINE_MAX);
	memcpy(buf, line, len);
	buf[len] = '\0';
	if (ingress_cmd_split(buf, len, &cl, err) != 0) {
		check_reply(err);
		return;
	}
	CHECK(cl.args >= buf && cl.args <= buf + len);
	if (!strcmp(cl.verb, "MAIL") || !strcmp(cl.verb, "RCPT")) {
		all_paths(cl.args);
	} else if (!strcmp(cl.verb, "BDAT")) {
		if (ingress_parse_bdat(cl.args, &size, &last, err) == 0)
			CHECK(size <= (uint64_t)INGRESS_BDAT_SIZE_MAX);
		else
			check_reply(err);
	}
}

/* Feed the input to the line reader in reads of `step` bytes, as the session does. */
static void
fuzz_lines(const uint8_t *data, size_t size)
{
	struct ingress_linereader r = { 0 };
	size_t step, have = 0, off = 0;
	char *buf;

	if (size < 1)
		return;
	step = (size_t)data[0] * 7 + 1;
	data++;
	size--;
	buf = malloc(size + 1);
	while (off < size || have > 0) {
		size_t n = size - off < step ? size - off : step;
		memcpy(buf + have, data + off, n);
		have += n;
		off += n;
		for (;;) {
			const char *line;
			size_t used, len;
			enum ingress_line_result res = ingress_line_next(&r, buf, have, &used, &line, &len);
			CHECK(used <= have);
			if (res == INGRESS_LINE_OK) {
				CHECK(line >= buf && line + len <= buf + have);
				one_command(line, len);
			}
			memmove(buf, buf + used, have - used);
			have -= used;
			if (res == INGRESS_LINE_MORE)
				break;
		}
		if (off == size)
			break;
	}
	CHECK(have < INGRESS_LINE_MAX); /* an unfinished line is never kept longer */
	free(buf);
}

/* --- xtext ---------------------------------------------------------------- */

static void
fuzz_xtext(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	char *out = malloc(size + 1);
	size_t n;

	if (ingress_xtext_decode(in, size, out, size + 1, &n) == 0) {
		CHECK(n <= size && out[n] == '\0');
		CHECK(memchr(in, '=', size) == NULL);
	}
	for (int raw = 0; raw < 2; raw++) {
		if (ingress_unitext_decode(in, size, raw, out, size + 1, &n) == 0) {
			CHECK(n <= size && out[n] == '\0');
			CHECK(strlen(out) == n); /* no NUL inside */
			CHECK(all_utf8(out, n));
		}
	}
	free(out);
}

/* --- DATA ----------------------------------------------------------------- */

static void
data_read(const char *in, size_t len, size_t cut, size_t limit, struct ingress_buf *out,
    struct ingress_data *d, size_t *consumed)
{
	ingress_data_init(d, out, limit);
	*consumed = ingress_data_feed(d, in, cut);
	if (*consumed == cut)
		*consumed += ingress_data_feed(d, in + cut, len - cut);
}

static void
fuzz_data(const uint8_t *data, size_t size)
{
	struct ingress_buf a = { 0 }, b = { 0 };
	struct ingress_data da, db;
	size_t ca, cb, cut, limit;
	char err[INGRESS_REPLY_MAX];

	if (size < 2)
		return;
	limit = (size_t)data[0] * 16;
	cut = data[1];
	data += 2;
	size -= 2;
	if (cut > size)
		cut = size;
	data_read((const char *)data, size, size, limit, &a, &da, &ca);
	data_read((const char *)data, size, cut, limit, &b, &db, &cb);
	/* Split or not, the same message. */
	CHECK(ca == cb && ingress_data_done(&da) == ingress_data_done(&db));
	CHECK(da.size == db.size && da.too_big == db.too_big && da.nul == db.nul &&
	    da.line_too_long == db.line_too_long && da.bare_lf == db.bare_lf);
	/* What was kept of a refused message is only bounded, not specified. */
	if (!ingress_data_failed(&da, err))
		CHECK(a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0));
	CHECK(ca == size || ingress_data_done(&da));
	CHECK(a.len <= limit && a.len <= da.size && b.len <= limit);
	for (size_t i = 0; i < a.len; i++)
		CHECK(a.data[i] != '\n' || (i > 0 && a.data[i - 1] == '\r'));
	if (ingress_data_failed(&da, err))
		check_reply(err);
	else
		CHECK(a.len == da.size);
	ingress_buf_free(&a);
	ingress_buf_free(&b);
}

/* --- BDAT ----------------------------------------------------------------- */

/* Read in[0..len) as chunks of the sizes in sizes[] (the rest as a last one),
 * each fed in pieces of at most step bytes. */
static void
bdat_read(const char *in, size_t len, const uint8_t *sizes, size_t n_sizes, size_t step,
    size_t limit, bool binary, struct ingress_buf *out, struct ingress_bdat *b)
{
	size_t off = 0;

	ingress_bdat_init(b, out, limit, binary);
	for (size_t i = 0; i <= n_sizes && off < len; i++) {
		size_t chunk = i < n_sizes ? sizes[i] : len - off;
		if (chunk > len - off)
			chunk = len - off;
		ingress_bdat_chunk(b, chunk);
		while (!ingress_bdat_chunk_done(b)) {
			size_t want = len - off < step ? len - off : step;
			uint64_t rem = b->remaining;
			size_t used = ingress_bdat_feed(b, in + off, want);
			CHECK(used > 0 && used == (want < rem ? want : rem));
			off += used;
		}
	}
	CHECK(off == len);
}

static void
fuzz_bdat(const uint8_t *data, size_t size)
{
	struct ingress_buf a = { 0 }, b = { 0 };
	struct ingress_bdat ba, bb;
	char err[INGRESS_REPLY_MAX];
	const uint8_t *nl;
	size_t n_sizes, step, limit;
	bool binary;

	if (size < 3)
		return;
	/* The first line is a BDAT command's arguments. */
	nl = memchr(data, '\n', size);
	if (nl != NULL) {
		char *args = cstr(data, (size_t)(nl - data), "");
		uint64_t n;
		bool last;
		if (ingress_parse_bdat(args, &n, &last, err) == 0)
			CHECK(n <= (uint64_t)INGRESS_BDAT_SIZE_MAX);
		else
			check_reply(err);
		free(args);
	}
	binary = data[0] & 1;
	n_sizes = (data[0] >> 1) & 7;
	step = (size_t)data[1] + 1;
	limit = (size_t)data[2] * 16;
	data += 3;
	size -= 3;
	if (n_sizes > size)
		n_sizes = size;
	const uint8_t *sizes = data;
	data += n_sizes;
	size -= n_sizes;
	bdat_read((const char *)data, size, NULL, 0, size ? size : 1, limit, binary, &a, &ba);
	bdat_read((const char *)data, size, sizes, n_sizes, step, limit, binary, &b, &bb);
	/* However the chunks and reads fall, the same message. */
	CHECK(ba.size == bb.size && ba.too_big == bb.too_big && ba.nul == bb.nul &&
	    ba.line_too_long == bb.line_too_long && ba.bare_lf == bb.bare_lf);
	if (!ingress_bdat_failed(&ba, err))
		CHECK(a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0));
	CHECK(a.len <= limit && a.len <= ba.size && b.len <= limit);
	if (binary) {
		CHECK(ba.size == size);
		CHECK(a.len == 0 || memcmp(a.data, data, a.len) == 0); /* a prefix, at least */
	} else {
		for (size_t i = 0; i < a.len; i++)
			CHECK(a.data[i] != '\n' || (i > 0 && a.data[i - 1] == '\r'));
	}
	if (ingress_bdat_failed(&ba, err))
		check_reply(err);
	else
		CHECK(a.len == ba.size);
	ingress_buf_free(&a);
	ingress_buf_free(&b);
}

/* --- headers -------------------------------------------------------------- */

static void
fuzz_headers(const uint8_t *data, size_t size)
{
	struct ingress_headers h;
	char canon[HK_DOMAIN_MAX];
	/* A copy of exactly size bytes, so ASan sees any read past the end. */
	char *copy = malloc(size ? size : 1);

	memcpy(copy, data, size);
	ingress_headers_scan(copy, size, &h);
	CHECK(h.len <= size && h.max_line_len <= h.len);
	CHECK(strnlen(h.from_domain, sizeof(h.from_domain)) < sizeof(h.from_domain));
	if (h.from_domain[0] != '\0') {
		CHECK(h.from_mailboxes > 0 && h.from_fields > 0);
		CHECK(hk_domain_canon(h.from_domain, canon) == 0 && strcmp(canon, h.from_domain) == 0);
	}
	if (h.from_fields == 0)
		CHECK(h.from_mailboxes == 0);
	free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	switch (data[0] % 8) {
	case 0:
		fuzz_lines(data + 1, size - 1);
		break;
	case 1:
		fuzz_path(data + 1, size - 1, "");
		break;
	case 2:
		fuzz_path(data + 1, size - 1, "FROM:<a@example.com> ");
		break;
	case 3:
		fuzz_path(data + 1, size - 1, "TO:<b@example.com> ");
		break;
	case 4:
		fuzz_xtext(data + 1, size - 1);
		break;
	case 5:
		fuzz_data(data + 1, size - 1);
		break;
	case 6:
		fuzz_bdat(data + 1, size - 1);
		break;
	case 7:
		fuzz_headers(data + 1, size - 1);
		break;
	}
	return 0;
}
