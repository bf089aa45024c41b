/*
 * test_ingress_param - ESMTP parameters of MAIL and RCPT, xtext and the
 * RFC 6533 utf-8-addr-xtext.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ingress_param.h"
#include "ingress_parse.h"

/* --- xtext ---------------------------------------------------------------- */

static void
xtext_ok(const char *in, const char *want, size_t want_len)
{
	char out[256];
	size_t n = 999;

	if (ingress_xtext_decode(in, strlen(in), out, sizeof(out), &n) != 0)
		fail_msg("xtext '%s' rejected", in);
	assert_int_equal(n, want_len);
	assert_memory_equal(out, want, want_len);
	assert_int_equal(out[n], '\0');
}

static void
xtext_bad(const char *in)
{
	char out[256];
	size_t n;

	if (ingress_xtext_decode(in, strlen(in), out, sizeof(out), &n) == 0)
		fail_msg("xtext '%s' accepted", in);
}

static void
test_xtext(void **state)
{
	char out[8];
	size_t n;

	(void)state;
	xtext_ok("", "", 0);
	xtext_ok("abc", "abc", 3);
	xtext_ok("+2B", "+", 1);
	xtext_ok("a+3Db", "a=b", 3);
	xtext_ok("joe+2Bx@example.com", "joe+x@example.com", 17);
	xtext_ok("+2b+3d", "+=", 2);      /* lower-case hex, as Postfix accepts */
	xtext_ok("+20+7E", " ~", 2);
	xtext_ok("+00", "\0", 1);          /* the caller decides about NUL */
	xtext_ok("+C3+A4", "\xc3\xa4", 2);
	xtext_ok("<>", "<>", 2);
	xtext_bad("+");
	xtext_bad("a+2");
	xtext_bad("+G0");
	xtext_bad("+0G");
	xtext_bad("a=b");
	xtext_bad("a b");
	xtext_bad("a\x7f");
	xtext_bad("\xc3\xa4");
	xtext_bad("a\tb");
	/* Decoding never lengthens: len + 1 is always room enough. */
	assert_int_equal(ingress_xtext_decode("abcdefg", 7, out, 8, &n), 0);
	assert_int_equal(ingress_xtext_decode("abcdefgh", 8, out, 8, &n), -1);
	assert_int_equal(ingress_xtext_decode("", 0, out, 0, &n), -1);
	assert_int_equal(ingress_xtext_decode("+41", 3, out, 2, &n), 0);
	assert_string_equal(out, "A");
}

static void
unitext_ok(const char *in, bool raw, const char *want)
{
	char out[256];
	size_t n;

	if (ingress_unitext_decode(in, strlen(in), raw, out, sizeof(out), &n) != 0)
		fail_msg("unitext '%s' rejected", in);
	assert_string_equal(out, want);
	assert_int_equal(n, strlen(want));
}

static void
unitext_bad(const char *in, bool raw)
{
	char out[256];
	size_t n;

	if (ingress_unitext_decode(in, strlen(in), raw, out, sizeof(out), &n) == 0)
		fail_msg("unitext '%s' accepted", in);
}

static void
test_unitext(void **state)
{
	char out[4];
	size_t n;

	(void)state;
	unitext_ok("a@example.com", false, "a@example.com");
	unitext_ok("\\x{E4}@example.com", false, "\xc3\xa4@example.com");
	unitext_ok("\\x{e4}\\x{7530}\\x{1F600}", false, "\xc3\xa4\xe7\x94\xb0\xf0\x9f\x98\x80");
	unitext_ok("\\x{10FFFF}", false, "\xf4\x8f\xbf\xbf");
	unitext_ok("a\\x{2B}b\\x{3D}\\x{5C}", false, "a+b=\\");
	unitext_ok("\xc3\xa4@example.com", true, "\xc3\xa4@example.com"); /* unitext under SMTPUTF8 */
	unitext_bad("\xc3\xa4@example.com", false);
	unitext_bad("\xc3@example.com", true);        /* truncated UTF-8 */
	unitext_bad("\xed\xa0\x80", true);            /* raw surrogate */
	unitext_bad("\\x{D800}", false);              /* escaped surrogate */
	unitext_bad("\\x{110000}", false);
	unitext_bad("\\x{00}", false);
	unitext_bad("\\x{E}", false);                 /* 2 to 6 digits */
	unitext_bad("\\x{10000000}", false);
	unitext_bad("\\x{E4", false);
	unitext_bad("\\x{}", false);
	unitext_bad("\\x{G1}", false);
	unitext_bad("\\y{E4}", false);
	unitext_bad("\\", false);
	unitext_bad("a+b", false);                    /* '+' and '=' must be escaped */
	unitext_bad("a=b", false);
	unitext_bad("a b", false);
	/* Room: the result and its NUL. */
	assert_int_equal(ingress_unitext_decode("\\x{E4}a", 7, false, out, 4, &n), 0);
	assert_string_equal(out, "\xc3\xa4" "a");
	assert_int_equal(ingress_unitext_decode("\\x{1F600}", 9, false, out, 4, &n), -1);
}

/* --- MAIL parameters ------------------------------------------------------ */

static void
mail_bad(const char *args, const char *reply)
{
	struct ingress_path p;
	char err[INGRESS_REPLY_MAX] = "";

	if (ingress_parse_path(args, INGRESS_PATH_MAIL, &p, err) == 0)
		fail_msg("'%s' accepted", args);
	if (strcmp(err, reply) != 0)
		fail_msg("'%s': reply '%s', expected '%s'", args, err, reply);
}

static void
rcpt_bad(const char *args, unsigned flags, const char *reply)
{
	struct ingress_path p;
	char err[INGRESS_REPLY_MAX] = "";

	if (ingress_parse_path2(args, INGRESS_PATH_RCPT, flags, &p, err) == 0)
		fail_msg("'%s' accepted", args);
	if (strcmp(err, reply) != 0)
		fail_msg("'%s': reply '%s', expected '%s'", args, err, reply);
}

static void
test_mail_params(void **state)
{
	struct ingress_path p;
	char err[INGRESS_REPLY_MAX];

	(void)state;
	assert_int_equal(ingress_parse_path("FROM:<a@example.com> BODY=binarymime SMTPUTF8 RET=full "
	    "ENVID=QQ+2B314159 AUTH=joe+2Bx@example.com SIZE=0", INGRESS_PATH_MAIL, &p, err), 0);
	assert_int_equal(p.body, INGRESS_BODY_BINARYMIME);
	assert_true(p.smtputf8);
	assert_int_equal(p.ret, INGRESS_RET_FULL);
	assert_true(p.has_envid);
	assert_string_equal(p.envid, "QQ+314159");
	assert_true(p.has_auth);
	assert_string_equal(p.auth, "joe+x@example.com");
	assert_true(p.has_size);
	assert_int_equal(p.size, 0);
	/* ... and every one verbatim, for the sender. */
	assert_int_equal(p.n_params, 6);
	assert_int_equal(p.params[0].len, 15);
	assert_memory_equal(p.params[0].text, "BODY=binarymime", 15);
	assert_int_equal(p.params[1].len, 8);
	assert_memory_equal(p.params[1].text, "SMTPUTF8", 8);
	assert_memory_equal(p.params[3].text, "ENVID=QQ+2B314159", 17);

	/* Nothing given: the typed fields say so. */
	assert_int_equal(ingress_parse_path("FROM:<a@example.com>", INGRESS_PATH_MAIL, &p, err), 0);
	assert_int_equal(p.body, INGRESS_BODY_NONE);
	assert_int_equal(p.ret, INGRESS_RET_NONE);
	assert_false(p.smtputf8 || p.has_envid || p.has_auth || p.has_size);
	assert_int_equal(p.notify, 0);
	assert_int_equal(p.orcpt_type, INGRESS_ORCPT_NONE);

	assert_int_equal(ingress_parse_path("FROM:<> BODY=7BIT RET=hdrs AUTH=<>", INGRESS_PATH_MAIL, &p, err), 0);
	assert_int_equal(p.body, INGRESS_BODY_7BIT);
	assert_int_equal(p.ret, INGRESS_RET_HDRS);
	assert_true(p.has_auth);
	assert_string_equal(p.auth, ""); /* AUTH=<>: no vouched-for author */
	assert_int_equal(ingress_parse_path("FROM:<a@example.com> BODY=8bitmime", INGRESS_PATH_MAIL, &p, err), 0);
	assert_int_equal(p.body, INGRESS_BODY_8BITMIME);

	mail_bad("FROM:<a@example.com> SMTPUTF8=yes", "501 5.5.4 SMTPUTF8 parameter takes no value");
	mail_bad("FROM:<a@example.com> BODY", "501 5.5.4 Bad BODY parameter value (7BIT, 8BITMIME or BINARYMIME)");
	mail_bad("FROM:<a@example.com> RET=NONE", "501 5.5.4 Bad RET parameter value (FULL or HDRS)");
	mail_bad("FROM:<a@example.com> ENVID=abc+2", "501 5.5.4 Bad ENVID parameter value (malformed xtext)");
	mail_bad("FROM:<a@example.com> ENVID=a+ZZ", "501 5.5.4 Bad ENVID parameter value (malformed xtext)");
	mail_bad("FROM:<a@example.com> ENVID=a+0Ab", "501 5.5.4 Bad ENVID parameter value (not printable US-ASCII)");
	mail_bad("FROM:<a@example.com> ENVID=a+E4", "501 5.5.4 Bad ENVID parameter value (not printable US-ASCII)");
	assert_int_equal(ingress_parse_path("FROM:<a@example.com> ENVID=a+20b", INGRESS_PATH_MAIL, &p, err), 0);
	assert_string_equal(p.envid, "a b");
	mail_bad("FROM:<a@example.com> ENVID", "501 5.5.4 Bad ENVID parameter value (1 to 100 characters)");
	mail_bad("FROM:<a@example.com> AUTH=a+", "501 5.5.4 Bad AUTH parameter value (malformed xtext)");
	mail_bad("FROM:<a@example.com> AUTH", "501 5.5.4 Bad AUTH parameter value (malformed xtext)");
	mail_bad("FROM:<a@example.com> AUTH=a+00b@example.com", "501 5.5.4 Bad AUTH parameter value (not a mailbox)");
	/* Fuzzer find: decoded octets that are not UTF-8 never reach the typed fields. */
	mail_bad("FROM:<a@example.com> AUTH=a+E4@example.com", "501 5.5.4 Bad AUTH parameter value (not a mailbox)");
	assert_int_equal(ingress_parse_path("FROM:<a@example.com> AUTH=+C3+A4@example.com", INGRESS_PATH_MAIL, &p, err), 0);
	assert_string_equal(p.auth, "\xc3\xa4@example.com");
	mail_bad("FROM:<a@example.com> RET=FULL ret=HDRS", "501 5.5.4 Duplicate RET parameter");
	mail_bad("FROM:<a@example.com> SMTPUTF8 smtputf8", "501 5.5.4 Duplicate SMTPUTF8 parameter");
	mail_bad("FROM:<a@example.com> BODY=7BIT BODY=8BITMIME", "501 5.5.4 Duplicate BODY parameter");
	mail_bad("FROM:<a@example.com> ENVID=x ENVID=y", "501 5.5.4 Duplicate ENVID parameter");
	mail_bad("FROM:<a@example.com> AUTH=<> AUTH=<>", "501 5.5.4 Duplicate AUTH parameter");
	mail_bad("FROM:<a@example.com> NOTIFY=NEVER", "555 5.5.4 Unsupported parameter: NOTIFY");
	mail_bad("FROM:<a@example.com> ORCPT=rfc822;a@b", "555 5.5.4 Unsupported parameter: ORCPT");
	mail_bad("FROM:<a@example.com> X-FOO", "555 5.5.4 Unsupported parameter: X-FOO");
	mail_bad("FROM:<a@example.com> ENVID=\xc3\xa4", "501 5.5.4 Bad parameter syntax");

	/* ENVID is at most 100 characters as sent (RFC 3461 4.4). */
	char args[200];
	strcpy(args, "FROM:<a@example.com> ENVID=");
	memset(args + strlen(args), 'x', 100);
	args[27 + 100] = '\0';
	assert_int_equal(ingress_parse_path(args, INGRESS_PATH_MAIL, &p, err), 0);
	assert_int_equal(strlen(p.envid), 100);
	strcat(args, "x");
	mail_bad(args, "501 5.5.4 Bad ENVID parameter value (1 to 100 characters)");
}

/* --- RCPT parameters ------------------------------------------------------ */

static void
test_rcpt_params(void **state)
{
	struct ingress_path p;
	char err[INGRESS_REPLY_MAX];

	(void)state;
	assert_int_equal(ingress_parse_path("TO:<b@example.com> NOTIFY=success,Delay ORCPT=rfc822;b+2Bx@example.com",
	    INGRESS_PATH_RCPT, &p, err), 0);
	assert_int_equal(p.notify, INGRESS_NOTIFY_SUCCESS | INGRESS_NOTIFY_DELAY);
	assert_int_equal(p.orcpt_type, INGRESS_ORCPT_RFC822);
	assert_string_equal(p.orcpt, "b+x@example.com");
	assert_int_equal(p.n_params, 2);
	assert_memory_equal(p.params[1].text, "ORCPT=rfc822;b+2Bx@example.com", 30);

	assert_int_equal(ingress_parse_path("TO:<b@example.com> NOTIFY=NEVER ORCPT=RFC822;b@example.com",
	    INGRESS_PATH_RCPT, &p, err), 0);
	assert_int_equal(p.notify, INGRESS_NOTIFY_NEVER);
	assert_int_equal(p.orcpt_type, INGRESS_ORCPT_RFC822);
	assert_int_equal(ingress_parse_path("TO:<b@example.com> NOTIFY=FAILURE,SUCCESS,DELAY",
	    INGRESS_PATH_RCPT, &p, err), 0);
	assert_int_equal(p.notify, INGRESS_NOTIFY_SUCCESS | INGRESS_NOTIFY_FAILURE | INGRESS_NOTIFY_DELAY);

	/* RFC 6533: utf-8 addresses in ORCPT, escaped, or raw under SMTPUTF8. */
	assert_int_equal(ingress_parse_path("TO:<b@example.com> ORCPT=utf-8;\\x{E4}@example.com",
	    INGRESS_PATH_RCPT, &p, err), 0);
	assert_int_equal(p.orcpt_type, INGRESS_ORCPT_UTF8);
	assert_string_equal(p.orcpt, "\xc3\xa4@example.com");
	assert_int_equal(ingress_parse_path2("TO:<\xc3\xa4@example.com> ORCPT=UTF-8;\xc3\xa4@example.com",
	    INGRESS_PATH_RCPT, INGRESS_PATH_UTF8_OK, &p, err), 0);
	assert_string_equal(p.orcpt, "\xc3\xa4@example.com");
	rcpt_bad("TO:<b@example.com> ORCPT=utf-8;\xc3\xa4@example.com", 0, "501 5.5.4 Bad parameter syntax");
	rcpt_bad("TO:<b@example.com> ORCPT=utf-8;\xc3@example.com", INGRESS_PATH_UTF8_OK,
	    "501 5.5.4 Bad parameter syntax");

	rcpt_bad("TO:<b@example.com> NOTIFY=NEVER,SUCCESS", 0, "501 5.5.4 Bad NOTIFY parameter value");
	rcpt_bad("TO:<b@example.com> NOTIFY=FAILURE,FAILURE", 0, "501 5.5.4 Bad NOTIFY parameter value");
	rcpt_bad("TO:<b@example.com> NOTIFY=,SUCCESS", 0, "501 5.5.4 Bad NOTIFY parameter value");
	rcpt_bad("TO:<b@example.com> NOTIFY=SUCCESS,,DELAY", 0, "501 5.5.4 Bad NOTIFY parameter value");
	rcpt_bad("TO:<b@example.com> NOTIFY=ALWAYS", 0, "501 5.5.4 Bad NOTIFY parameter value");
	rcpt_bad("TO:<b@example.com> NOTIFY", 0, "501 5.5.4 Bad NOTIFY parameter value");
	rcpt_bad("TO:<b@example.com> ORCPT", 0, "501 5.5.4 Bad ORCPT parameter value (addr-type;address)");
	rcpt_bad("TO:<b@example.com> ORCPT=b@example.com", 0, "501 5.5.4 Bad ORCPT parameter value (addr-type;address)");
	rcpt_bad("TO:<b@example.com> ORCPT=rfc822;", 0, "501 5.5.4 Bad ORCPT parameter value (addr-type;address)");
	rcpt_bad("TO:<b@example.com> ORCPT=x400;foo", 0,
	    "501 5.5.4 Bad ORCPT parameter value (address type must be rfc822 or utf-8)");
	rcpt_bad("TO:<b@example.com> ORCPT=rfc822;b+4@example.com", 0,
	    "501 5.5.4 Bad ORCPT parameter value (malformed xtext)");
	rcpt_bad("TO:<b@example.com> ORCPT=rfc822;b+0D+0A@example.com", 0,
	    "501 5.5.4 Bad ORCPT parameter value (control character)");
	/* Fuzzer find: xtext can carry any octet, an rfc822 address only ASCII. */
	rcpt_bad("TO:<b@example.com> ORCPT=rfc822;o!+e40Be", 0,
	    "501 5.5.4 Bad ORCPT parameter value (8-bit octet in an rfc822 address)");
	rcpt_bad("TO:<b@example.com> ORCPT=rfc822;+C3+A4@example.com", INGRESS_PATH_UTF8_OK,
	    "501 5.5.4 Bad ORCPT parameter value (8-bit octet in an rfc822 address)");
	rcpt_bad("TO:<b@example.com> ORCPT=utf-8;a\\x{D800}@example.com", 0,
	    "501 5.5.4 Bad ORCPT parameter value (malformed utf-8-addr-xtext)");
	rcpt_bad("TO:<b@example.com> ORCPT=utf-8;a+b@example.com", 0,
	    "501 5.5.4 Bad ORCPT parameter value (malformed utf-8-addr-xtext)");
	rcpt_bad("TO:<b@example.com> NOTIFY=NEVER notify=SUCCESS", 0, "501 5.5.4 Duplicate NOTIFY parameter");
	rcpt_bad("TO:<b@example.com> ORCPT=rfc822;a@b ORCPT=rfc822;c@d", 0, "501 5.5.4 Duplicate ORCPT parameter");
	rcpt_bad("TO:<b@example.com> AUTH=<>", 0, "555 5.5.4 Unsupported parameter: AUTH");
	rcpt_bad("TO:<b@example.com> BODY=8BITMIME", 0, "555 5.5.4 Unsupported parameter: BODY");
	rcpt_bad("TO:<b@example.com> SMTPUTF8", 0, "555 5.5.4 Unsupported parameter: SMTPUTF8");

	/* ORCPT is at most 500 characters as sent (RFC 3461 4.2). */
	char args[600];
	strcpy(args, "TO:<b@example.com> ORCPT=rfc822;");
	size_t at = strlen(args);
	memset(args + at, 'x', 489);
	strcpy(args + at + 489, "@b.c");
	assert_int_equal(ingress_parse_path(args, INGRESS_PATH_RCPT, &p, err), 0);
	assert_int_equal(strlen(p.orcpt), 493);
	strcat(args, "x");
	rcpt_bad(args, 0, "501 5.5.4 Bad ORCPT parameter value (addr-type;address)");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_xtext),
		cmocka_unit_test(test_unitext),
		cmocka_unit_test(test_mail_params),
		cmocka_unit_test(test_rcpt_params),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
