/*
 * ingress_parse - command lines, MAIL/RCPT paths and the DATA reader, as
 * pure functions over caller-owned state (see ingress_parse.h).
 *
 * Address policy, in short: paths must be bracketed; source routes, address
 * literals and non-ASCII local parts are refused; a dot-string local part may
 * have any atext and dots in any arrangement (some Japanese carriers issued
 * "a..b." addresses and they are still in use); a quoted local part must not
 * hide an '@'; a recipient's local part must not contain '%' or '!', the
 * classic tricks to make a relay forward mail a second time. The domain must
 * pass hk_domain_canon; the envelope keeps it as the client wrote it (the
 * envelope is the client's), unless only the canonical form is valid on the
 * wire (a U-label becomes its A-label, a trailing dot goes). The router
 * shards on the canonical form.
 */
/* System */
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

static int
param_error(char err[INGRESS_REPLY_MAX], const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, INGRESS_REPLY_MAX, fmt, ap);
	va_end(ap);
	return -1;
}

/* RFC 5322 atext, the characters of a dot-atom besides '.'. */
static bool
is_atext(unsigned char c)
{
	return isalnum(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/* Scan a quoted-string local part at p (on the opening quote); returns the
 * byte after the closing quote, or NULL with the reason in *why. */
static const char *
scan_quoted(const char *p, bool *has_at, bool *has_relay_char, const char **why)
{
	for (p++; *p != '"'; p++) {
		unsigned char c = (unsigned char)*p;
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
		} else if (c < 32 || c > 126) {
			*why = "invalid character in quoted local part";
			return NULL;
		}
		if (c == '@')
			*has_at = true;
		if (c == '%' || c == '!')
			*has_relay_char = true;
	}
	return p + 1;
}

static bool
value_is(const char *v, size_t n, const char *word)
{
	return strlen(word) == n && strncasecmp(v, word, n) == 0;
}

static bool
notify_ok(const char *v, size_t n)
{
	if (value_is(v, n, "NEVER"))
		return true;
	while (n > 0) {
		const char *comma = memchr(v, ',', n);
		size_t w = comma ? (size_t)(comma - v) : n;
		if (!value_is(v, w, "SUCCESS") && !value_is(v, w, "FAILURE") && !value_is(v, w, "DELAY"))
			return false;
		if (comma == NULL)
			return true;
		v += w + 1;
		n -= w + 1;
		if (n == 0)
			return false; /* trailing comma */
	}
	return false;
}

/*
 * check_param - apply the rules for one KEY[=VALUE] we know. We accept the
 * DSN keywords (RET, ENVID, NOTIFY, ORCPT) for the sender even though the
 * EHLO reply does not offer DSN yet: they are carried verbatim.
 */
static int
check_param(enum ingress_path_kind kind, const char *key, size_t klen, const char *val,
    size_t vlen, bool has_val, struct ingress_path *out, char err[INGRESS_REPLY_MAX])
{
	char k[33];

	snprintf(k, sizeof(k), "%.*s", (int)klen, key);
	for (char *c = k; *c; c++)
		*c = (char)toupper((unsigned char)*c);
	for (size_t i = 0; i < out->n_params; i++) {
		const char *o = out->params[i].text;
		if (strncasecmp(o, key, klen) == 0 && (o[klen] == '=' || out->params[i].len == klen))
			return param_error(err, "501 5.5.4 Duplicate %s parameter", k);
	}
	if (kind == INGRESS_PATH_MAIL && !strcmp(k, "SIZE")) {
		uint64_t size = 0;
		if (!has_val || vlen > 19)
			return param_error(err, "501 5.5.4 Bad SIZE parameter value");
		for (size_t i = 0; i < vlen; i++) {
			if (!isdigit((unsigned char)val[i]))
				return param_error(err, "501 5.5.4 Bad SIZE parameter value");
			size = size * 10 + (uint64_t)(val[i] - '0');
		}
		out->has_size = true;
		out->size = size;
		return 0;
	}
	if (kind == INGRESS_PATH_MAIL && !strcmp(k, "BODY")) {
		if (!has_val || (!value_is(val, vlen, "7BIT") && !value_is(val, vlen, "8BITMIME")))
			return param_error(err, "501 5.5.4 Bad BODY parameter value (7BIT or 8BITMIME)");
		return 0;
	}
	if (kind == INGRESS_PATH_MAIL && !strcmp(k, "RET")) {
		if (!has_val || (!value_is(val, vlen, "FULL") && !value_is(val, vlen, "HDRS")))
			return param_error(err, "501 5.5.4 Bad RET parameter value (FULL or HDRS)");
		return 0;
	}
	if (kind == INGRESS_PATH_MAIL && !strcmp(k, "ENVID")) {
		if (!has_val || vlen > 100)
			return param_error(err, "501 5.5.4 Bad ENVID parameter value");
		return 0;
	}
	if (kind == INGRESS_PATH_RCPT && !strcmp(k, "NOTIFY")) {
		if (!has_val || !notify_ok(val, vlen))
			return param_error(err, "501 5.5.4 Bad NOTIFY parameter value");
		return 0;
	}
	if (kind == INGRESS_PATH_RCPT && !strcmp(k, "ORCPT")) {
		if (!has_val || vlen > 500 || memchr(val, ';', vlen) == NULL)
			return param_error(err, "501 5.5.4 Bad ORCPT parameter value");
		return 0;
	}
	return param_error(err, "555 5.5.4 Unsupported parameter: %s", k);
}

/* Parse " KEY[=VALUE]..." after the closing '>'. */
static int
parse_params(const char *p, enum ingress_path_kind kind, struct ingress_path *out,
    char err[INGRESS_REPLY_MAX])
{
	for (;;) {
		while (*p == ' ')
			p++;
		if (*p == '\0')
			return 0;
		const char *tok = p, *eq = NULL;
		while (*p != '\0' && *p != ' ') {
			if (*p == '=' && eq == NULL)
				eq = p;
			p++;
		}
		size_t tlen = (size_t)(p - tok);
		size_t klen = eq ? (size_t)(eq - tok) : tlen;
		const char *val = eq ? eq + 1 : p;
		size_t vlen = eq ? (size_t)(p - val) : 0;

		/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
		if (klen == 0 || klen > 32 || !isalnum((unsigned char)tok[0]) || (eq && vlen == 0))
			return param_error(err, "501 5.5.4 Bad parameter syntax");
		for (size_t i = 1; i < klen; i++) {
			if (!isalnum((unsigned char)tok[i]) && tok[i] != '-')
				return param_error(err, "501 5.5.4 Bad parameter syntax");
		}
		/* esmtp-value = 1*(%d33-60 / %d62-126) */
		for (size_t i = 0; i < vlen; i++) {
			unsigned char c = (unsigned char)val[i];
			if (c < 33 || c > 126 || c == '=')
				return param_error(err, "501 5.5.4 Bad parameter syntax");
		}
		if (out->n_params == INGRESS_PARAMS_MAX)
			return param_error(err, "501 5.5.4 Too many parameters");
		if (check_param(kind, tok, klen, val, vlen, eq != NULL, out, err) != 0)
			return -1;
		out->params[out->n_params].text = tok;
		out->params[out->n_params].len = tlen;
		out->n_params++;
	}
}

int
ingress_parse_path(const char *args, enum ingress_path_kind kind, struct ingress_path *out,
    char err[INGRESS_REPLY_MAX])
{
	const char *kw = kind == INGRESS_PATH_MAIL ? "FROM:" : "TO:";
	const char *p, *local, *dom;
	size_t local_len, dom_len;
	bool has_at = false, has_relay_char = false;
	char dbuf[HK_DOMAIN_MAX], canon[HK_DOMAIN_MAX];

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
	if (*p == '@')
		return path_error(err, kind, "source routes are not accepted");
	if (*p == '>') {
		if (kind == INGRESS_PATH_RCPT)
			return path_error(err, kind, "empty address");
		p++;
		if (*p != '\0' && *p != ' ')
			return path_error(err, kind, "unexpected text after '>'");
		return parse_params(p, kind, out, err); /* the null sender <> */
	}

	local = p;
	if (*p == '"') {
		const char *why = NULL;
		if ((p = scan_quoted(p, &has_at, &has_relay_char, &why)) == NULL)
			return path_error(err, kind, "%s", why);
		if (has_at)
			return path_error(err, kind, "quoted local part contains '@'");
	} else {
		for (; *p != '\0' && *p != '@' && *p != '>'; p++) {
			unsigned char c = (unsigned char)*p;
			if (c >= 0x80)
				return path_error(err, kind, "non-ASCII local part needs SMTPUTF8");
			if (c != '.' && !is_atext(c))
				return path_error(err, kind, "invalid character in local part");
			if (c == '%' || c == '!')
				has_relay_char = true;
		}
	}
	local_len = (size_t)(p - local);
	if (kind == INGRESS_PATH_RCPT && has_relay_char)
		return path_error(err, kind, "'%%' and '!' are not allowed in the local part");
	if (*p == '\0')
		return path_error(err, kind, "missing closing '>'");
	if (*p != '@')
		return path_error(err, kind, "no domain");
	dom = ++p;
	for (; *p != '\0' && *p != '>'; p++) {
		unsigned char c = (unsigned char)*p;
		if (c == '[')
			return path_error(err, kind, "address literals are not accepted");
		if (c == '@')
			return path_error(err, kind, "more than one '@'");
		if (c < 0x80 && !isalnum(c) && c != '-' && c != '.')
			return path_error(err, kind, "invalid character in domain");
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
	const char *keep = strcasecmp(dbuf, canon) == 0 ? dbuf : canon;
	size_t clen = strlen(keep);
	if (local_len + 1 + clen > INGRESS_ADDR_MAX)
		return path_error(err, kind, "address too long");
	memcpy(out->addr, local, local_len);
	out->addr[local_len] = '@';
	memcpy(out->addr + local_len + 1, keep, clen + 1);
	p++; /* '>' */
	if (*p != '\0' && *p != ' ')
		return path_error(err, kind, "unexpected text after '>'");
	return parse_params(p, kind, out, err);
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
ingress_data_failed(const struct ingress_data *d, char err[INGRESS_REPLY_MAX])
{
	if (d->too_big)
		snprintf(err, INGRESS_REPLY_MAX, "552 5.3.4 Message size exceeds fixed limit");
	else if (d->line_too_long)
		snprintf(err, INGRESS_REPLY_MAX,
		    "550 5.6.0 Message rejected: line too long (more than %d characters)",
		    INGRESS_TEXT_LINE_MAX);
	else if (d->nul)
		snprintf(err, INGRESS_REPLY_MAX, "554 5.6.0 Message rejected: NUL character in data");
	else
		return false;
	return true;
}
