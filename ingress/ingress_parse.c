/*
 * ingress_parse - command lines, MAIL/RCPT paths and the DATA reader, as
 * pure functions over caller-owned state (see ingress_parse.h).
 *
 * Address policy, in short: paths must be bracketed; a dot-string local part
 * may have any atext and dots in any arrangement (some Japanese carriers
 * issued "a..b." addresses and they are still in use); UTF-8 in the local
 * part only under SMTPUTF8, and only well-formed. Relay tricks are refused
 * with 553 5.7.1 and named: source routes, address literals (unless the
 * caller allows them), a quoted local part hiding '@', and in a recipient
 * '%' and '!' routing, quoted or not -- all judged on the unquoted text. The
 * domain must pass hk_domain_canon; the envelope keeps it as the client wrote
 * it (the envelope is the client's), unless only the canonical form is valid
 * on the wire (a U-label becomes its A-label, a trailing dot goes). The
 * router shards on the canonical form.
 */
/* System */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* common/ */
#include "hk_domain.h"
#include "hk_util.h"

/* This role */
#include "ingress_param.h"
#include "ingress_parse.h"

/* --- buffers and command lines ------------------------------------------- */

void
ingress_buf_append(struct ingress_buf *b, const void *p, size_t n)
{
	if (n == 0)
		return;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		b->data = xrealloc(b->data, cap);
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

void
ingress_buf_free(struct ingress_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

enum ingress_line_result
ingress_line_next(struct ingress_linereader *r, const char *data, size_t len,
    size_t *consumed, const char **line, size_t *line_len)
{
	const char *lf;
	size_t off = 0, n, scan;

	*consumed = 0;
	*line = NULL;
	*line_len = 0;
	if (r->discarding) {
		if ((lf = memchr(data, '\n', len)) == NULL) {
			*consumed = len;
			return INGRESS_LINE_MORE;
		}
		off = (size_t)(lf - data) + 1;
		r->discarding = false;
	}
	data += off;
	n = len - off;
	/* A valid line has its LF within the first INGRESS_LINE_MAX bytes. */
	scan = n < INGRESS_LINE_MAX ? n : INGRESS_LINE_MAX;
	if ((lf = memchr(data, '\n', scan)) != NULL) {
		size_t l = (size_t)(lf - data);
		*line = data;
		*line_len = l > 0 && data[l - 1] == '\r' ? l - 1 : l;
		*consumed = off + l + 1;
		return INGRESS_LINE_OK;
	}
	if (n < INGRESS_LINE_MAX) {
		*consumed = off;
		return INGRESS_LINE_MORE;
	}
	/* Too long: drop what we have, and the rest as it comes. */
	if ((lf = memchr(data + scan, '\n', n - scan)) != NULL) {
		*consumed = off + (size_t)(lf - data) + 1;
	} else {
		*consumed = len;
		r->discarding = true;
	}
	return INGRESS_LINE_TOO_LONG;
}

int
ingress_cmd_split(char *line, size_t len, struct ingress_cmdline *out, char err[INGRESS_REPLY_MAX])
{
	size_t v = 0;

	if (memchr(line, '\0', len) != NULL) {
		snprintf(err, INGRESS_REPLY_MAX, "500 5.5.2 NUL character not allowed");
		return -1;
	}
	while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t'))
		line[--len] = '\0';
	while (v < len && isalpha((unsigned char)line[v]))
		v++;
	out->verb[0] = '\0';
	out->args = line + len;
	if (v == 0 || v >= sizeof(out->verb) || (v < len && line[v] != ' ' && line[v] != '\t'))
		return 0; /* not a verb we could know */
	for (size_t i = 0; i < v; i++)
		out->verb[i] = (char)toupper((unsigned char)line[i]);
	out->verb[v] = '\0';
	while (v < len && (line[v] == ' ' || line[v] == '\t'))
		v++;
	out->args = line + v;
	return 0;
}

/* --- paths ---------------------------------------------------------------- */

size_t
ingress_utf8_char(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	unsigned char lo = 0x80, hi = 0xbf;
	size_t need;

	if (n == 0)
		return 0;
	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		need = 2;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		need = 3;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		need = 4;
	else
		return 0; /* continuation byte, overlong lead (C0, C1) or beyond U+10FFFF */
	/* The second byte's range is what rules out overlongs, surrogates and > U+10FFFF. */
	if (p[0] == 0xe0)
		lo = 0xa0;
	else if (p[0] == 0xed)
		hi = 0x9f;
	else if (p[0] == 0xf0)
		lo = 0x90;
	else if (p[0] == 0xf4)
		hi = 0x8f;
	/* Byte by byte, so a NUL ends a truncated sequence before we read past it. */
	for (size_t i = 1; i < need; i++) {
		if (i >= n || p[i] < lo || p[i] > hi)
			return 0;
		lo = 0x80;
		hi = 0xbf;
	}
	return need;
}

/* utf8_at - ingress_utf8_char on a NUL-terminated string. */
static size_t
utf8_at(const char *p)
{
	return ingress_utf8_char(p, strnlen(p, 4));
}

static int
path_error(char err[INGRESS_REPLY_MAX], enum ingress_path_kind kind, const char *fmt, ...)
{
	char why[160];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	snprintf(err, INGRESS_REPLY_MAX, "501 %s Bad %s address syntax: %s",
	    kind == INGRESS_PATH_MAIL ? "5.1.7" : "5.1.3",
	    kind == INGRESS_PATH_MAIL ? "sender" : "recipient", why);
	return -1;
}

/* A well-formed address we refuse: a relay trick, named in the reply. */
static int
path_refused(char err[INGRESS_REPLY_MAX], enum ingress_path_kind kind, const char *trick)
{
	snprintf(err, INGRESS_REPLY_MAX, "553 5.7.1 %s address rejected: %s not allowed",
	    kind == INGRESS_PATH_MAIL ? "Sender" : "Recipient", trick);
	return -1;
}

/* RFC 5322 atext, the characters of a dot-atom besides '.'. */
static bool
is_atext(unsigned char c)
{
	return isalnum(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/*
 * Scan a quoted-string local part at p (on the opening quote) into its
 * unquoted text dec[0..*dec_len) (dec holds INGRESS_LINE_MAX); returns the
 * byte after the closing quote, or NULL with the reason in *why. UTF-8 is
 * taken here and judged by the caller (RFC 6531 qtextSMTP).
 */
static const char *
scan_quoted(const char *p, char *dec, size_t *dec_len, bool *non_ascii, const char **why)
{
	size_t n = 0, k = 1;

	for (p++; *p != '"'; p += k) {
		unsigned char c = (unsigned char)*p;
		k = 1;
		if (c == '\0') {
			*why = "unterminated quoted local part";
			return NULL;
		}
		if (c == '\\') {
			c = (unsigned char)*++p;
			if (c < 32 || c > 126) {
				*why = "bad escape in quoted local part";
				return NULL;
			}
		} else if (c >= 0x80) {
			if ((k = utf8_at(p)) == 0) {
				*why = "invalid UTF-8 in local part";
				return NULL;
			}
			*non_ascii = true;
		} else if (c < 32 || c > 126) {
			*why = "invalid character in quoted local part";
			return NULL;
		}
		if (n + k >= INGRESS_LINE_MAX) {
			*why = "address too long";
			return NULL;
		}
		if (k == 1)
			dec[n] = (char)c;
		else
			memcpy(dec + n, p, k);
		n += k;
	}
	*dec_len = n;
	return p + 1;
}

/*
 * relay_trick - the routing trick in an (unquoted) local part, or NULL.
 * In a recipient, '%' and '!' ask a relay to forward the mail a second time
 * (user%other@relay, host!user); in any address, a quoted '@' hides a second
 * domain from us that a later server may act on.
 */
static const char *
relay_trick(enum ingress_path_kind kind, bool quoted, const char *dec, size_t len)
{
	if (quoted && memchr(dec, '@', len) != NULL)
		return "quoted local part with '@'";
	if (kind == INGRESS_PATH_MAIL)
		return NULL; /* a sender is not forwarded to */
	if (quoted && memchr(dec, '%', len) != NULL)
		return "quoted local part with '%'";
	if (quoted && memchr(dec, '!', len) != NULL)
		return "quoted local part with '!'";
	if (memchr(dec, '%', len) != NULL)
		return "%-hack (user%host@relay)";
	if (memchr(dec, '!', len) != NULL)
		return "bang path (host!user)";
	return NULL;
}

/* An address literal's text between the brackets: IPv4 or IPv6 (RFC 5321 4.1.3). */
static bool
literal_ok(const char *s, size_t n)
{
	char buf[64];
	unsigned char addr[16];

	if (n == 0 || n >= sizeof(buf))
		return false;
	memcpy(buf, s, n);
	buf[n] = '\0';
	if (strncasecmp(buf, "IPv6:", 5) == 0)
		return inet_pton(AF_INET6, buf + 5, addr) == 1;
	return inet_pton(AF_INET, buf, addr) == 1;
}

int
ingress_parse_path(const char *args, enum ingress_path_kind kind, struct ingress_path *out,
    char err[INGRESS_REPLY_MAX])
{
	return ingress_parse_path2(args, kind, 0, out, err);
}

int
ingress_parse_path2(const char *args, enum ingress_path_kind kind, unsigned flags,
    struct ingress_path *out, char err[INGRESS_REPLY_MAX])
{
	const char *kw = kind == INGRESS_PATH_MAIL ? "FROM:" : "TO:";
	const char *p, *local, *dom, *keep, *trick;
	size_t local_len, dom_len, dec_len, klen;
	bool quoted, non_ascii = false;
	char dec[INGRESS_LINE_MAX], dbuf[HK_DOMAIN_MAX], canon[HK_DOMAIN_MAX];

	memset(out, 0, sizeof(*out));
	if (strncasecmp(args, kw, strlen(kw)) != 0) {
		snprintf(err, INGRESS_REPLY_MAX, "501 5.5.4 Syntax: %s",
		    kind == INGRESS_PATH_MAIL ? "MAIL FROM:<address>" : "RCPT TO:<address>");
		return -1;
	}
	p = args + strlen(kw);
	while (*p == ' ')
		p++; /* "FROM: <a@b>" is common enough to accept */
	if (*p != '<')
		return path_error(err, kind, "address must be enclosed in <>");
	p++;
	if (*p == '@') {
		/* RFC 5321 says accept and ignore a source route; a relay refuses it. */
		size_t span = strcspn(p, ">");
		if (memchr(p, ':', span) != NULL)
			return path_refused(err, kind, "source route");
		return path_error(err, kind, "empty local part");
	}
	if (*p == '>') {
		if (kind == INGRESS_PATH_RCPT)
			return path_error(err, kind, "empty address");
		p++;
		if (*p != '\0' && *p != ' ')
			return path_error(err, kind, "unexpected text after '>'");
		return ingress__params_parse(p, kind, flags, out, err); /* the null sender <> */
	}

	/* The local part, and its unquoted text for the checks. */
	local = p;
	quoted = *p == '"';
	if (quoted) {
		const char *why = NULL;
		if ((p = scan_quoted(p, dec, &dec_len, &non_ascii, &why)) == NULL)
			return path_error(err, kind, "%s", why);
	} else {
		while (*p != '\0' && *p != '@' && *p != '>') {
			unsigned char c = (unsigned char)*p;
			size_t k = 1;
			if (c >= 0x80) {
				if ((k = utf8_at(p)) == 0)
					return path_error(err, kind, "invalid UTF-8 in local part");
				non_ascii = true; /* RFC 6531 atext */
			} else if (c != '.' && !is_atext(c)) {
				return path_error(err, kind, "invalid character in local part");
			}
			p += k;
		}
		dec_len = (size_t)(p - local);
		if (dec_len >= sizeof(dec))
			return path_error(err, kind, "address too long");
		memcpy(dec, local, dec_len);
	}
	local_len = (size_t)(p - local);
	if ((trick = relay_trick(kind, quoted, dec, dec_len)) != NULL)
		return path_refused(err, kind, trick);
	if (*p == '\0')
		return path_error(err, kind, "missing closing '>'");
	if (*p != '@')
		return path_error(err, kind, "no domain");

	/* The domain: a name, or an address literal. */
	dom = ++p;
	if (*p == '[') {
		const char *end = strchr(p, ']');
		if (end == NULL || !literal_ok(p + 1, (size_t)(end - p - 1)))
			return path_error(err, kind, "invalid address literal");
		if (!(flags & INGRESS_PATH_LITERAL_OK))
			return path_refused(err, kind, "address literal as domain");
		p = end + 1;
		if (*p == '\0')
			return path_error(err, kind, "missing closing '>'");
		if (*p != '>')
			return path_error(err, kind, "unexpected text after address literal");
		out->literal = true;
		keep = dom;
		klen = (size_t)(p - dom);
	} else {
		while (*p != '\0' && *p != '>') {
			unsigned char c = (unsigned char)*p;
			size_t k = 1;
			if (c == '@')
				return path_error(err, kind, "more than one '@'");
			if (c >= 0x80 && (k = utf8_at(p)) == 0)
				return path_error(err, kind, "invalid UTF-8 in domain");
			if (c < 0x80 && !isalnum(c) && c != '-' && c != '.')
				return path_error(err, kind, "invalid character in domain");
			p += k;
		}
		if (*p == '\0')
			return path_error(err, kind, "missing closing '>'");
		dom_len = (size_t)(p - dom);
		if (dom_len == 0)
			return path_error(err, kind, "no domain");
		if (dom_len >= sizeof(dbuf))
			return path_error(err, kind, "domain too long");
		memcpy(dbuf, dom, dom_len);
		dbuf[dom_len] = '\0';
		if (hk_domain_canon(dbuf, canon) != 0)
			return path_error(err, kind, "invalid domain name");
		keep = strcasecmp(dbuf, canon) == 0 ? dbuf : canon;
		klen = strlen(keep);
	}
	if (local_len + 1 + klen > INGRESS_ADDR_MAX)
		return path_error(err, kind, "address too long");
	memcpy(out->addr, local, local_len);
	out->addr[local_len] = '@';
	memcpy(out->addr + local_len + 1, keep, klen);
	out->addr[local_len + 1 + klen] = '\0';
	p++; /* '>' */
	if (*p != '\0' && *p != ' ')
		return path_error(err, kind, "unexpected text after '>'");
	if (ingress__params_parse(p, kind, flags, out, err) != 0)
		return -1;
	/* Last, because a MAIL's own SMTPUTF8 parameter allows it (RFC 6531). */
	out->non_ascii = non_ascii;
	if (non_ascii && !(flags & INGRESS_PATH_UTF8_OK) && !out->smtputf8) {
		snprintf(err, INGRESS_REPLY_MAX,
		    "553 5.6.7 %s address rejected: non-ASCII local part requires SMTPUTF8",
		    kind == INGRESS_PATH_MAIL ? "Sender" : "Recipient");
		return -1;
	}
	return 0;
}

/* --- DATA ---------------------------------------------------------------- */

void
ingress_data_init(struct ingress_data *d, struct ingress_buf *out, size_t limit)
{
	memset(d, 0, sizeof(*d));
	d->state = INGRESS_DATA_BOL;
	d->prev_crlf = true; /* the DATA command line ended the previous line */
	d->limit = limit;
	d->out = out;
}

static bool
data_failed(const struct ingress_data *d)
{
	return d->too_big || d->line_too_long || d->nul;
}

/* Append message bytes, or just count them once the message is refused. */
static void
emit(struct ingress_data *d, const char *p, size_t n)
{
	if (d->size + n > d->limit)
		d->too_big = true;
	d->size += n;
	if (!data_failed(d))
		ingress_buf_append(d->out, p, n);
}

static void
end_line(struct ingress_data *d, bool crlf)
{
	size_t raw = d->line_len - (crlf ? 1 : 0);

	if (raw > INGRESS_TEXT_LINE_MAX)
		d->line_too_long = true;
	if (!crlf)
		d->bare_lf = true;
	emit(d, "\r\n", 2);
	d->prev_crlf = crlf;
	d->line_len = 0;
	d->state = INGRESS_DATA_BOL;
}

size_t
ingress_data_feed(struct ingress_data *d, const char *p, size_t len)
{
	size_t i = 0;

	while (i < len && d->state != INGRESS_DATA_DONE) {
		if (d->state == INGRESS_DATA_TEXT) {
			/* Fast path: copy a run of ordinary bytes at once. */
			size_t j = i;
			while (j < len && p[j] != '\r' && p[j] != '\n' && p[j] != '\0')
				j++;
			if (j > i) {
				emit(d, p + i, j - i);
				d->line_len += j - i;
				i = j;
				continue;
			}
		}
		char c = p[i++];
		if (c == '\0')
			d->nul = true;
		if (c != '\n')
			d->line_len++;
		switch (d->state) {
		case INGRESS_DATA_BOL:
			if (c == '.')
				d->state = INGRESS_DATA_DOT;
			else if (c == '\r')
				d->state = INGRESS_DATA_CR;
			else if (c == '\n')
				end_line(d, false);
			else {
				emit(d, &c, 1);
				d->state = INGRESS_DATA_TEXT;
			}
			break;
		case INGRESS_DATA_DOT:
			if (c == '\r')
				d->state = INGRESS_DATA_DOT_CR;
			else if (c == '\n') {
				/* A lone "." ended by a bare LF is content, not the end. */
				emit(d, ".", 1);
				end_line(d, false);
			} else {
				emit(d, &c, 1); /* the stuffed dot is dropped */
				d->state = INGRESS_DATA_TEXT;
			}
			break;
		case INGRESS_DATA_DOT_CR:
			if (c == '\n') {
				if (d->prev_crlf) {
					d->state = INGRESS_DATA_DONE;
					break;
				}
				emit(d, ".", 1);
				end_line(d, true);
			} else {
				/* ".\r" then more text: unstuff, keep the bare CR. */
				emit(d, "\r", 1);
				if (c == '\r')
					d->state = INGRESS_DATA_CR;
				else {
					emit(d, &c, 1);
					d->state = INGRESS_DATA_TEXT;
				}
			}
			break;
		case INGRESS_DATA_TEXT:
			if (c == '\r')
				d->state = INGRESS_DATA_CR;
			else if (c == '\n')
				end_line(d, false);
			else
				emit(d, &c, 1); /* NUL */
			break;
		case INGRESS_DATA_CR:
			if (c == '\n')
				end_line(d, true);
			else if (c == '\r')
				emit(d, "\r", 1); /* the earlier CR was bare */
			else {
				emit(d, "\r", 1);
				emit(d, &c, 1);
				d->state = INGRESS_DATA_TEXT;
			}
			break;
		case INGRESS_DATA_DONE:
			break;
		}
	}
	return i;
}

bool
ingress__msg_failed(bool too_big, bool line_too_long, bool nul, char err[INGRESS_REPLY_MAX])
{
	if (too_big)
		snprintf(err, INGRESS_REPLY_MAX, "552 5.3.4 Message size exceeds fixed limit");
	else if (line_too_long)
		snprintf(err, INGRESS_REPLY_MAX,
		    "550 5.6.0 Message rejected: line too long (more than %d characters)",
		    INGRESS_TEXT_LINE_MAX);
	else if (nul)
		snprintf(err, INGRESS_REPLY_MAX, "554 5.6.0 Message rejected: NUL character in data");
	else
		return false;
	return true;
}

bool
ingress_data_failed(const struct ingress_data *d, char err[INGRESS_REPLY_MAX])
{
	return ingress__msg_failed(d->too_big, d->line_too_long, d->nul, err);
}
