/*
 * sender_dsn - delivery status notifications (see sender_dsn.h for the
 * message built and the choices made).
 *
 * The three parts are built into buffers of their own first, so that the
 * MIME boundary can be chosen not to occur in any of them; then the header
 * and the parts are joined. Every line ends in CRLF, no line of ours is
 * longer than 998 octets (remote replies are at most 512), and header fields
 * are folded at blanks near 78 columns.
 */

/* System */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* common/ */
#include "hk_util.h"

/* This role */
#include "sender_dsn.h"

#define LINE_MAX_OCTETS 998     /* RFC 5322 2.1.1, CRLF excluded */
#define FOLD_AT 78
#define TEXT_MAX_OCTETS 900     /* a remote reply or an address, at most */

/* ---- a growing byte buffer ---- */

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static void
b_add(struct buf *b, const void *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		b->cap = (b->len + n + 1) * 2;
		b->p = xrealloc(b->p, b->cap);
	}
	if (n)
		memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void
b_str(struct buf *b, const char *s)
{
	b_add(b, s, strlen(s));
}

static void __attribute__((format(printf, 2, 3)))
b_fmt(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n <= 0)
		return;
	if (b->len + (size_t)n + 1 > b->cap) {
		b->cap = (b->len + (size_t)n + 1) * 2;
		b->p = xrealloc(b->p, b->cap);
	}
	va_start(ap, fmt);
	vsnprintf((char *)b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

/* b_field - "NAME: VALUE" CRLF, folded before a blank when a line would
 * pass FOLD_AT columns (a word longer than that stays whole). Folding only
 * inserts CRLF, so unfolding gives VALUE back; trailing blanks are dropped. */
static void
b_field(struct buf *b, const char *name, const char *value)
{
	size_t col = strlen(name) + 2, first = col;
	const char *p = value;

	b_str(b, name);
	b_str(b, ": ");
	while (*p) {
		/* The next word, with the blanks before it. */
		const char *w = p;
		while (*w == ' ')
			w++;
		const char *e = w;
		while (*e && *e != ' ')
			e++;
		size_t lead = (size_t)(w - p), word = (size_t)(e - w);
		if (word == 0)
			break;
		if (col + lead + word > FOLD_AT && col > first && lead > 0) {
			b_str(b, "\r\n");
			col = 0;
		}
		b_add(b, p, lead + word);
		col += lead + word;
		p = e;
	}
	b_str(b, "\r\n");
}

/* b_wrap - TEXT as lines of at most FOLD_AT columns, each starting with
 * INDENT, broken at blanks (a longer word gets a line of its own). */
static void
b_wrap(struct buf *b, const char *indent, const char *text)
{
	size_t col = 0, in = strlen(indent);
	const char *p = text;

	while (*p == ' ')
		p++;
	while (*p) {
		const char *e = p;
		while (*e && *e != ' ')
			e++;
		size_t word = (size_t)(e - p);
		if (col > 0 && col + 1 + word > FOLD_AT) {
			b_str(b, "\r\n");
			col = 0;
		}
		if (col == 0) {
			b_str(b, indent);
			col = in;
		} else {
			b_str(b, " ");
			col++;
		}
		b_add(b, p, word);
		col += word;
		for (p = e; *p == ' '; p++)
			;
	}
	if (col > 0)
		b_str(b, "\r\n");
}

/* ---- small predicates ---- */

static bool
has_ctl(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return true;
	return false;
}

static bool
is_ascii(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p >= 0x80)
			return false;
	return true;
}

static bool
has_8bit(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] >= 0x80)
			return true;
	return false;
}

/* content_ok - may these octets be returned as they are: no NUL, and no
 * line (ended by LF, CRLF or a bare CR) longer than LINE_MAX_OCTETS? */
static bool
content_ok(const uint8_t *p, size_t n)
{
	size_t line = 0;

	for (size_t i = 0; i < n; i++) {
		if (p[i] == 0)
			return false;
		if (p[i] == '\r' || p[i] == '\n') {
			line = 0;
			continue;
		}
		if (++line > LINE_MAX_OCTETS)
			return false;
	}
	return true;
}

/* b_lines - append P with every line ending made CRLF (a bare LF or CR
 * too), and a final CRLF if it has none. */
static void
b_lines(struct buf *b, const uint8_t *p, size_t n)
{
	size_t start = 0;

	for (size_t i = 0; i < n; i++) {
		if (p[i] != '\r' && p[i] != '\n')
			continue;
		b_add(b, p + start, i - start);
		b_str(b, "\r\n");
		if (p[i] == '\r' && i + 1 < n && p[i + 1] == '\n')
			i++;
		start = i + 1;
	}
	if (start < n) {
		b_add(b, p + start, n - start);
		b_str(b, "\r\n");
	}
}

/* printable - a copy of S for a header or text line: printable ASCII, every
 * other octet (controls, 8-bit) a '?' and blanks a space, at most
 * TEXT_MAX_OCTETS of it (so that no line we write can pass 998 octets).
 * Caller frees. */
static char *
printable(const char *s)
{
	s = s ? s : "";
	char *o = xstrndup(s, strnlen(s, TEXT_MAX_OCTETS));    /* it copies N octets */

	for (unsigned char *p = (unsigned char *)o; *p; p++) {
		if (*p == '\t' || *p == '\r' || *p == '\n')
			*p = ' ';
		else if (*p < 0x20 || *p >= 0x7f)
			*p = '?';
	}
	return o;
}

/* header_block - length of the original's header block (its last CRLF
 * included, the empty line not): up to the first empty line, or all of it. */
static size_t
header_block(const uint8_t *p, size_t n)
{
	if (n >= 2 && p[0] == '\r' && p[1] == '\n')
		return 0;
	if (n >= 1 && p[0] == '\n')
		return 0;
	for (size_t i = 0; i + 1 < n; i++) {
		if (p[i] != '\n')
			continue;
		if (p[i + 1] == '\n')
			return i + 1;
		if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n')
			return i + 1;
	}
	return n;
}

/* ---- public helpers ---- */

const char *
sender_dsn_action_name(enum sender_dsn_action a)
{
	switch (a) {
	case SENDER_DSN_FAILED: return "failed";
	case SENDER_DSN_DELAYED: return "delayed";
	case SENDER_DSN_DELIVERED: return "delivered";
	case SENDER_DSN_RELAYED: return "relayed";
	case SENDER_DSN_EXPANDED: return "expanded";
	}
	return "unknown";
}

static bool
key_is(const char *param, const char *key, const char **value)
{
	size_t k = strlen(key);

	if (strncasecmp(param, key, k) != 0 || param[k] != '=')
		return false;
	*value = param + k + 1;
	return true;
}

const char *
sender_dsn_param(const char *params, size_t params_len, const char *key)
{
	const char *v;

	for (size_t off = 0; params && off < params_len; ) {
		const char *p = params + off;
		size_t n = strnlen(p, params_len - off);
		if (n == params_len - off)
			break;  /* not NUL-terminated: not ours to read */
		if (key_is(p, key, &v))
			return v;
		off += n + 1;
	}
	return NULL;
}

const char *
sender_dsn_mail_param(const char *const *params, size_t n, const char *key)
{
	const char *v;

	for (size_t i = 0; params && i < n; i++)
		if (params[i] && key_is(params[i], key, &v))
			return v;
	return NULL;
}

/* has_word - does the comma-separated LIST hold WORD (any case)? */
static bool
has_word(const char *list, const char *word)
{
	size_t w = strlen(word);

	for (const char *p = list; ; ) {
		const char *c = strchr(p, ',');
		size_t n = c ? (size_t)(c - p) : strlen(p);
		if (n == w && strncasecmp(p, word, w) == 0)
			return true;
		if (c == NULL)
			return false;
		p = c + 1;
	}
}

bool
sender_dsn_wanted(enum sender_dsn_action a, const char *params, size_t params_len,
    const char *mail_from)
{
	const char *notify;

	if (mail_from == NULL || *mail_from == '\0')
		return false;
	notify = sender_dsn_param(params, params_len, "NOTIFY");
	if (notify == NULL)
		return a == SENDER_DSN_FAILED;
	if (has_word(notify, "NEVER"))
		return false;
	switch (a) {
	case SENDER_DSN_FAILED: return has_word(notify, "FAILURE");
	case SENDER_DSN_DELAYED: return has_word(notify, "DELAY");
	case SENDER_DSN_DELIVERED:
	case SENDER_DSN_RELAYED:
	case SENDER_DSN_EXPANDED: return has_word(notify, "SUCCESS");
	}
	return false;
}

static int
action_class(enum sender_dsn_action a)
{
	return a == SENDER_DSN_FAILED ? 5 : a == SENDER_DSN_DELAYED ? 4 : 2;
}

void
sender_dsn_status(const char *reply, enum sender_dsn_action a, char out[16])
{
	int cls = action_class(a);
	const char *p = reply;
	size_t d1 = 0, d2 = 0;

	snprintf(out, 16, "%d.0.0", cls);
	if (p == NULL)
		return;
	/* "DDD " then class "." 1*3digit "." 1*3digit, then a blank or the end. */
	for (int i = 0; i < 3; i++)
		if (p[i] < '0' || p[i] > '9')
			return;
	if (p[3] != ' ' && p[3] != '-')
		return;
	p += 4;
	if (p[0] - '0' != cls || p[1] != '.')
		return;
	while (p[2 + d1] >= '0' && p[2 + d1] <= '9')
		d1++;
	if (d1 < 1 || d1 > 3 || p[2 + d1] != '.')
		return;
	while (p[3 + d1 + d2] >= '0' && p[3 + d1 + d2] <= '9')
		d2++;
	if (d2 < 1 || d2 > 3 || (p[3 + d1 + d2] != ' ' && p[3 + d1 + d2] != '\0'))
		return;
	snprintf(out, 16, "%.*s", (int)(3 + d1 + d2), p);
}

int
sender_dsn_xtext_decode(const char *in, char *out, size_t out_size)
{
	size_t o = 0;

	for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
		int c = *p;
		if (c == '+') {
			int h = hk_hexval(p[1]), l = h < 0 ? -1 : hk_hexval(p[2]);
			if (l < 0)
				return -1;
			c = h * 16 + l;
			p += 2;
		}
		if (c < 0x20 || c == 0x7f || o + 1 >= out_size)
			return -1;
		out[o++] = (char)c;
	}
	if (o >= out_size)
		return -1;
	out[o] = '\0';
	return 0;
}

/* ---- the report ---- */

/* date - RFC 5322 date-time of MS, in UTC (independent of the local zone). */
static void
date(int64_t ms, char out[40])
{
	static const char *const wd[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char *const mo[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul",
	    "Aug", "Sep", "Oct", "Nov", "Dec" };
	time_t t = (time_t)((ms > 0 ? ms : 0) / 1000);
	struct tm tm;

	gmtime_r(&t, &tm);
	snprintf(out, 40, "%s, %02d %s %04d %02d:%02d:%02d +0000", wd[tm.tm_wday], tm.tm_mday,
	    mo[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* What the builder decided, shared by the parts. */
struct plan {
	const struct sender_dsn_report *r;
	bool global;                    /* RFC 6533 types */
	bool any_failed, any_delayed;
	enum sender_dsn_action headline; /* failed, else delayed, else success */
	size_t hlen;                    /* the original's header block */
	int returned;                   /* SENDER_DSN_RETURNED_* */
	const char *why_not_full;       /* RET=FULL asked for, headers given: why */
};

/* orcpt - the Original-Recipient value of ORCPT=TYPE;ADDR into B: an rfc822
 * address xtext-decoded (if that gives printable ASCII, as the ingress
 * checked); anything else (utf-8) as given (its utf-8-addr-xtext is ASCII,
 * its unitext appears only in a global report). */
static void
orcpt(struct buf *b, const char *v)
{
	const char *semi = strchr(v, ';');
	char dec[1024];

	if (semi && (size_t)(semi - v) == 6 && strncasecmp(v, "rfc822", 6) == 0 &&
	    sender_dsn_xtext_decode(semi + 1, dec, sizeof(dec)) == 0 && is_ascii(dec)) {
		b_fmt(b, "rfc822;%s", dec);
		return;
	}
	b_str(b, v);
}

static void
text_part(struct buf *b, const struct plan *pl)
{
	const struct sender_dsn_report *r = pl->r;
	char when[40];

	b_fmt(b, "This is the mail system at host %s.\r\n\r\n", r->reporting_mta);
	if (pl->any_failed)
		b_str(b, "Your message could not be delivered to one or more recipients.\r\n");
	if (pl->any_delayed) {
		if (pl->any_failed)
			b_str(b, "\r\n");
		b_str(b, "THIS IS A WARNING ONLY: you do not need to send your message again.\r\n"
		    "It could not be delivered yet to one or more recipients, and\r\n"
		    "delivery will be retried.\r\n");
	}
	if (!pl->any_failed && !pl->any_delayed)
		b_str(b, "Your message was delivered to, or relayed towards, the recipients below.\r\n");
	b_str(b, "\r\n");
	for (size_t i = 0; i < r->n_rcpts; i++) {
		const struct sender_dsn_rcpt *rc = &r->rcpts[i];
		char *diag = printable(rc->diagnostic);
		char *mta = printable(rc->remote_mta);

		b_fmt(b, "<%s>: %s", rc->address, sender_dsn_action_name(rc->action));
		if (*diag && *mta)
			b_fmt(b, "; host %s said:\r\n", mta);
		else if (*diag)
			b_str(b, ":\r\n");
		else if (*mta)
			b_fmt(b, " (host %s)\r\n", mta);
		else
			b_str(b, "\r\n");
		if (*diag)
			b_wrap(b, "    ", diag);
		if (rc->action == SENDER_DSN_DELAYED && rc->will_retry_until_ms > 0) {
			date(rc->will_retry_until_ms, when);
			b_fmt(b, "    still being retried until %s\r\n", when);
		}
		free(diag);
		free(mta);
	}
	if (pl->returned == SENDER_DSN_RETURNED_FULL)
		b_str(b, "\r\nYour message is returned below.\r\n");
	else if (pl->returned == SENDER_DSN_RETURNED_HEADERS && pl->why_not_full)
		b_fmt(b, "\r\nOnly the headers of your message are returned below: %s.\r\n",
		    pl->why_not_full);
	else if (pl->returned == SENDER_DSN_RETURNED_HEADERS)
		b_str(b, "\r\nThe headers of your message are returned below.\r\n");
}

static void
status_part(struct buf *b, const struct plan *pl)
{
	const struct sender_dsn_report *r = pl->r;
	const char *envid = sender_dsn_mail_param(r->mail_params, r->n_mail_params, "ENVID");
	char when[40], st[16], dec[1024];
	struct buf v = { 0 };

	b_fmt(b, "Reporting-MTA: dns; %s\r\n", r->reporting_mta);
	if (r->id && *r->id) {
		char *id = printable(r->id);
		b_fmt(b, "X-Hikyaku-Queue-ID: %s\r\n", id);
		free(id);
	}
	if (envid) {
		/* xtext-decoded; what will not decode to printable text is given
		 * as it came (it is printable ASCII, checked at the ingress). */
		if (sender_dsn_xtext_decode(envid, dec, sizeof(dec)) != 0 || !is_ascii(dec))
			snprintf(dec, sizeof(dec), "%s", envid);
		char *e = printable(dec);
		b_field(b, "Original-Envelope-Id", e);
		free(e);
	}
	if (r->arrival_ms > 0) {
		date(r->arrival_ms, when);
		b_fmt(b, "Arrival-Date: %s\r\n", when);
	}
	for (size_t i = 0; i < r->n_rcpts; i++) {
		const struct sender_dsn_rcpt *rc = &r->rcpts[i];
		const char *o = sender_dsn_param(rc->params, rc->params_len, "ORCPT");

		b_str(b, "\r\n");
		if (o && strlen(o) <= TEXT_MAX_OCTETS) {
			v.len = 0;
			orcpt(&v, o);
			b_field(b, "Original-Recipient", (const char *)v.p);
		}
		/* RFC 6533 3: the utf-8 address type for a non-ASCII address. */
		v.len = 0;
		b_fmt(&v, "%s; %s", is_ascii(rc->address) ? "rfc822" : "utf-8", rc->address);
		b_field(b, "Final-Recipient", (const char *)v.p);
		b_fmt(b, "Action: %s\r\n", sender_dsn_action_name(rc->action));
		if (rc->status && *rc->status) {
			char *s = printable(rc->status);
			b_fmt(b, "Status: %.15s\r\n", s);
			free(s);
		} else {
			sender_dsn_status(rc->diagnostic, rc->action, st);
			b_fmt(b, "Status: %s\r\n", st);
		}
		char *mta = printable(rc->remote_mta);
		if (*mta)
			b_fmt(b, "Remote-MTA: dns; %s\r\n", mta);
		if (rc->diagnostic && *rc->diagnostic) {
			char *d = printable(rc->diagnostic);
			v.len = 0;
			b_fmt(&v, "%s; %s", *mta ? "smtp" : "X-Hikyaku", d);
			b_field(b, "Diagnostic-Code", (const char *)v.p);
			free(d);
		}
		free(mta);
		if (rc->last_attempt_ms > 0) {
			date(rc->last_attempt_ms, when);
			b_fmt(b, "Last-Attempt-Date: %s\r\n", when);
		}
		if (rc->action == SENDER_DSN_DELAYED && rc->will_retry_until_ms > 0) {
			date(rc->will_retry_until_ms, when);
			b_fmt(b, "Will-Retry-Until: %s\r\n", when);
		}
	}
	free(v.p);
}

/* plan_return - what of the original goes in the third part, and why. */
static void
plan_return(struct plan *pl)
{
	const struct sender_dsn_report *r = pl->r;
	const char *ret = sender_dsn_mail_param(r->mail_params, r->n_mail_params, "RET");
	const char *body = sender_dsn_mail_param(r->mail_params, r->n_mail_params, "BODY");
	size_t max = r->max_return ? r->max_return : SENDER_DSN_RETURN_MAX_DEFAULT;
	bool want_full = ret && strcasecmp(ret, "FULL") == 0 && pl->any_failed;

	pl->hlen = header_block(r->body, r->body_len);
	pl->returned = SENDER_DSN_RETURNED_NONE;
	if (want_full) {
		if (body && strcasecmp(body, "BINARYMIME") == 0)
			pl->why_not_full = "it was sent as binary MIME";
		else if (r->body_len > max)
			pl->why_not_full = "it is too large to be returned whole";
		else if (!content_ok(r->body, r->body_len))
			pl->why_not_full = "it has lines too long or NUL octets";
		else
			pl->returned = SENDER_DSN_RETURNED_FULL;
	}
	if (pl->returned == SENDER_DSN_RETURNED_NONE && pl->hlen > 0 &&
	    content_ok(r->body, pl->hlen))
		pl->returned = SENDER_DSN_RETURNED_HEADERS;
	if (pl->returned == SENDER_DSN_RETURNED_NONE)
		pl->why_not_full = NULL;        /* nothing is returned: say nothing */
}

static int
check_input(const struct sender_dsn_report *r, char *err, size_t errlen)
{
#define BAD(...) do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)
	if (r->reporting_mta == NULL || *r->reporting_mta == '\0' || has_ctl(r->reporting_mta) ||
	    strchr(r->reporting_mta, ' ') || !is_ascii(r->reporting_mta) ||
	    strlen(r->reporting_mta) > 255)
		BAD("dsn: no reporting MTA host name, or not a host name");
	if (r->mail_from == NULL || *r->mail_from == '\0')
		BAD("dsn: no envelope sender to report to");
	if (has_ctl(r->mail_from) || strlen(r->mail_from) > TEXT_MAX_OCTETS)
		BAD("dsn: control character in the envelope sender, or too long");
	if (r->from && (*r->from == '\0' || has_ctl(r->from) || strlen(r->from) > TEXT_MAX_OCTETS))
		BAD("dsn: bad From: address");
	if ((r->message_id == NULL || *r->message_id == '\0') && (r->id == NULL || *r->id == '\0'))
		BAD("dsn: neither a Message-ID nor a queue id");
	if (r->message_id && (has_ctl(r->message_id) || !is_ascii(r->message_id) ||
	    strpbrk(r->message_id, "<> ")))
		BAD("dsn: bad Message-ID");
	if (r->n_rcpts == 0 || r->rcpts == NULL)
		BAD("dsn: no recipient");
	if (r->body_len > 0 && r->body == NULL)
		BAD("dsn: no body");
	for (size_t i = 0; i < r->n_rcpts; i++) {
		const struct sender_dsn_rcpt *rc = &r->rcpts[i];
		const char *o;
		if (rc->address == NULL || *rc->address == '\0' || has_ctl(rc->address) ||
		    strlen(rc->address) > TEXT_MAX_OCTETS)
			BAD("dsn: recipient %zu: no address, a control character in it, or too long", i);
		if (rc->action < SENDER_DSN_FAILED || rc->action > SENDER_DSN_EXPANDED)
			BAD("dsn: recipient %zu: unknown action %d", i, (int)rc->action);
		if ((o = sender_dsn_param(rc->params, rc->params_len, "ORCPT")) && has_ctl(o))
			BAD("dsn: recipient %zu: control character in ORCPT", i);
	}
	return 0;
#undef BAD
}

/* mail_flag - is the bare keyword KEY (SMTPUTF8) among the MAIL params? */
static bool
mail_flag(const struct sender_dsn_report *r, const char *key)
{
	for (size_t i = 0; r->mail_params && i < r->n_mail_params; i++)
		if (r->mail_params[i] && strcasecmp(r->mail_params[i], key) == 0)
			return true;
	return false;
}

/* needs_global - is UTF-8 in an address of the report, or in the header
 * block of an SMTPUTF8 original? */
static bool
needs_global(const struct plan *pl)
{
	const struct sender_dsn_report *r = pl->r;

	if (!is_ascii(r->mail_from))
		return true;
	for (size_t i = 0; i < r->n_rcpts; i++) {
		const char *o = sender_dsn_param(r->rcpts[i].params, r->rcpts[i].params_len, "ORCPT");
		if (!is_ascii(r->rcpts[i].address) || (o && !is_ascii(o)))
			return true;
	}
	return mail_flag(r, "SMTPUTF8") && has_8bit(r->body, pl->hlen);
}

/* boundary - one that occurs in none of the parts: "=_" never appears in
 * base64 or at the start of our own lines; the counter settles the rest. */
static void
boundary(const struct sender_dsn_report *r, struct buf *const *parts, size_t n, char out[96])
{
	const char *id = r->id && *r->id ? r->id : "dsn";

	for (unsigned k = 0; ; k++) {
		bool clash = false;
		snprintf(out, 96, "=_hikyaku_%.40s_%lld_%u", id, (long long)r->now_ms, k);
		for (const char *c = out; *c; c++)
			if (!((*c >= '0' && *c <= '9') || (*c >= 'A' && *c <= 'Z') ||
			    (*c >= 'a' && *c <= 'z') || strchr("=_-.", *c)))
				out[c - out] = '_';     /* a bchars-safe, unquoted-safe id */
		for (size_t i = 0; i < n && !clash; i++)
			clash = parts[i]->len > 0 && memmem(parts[i]->p, parts[i]->len, out, strlen(out));
		if (!clash)
			return;
	}
}

static const char *
subject(enum sender_dsn_action headline)
{
	switch (headline) {
	case SENDER_DSN_FAILED: return "Undelivered Mail Returned to Sender";
	case SENDER_DSN_DELAYED: return "Delayed Mail (still being retried)";
	default: return "Successful Mail Delivery Report";
	}
}

int
sender_dsn_build(const struct sender_dsn_report *r, struct sender_dsn *out, char *err,
    size_t errlen)
{
	struct plan pl = { .r = r };
	struct buf text = { 0 }, status = { 0 }, orig = { 0 }, m = { 0 };
	struct buf *parts[] = { &text, &status, &orig };
	char bnd[96], when[40];
	bool e_text, e_status, e_orig;

	memset(out, 0, sizeof(*out));
	if (check_input(r, err, errlen) != 0)
		return -1;
	for (size_t i = 0; i < r->n_rcpts; i++) {
		pl.any_failed |= r->rcpts[i].action == SENDER_DSN_FAILED;
		pl.any_delayed |= r->rcpts[i].action == SENDER_DSN_DELAYED;
	}
	pl.headline = pl.any_failed ? SENDER_DSN_FAILED : pl.any_delayed ? SENDER_DSN_DELAYED :
	    r->rcpts[0].action;
	plan_return(&pl);
	pl.global = needs_global(&pl);

	text_part(&text, &pl);
	status_part(&status, &pl);
	if (pl.returned == SENDER_DSN_RETURNED_FULL)
		b_lines(&orig, r->body, r->body_len);
	else if (pl.returned == SENDER_DSN_RETURNED_HEADERS)
		b_lines(&orig, r->body, pl.hlen);
	e_text = has_8bit(text.p, text.len);
	e_status = has_8bit(status.p, status.len);
	e_orig = has_8bit(orig.p, orig.len);
	boundary(r, parts, 3, bnd);

	/* The header. */
	if (r->from)
		b_fmt(&m, "From: %s\r\n", r->from);
	else
		b_fmt(&m, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", r->reporting_mta);
	b_fmt(&m, "To: <%s>\r\n", r->mail_from);
	b_fmt(&m, "Subject: %s\r\n", subject(pl.headline));
	date(r->now_ms, when);
	b_fmt(&m, "Date: %s\r\n", when);
	if (r->message_id && *r->message_id) {
		b_fmt(&m, "Message-ID: <%s>\r\n", r->message_id);
	} else {
		char *id = printable(r->id);
		for (char *c = id; *c; c++)
			if (strchr("<>@ ()[]\\\",;:", *c))
				*c = '_';
		b_fmt(&m, "Message-ID: <%s.%s.%lld@%s>\r\n", id, sender_dsn_action_name(pl.headline),
		    (long long)r->now_ms, r->reporting_mta);
		free(id);
	}
	b_str(&m, "Auto-Submitted: auto-replied\r\n");
	b_str(&m, "MIME-Version: 1.0\r\n");
	b_fmt(&m, "Content-Type: multipart/report; report-type=%s;\r\n\tboundary=\"%s\"\r\n",
	    pl.global ? "global-delivery-status" : "delivery-status", bnd);
	if (e_text || e_status || e_orig)
		b_str(&m, "Content-Transfer-Encoding: 8bit\r\n");
	b_str(&m, "\r\nThis is a MIME-encapsulated message.\r\n");

	/* 1: for people. */
	b_fmt(&m, "\r\n--%s\r\n", bnd);
	b_str(&m, "Content-Description: Notification\r\n");
	b_fmt(&m, "Content-Type: text/plain; charset=%s\r\n", e_text ? "utf-8" : "us-ascii");
	if (e_text)
		b_str(&m, "Content-Transfer-Encoding: 8bit\r\n");
	b_str(&m, "\r\n");
	b_add(&m, text.p, text.len);

	/* 2: for programs. */
	b_fmt(&m, "\r\n--%s\r\n", bnd);
	b_str(&m, "Content-Description: Delivery report\r\n");
	b_fmt(&m, "Content-Type: message/%s\r\n",
	    pl.global ? "global-delivery-status" : "delivery-status");
	if (e_status)
		b_str(&m, "Content-Transfer-Encoding: 8bit\r\n");
	b_str(&m, "\r\n");
	b_add(&m, status.p, status.len);

	/* 3: the original, or its headers. */
	if (pl.returned != SENDER_DSN_RETURNED_NONE) {
		bool full = pl.returned == SENDER_DSN_RETURNED_FULL;
		const char *what = pl.headline == SENDER_DSN_FAILED ? "Undelivered" :
		    pl.headline == SENDER_DSN_DELAYED ? "Delayed" : "Delivered";
		b_fmt(&m, "\r\n--%s\r\n", bnd);
		b_fmt(&m, "Content-Description: %s Message%s\r\n", what, full ? "" : " Headers");
		if (full)
			b_fmt(&m, "Content-Type: message/%s\r\n", pl.global ? "global" : "rfc822");
		else
			b_fmt(&m, "Content-Type: %s\r\n",
			    pl.global ? "message/global-headers" : "text/rfc822-headers");
		if (e_orig)
			b_str(&m, "Content-Transfer-Encoding: 8bit\r\n");
		b_str(&m, "\r\n");
		b_add(&m, orig.p, orig.len);
	}
	b_fmt(&m, "\r\n--%s--\r\n", bnd);

	out->data = m.p;
	out->len = m.len;
	out->smtputf8 = !is_ascii(r->mail_from) || (r->from && !is_ascii(r->from));
	out->eightbit = e_text || e_status || e_orig || out->smtputf8;
	out->global = pl.global;
	out->returned = pl.returned;
	free(text.p);
	free(status.p);
	free(orig.p);
	return 0;
}

void
sender_dsn_free(struct sender_dsn *d)
{
	free(d->data);
	memset(d, 0, sizeof(*d));
}
