/*
 * test_sender_dsn - delivery status notifications: the predicates (who gets
 * a DSN), the helpers (status, xtext, params) and the structure and fields
 * of built reports: failed with headers or the full message returned,
 * delayed, no RET, too large, binary, 8-bit and SMTPUTF8 originals,
 * boundary clashes, folding, refusals.
 *
 * `test_sender_dsn --emit DIR` writes sample DSNs to DIR instead (one file
 * each, named after the case) for tests/unit/check_dsn.py, which parses them
 * with Python's email package.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sender_dsn.h"

#define T0 1767225600000LL      /* Thu, 01 Jan 2026 00:00:00 +0000 */

static const char ORIGINAL[] =
	"Received: from client.test by relay.hikyaku.test\r\n"
	"From: <alice@client.test>\r\n"
	"To: <bob@a.test>\r\n"
	"Subject: hello\r\n"
	"Message-ID: <orig-1@client.test>\r\n"
	"\r\n"
	"body line 1\r\n"
	"body line 2 SECRET-BODY\r\n";

/* NUL-separated RCPT params from a list of strings, in a static buffer of the caller. */
static size_t
params(char *buf, const char *const *p, size_t n)
{
	size_t len = 0;
	for (size_t i = 0; i < n; i++) {
		strcpy(buf + len, p[i]);
		len += strlen(p[i]) + 1;
	}
	return len;
}

/* A report about ORIGINAL with two failed recipients; MAIL params given. */
struct sample {
	char p0[256], p1[256];
	const char *mail_params[4];
	struct sender_dsn_rcpt rc[3];
	struct sender_dsn_report r;
};

static void
sample_init(struct sample *s, const char *ret)
{
	static const char *const p0[] = { "NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;bob+2Bx@a.test" };
	static const char *const p1[] = { "NOTIFY=FAILURE" };
	size_t n = 0;

	memset(s, 0, sizeof(*s));
	s->mail_params[n++] = "ENVID=env+2Bid+3D42";
	if (ret)
		s->mail_params[n++] = ret;
	s->rc[0] = (struct sender_dsn_rcpt){
		.address = "bob@a.test", .params = s->p0, .params_len = params(s->p0, p0, 2),
		.action = SENDER_DSN_FAILED, .remote_mta = "mx.a.test",
		.diagnostic = "550 5.1.1 <bob@a.test>: Recipient address rejected: User unknown",
		.last_attempt_ms = T0 + 60000,
	};
	s->rc[1] = (struct sender_dsn_rcpt){
		.address = "carol@b.test", .params = s->p1, .params_len = params(s->p1, p1, 1),
		.action = SENDER_DSN_FAILED, .status = "5.4.7",
		.diagnostic = "451 4.4.3 DNS lookup for b.test failed: timeout",
		.last_attempt_ms = T0 + 120000,
	};
	s->r = (struct sender_dsn_report){
		.reporting_mta = "sender-1.hikyaku.test",
		.mail_from = "alice@client.test",
		.mail_params = s->mail_params, .n_mail_params = n,
		.id = "01JD3W2Q4S8V7M0B5X6C9N1R2T",
		.arrival_ms = T0, .now_ms = T0 + 180000,
		.rcpts = s->rc, .n_rcpts = 2,
		.body = (const uint8_t *)ORIGINAL, .body_len = sizeof(ORIGINAL) - 1,
	};
}

static void
build(const struct sender_dsn_report *r, struct sender_dsn *d)
{
	char err[256] = "";
	int rc = sender_dsn_build(r, d, err, sizeof(err));
	if (rc != 0)
		print_error("build: %s\n", err);
	assert_int_equal(rc, 0);
	assert_non_null(d->data);
	assert_int_equal(strlen((char *)d->data), d->len);
}

/* ---- a small MIME reader for the checks ---- */

struct parts {
	char *head;             /* the top-level header block */
	char *part[4];          /* each part: its header block, CRLF CRLF, content */
	size_t n;
	char *epilogue_check;   /* what follows the closing delimiter */
};

/* split - copy D and cut it at the boundary of its Content-Type. */
static void
split(const struct sender_dsn *d, struct parts *ps, char *copy)
{
	char bnd[128], delim[140];
	char *b, *e, *p, *n;

	memcpy(copy, d->data, d->len + 1);
	memset(ps, 0, sizeof(*ps));
	ps->head = copy;
	p = strstr(copy, "\r\n\r\n");
	assert_non_null(p);
	p[2] = '\0';
	b = strstr(copy, "boundary=\"");
	assert_non_null(b);
	b += 10;
	e = strchr(b, '"');
	assert_non_null(e);
	snprintf(bnd, sizeof(bnd), "%.*s", (int)(e - b), b);
	snprintf(delim, sizeof(delim), "\r\n--%s", bnd);
	p += 4;
	n = strstr(p, delim);          /* the end of the preamble */
	assert_non_null(n);
	p = n + strlen(delim);
	while (strncmp(p, "--\r\n", 4) != 0) {
		assert_memory_equal(p, "\r\n", 2);
		p += 2;
		n = strstr(p, delim);
		assert_non_null(n);
		*n = '\0';
		assert_true(ps->n < 4);
		ps->part[ps->n++] = p;
		p = n + strlen(delim);
	}
	ps->epilogue_check = p + 4;
}

/* The part's content (after its header block). */
static const char *
content(const char *part)
{
	const char *p = strstr(part, "\r\n\r\n");
	assert_non_null(p);
	return p + 4;
}

static bool
has_line(const char *text, const char *line)
{
	size_t n = strlen(line);
	for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
		if ((p == text || p[-1] == '\n') && (p[n] == '\r' || p[n] == '\0'))
			return true;
	return false;
}

/* Every line ends in CRLF and none is longer than 998 octets. */
static void
assert_crlf_lines(const struct sender_dsn *d)
{
	size_t line = 0;
	for (size_t i = 0; i < d->len; i++) {
		if (d->data[i] == '\n') {
			assert_true(i > 0 && d->data[i - 1] == '\r');
			line = 0;
		} else if (d->data[i] == '\r') {
			assert_true(i + 1 < d->len && d->data[i + 1] == '\n');
		} else {
			assert_true(++line <= 998);
		}
	}
	assert_true(d->len >= 2 && d->data[d->len - 2] == '\r' && d->data[d->len - 1] == '\n');
}

/* ---- predicates and helpers ---- */

static void
test_wanted(void **state)
{
	char p[128];
	size_t n;
	(void)state;

	/* No NOTIFY: failures only. */
	assert_true(sender_dsn_wanted(SENDER_DSN_FAILED, NULL, 0, "a@b.test"));
	assert_false(sender_dsn_wanted(SENDER_DSN_DELAYED, NULL, 0, "a@b.test"));
	assert_false(sender_dsn_wanted(SENDER_DSN_DELIVERED, NULL, 0, "a@b.test"));
	assert_false(sender_dsn_wanted(SENDER_DSN_RELAYED, NULL, 0, "a@b.test"));
	/* Never to the null sender, whatever NOTIFY says. */
	n = params(p, (const char *[]){ "NOTIFY=SUCCESS,FAILURE,DELAY" }, 1);
	assert_false(sender_dsn_wanted(SENDER_DSN_FAILED, p, n, ""));
	assert_false(sender_dsn_wanted(SENDER_DSN_FAILED, p, n, NULL));
	assert_false(sender_dsn_wanted(SENDER_DSN_FAILED, NULL, 0, ""));
	assert_true(sender_dsn_wanted(SENDER_DSN_FAILED, p, n, "a@b.test"));
	assert_true(sender_dsn_wanted(SENDER_DSN_DELAYED, p, n, "a@b.test"));
	assert_true(sender_dsn_wanted(SENDER_DSN_DELIVERED, p, n, "a@b.test"));
	assert_true(sender_dsn_wanted(SENDER_DSN_RELAYED, p, n, "a@b.test"));
	/* NEVER suppresses all. */
	n = params(p, (const char *[]){ "ORCPT=rfc822;x@y.test", "notify=never" }, 2);
	assert_false(sender_dsn_wanted(SENDER_DSN_FAILED, p, n, "a@b.test"));
	assert_false(sender_dsn_wanted(SENDER_DSN_DELAYED, p, n, "a@b.test"));
	/* NOTIFY without FAILURE suppresses failure DSNs. */
	n = params(p, (const char *[]){ "NOTIFY=SUCCESS" }, 1);
	assert_false(sender_dsn_wanted(SENDER_DSN_FAILED, p, n, "a@b.test"));
	assert_false(sender_dsn_wanted(SENDER_DSN_DELAYED, p, n, "a@b.test"));
	assert_true(sender_dsn_wanted(SENDER_DSN_DELIVERED, p, n, "a@b.test"));
	/* Delays only with DELAY; any case. */
	n = params(p, (const char *[]){ "Notify=Delay" }, 1);
	assert_true(sender_dsn_wanted(SENDER_DSN_DELAYED, p, n, "a@b.test"));
	assert_false(sender_dsn_wanted(SENDER_DSN_FAILED, p, n, "a@b.test"));
	n = params(p, (const char *[]){ "NOTIFY=FAILURE" }, 1);
	assert_true(sender_dsn_wanted(SENDER_DSN_FAILED, p, n, "a@b.test"));
	assert_false(sender_dsn_wanted(SENDER_DSN_DELAYED, p, n, "a@b.test"));
	/* A word that only starts like one does not count. */
	n = params(p, (const char *[]){ "NOTIFY=FAILURES" }, 1);
	assert_false(sender_dsn_wanted(SENDER_DSN_FAILED, p, n, "a@b.test"));
}

static void
test_params(void **state)
{
	char p[128];
	size_t n = params(p, (const char *[]){ "NOTIFYX=1", "orcpt=rfc822;a@b", "NOTIFY=NEVER" }, 3);
	const char *mp[] = { "SMTPUTF8", "ret=FULL", "ENVID=x" };
	(void)state;

	assert_string_equal(sender_dsn_param(p, n, "NOTIFY"), "NEVER");
	assert_string_equal(sender_dsn_param(p, n, "ORCPT"), "rfc822;a@b");
	assert_null(sender_dsn_param(p, n, "RET"));
	assert_null(sender_dsn_param(NULL, 0, "NOTIFY"));
	/* A block that is not NUL-terminated is not read past its end. */
	assert_null(sender_dsn_param("NOTIFY=NEVER", 6, "NOTIFY"));
	assert_string_equal(sender_dsn_mail_param(mp, 3, "RET"), "FULL");
	assert_string_equal(sender_dsn_mail_param(mp, 3, "ENVID"), "x");
	assert_null(sender_dsn_mail_param(mp, 3, "SMTPUTF8"));  /* no value */
	assert_null(sender_dsn_mail_param(mp, 3, "BODY"));
}

static void
test_status(void **state)
{
	char s[16];
	(void)state;

	sender_dsn_status("550 5.1.1 <x@y>: unknown", SENDER_DSN_FAILED, s);
	assert_string_equal(s, "5.1.1");
	sender_dsn_status("554 5.7.123 policy", SENDER_DSN_FAILED, s);
	assert_string_equal(s, "5.7.123");
	sender_dsn_status("550 5.1.1", SENDER_DSN_FAILED, s);
	assert_string_equal(s, "5.1.1");
	/* The class must fit the action. */
	sender_dsn_status("451 4.7.1 greylisted", SENDER_DSN_FAILED, s);
	assert_string_equal(s, "5.0.0");
	sender_dsn_status("451 4.7.1 greylisted", SENDER_DSN_DELAYED, s);
	assert_string_equal(s, "4.7.1");
	sender_dsn_status("250 2.0.0 Ok", SENDER_DSN_DELIVERED, s);
	assert_string_equal(s, "2.0.0");
	/* No enhanced code, or none at all. */
	sender_dsn_status("550 no such user", SENDER_DSN_FAILED, s);
	assert_string_equal(s, "5.0.0");
	sender_dsn_status("550 5.1234.1 x", SENDER_DSN_FAILED, s);
	assert_string_equal(s, "5.0.0");
	sender_dsn_status("550 5.1.1x", SENDER_DSN_FAILED, s);
	assert_string_equal(s, "5.0.0");
	sender_dsn_status(NULL, SENDER_DSN_DELAYED, s);
	assert_string_equal(s, "4.0.0");
	sender_dsn_status("", SENDER_DSN_RELAYED, s);
	assert_string_equal(s, "2.0.0");
}

static void
test_xtext(void **state)
{
	char o[32];
	(void)state;

	assert_int_equal(sender_dsn_xtext_decode("a+2Bb+3dc", o, sizeof(o)), 0);
	assert_string_equal(o, "a+b=c");
	assert_int_equal(sender_dsn_xtext_decode("", o, sizeof(o)), 0);
	assert_string_equal(o, "");
	assert_int_equal(sender_dsn_xtext_decode("bad+2", o, sizeof(o)), -1);
	assert_int_equal(sender_dsn_xtext_decode("bad+ZZ", o, sizeof(o)), -1);
	assert_int_equal(sender_dsn_xtext_decode("nul+00", o, sizeof(o)), -1);
	assert_int_equal(sender_dsn_xtext_decode("lf+0A", o, sizeof(o)), -1);
	assert_int_equal(sender_dsn_xtext_decode("toolong", o, 7), -1);
	assert_int_equal(sender_dsn_xtext_decode("fits", o, 5), 0);
	assert_string_equal(sender_dsn_action_name(SENDER_DSN_EXPANDED), "expanded");
}

/* ---- built reports ---- */

static void
test_failed_headers(void **state)
{
	struct sample s;
	struct sender_dsn d;
	struct parts ps;
	(void)state;

	sample_init(&s, "RET=HDRS");
	build(&s.r, &d);
	char *copy = malloc(d.len + 1);
	assert_crlf_lines(&d);
	assert_false(d.smtputf8);
	assert_false(d.eightbit);
	assert_false(d.global);
	assert_int_equal(d.returned, SENDER_DSN_RETURNED_HEADERS);
	split(&d, &ps, copy);

	/* The message header. */
	assert_true(has_line(ps.head, "From: Mail Delivery System <MAILER-DAEMON@sender-1.hikyaku.test>"));
	assert_true(has_line(ps.head, "To: <alice@client.test>"));
	assert_true(has_line(ps.head, "Subject: Undelivered Mail Returned to Sender"));
	assert_true(has_line(ps.head, "Date: Thu, 01 Jan 2026 00:03:00 +0000"));
	assert_true(has_line(ps.head,
	    "Message-ID: <01JD3W2Q4S8V7M0B5X6C9N1R2T.failed.1767225780000@sender-1.hikyaku.test>"));
	assert_true(has_line(ps.head, "Auto-Submitted: auto-replied"));
	assert_true(has_line(ps.head, "MIME-Version: 1.0"));
	assert_non_null(strstr(ps.head,
	    "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\""));
	assert_null(strstr(ps.head, "Content-Transfer-Encoding"));
	assert_int_equal(ps.n, 3);
	assert_string_equal(ps.epilogue_check, "");

	/* 1: text for people, naming each recipient and the remote reply. */
	assert_true(has_line(ps.part[0], "Content-Type: text/plain; charset=us-ascii"));
	const char *t = content(ps.part[0]);
	assert_non_null(strstr(t, "This is the mail system at host sender-1.hikyaku.test."));
	assert_non_null(strstr(t, "<bob@a.test>: failed; host mx.a.test said:\r\n"
	    "    550 5.1.1 <bob@a.test>: Recipient address rejected: User unknown\r\n"));
	assert_non_null(strstr(t, "<carol@b.test>: failed:\r\n    451 4.4.3 DNS lookup"));
	assert_non_null(strstr(t, "The headers of your message are returned below."));

	/* 2: the delivery status, per message then per recipient. */
	assert_true(has_line(ps.part[1], "Content-Type: message/delivery-status"));
	const char *st = content(ps.part[1]);
	assert_true(strncmp(st, "Reporting-MTA: dns; sender-1.hikyaku.test\r\n", 43) == 0);
	assert_true(has_line(st, "X-Hikyaku-Queue-ID: 01JD3W2Q4S8V7M0B5X6C9N1R2T"));
	assert_true(has_line(st, "Original-Envelope-Id: env+id=42"));
	assert_true(has_line(st, "Arrival-Date: Thu, 01 Jan 2026 00:00:00 +0000"));
	const char *b1 = strstr(st, "\r\n\r\n");
	assert_non_null(b1);
	const char *b2 = strstr(b1 + 4, "\r\n\r\n");
	assert_non_null(b2);
	assert_null(strstr(b2 + 4, "\r\n\r\n"));        /* exactly two recipient blocks */
	char blk1[1024];
	snprintf(blk1, sizeof(blk1), "%.*s", (int)(b2 - b1), b1);
	assert_true(has_line(blk1, "Original-Recipient: rfc822;bob+x@a.test"));
	assert_true(has_line(blk1, "Final-Recipient: rfc822; bob@a.test"));
	assert_true(has_line(blk1, "Action: failed"));
	assert_true(has_line(blk1, "Status: 5.1.1"));
	assert_true(has_line(blk1, "Remote-MTA: dns; mx.a.test"));
	assert_non_null(strstr(blk1, "Diagnostic-Code: smtp; 550 5.1.1 <bob@a.test>: Recipient address"));
	assert_true(has_line(blk1, "Last-Attempt-Date: Thu, 01 Jan 2026 00:01:00 +0000"));
	assert_null(strstr(blk1, "Will-Retry-Until"));
	const char *blk2 = b2 + 4;
	assert_null(strstr(blk2, "Original-Recipient"));
	assert_true(has_line(blk2, "Final-Recipient: rfc822; carol@b.test"));
	assert_true(has_line(blk2, "Status: 5.4.7"));
	assert_null(strstr(blk2, "Remote-MTA"));
	assert_non_null(strstr(blk2, "Diagnostic-Code: X-Hikyaku; 451 4.4.3 DNS lookup"));

	/* 3: the original's header block only. */
	assert_true(has_line(ps.part[2], "Content-Type: text/rfc822-headers"));
	assert_true(has_line(ps.part[2], "Content-Description: Undelivered Message Headers"));
	const char *o = content(ps.part[2]);
	assert_non_null(strstr(o, "Subject: hello\r\nMessage-ID: <orig-1@client.test>\r\n"));
	assert_null(strstr(o, "SECRET-BODY"));

	/* The same input gives the same bytes. */
	struct sender_dsn d2;
	build(&s.r, &d2);
	assert_int_equal(d2.len, d.len);
	assert_memory_equal(d2.data, d.data, d.len);
	sender_dsn_free(&d2);
	free(copy);
	sender_dsn_free(&d);
	assert_null(d.data);
}

static void
test_failed_full(void **state)
{
	struct sample s;
	struct sender_dsn d;
	struct parts ps;
	(void)state;

	sample_init(&s, "RET=FULL");
	s.r.message_id = "given.1@dsn.test";
	s.r.from = "postmaster@hikyaku.test";
	build(&s.r, &d);
	char *copy = malloc(d.len + 1);
	assert_crlf_lines(&d);
	assert_int_equal(d.returned, SENDER_DSN_RETURNED_FULL);
	split(&d, &ps, copy);
	assert_true(has_line(ps.head, "From: postmaster@hikyaku.test"));
	assert_true(has_line(ps.head, "Message-ID: <given.1@dsn.test>"));
	assert_true(has_line(ps.part[2], "Content-Type: message/rfc822"));
	assert_true(has_line(ps.part[2], "Content-Description: Undelivered Message"));
	/* The whole original, byte for byte. */
	assert_string_equal(content(ps.part[2]), ORIGINAL);
	assert_non_null(strstr(content(ps.part[0]), "Your message is returned below."));
	free(copy);
	sender_dsn_free(&d);

	/* Over max_return: headers only, and the text says why. */
	s.r.max_return = 20;
	build(&s.r, &d);
	copy = malloc(d.len + 1);
	assert_int_equal(d.returned, SENDER_DSN_RETURNED_HEADERS);
	split(&d, &ps, copy);
	assert_true(has_line(ps.part[2], "Content-Type: text/rfc822-headers"));
	assert_null(strstr(content(ps.part[2]), "SECRET-BODY"));
	assert_non_null(strstr(content(ps.part[0]), "too large to be returned whole"));
	free(copy);
	sender_dsn_free(&d);

	/* A BINARYMIME original: headers only. */
	s.r.max_return = 0;
	s.mail_params[s.r.n_mail_params++] = "BODY=BINARYMIME";
	build(&s.r, &d);
	assert_int_equal(d.returned, SENDER_DSN_RETURNED_HEADERS);
	assert_non_null(strstr((char *)d.data, "sent as binary MIME"));
	sender_dsn_free(&d);
}

static void
test_no_ret_and_nothing_to_return(void **state)
{
	struct sample s;
	struct sender_dsn d;
	(void)state;

	/* No RET: headers only (our choice). */
	sample_init(&s, NULL);
	build(&s.r, &d);
	assert_int_equal(d.returned, SENDER_DSN_RETURNED_HEADERS);
	assert_null(strstr((char *)d.data, "SECRET-BODY"));
	sender_dsn_free(&d);

	/* No header block at all: no third part. */
	s.r.body = (const uint8_t *)"\r\nonly a body\r\n";
	s.r.body_len = 15;
	build(&s.r, &d);
	assert_int_equal(d.returned, SENDER_DSN_RETURNED_NONE);
	assert_null(strstr((char *)d.data, "rfc822-headers"));
	assert_crlf_lines(&d);
	sender_dsn_free(&d);

	/* No body: the same. */
	s.r.body = NULL;
	s.r.body_len = 0;
	build(&s.r, &d);
	assert_int_equal(d.returned, SENDER_DSN_RETURNED_NONE);
	sender_dsn_free(&d);

	/* A header line over 998 octets is not returned. */
	char *big = malloc(1200);
	memset(big, 'x', 1100);
	memcpy(big, "X-Long: ", 8);
	memcpy(big + 1100, "\r\n\r\nbody\r\n", 11);
	s.r.body = (const uint8_t *)big;
	s.r.body_len = strlen(big);
	build(&s.r, &d);
	assert_int_equal(d.returned, SENDER_DSN_RETURNED_NONE);
	assert_crlf_lines(&d);
	sender_dsn_free(&d);
	free(big);
}

static void
test_delayed(void **state)
{
	struct sample s;
	struct sender_dsn d;
	struct parts ps;
	(void)state;

	sample_init(&s, "RET=FULL");
	s.rc[0].action = SENDER_DSN_DELAYED;
	s.rc[0].diagnostic = "451 4.7.1 Greylisted, try again later";
	s.rc[0].will_retry_until_ms = T0 + 5LL * 86400000;
	s.r.n_rcpts = 1;
	build(&s.r, &d);
	char *copy = malloc(d.len + 1);
	assert_crlf_lines(&d);
	split(&d, &ps, copy);
	assert_true(has_line(ps.head, "Subject: Delayed Mail (still being retried)"));
	assert_non_null(strstr(ps.head, ".delayed."));
	assert_non_null(strstr(content(ps.part[0]), "THIS IS A WARNING ONLY"));
	assert_non_null(strstr(content(ps.part[0]), "still being retried until Tue, 06 Jan 2026"));
	const char *st = content(ps.part[1]);
	assert_true(has_line(st, "Action: delayed"));
	assert_true(has_line(st, "Status: 4.7.1"));
	assert_true(has_line(st, "Will-Retry-Until: Tue, 06 Jan 2026 00:00:00 +0000"));
	/* RET=FULL is about failures: a delay returns headers only. */
	assert_int_equal(d.returned, SENDER_DSN_RETURNED_HEADERS);
	assert_true(has_line(ps.part[2], "Content-Description: Delayed Message Headers"));
	free(copy);
	sender_dsn_free(&d);

	/* Delivered (NOTIFY=SUCCESS): a success report. */
	s.rc[0].action = SENDER_DSN_DELIVERED;
	s.rc[0].diagnostic = "250 2.0.0 Ok: queued as ABC";
	build(&s.r, &d);
	assert_non_null(strstr((char *)d.data, "Subject: Successful Mail Delivery Report\r\n"));
	assert_non_null(strstr((char *)d.data, "\r\nAction: delivered\r\nStatus: 2.0.0\r\n"));
	sender_dsn_free(&d);
}

static void
test_8bit_original(void **state)
{
	static const char orig8[] = "From: <a@client.test>\r\nSubject: caf\xc3\xa9\r\n\r\n"
	    "r\xc3\xa9sum\xc3\xa9\r\n";
	struct sample s;
	struct sender_dsn d;
	struct parts ps;
	(void)state;

	sample_init(&s, "RET=FULL");
	s.mail_params[s.r.n_mail_params++] = "BODY=8BITMIME";
	s.r.body = (const uint8_t *)orig8;
	s.r.body_len = sizeof(orig8) - 1;
	build(&s.r, &d);
	char *copy = malloc(d.len + 1);
	assert_crlf_lines(&d);
	/* Plain RFC 3464 (no SMTPUTF8): the returned part alone is 8bit. */
	assert_false(d.global);
	assert_false(d.smtputf8);
	assert_true(d.eightbit);
	split(&d, &ps, copy);
	assert_true(has_line(ps.head, "Content-Transfer-Encoding: 8bit"));
	assert_true(has_line(ps.part[1], "Content-Type: message/delivery-status"));
	assert_null(strstr(ps.part[1], "Content-Transfer-Encoding"));
	assert_true(has_line(ps.part[2], "Content-Type: message/rfc822"));
	assert_true(has_line(ps.part[2], "Content-Transfer-Encoding: 8bit"));
	assert_string_equal(content(ps.part[2]), orig8);
	free(copy);
	sender_dsn_free(&d);
}

static void
test_smtputf8(void **state)
{
	static const char origu[] = "From: <j\xc3\xb6rg@client.test>\r\nSubject: gr\xc3\xbc\xc3\x9f"
	    "e\r\n\r\nhallo\r\n";
	struct sample s;
	struct sender_dsn d;
	struct parts ps;
	char p[128];
	(void)state;

	/* A UTF-8 recipient of an SMTPUTF8 message, from an ASCII sender. */
	sample_init(&s, "RET=HDRS");
	s.mail_params[s.r.n_mail_params++] = "SMTPUTF8";
	s.rc[0].address = "b\xc3\xb6" "b@a.test";
	s.rc[0].params = p;
	s.rc[0].params_len = params(p, (const char *[]){ "ORCPT=utf-8;b\\x{F6}b@a.test" }, 1);
	s.r.body = (const uint8_t *)origu;
	s.r.body_len = sizeof(origu) - 1;
	build(&s.r, &d);
	char *copy = malloc(d.len + 1);
	assert_crlf_lines(&d);
	assert_true(d.global);
	assert_false(d.smtputf8);      /* the header is ASCII: 8BITMIME will do */
	assert_true(d.eightbit);
	split(&d, &ps, copy);
	assert_non_null(strstr(ps.head, "report-type=global-delivery-status;"));
	assert_true(has_line(ps.part[0], "Content-Type: text/plain; charset=utf-8"));
	assert_true(has_line(ps.part[1], "Content-Type: message/global-delivery-status"));
	assert_true(has_line(ps.part[1], "Content-Transfer-Encoding: 8bit"));
	const char *st = content(ps.part[1]);
	assert_true(has_line(st, "Final-Recipient: utf-8; b\xc3\xb6" "b@a.test"));
	assert_true(has_line(st, "Original-Recipient: utf-8;b\\x{F6}b@a.test"));
	assert_true(has_line(st, "Final-Recipient: rfc822; carol@b.test"));
	assert_true(has_line(ps.part[2], "Content-Type: message/global-headers"));
	assert_non_null(strstr(content(ps.part[2]), "Subject: gr\xc3\xbc\xc3\x9f" "e\r\n"));
	free(copy);
	sender_dsn_free(&d);

	/* A UTF-8 envelope sender: the To: needs SMTPUTF8. */
	s.r.mail_from = "j\xc3\xb6rg@client.test";
	build(&s.r, &d);
	assert_true(d.smtputf8);
	assert_true(d.eightbit);
	assert_non_null(strstr((char *)d.data, "\r\nTo: <j\xc3\xb6rg@client.test>\r\n"));
	sender_dsn_free(&d);

	/* SMTPUTF8 given but everything ASCII: a plain report. */
	sample_init(&s, "RET=HDRS");
	s.mail_params[s.r.n_mail_params++] = "SMTPUTF8";
	build(&s.r, &d);
	assert_false(d.global);
	assert_false(d.eightbit);
	sender_dsn_free(&d);
}

static void
test_folding_and_sanitizing(void **state)
{
	struct sample s;
	struct sender_dsn d;
	char reply[600];
	(void)state;

	sample_init(&s, NULL);
	/* A long reply with a control character and an 8-bit octet. */
	snprintf(reply, sizeof(reply), "550 5.7.1 Message rejected\x01 caf\xc3\xa9");
	for (int i = 0; i < 40; i++)
		strcat(reply, " policy-word");
	s.rc[0].diagnostic = reply;
	s.r.n_rcpts = 1;
	build(&s.r, &d);
	assert_crlf_lines(&d);
	assert_false(d.eightbit);
	char *dc = strstr((char *)d.data, "Diagnostic-Code: smtp; 550 5.7.1 Message rejected? caf?? policy-word");
	assert_non_null(dc);
	/* Folded: every line of the field within 78 columns, unfolding gives it back. */
	char un[1024];
	size_t n = 0;
	const char *p = dc;
	for (;;) {
		const char *e = strstr(p, "\r\n");
		assert_true(e - p <= 78);
		memcpy(un + n, p, (size_t)(e - p));
		n += (size_t)(e - p);
		p = e + 2;
		if (*p != ' ' && *p != '\t')
			break;
	}
	un[n] = '\0';
	assert_int_equal(strlen(un), strlen("Diagnostic-Code: smtp; ") + strlen(reply));
	/* In the text, the reply is wrapped too. */
	assert_non_null(strstr((char *)d.data, "said:\r\n    550 5.7.1 Message rejected? caf?? policy-word"));
	sender_dsn_free(&d);

	/* A reply of 1100 octets without a blank: cut to 900, no line over 998. */
	char huge[1200];
	memset(huge, 'z', 1100);
	memcpy(huge, "550 ", 4);
	huge[1100] = '\0';
	s.rc[0].diagnostic = huge;
	build(&s.r, &d);
	assert_crlf_lines(&d);
	assert_non_null(strstr((char *)d.data, "Diagnostic-Code: smtp; 550\r\n zzzz"));
	sender_dsn_free(&d);
}

static void
test_boundary_clash(void **state)
{
	struct sample s;
	struct sender_dsn d;
	char body[256];
	(void)state;

	/* An original that holds the first boundary we would pick. */
	sample_init(&s, "RET=FULL");
	snprintf(body, sizeof(body),
	    "Subject: x\r\n\r\n--=_hikyaku_01JD3W2Q4S8V7M0B5X6C9N1R2T_1767225780000_0\r\n");
	s.r.body = (const uint8_t *)body;
	s.r.body_len = strlen(body);
	build(&s.r, &d);
	assert_non_null(strstr((char *)d.data,
	    "boundary=\"=_hikyaku_01JD3W2Q4S8V7M0B5X6C9N1R2T_1767225780000_1\""));
	assert_int_equal(d.returned, SENDER_DSN_RETURNED_FULL);
	sender_dsn_free(&d);
}

static void
test_refusals(void **state)
{
	struct sample s;
	struct sender_dsn d;
	char err[128];
	(void)state;

#define REFUSED(mutate) do { sample_init(&s, NULL); mutate; err[0] = '\0'; \
	assert_int_equal(sender_dsn_build(&s.r, &d, err, sizeof(err)), -1); \
	assert_null(d.data); assert_true(err[0] != '\0'); } while (0)
	REFUSED(s.r.mail_from = "");
	REFUSED(s.r.mail_from = NULL);
	REFUSED(s.r.mail_from = "a\r\nBcc: x@y");
	REFUSED(s.r.reporting_mta = NULL);
	REFUSED(s.r.reporting_mta = "two words");
	REFUSED(s.r.n_rcpts = 0);
	REFUSED(s.rc[1].address = "x@y\n");
	REFUSED(s.rc[1].action = 0);
	REFUSED((s.r.id = NULL, s.r.message_id = NULL));
	REFUSED(s.r.message_id = "<bad>");
	REFUSED(s.r.body = NULL);
	REFUSED(s.r.from = "x\r\n");
#undef REFUSED
}

/* ---- --emit: samples for tests/unit/check_dsn.py ---- */

static int
emit(const char *dir, const char *name, const struct sender_dsn_report *r)
{
	struct sender_dsn d;
	char err[256], path[512];
	FILE *f;

	if (sender_dsn_build(r, &d, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s: %s\n", name, err);
		return -1;
	}
	snprintf(path, sizeof(path), "%s/%s.eml", dir, name);
	if ((f = fopen(path, "wb")) == NULL || fwrite(d.data, 1, d.len, f) != d.len) {
		perror(path);
		if (f)
			fclose(f);
		sender_dsn_free(&d);
		return -1;
	}
	fclose(f);
	sender_dsn_free(&d);
	return 0;
}

static int
emit_all(const char *dir)
{
	static const char origu[] = "From: <j\xc3\xb6rg@client.test>\r\nSubject: gr\xc3\xbc\xc3\x9f"
	    "e\r\n\r\nhallo\r\n";
	struct sample s;
	char p[128];
	int rc = 0;

	sample_init(&s, "RET=HDRS");
	rc |= emit(dir, "failed_hdrs", &s.r);
	sample_init(&s, "RET=FULL");
	rc |= emit(dir, "failed_full", &s.r);
	sample_init(&s, "RET=FULL");
	s.rc[0].action = SENDER_DSN_DELAYED;
	s.rc[0].diagnostic = "451 4.7.1 Greylisted, try again later";
	s.rc[0].will_retry_until_ms = T0 + 5LL * 86400000;
	s.r.n_rcpts = 1;
	rc |= emit(dir, "delayed", &s.r);
	sample_init(&s, "RET=HDRS");
	s.mail_params[s.r.n_mail_params++] = "SMTPUTF8";
	s.r.mail_from = "j\xc3\xb6rg@client.test";
	s.rc[0].address = "b\xc3\xb6" "b@a.test";
	s.rc[0].params = p;
	s.rc[0].params_len = params(p, (const char *[]){ "ORCPT=utf-8;b\\x{F6}b@a.test" }, 1);
	s.r.body = (const uint8_t *)origu;
	s.r.body_len = sizeof(origu) - 1;
	rc |= emit(dir, "utf8", &s.r);
	return rc ? 1 : 0;
}

int
main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--emit") == 0)
		return emit_all(argv[2]);

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_wanted),
		cmocka_unit_test(test_params),
		cmocka_unit_test(test_status),
		cmocka_unit_test(test_xtext),
		cmocka_unit_test(test_failed_headers),
		cmocka_unit_test(test_failed_full),
		cmocka_unit_test(test_no_ret_and_nothing_to_return),
		cmocka_unit_test(test_delayed),
		cmocka_unit_test(test_8bit_original),
		cmocka_unit_test(test_smtputf8),
		cmocka_unit_test(test_folding_and_sanitizing),
		cmocka_unit_test(test_boundary_clash),
		cmocka_unit_test(test_refusals),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
