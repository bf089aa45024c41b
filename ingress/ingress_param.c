/*
 * ingress_param - ESMTP parameters of MAIL and RCPT and their encodings (see
 * ingress_param.h).
 *
 * Every parameter is kept verbatim in params[] (the sender passes them on as
 * written) and, when we know it, also decoded into its typed field. A
 * parameter we do not know is refused (555), so nothing we cannot carry
 * correctly gets in; one given twice is a syntax error (501). We accept the
 * DSN keywords (RET, ENVID, NOTIFY, ORCPT) even though the EHLO reply may not
 * offer DSN: they are carried, not acted on, here.
 */
/* System */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* This role */
#include "hk_util.h"
#include "ingress_param.h"
#include "ingress_parse.h"

/* --- encodings ------------------------------------------------------------ */

int
ingress_xtext_decode(const char *in, size_t len, char *out, size_t out_size, size_t *out_len)
{
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c == '+') {
			int hi, lo;
			if (len - i < 3 || (hi = hk_hexval((unsigned char)in[i + 1])) < 0 ||
			    (lo = hk_hexval((unsigned char)in[i + 2])) < 0)
				return -1;
			c = (unsigned char)(hi << 4 | lo);
			i += 2;
		} else if (c < 33 || c > 126 || c == '=') {
			return -1;
		}
		if (n + 1 >= out_size)
			return -1;
		out[n++] = (char)c;
	}
	if (out_size == 0)
		return -1;
	out[n] = '\0';
	*out_len = n;
	return 0;
}

/* Append code point cp as UTF-8 (cp a scalar value); false if it does not fit. */
static bool
put_utf8(char *out, size_t out_size, size_t *n, unsigned long cp)
{
	unsigned char b[4];
	size_t k;

	if (cp < 0x80) {
		b[0] = (unsigned char)cp;
		k = 1;
	} else if (cp < 0x800) {
		b[0] = (unsigned char)(0xc0 | cp >> 6);
		b[1] = (unsigned char)(0x80 | (cp & 0x3f));
		k = 2;
	} else if (cp < 0x10000) {
		b[0] = (unsigned char)(0xe0 | cp >> 12);
		b[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
		b[2] = (unsigned char)(0x80 | (cp & 0x3f));
		k = 3;
	} else {
		b[0] = (unsigned char)(0xf0 | cp >> 18);
		b[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
		b[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
		b[3] = (unsigned char)(0x80 | (cp & 0x3f));
		k = 4;
	}
	if (*n + k >= out_size)
		return false;
	memcpy(out + *n, b, k);
	*n += k;
	return true;
}

int
ingress_unitext_decode(const char *in, size_t len, bool raw_utf8, char *out, size_t out_size,
    size_t *out_len)
{
	size_t n = 0;

	if (out_size == 0)
		return -1;
	for (size_t i = 0; i < len;) {
		unsigned char c = (unsigned char)in[i];
		if (c == '\\') {
			/* EmbeddedUnicodeChar: "\x{" 2*6HEXDIG "}" */
			unsigned long cp = 0;
			size_t j = i + 3, digits = 0;
			if (len - i < 3 || in[i + 1] != 'x' || in[i + 2] != '{')
				return -1;
			for (; j < len && in[j] != '}'; j++) {
				int h = hk_hexval((unsigned char)in[j]);
				if (h < 0 || ++digits > 6)
					return -1;
				cp = cp << 4 | (unsigned long)h;
			}
			if (j == len || digits < 2 || cp == 0 || cp > 0x10ffff ||
			    (cp >= 0xd800 && cp <= 0xdfff))
				return -1;
			if (!put_utf8(out, out_size, &n, cp))
				return -1;
			i = j + 1;
			continue;
		}
		if (c >= 0x80) {
			size_t k = ingress_utf8_char(in + i, len - i);
			if (!raw_utf8 || k == 0 || n + k >= out_size)
				return -1;
			memcpy(out + n, in + i, k);
			n += k;
			i += k;
			continue;
		}
		/* QCHAR: printable ASCII but '+', '=' and '\' (taken above). */
		if (c < 33 || c > 126 || c == '+' || c == '=' || n + 1 >= out_size)
			return -1;
		out[n++] = (char)c;
		i++;
	}
	out[n] = '\0';
	*out_len = n;
	return 0;
}

/* --- parameters ----------------------------------------------------------- */

static int
param_error(char err[INGRESS_REPLY_MAX], const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, INGRESS_REPLY_MAX, fmt, ap);
	va_end(ap);
	return -1;
}

static bool
value_is(const char *v, size_t n, const char *word)
{
	return strlen(word) == n && strncasecmp(v, word, n) == 0;
}

/* No control characters: decoded values end up in logs and in DSNs. */
static bool
has_ctl(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 32 || c == 127)
			return true;
	}
	return false;
}

/* Printable US-ASCII, space included: ENVID and an rfc822 ORCPT (RFC 3461). */
static bool
printable_ascii(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 32 || c > 126)
			return false;
	}
	return true;
}

/* Well-formed UTF-8 (ASCII included). */
static bool
utf8_ok(const char *s, size_t n)
{
	for (size_t i = 0, k; i < n; i += k) {
		if ((k = ingress_utf8_char(s + i, n - i)) == 0)
			return false;
	}
	return true;
}

/* NOTIFY=NEVER, or a list of SUCCESS, FAILURE, DELAY, each at most once. */
static unsigned
notify_bits(const char *v, size_t n)
{
	unsigned bits = 0;

	if (value_is(v, n, "NEVER"))
		return INGRESS_NOTIFY_NEVER;
	for (;;) {
		const char *comma = memchr(v, ',', n);
		size_t w = comma ? (size_t)(comma - v) : n;
		unsigned b = value_is(v, w, "SUCCESS") ? INGRESS_NOTIFY_SUCCESS :
		    value_is(v, w, "FAILURE") ? INGRESS_NOTIFY_FAILURE :
		    value_is(v, w, "DELAY") ? INGRESS_NOTIFY_DELAY : 0;
		if (b == 0 || (bits & b))
			return 0; /* unknown, empty, NEVER in a list, or repeated */
		bits |= b;
		if (comma == NULL)
			return bits;
		v += w + 1;
		n -= w + 1;
	}
}

static int
check_orcpt(const char *val, size_t vlen, unsigned flags, struct ingress_path *out,
    char err[INGRESS_REPLY_MAX])
{
	const char *semi = memchr(val, ';', vlen);
	size_t tlen, alen, dlen;
	const char *addr;
	int rc;

	if (vlen > INGRESS_ORCPT_MAX || semi == NULL || semi + 1 == val + vlen)
		return param_error(err, "501 5.5.4 Bad ORCPT parameter value (addr-type;address)");
	tlen = (size_t)(semi - val);
	addr = semi + 1;
	alen = vlen - tlen - 1;
	if (value_is(val, tlen, "rfc822")) {
		out->orcpt_type = INGRESS_ORCPT_RFC822;
		rc = ingress_xtext_decode(addr, alen, out->orcpt, sizeof(out->orcpt), &dlen);
	} else if (value_is(val, tlen, "utf-8")) {
		out->orcpt_type = INGRESS_ORCPT_UTF8;
		rc = ingress_unitext_decode(addr, alen, (flags & INGRESS_PATH_UTF8_OK) != 0,
		    out->orcpt, sizeof(out->orcpt), &dlen);
	} else {
		return param_error(err, "501 5.5.4 Bad ORCPT parameter value (address type must be rfc822 or utf-8)");
	}
	if (rc != 0)
		return param_error(err, "501 5.5.4 Bad ORCPT parameter value (malformed %s)",
		    out->orcpt_type == INGRESS_ORCPT_RFC822 ? "xtext" : "utf-8-addr-xtext");
	if (has_ctl(out->orcpt, dlen))
		return param_error(err, "501 5.5.4 Bad ORCPT parameter value (control character)");
	/* Non-ASCII addresses have their own type, utf-8 (RFC 6533). */
	if (out->orcpt_type == INGRESS_ORCPT_RFC822 && !printable_ascii(out->orcpt, dlen))
		return param_error(err, "501 5.5.4 Bad ORCPT parameter value (8-bit octet in an rfc822 address)");
	return 0;
}

/* KEY is upper-cased; VAL/vlen the raw value (has_val false for a bare KEY). */
static int
check_mail_param(const char *k, const char *val, size_t vlen, bool has_val,
    struct ingress_path *out, char err[INGRESS_REPLY_MAX])
{
	char tmp[INGRESS_LINE_MAX];
	size_t dlen;

	if (!strcmp(k, "SIZE")) {
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
	if (!strcmp(k, "BODY")) {
		if (has_val && value_is(val, vlen, "7BIT"))
			out->body = INGRESS_BODY_7BIT;
		else if (has_val && value_is(val, vlen, "8BITMIME"))
			out->body = INGRESS_BODY_8BITMIME;
		else if (has_val && value_is(val, vlen, "BINARYMIME"))
			out->body = INGRESS_BODY_BINARYMIME;
		else
			return param_error(err, "501 5.5.4 Bad BODY parameter value (7BIT, 8BITMIME or BINARYMIME)");
		return 0;
	}
	if (!strcmp(k, "SMTPUTF8")) {
		if (has_val)
			return param_error(err, "501 5.5.4 SMTPUTF8 parameter takes no value");
		out->smtputf8 = true;
		return 0;
	}
	if (!strcmp(k, "RET")) {
		if (has_val && value_is(val, vlen, "FULL"))
			out->ret = INGRESS_RET_FULL;
		else if (has_val && value_is(val, vlen, "HDRS"))
			out->ret = INGRESS_RET_HDRS;
		else
			return param_error(err, "501 5.5.4 Bad RET parameter value (FULL or HDRS)");
		return 0;
	}
	if (!strcmp(k, "ENVID")) {
		if (!has_val || vlen > INGRESS_ENVID_MAX)
			return param_error(err, "501 5.5.4 Bad ENVID parameter value (1 to %d characters)",
			    INGRESS_ENVID_MAX);
		if (ingress_xtext_decode(val, vlen, out->envid, sizeof(out->envid), &dlen) != 0)
			return param_error(err, "501 5.5.4 Bad ENVID parameter value (malformed xtext)");
		if (!printable_ascii(out->envid, dlen))
			return param_error(err, "501 5.5.4 Bad ENVID parameter value (not printable US-ASCII)");
		out->has_envid = true;
		return 0;
	}
	if (!strcmp(k, "AUTH")) {
		if (!has_val || ingress_xtext_decode(val, vlen, tmp, sizeof(tmp), &dlen) != 0)
			return param_error(err, "501 5.5.4 Bad AUTH parameter value (malformed xtext)");
		if (has_ctl(tmp, dlen) || !utf8_ok(tmp, dlen) || dlen > INGRESS_ADDR_MAX)
			return param_error(err, "501 5.5.4 Bad AUTH parameter value (not a mailbox)");
		if (strcmp(tmp, "<>") == 0)
			tmp[0] = '\0'; /* the client does not vouch for the author */
		memcpy(out->auth, tmp, strlen(tmp) + 1);
		out->has_auth = true;
		return 0;
	}
	return 1;
}

static int
check_rcpt_param(const char *k, const char *val, size_t vlen, bool has_val, unsigned flags,
    struct ingress_path *out, char err[INGRESS_REPLY_MAX])
{
	if (!strcmp(k, "NOTIFY")) {
		if (!has_val || (out->notify = notify_bits(val, vlen)) == 0)
			return param_error(err, "501 5.5.4 Bad NOTIFY parameter value");
		return 0;
	}
	if (!strcmp(k, "ORCPT")) {
		if (!has_val)
			return param_error(err, "501 5.5.4 Bad ORCPT parameter value (addr-type;address)");
		return check_orcpt(val, vlen, flags, out, err);
	}
	return 1;
}

/* check_param - apply the rules for one KEY[=VALUE]. */
static int
check_param(enum ingress_path_kind kind, unsigned flags, const char *key, size_t klen,
    const char *val, size_t vlen, bool has_val, struct ingress_path *out,
    char err[INGRESS_REPLY_MAX])
{
	char k[33];
	int rc;

	snprintf(k, sizeof(k), "%.*s", (int)klen, key);
	for (char *c = k; *c; c++)
		*c = (char)toupper((unsigned char)*c);
	for (size_t i = 0; i < out->n_params; i++) {
		const char *o = out->params[i].text;
		if (strncasecmp(o, key, klen) == 0 && (o[klen] == '=' || out->params[i].len == klen))
			return param_error(err, "501 5.5.4 Duplicate %s parameter", k);
	}
	if (kind == INGRESS_PATH_MAIL)
		rc = check_mail_param(k, val, vlen, has_val, out, err);
	else
		rc = check_rcpt_param(k, val, vlen, has_val, flags, out, err);
	if (rc > 0)
		return param_error(err, "555 5.5.4 Unsupported parameter: %s", k);
	return rc;
}

int
ingress__params_parse(const char *p, enum ingress_path_kind kind, unsigned flags,
    struct ingress_path *out, char err[INGRESS_REPLY_MAX])
{
	/* RFC 6531 3.3: under SMTPUTF8 a value may hold UTF-8 (an ORCPT). */
	bool utf8 = (flags & INGRESS_PATH_UTF8_OK) != 0;

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
		for (size_t i = 0; i < vlen;) {
			unsigned char c = (unsigned char)val[i];
			size_t k = 1;
			if (c >= 0x80 && utf8)
				k = ingress_utf8_char(val + i, vlen - i);
			else if (c < 33 || c > 126 || c == '=')
				k = 0;
			if (k == 0)
				return param_error(err, "501 5.5.4 Bad parameter syntax");
			i += k;
		}
		if (out->n_params == INGRESS_PARAMS_MAX)
			return param_error(err, "501 5.5.4 Too many parameters");
		if (check_param(kind, flags, tok, klen, val, vlen, eq != NULL, out, err) != 0)
			return -1;
		out->params[out->n_params].text = tok;
		out->params[out->n_params].len = tlen;
		out->n_params++;
	}
}
