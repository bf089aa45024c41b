/*
 * test_ingress_parse - the ESMTP server's pure parsers: command lines,
 * MAIL/RCPT paths and parameters, and the DATA reader.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ingress_parse.h"

/* --- command lines ------------------------------------------------------- */

static void
test_line_simple(void **state)
{
	struct ingress_linereader r = { 0 };
	const char *in = "EHLO x\r\nNOOP\nNOO", *line;
	size_t used, len;

	(void)state;
	assert_int_equal(ingress_line_next(&r, in, strlen(in), &used, &line, &len), INGRESS_LINE_OK);
	assert_int_equal(used, 8);
	assert_int_equal(len, 6);
	assert_memory_equal(line, "EHLO x", 6);
	in += used;
	assert_int_equal(ingress_line_next(&r, in, strlen(in), &used, &line, &len), INGRESS_LINE_OK);
	assert_int_equal(used, 5); /* bare LF accepted as a terminator */
	assert_int_equal(len, 4);
	assert_memory_equal(line, "NOOP", 4);
	in += used;
	assert_int_equal(ingress_line_next(&r, in, strlen(in), &used, &line, &len), INGRESS_LINE_MORE);
	assert_int_equal(used, 0); /* partial command stays buffered */
}

/* A line of exactly INGRESS_LINE_MAX bytes with its CRLF is fine; one more is not. */
static void
test_line_limit(void **state)
{
	struct ingress_linereader r = { 0 };
	char buf[INGRESS_LINE_MAX + 8];
	const char *line;
	size_t used, len;

	(void)state;
	memset(buf, 'A', sizeof(buf));
	memcpy(buf + INGRESS_LINE_MAX - 2, "\r\n", 2);
	assert_int_equal(ingress_line_next(&r, buf, INGRESS_LINE_MAX, &used, &line, &len),
	    INGRESS_LINE_OK);
	assert_int_equal(len, INGRESS_LINE_MAX - 2);
	assert_int_equal(used, INGRESS_LINE_MAX);

	memset(buf, 'A', sizeof(buf));
	memcpy(buf + INGRESS_LINE_MAX - 1, "\r\nNOOP\r\n", 8);
	assert_int_equal(ingress_line_next(&r, buf, INGRESS_LINE_MAX + 7, &used, &line, &len),
	    INGRESS_LINE_TOO_LONG);
	assert_int_equal(used, INGRESS_LINE_MAX + 1); /* through the LF */
	assert_false(r.discarding);
	assert_int_equal(ingress_line_next(&r, buf + used, 6, &used, &line, &len), INGRESS_LINE_OK);
	assert_memory_equal(line, "NOOP", 4);

	/* Unterminated: 511 bytes may still become a line, 512 may not. */
	memset(buf, 'A', sizeof(buf));
	assert_int_equal(ingress_line_next(&r, buf, INGRESS_LINE_MAX - 1, &used, &line, &len),
	    INGRESS_LINE_MORE);
	assert_int_equal(used, 0);
	assert_int_equal(ingress_line_next(&r, buf, INGRESS_LINE_MAX, &used, &line, &len),
	    INGRESS_LINE_TOO_LONG);
	assert_int_equal(used, INGRESS_LINE_MAX);
	assert_true(r.discarding);
}

/* A 1 MB line arrives in chunks: reported once, never kept, then the next command. */
static void
test_line_huge_discarded(void **state)
{
	struct ingress_linereader r = { 0 };
	char chunk[4096];
	const char *line;
	size_t used, len, total = 0;
	int too_long = 0;

	(void)state;
	memset(chunk, 'x', sizeof(chunk));
	while (total < 1024 * 1024) {
		enum ingress_line_result res =
		    ingress_line_next(&r, chunk, sizeof(chunk), &used, &line, &len);
		assert_true(res == INGRESS_LINE_TOO_LONG || res == INGRESS_LINE_MORE);
		too_long += res == INGRESS_LINE_TOO_LONG;
		assert_int_equal(used, sizeof(chunk)); /* nothing left for the caller to keep */
		total += sizeof(chunk);
	}
	assert_int_equal(too_long, 1);
	const char *tail = "xxxx\r\nQUIT\r\n";
	assert_int_equal(ingress_line_next(&r, tail, strlen(tail), &used, &line, &len), INGRESS_LINE_OK);
	assert_int_equal(len, 4);
	assert_memory_equal(line, "QUIT", 4);
	assert_int_equal(used, strlen(tail));
}

static void
test_cmd_split(void **state)
{
	struct ingress_cmdline cl;
	char err[INGRESS_REPLY_MAX];
	char l1[] = "mail FROM:<a@b.example>", l2[] = "QUIT  \t", l3[] = "NO\0OP",
	     l4[] = "", l5[] = "M4IL FROM:<>", l6[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
	     l7[] = "RCPT\tTO:<x@y.example> ";

	(void)state;
	assert_int_equal(ingress_cmd_split(l1, strlen(l1), &cl, err), 0);
	assert_string_equal(cl.verb, "MAIL");
	assert_string_equal(cl.args, "FROM:<a@b.example>");
	assert_int_equal(ingress_cmd_split(l2, strlen(l2), &cl, err), 0);
	assert_string_equal(cl.verb, "QUIT");
	assert_string_equal(cl.args, "");
	assert_int_equal(ingress_cmd_split(l3, 5, &cl, err), -1);
	assert_string_equal(err, "500 5.5.2 NUL character not allowed");
	assert_int_equal(ingress_cmd_split(l4, 0, &cl, err), 0);
	assert_string_equal(cl.verb, "");
	assert_int_equal(ingress_cmd_split(l5, strlen(l5), &cl, err), 0);
	assert_string_equal(cl.verb, "");
	assert_int_equal(ingress_cmd_split(l6, strlen(l6), &cl, err), 0);
	assert_string_equal(cl.verb, "");
	assert_int_equal(ingress_cmd_split(l7, strlen(l7), &cl, err), 0);
	assert_string_equal(cl.verb, "RCPT");
	assert_string_equal(cl.args, "TO:<x@y.example>");
}

/* --- paths ---------------------------------------------------------------- */

static void
path_ok(const char *args, enum ingress_path_kind kind, const char *addr)
{
	struct ingress_path p;
	char err[INGRESS_REPLY_MAX] = "";

	if (ingress_parse_path(args, kind, &p, err) != 0)
		fail_msg("'%s' rejected: %s", args, err);
	assert_string_equal(p.addr, addr);
}

static void
path_bad(const char *args, enum ingress_path_kind kind, const char *reply_prefix)
{
	struct ingress_path p;
	char err[INGRESS_REPLY_MAX] = "";

	if (ingress_parse_path(args, kind, &p, err) == 0)
		fail_msg("'%s' accepted as '%s'", args, p.addr);
	if (strncmp(err, reply_prefix, strlen(reply_prefix)) != 0)
		fail_msg("'%s': reply '%s', expected '%s...'", args, err, reply_prefix);
}

static void
test_path_good(void **state)
{
	(void)state;
	path_ok("FROM:<a@example.com>", INGRESS_PATH_MAIL, "a@example.com");
	path_ok("from: <A.B@Example.COM.>", INGRESS_PATH_MAIL, "A.B@example.com");
	path_ok("FROM:<>", INGRESS_PATH_MAIL, "");
	path_ok("TO:<Bob@Example.COM>", INGRESS_PATH_RCPT, "Bob@Example.COM"); /* kept as written */
	path_ok("TO:<user+tag@sub.example.org>", INGRESS_PATH_RCPT, "user+tag@sub.example.org");
	path_ok("TO:<\"john doe\"@example.com>", INGRESS_PATH_RCPT, "\"john doe\"@example.com");
	path_ok("TO:<\"a\\\"b\"@example.com>", INGRESS_PATH_RCPT, "\"a\\\"b\"@example.com");
	/* Old Japanese carrier addresses: dots anywhere in the local part. */
	path_ok("TO:<a..b.@docomo.ne.jp>", INGRESS_PATH_RCPT, "a..b.@docomo.ne.jp");
	/* IDN domains are carried as A-labels. */
	path_ok("TO:<a@b\xc3\xbc" "cher.example>", INGRESS_PATH_RCPT, "a@xn--bcher-kva.example");
	/* '%' is only a relay trick in a recipient. */
	path_ok("FROM:<a%b@example.com>", INGRESS_PATH_MAIL, "a%b@example.com");
}

static void
test_path_bad(void **state)
{
	char longaddr[400];

	(void)state;
	path_bad("FROM:a@example.com", INGRESS_PATH_MAIL, "501 5.1.7 Bad sender address syntax: address must be enclosed");
	path_bad("TO:a@example.com", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: address must be enclosed");
	path_bad("TO:<>", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: empty address");
	path_bad("TO:<@relay.example:b@example.com>", INGRESS_PATH_RCPT, "553 5.7.1 Recipient address rejected: source route not allowed");
	path_bad("FROM:<@a,@b:c@example.com>", INGRESS_PATH_MAIL, "553 5.7.1 Sender address rejected: source route not allowed");
	path_bad("TO:<a%b@example.com>", INGRESS_PATH_RCPT, "553 5.7.1 Recipient address rejected: %-hack (user%host@relay) not allowed");
	path_bad("TO:<host!user@example.com>", INGRESS_PATH_RCPT, "553 5.7.1 Recipient address rejected: bang path (host!user) not allowed");
	path_bad("TO:<\"a%b\"@example.com>", INGRESS_PATH_RCPT, "553 5.7.1 Recipient address rejected: quoted local part with '%' not allowed");
	path_bad("TO:<\"a@b\"@example.com>", INGRESS_PATH_RCPT, "553 5.7.1 Recipient address rejected: quoted local part with '@' not allowed");
	path_bad("TO:<\"a@b.example.com>", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: unterminated");
	path_bad("TO:<user>", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: no domain");
	path_bad("TO:<user@>", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: no domain");
	path_bad("FROM:<user>", INGRESS_PATH_MAIL, "501 5.1.7 Bad sender address syntax: no domain");
	path_bad("TO:<a@b@example.com>", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: more than one '@'");
	path_bad("TO:<a@-bad-.example>", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: invalid domain name");
	path_bad("TO:<a@b..example>", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: invalid domain name");
	path_bad("TO:<a@b_c.example>", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: invalid character in domain");
	path_bad("TO:<a@[192.0.2.1]>", INGRESS_PATH_RCPT, "553 5.7.1 Recipient address rejected: address literal as domain not allowed");
	path_bad("TO:<a@example.com", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: missing closing '>'");
	path_bad("TO:<a@example.com>x", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: unexpected text");
	path_bad("FROM:<>x", INGRESS_PATH_MAIL, "501 5.1.7 Bad sender address syntax: unexpected text");
	path_bad("TO:<a b@example.com>", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: invalid character in local part");
	path_bad("TO:<a(b)@example.com>", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: invalid character in local part");
	path_bad("TO:<\xc3\xa4@example.com>", INGRESS_PATH_RCPT, "553 5.6.7 Recipient address rejected: non-ASCII local part requires SMTPUTF8");
	path_bad("TO <a@example.com>", INGRESS_PATH_RCPT, "501 5.5.4 Syntax: RCPT TO:<address>");
	path_bad("<a@example.com>", INGRESS_PATH_MAIL, "501 5.5.4 Syntax: MAIL FROM:<address>");

	memset(longaddr, 0, sizeof(longaddr));
	strcpy(longaddr, "TO:<");
	memset(longaddr + 4, 'a', 250);
	strcat(longaddr, "@example.com>");
	path_bad(longaddr, INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: address too long");
}

static void
path2_ok(const char *args, enum ingress_path_kind kind, unsigned flags, const char *addr)
{
	struct ingress_path p;
	char err[INGRESS_REPLY_MAX] = "";

	if (ingress_parse_path2(args, kind, flags, &p, err) != 0)
		fail_msg("'%s' (flags %u) rejected: %s", args, flags, err);
	assert_string_equal(p.addr, addr);
}

static void
path2_bad(const char *args, enum ingress_path_kind kind, unsigned flags, const char *reply_prefix)
{
	struct ingress_path p;
	char err[INGRESS_REPLY_MAX] = "";

	if (ingress_parse_path2(args, kind, flags, &p, err) == 0)
		fail_msg("'%s' (flags %u) accepted as '%s'", args, flags, p.addr);
	if (strncmp(err, reply_prefix, strlen(reply_prefix)) != 0)
		fail_msg("'%s': reply '%s', expected '%s...'", args, err, reply_prefix);
}

#define UTF8 INGRESS_PATH_UTF8_OK
#define BAD_UTF8_RCPT "501 5.1.3 Bad recipient address syntax: invalid UTF-8 in local part"

static void
test_utf8_char(void **state)
{
	(void)state;
	assert_int_equal(ingress_utf8_char("a", 1), 1);
	assert_int_equal(ingress_utf8_char("\xc3\xa4", 2), 2);
	assert_int_equal(ingress_utf8_char("\xe7\x94\xb0", 3), 3);
	assert_int_equal(ingress_utf8_char("\xf0\x9f\x98\x80", 4), 4);
	assert_int_equal(ingress_utf8_char("\xf4\x8f\xbf\xbf", 4), 4);  /* U+10FFFF */
	assert_int_equal(ingress_utf8_char("\xee\x80\x80", 3), 3);      /* U+E000, after the surrogates */
	assert_int_equal(ingress_utf8_char("", 0), 0);
	assert_int_equal(ingress_utf8_char("\xc3\xa4", 1), 0);          /* truncated */
	assert_int_equal(ingress_utf8_char("\xe7\x94", 2), 0);
	assert_int_equal(ingress_utf8_char("\xc3" "a", 2), 0);          /* not a continuation */
	assert_int_equal(ingress_utf8_char("\x80", 1), 0);              /* lone continuation */
	assert_int_equal(ingress_utf8_char("\xc0\xaf", 2), 0);          /* overlong '/' */
	assert_int_equal(ingress_utf8_char("\xc1\xbf", 2), 0);
	assert_int_equal(ingress_utf8_char("\xe0\x80\xaf", 3), 0);      /* overlong, 3 bytes */
	assert_int_equal(ingress_utf8_char("\xf0\x80\x80\xaf", 4), 0);  /* overlong, 4 bytes */
	assert_int_equal(ingress_utf8_char("\xed\xa0\x80", 3), 0);      /* U+D800 */
	assert_int_equal(ingress_utf8_char("\xed\xbf\xbf", 3), 0);      /* U+DFFF */
	assert_int_equal(ingress_utf8_char("\xf4\x90\x80\x80", 4), 0);  /* U+110000 */
	assert_int_equal(ingress_utf8_char("\xf5\x80\x80\x80", 4), 0);
	assert_int_equal(ingress_utf8_char("\xff", 1), 0);
}

static void
test_path_utf8(void **state)
{
	struct ingress_path p;
	char err[INGRESS_REPLY_MAX];

	(void)state;
	/* Under SMTPUTF8 a local part may be UTF-8, dot-string or quoted. */
	path2_ok("TO:<\xc3\xa4@example.com>", INGRESS_PATH_RCPT, UTF8, "\xc3\xa4@example.com");
	path2_ok("TO:<\xe7\x94\xb0\xe4\xb8\xad.\xe5\xa4\xaa\xe9\x83\x8e@example.jp>", INGRESS_PATH_RCPT,
	    UTF8, "\xe7\x94\xb0\xe4\xb8\xad.\xe5\xa4\xaa\xe9\x83\x8e@example.jp");
	path2_ok("TO:<\"j\xc3\xb6rg m\"@example.com>", INGRESS_PATH_RCPT, UTF8, "\"j\xc3\xb6rg m\"@example.com");
	path2_ok("TO:<\xf0\x9f\x98\x80@b\xc3\xbc" "cher.example>", INGRESS_PATH_RCPT, UTF8,
	    "\xf0\x9f\x98\x80@xn--bcher-kva.example");
	assert_int_equal(ingress_parse_path2("TO:<\xc3\xa4@example.com>", INGRESS_PATH_RCPT, UTF8, &p, err), 0);
	assert_true(p.non_ascii);
	assert_int_equal(ingress_parse_path2("TO:<a@example.com>", INGRESS_PATH_RCPT, UTF8, &p, err), 0);
	assert_false(p.non_ascii);

	/* Without SMTPUTF8: 553 5.6.7, for a sender too. */
	path2_bad("TO:<\xc3\xa4@example.com>", INGRESS_PATH_RCPT, 0,
	    "553 5.6.7 Recipient address rejected: non-ASCII local part requires SMTPUTF8");
	path2_bad("TO:<\"\xc3\xa4\"@example.com>", INGRESS_PATH_RCPT, 0, "553 5.6.7 ");
	path2_bad("FROM:<\xc3\xa4@example.com>", INGRESS_PATH_MAIL, 0,
	    "553 5.6.7 Sender address rejected: non-ASCII local part requires SMTPUTF8");
	/* A MAIL's own SMTPUTF8 parameter is enough, with the old entry point too. */
	assert_int_equal(ingress_parse_path("FROM:<\xc3\xa4@example.com> SMTPUTF8", INGRESS_PATH_MAIL, &p, err), 0);
	assert_true(p.smtputf8);
	assert_true(p.non_ascii);
	assert_string_equal(p.addr, "\xc3\xa4@example.com");

	/* Ill-formed UTF-8 is a syntax error whatever the transaction. */
	const char *bad[] = {
		"TO:<\xc0\xaf@example.com>",          /* overlong */
		"TO:<a\xe0\x80\xaf@example.com>",     /* overlong, 3 bytes */
		"TO:<\xed\xa0\x80@example.com>",      /* surrogate U+D800 */
		"TO:<a\xc3@example.com>",             /* truncated before '@' */
		"TO:<a\xe7\x94>",                     /* truncated before '>' */
		"TO:<\xf4\x90\x80\x80@example.com>",  /* above U+10FFFF */
		"TO:<\x80@example.com>",              /* lone continuation */
		"TO:<\"a\xed\xbf\xbf\"@example.com>", /* surrogate, quoted */
		"TO:<\"a\xc3\"@example.com>",         /* truncated before the quote */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		path2_bad(bad[i], INGRESS_PATH_RCPT, UTF8, BAD_UTF8_RCPT);
		path2_bad(bad[i], INGRESS_PATH_RCPT, 0, BAD_UTF8_RCPT);
	}
	path2_bad("FROM:<\xc0\xaf@example.com> SMTPUTF8", INGRESS_PATH_MAIL, 0,
	    "501 5.1.7 Bad sender address syntax: invalid UTF-8 in local part");
	path2_bad("TO:<a@\xff.example>", INGRESS_PATH_RCPT, UTF8,
	    "501 5.1.3 Bad recipient address syntax: invalid UTF-8 in domain");
	path2_bad("TO:<a@b\xc3>", INGRESS_PATH_RCPT, UTF8,
	    "501 5.1.3 Bad recipient address syntax: invalid UTF-8 in domain");
}

static void
test_path_relay_tricks(void **state)
{
	(void)state;
	/* Named, 553 5.7.1, and before any question of a missing domain. */
	path_bad("TO:<a!b>", INGRESS_PATH_RCPT, "553 5.7.1 Recipient address rejected: bang path (host!user) not allowed");
	path_bad("TO:<a%b>", INGRESS_PATH_RCPT, "553 5.7.1 Recipient address rejected: %-hack");
	path_bad("TO:<user%other.example@relay.example>", INGRESS_PATH_RCPT, "553 5.7.1 Recipient address rejected: %-hack");
	path_bad("TO:<@a.example,@b.example:user@c.example>", INGRESS_PATH_RCPT,
	    "553 5.7.1 Recipient address rejected: source route not allowed");
	path_bad("TO:<\"a!b\"@example.com>", INGRESS_PATH_RCPT,
	    "553 5.7.1 Recipient address rejected: quoted local part with '!' not allowed");
	/* The checks see the unquoted text: an escaped '@' or '%' is still one. */
	path_bad("TO:<\"user\\@other.example\"@relay.example>", INGRESS_PATH_RCPT,
	    "553 5.7.1 Recipient address rejected: quoted local part with '@' not allowed");
	path_bad("TO:<\"a\\%b\"@example.com>", INGRESS_PATH_RCPT,
	    "553 5.7.1 Recipient address rejected: quoted local part with '%' not allowed");
	path_bad("FROM:<\"a@b\"@example.com>", INGRESS_PATH_MAIL,
	    "553 5.7.1 Sender address rejected: quoted local part with '@' not allowed");
	/* A sender is not forwarded to: '%' and '!' are plain characters there. */
	path_ok("FROM:<host!user@example.com>", INGRESS_PATH_MAIL, "host!user@example.com");
	path_ok("FROM:<\"a%b\"@example.com>", INGRESS_PATH_MAIL, "\"a%b\"@example.com");
	/* A lone '@' after '<' is an empty local part, not a route. */
	path_bad("TO:<@example.com>", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: empty local part");
	/* Escapes that hide nothing are fine. */
	path_ok("TO:<\"a\\ b\"@example.com>", INGRESS_PATH_RCPT, "\"a\\ b\"@example.com");
}

static void
test_path_literal(void **state)
{
	struct ingress_path p;
	char err[INGRESS_REPLY_MAX];

	(void)state;
	path_bad("TO:<a@[IPv6:2001:db8::1]>", INGRESS_PATH_RCPT,
	    "553 5.7.1 Recipient address rejected: address literal as domain not allowed");
	path_bad("FROM:<a@[192.0.2.1]>", INGRESS_PATH_MAIL,
	    "553 5.7.1 Sender address rejected: address literal as domain not allowed");
	/* Malformed literals are syntax errors, allowed or not. */
	path_bad("TO:<a@[192.0.2.256]>", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: invalid address literal");
	path_bad("TO:<a@[foo:bar]>", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: invalid address literal");
	path_bad("TO:<a@[]>", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: invalid address literal");
	path_bad("TO:<a@[192.0.2.1>", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: invalid address literal");
	path_bad("TO:<a@b[192.0.2.1]>", INGRESS_PATH_RCPT, "501 5.1.3 Bad recipient address syntax: invalid character in domain");

	assert_int_equal(ingress_parse_path2("TO:<a@[192.0.2.1]> NOTIFY=NEVER", INGRESS_PATH_RCPT,
	    INGRESS_PATH_LITERAL_OK, &p, err), 0);
	assert_string_equal(p.addr, "a@[192.0.2.1]");
	assert_true(p.literal);
	assert_int_equal(p.n_params, 1);
	path2_ok("TO:<a@[IPv6:2001:db8::1]>", INGRESS_PATH_RCPT, INGRESS_PATH_LITERAL_OK, "a@[IPv6:2001:db8::1]");
	path2_bad("TO:<a@[192.0.2.1]x>", INGRESS_PATH_RCPT, INGRESS_PATH_LITERAL_OK,
	    "501 5.1.3 Bad recipient address syntax: unexpected text after address literal");
	path2_bad("TO:<a@[192.0.2.1]", INGRESS_PATH_RCPT, INGRESS_PATH_LITERAL_OK,
	    "501 5.1.3 Bad recipient address syntax: missing closing '>'");
}

static void
test_params(void **state)
{
	struct ingress_path p;
	char err[INGRESS_REPLY_MAX];

	(void)state;
	assert_int_equal(ingress_parse_path("FROM:<a@example.com> SIZE=1000  body=8BITMIME",
	    INGRESS_PATH_MAIL, &p, err), 0);
	assert_int_equal(p.n_params, 2);
	assert_true(p.has_size);
	assert_int_equal(p.size, 1000);
	assert_int_equal(p.params[0].len, 9);
	assert_memory_equal(p.params[0].text, "SIZE=1000", 9);
	assert_int_equal(p.params[1].len, 13);
	assert_memory_equal(p.params[1].text, "body=8BITMIME", 13); /* verbatim */

	assert_int_equal(ingress_parse_path("FROM:<> RET=HDRS ENVID=QQ314159", INGRESS_PATH_MAIL, &p, err), 0);
	assert_string_equal(p.addr, "");
	assert_int_equal(p.n_params, 2);
	assert_false(p.has_size);

	assert_int_equal(ingress_parse_path("TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.com",
	    INGRESS_PATH_RCPT, &p, err), 0);
	assert_int_equal(p.n_params, 2);
	assert_memory_equal(p.params[1].text, "ORCPT=rfc822;b@example.com", 26);

	assert_int_equal(ingress_parse_path("FROM:<a@example.com> SIZE=abc", INGRESS_PATH_MAIL, &p, err), -1);
	assert_string_equal(err, "501 5.5.4 Bad SIZE parameter value");
	assert_int_equal(ingress_parse_path("FROM:<a@example.com> SIZE=99999999999999999999", INGRESS_PATH_MAIL, &p, err), -1);
	assert_string_equal(err, "501 5.5.4 Bad SIZE parameter value");
	assert_int_equal(ingress_parse_path("FROM:<a@example.com> SIZE=1 size=2", INGRESS_PATH_MAIL, &p, err), -1);
	assert_string_equal(err, "501 5.5.4 Duplicate SIZE parameter");
	assert_int_equal(ingress_parse_path("FROM:<a@example.com> BODY=BINARYMIME", INGRESS_PATH_MAIL, &p, err), 0);
	assert_int_equal(p.body, INGRESS_BODY_BINARYMIME); /* the session requires BDAT */
	assert_int_equal(ingress_parse_path("FROM:<a@example.com> BODY=QUOTED", INGRESS_PATH_MAIL, &p, err), -1);
	assert_string_equal(err, "501 5.5.4 Bad BODY parameter value (7BIT, 8BITMIME or BINARYMIME)");
	assert_int_equal(ingress_parse_path("FROM:<a@example.com> XFOO=bar", INGRESS_PATH_MAIL, &p, err), -1);
	assert_string_equal(err, "555 5.5.4 Unsupported parameter: XFOO");
	assert_int_equal(ingress_parse_path("TO:<a@example.com> SIZE=10", INGRESS_PATH_RCPT, &p, err), -1);
	assert_string_equal(err, "555 5.5.4 Unsupported parameter: SIZE");
	assert_int_equal(ingress_parse_path("TO:<a@example.com> NOTIFY=NEVER,SUCCESS", INGRESS_PATH_RCPT, &p, err), -1);
	assert_string_equal(err, "501 5.5.4 Bad NOTIFY parameter value");
	assert_int_equal(ingress_parse_path("TO:<a@example.com> NOTIFY=SUCCESS,", INGRESS_PATH_RCPT, &p, err), -1);
	assert_string_equal(err, "501 5.5.4 Bad NOTIFY parameter value");
	assert_int_equal(ingress_parse_path("FROM:<a@example.com> BODY=", INGRESS_PATH_MAIL, &p, err), -1);
	assert_string_equal(err, "501 5.5.4 Bad parameter syntax");
	assert_int_equal(ingress_parse_path("FROM:<a@example.com> =x", INGRESS_PATH_MAIL, &p, err), -1);
	assert_string_equal(err, "501 5.5.4 Bad parameter syntax");
	assert_int_equal(ingress_parse_path("FROM:<a@example.com> ENVID=a=b", INGRESS_PATH_MAIL, &p, err), -1);
	assert_string_equal(err, "501 5.5.4 Bad parameter syntax");
	assert_int_equal(ingress_parse_path("FROM:<a@example.com> SIZE=1\x01", INGRESS_PATH_MAIL, &p, err), -1);
	assert_string_equal(err, "501 5.5.4 Bad parameter syntax");
}

/* --- DATA ---------------------------------------------------------------- */

struct fed {
	struct ingress_buf out;
	struct ingress_data d;
	size_t consumed;
};

/* Feed IN in pieces of at most STEP bytes (0: all at once). */
static void
feed(struct fed *f, const char *in, size_t len, size_t step, size_t limit)
{
	memset(f, 0, sizeof(*f));
	ingress_data_init(&f->d, &f->out, limit);
	if (step == 0)
		step = len ? len : 1;
	for (size_t off = 0; off < len && !ingress_data_done(&f->d); off += step) {
		size_t n = len - off < step ? len - off : step;
		size_t used = ingress_data_feed(&f->d, in + off, n);
		f->consumed += used;
		if (used < n)
			assert_true(ingress_data_done(&f->d));
	}
}

/* Every way of splitting IN into two reads gives the same result as one read. */
static void
data_expect(const char *in, size_t in_len, bool done, const char *out, size_t out_len)
{
	struct fed f;

	for (size_t step = 0; step <= in_len; step++) {
		feed(&f, in, in_len, step, 1 << 20);
		if (ingress_data_done(&f.d) != done)
			fail_msg("step %zu: done=%d", step, ingress_data_done(&f.d));
		assert_int_equal(f.out.len, out_len);
		if (out_len)
			assert_memory_equal(f.out.data, out, out_len);
		assert_int_equal(f.d.size, out_len);
		ingress_buf_free(&f.out);
	}
	/* Two arbitrary pieces, split at every position. */
	for (size_t cut = 0; cut <= in_len; cut++) {
		struct ingress_buf b = { 0 };
		struct ingress_data d;
		ingress_data_init(&d, &b, 1 << 20);
		size_t used = ingress_data_feed(&d, in, cut);
		if (used == cut)
			ingress_data_feed(&d, in + cut, in_len - cut);
		assert_int_equal(ingress_data_done(&d), done);
		assert_int_equal(b.len, out_len);
		if (out_len)
			assert_memory_equal(b.data, out, out_len);
		ingress_buf_free(&b);
	}
}

#define DATA_EXPECT(in, done, out) data_expect(in, sizeof(in) - 1, done, out, sizeof(out) - 1)

static void
test_data_basic(void **state)
{
	(void)state;
	DATA_EXPECT("Subject: x\r\n\r\nbody\r\n.\r\n", true, "Subject: x\r\n\r\nbody\r\n");
	DATA_EXPECT(".\r\n", true, "");
	DATA_EXPECT("a\r\n", false, "a\r\n");
	/* Dot-unstuffing, including across every buffer boundary. */
	DATA_EXPECT("..\r\n..x\r\n.y\r\nz.\r\n.\r\n", true, ".\r\n.x\r\ny\r\nz.\r\n");
	DATA_EXPECT("a\r\n..\r\n.\r\n", true, "a\r\n.\r\n");
	/* A bare CR is content; ".\r" followed by text is an unstuffed line. */
	DATA_EXPECT("a\rb\r\n.\r\n", true, "a\rb\r\n");
	DATA_EXPECT(".\rx\r\n.\r\n", true, "\rx\r\n");
	DATA_EXPECT("a\r\r\n.\r\n", true, "a\r\r\n");
}

static void
test_data_bare_lf(void **state)
{
	(void)state;
	/* Bare LF lines are normalised to CRLF. */
	DATA_EXPECT("a\nb\r\nc\n\r\n.\r\n", true, "a\r\nb\r\nc\r\n\r\n");
	/* Only CRLF "." CRLF ends the data: "\n.\n", "\n.\r\n" and "\r\n.\n" do not. */
	DATA_EXPECT("a\n.\nb\r\n.\r\n", true, "a\r\n.\r\nb\r\n");
	DATA_EXPECT("a\n.\r\nb\r\n.\r\n", true, "a\r\n.\r\nb\r\n");
	DATA_EXPECT("a\r\n.\nb\r\n.\r\n", true, "a\r\n.\r\nb\r\n");
	DATA_EXPECT("a\n.\n", false, "a\r\n.\r\n");
	/* Unstuffing applies to lines after a bare LF too. */
	DATA_EXPECT("a\n..b\r\n.\r\n", true, "a\r\n.b\r\n");

	/* The normalisation is noted, for the log. */
	struct fed f;
	feed(&f, "a\nb\r\n.\r\n", 8, 0, 1000);
	assert_true(f.d.bare_lf);
	ingress_buf_free(&f.out);
	feed(&f, "a\r\nb\r\n.\r\n", 9, 0, 1000);
	assert_false(f.d.bare_lf);
	ingress_buf_free(&f.out);
}

static void
test_data_stops_at_end(void **state)
{
	const char *in = "a\r\n.\r\nQUIT\r\n";
	struct fed f;

	(void)state;
	feed(&f, in, strlen(in), 0, 1000);
	assert_true(ingress_data_done(&f.d));
	assert_int_equal(f.consumed, 6); /* QUIT is left for the command reader */
	ingress_buf_free(&f.out);
	/* Byte by byte, the same. */
	feed(&f, in, strlen(in), 1, 1000);
	assert_int_equal(f.consumed, 6);
	ingress_buf_free(&f.out);
}

static void
test_data_long_line(void **state)
{
	char in[1200], err[INGRESS_REPLY_MAX];
	struct fed f;

	(void)state;
	/* 998 characters + CRLF: fine. */
	memset(in, 'x', INGRESS_TEXT_LINE_MAX);
	strcpy(in + INGRESS_TEXT_LINE_MAX, "\r\n.\r\n");
	feed(&f, in, strlen(in), 0, 1 << 20);
	assert_true(ingress_data_done(&f.d));
	assert_false(ingress_data_failed(&f.d, err));
	assert_int_equal(f.out.len, INGRESS_TEXT_LINE_MAX + 2);
	ingress_buf_free(&f.out);
	/* The limit is on the line as received, a stuffed dot included (999 > 998). */
	in[0] = '.';
	memset(in + 1, 'x', INGRESS_TEXT_LINE_MAX);
	strcpy(in + INGRESS_TEXT_LINE_MAX + 1, "\r\n.\r\n");
	feed(&f, in, strlen(in), 7, 1 << 20);
	assert_true(ingress_data_done(&f.d));
	assert_true(ingress_data_failed(&f.d, err));
	ingress_buf_free(&f.out);
	/* 999 characters, bare LF ending: too long; reading goes on to the end. */
	memset(in, 'x', INGRESS_TEXT_LINE_MAX + 1);
	strcpy(in + INGRESS_TEXT_LINE_MAX + 1, "\nmore\r\n.\r\n");
	feed(&f, in, strlen(in), 100, 1 << 20);
	assert_true(ingress_data_done(&f.d));
	assert_true(f.d.line_too_long);
	assert_true(ingress_data_failed(&f.d, err));
	assert_string_equal(err, "550 5.6.0 Message rejected: line too long (more than 998 characters)");
	ingress_buf_free(&f.out);
}

static void
test_data_too_big(void **state)
{
	const char *in = "0123456789\r\n0123456789\r\n.\r\n";
	char err[INGRESS_REPLY_MAX];
	struct fed f;

	(void)state;
	feed(&f, in, strlen(in), 3, 12);
	assert_true(ingress_data_done(&f.d));
	assert_true(f.d.too_big);
	assert_true(ingress_data_failed(&f.d, err));
	assert_string_equal(err, "552 5.3.4 Message size exceeds fixed limit");
	assert_true(f.out.len <= 12); /* the rest was counted, not kept */
	assert_int_equal(f.d.size, 24);
	ingress_buf_free(&f.out);
	/* Exactly at the limit is fine. */
	feed(&f, in, strlen(in), 0, 24);
	assert_false(ingress_data_failed(&f.d, err));
	ingress_buf_free(&f.out);
}

static void
test_data_nul(void **state)
{
	const char in[] = "a\0b\r\n.\r\n";
	char err[INGRESS_REPLY_MAX];
	struct fed f;

	(void)state;
	feed(&f, in, sizeof(in) - 1, 1, 1000);
	assert_true(ingress_data_done(&f.d));
	assert_true(ingress_data_failed(&f.d, err));
	assert_string_equal(err, "554 5.6.0 Message rejected: NUL character in data");
	ingress_buf_free(&f.out);
	/* A NUL right after a stuffed dot or at the start of a line, too. */
	const char in2[] = ".\0\r\n.\r\n";
	feed(&f, in2, sizeof(in2) - 1, 0, 1000);
	assert_true(f.d.nul);
	ingress_buf_free(&f.out);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_line_simple),
		cmocka_unit_test(test_line_limit),
		cmocka_unit_test(test_line_huge_discarded),
		cmocka_unit_test(test_cmd_split),
		cmocka_unit_test(test_path_good),
		cmocka_unit_test(test_path_bad),
		cmocka_unit_test(test_params),
		cmocka_unit_test(test_utf8_char),
		cmocka_unit_test(test_path_utf8),
		cmocka_unit_test(test_path_relay_tricks),
		cmocka_unit_test(test_path_literal),
		cmocka_unit_test(test_data_basic),
		cmocka_unit_test(test_data_bare_lf),
		cmocka_unit_test(test_data_stops_at_end),
		cmocka_unit_test(test_data_long_line),
		cmocka_unit_test(test_data_too_big),
		cmocka_unit_test(test_data_nul),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
