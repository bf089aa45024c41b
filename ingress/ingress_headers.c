/*
 * ingress_headers - header block scan and the From: domain (see
 * ingress_headers.h).
 *
 * The From: parser is a small RFC 5322 tokenizer (atoms, quoted strings,
 * domain literals, specials; CFWS skipped, CR and LF inside a folded field
 * being white space) under a mailbox-list grammar. It is stricter than mail
 * clients on purpose: an unquoted ',' in a display name, two addresses in one
 * mailbox, text after '>' or groups (which RFC 5322 does not allow in From:)
 * all make the field unparsable, so that the domain we check is never other
 * than the one a reader sees. Obsolete forms that have one reading (empty
 * list elements, a route in <@a:b@c>, CFWS around dots) are accepted.
 */
/* System */
#include <stdbool.h>
#include <string.h>
#include <strings.h>

/* common/ */
#include "hk_domain.h"

/* This role */
#include "ingress_headers.h"

/* --- the From: field ------------------------------------------------------ */

enum tok_type {
	T_END,
	T_ATOM,     /* atext, '.' and 8-bit bytes: dot-atoms and obs-phrase words */
	T_QSTR,     /* "..." */
	T_LITERAL,  /* [...] */
	T_SPECIAL,  /* one of < > @ , ; : */
	T_BAD,      /* anything else, or an unterminated quote, comment or literal */
};

struct lex {
	const char *p, *e;
	enum tok_type type;
	const char *tok;        /* the token's bytes */
	size_t len;
};

static bool
is_wsp(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool
is_atom_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	    c >= 0x80 || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~.", c) != NULL);
}

/* Skip white space and (nested) comments; false on an unterminated comment. */
static bool
skip_cfws(struct lex *l)
{
	size_t depth = 0;

	while (l->p < l->e) {
		char c = *l->p;
		if (depth == 0 && is_wsp(c)) {
			l->p++;
		} else if (c == '(') {
			depth++;
			l->p++;
		} else if (depth == 0) {
			return true;
		} else if (c == '\\') {
			l->p += l->e - l->p >= 2 ? 2 : 1;
		} else {
			if (c == ')')
				depth--;
			l->p++;
		}
	}
	return depth == 0;
}

/* Scan to the unescaped CLOSE after the opening byte; false if there is none. */
static bool
scan_delimited(struct lex *l, char close)
{
	const char *p = l->p + 1;

	while (p < l->e && *p != close) {
		if (*p == '\\' && l->e - p >= 2)
			p++;
		p++;
	}
	if (p >= l->e)
		return false;
	l->p = p + 1;
	return true;
}

static void
lex_next(struct lex *l)
{
	unsigned char c;

	l->tok = l->p;
	l->len = 0;
	if (!skip_cfws(l)) {
		l->type = T_BAD;
		return;
	}
	l->tok = l->p;
	if (l->p == l->e) {
		l->type = T_END;
		return;
	}
	c = (unsigned char)*l->p;
	if (c == '"' || c == '[') {
		l->type = c == '"' ? T_QSTR : T_LITERAL;
		if (!scan_delimited(l, c == '"' ? '"' : ']'))
			l->type = T_BAD;
	} else if (is_atom_char(c)) {
		l->type = T_ATOM;
		while (l->p < l->e && is_atom_char((unsigned char)*l->p))
			l->p++;
	} else if (strchr("<>@,;:", c) != NULL) {
		l->type = T_SPECIAL;
		l->p++;
	} else {
		l->type = T_BAD;
	}
	l->len = (size_t)(l->p - l->tok);
}

static bool
is_special(const struct lex *l, char c)
{
	return l->type == T_SPECIAL && *l->tok == c;
}

/*
 * Words (atoms and quoted strings) from the current token on. With `dotted`,
 * they must form one dot-separated local part ("a"."b", a.b); without, any
 * phrase. Returns how many tokens were taken; *ok is false on a missing dot.
 */
static size_t
lex_words(struct lex *l, bool dotted, bool *ok)
{
	size_t n = 0;
	bool dot_before = false; /* the previous word ended in '.' */

	*ok = true;
	while (l->type == T_ATOM || l->type == T_QSTR) {
		bool starts_dot = l->type == T_ATOM && l->tok[0] == '.';
		if (dotted && n > 0 && !dot_before && !starts_dot)
			*ok = false;
		dot_before = l->type == T_ATOM && l->tok[l->len - 1] == '.';
		n++;
		lex_next(l);
	}
	return n;
}

/*
 * domain = dot-atom / domain-literal, with CFWS allowed around the dots
 * (obs-domain). A name is copied, dots and all, into out (HK_DOMAIN_MAX);
 * a literal leaves out "". False if there is no domain or it is too long.
 */
static bool
lex_domain(struct lex *l, char *out)
{
	size_t n = 0;
	bool dot_before = false;

	out[0] = '\0';
	if (l->type == T_LITERAL) {
		lex_next(l);
		return true;
	}
	if (l->type != T_ATOM)
		return false;
	while (l->type == T_ATOM && (n == 0 || dot_before || l->tok[0] == '.')) {
		if (n + l->len >= HK_DOMAIN_MAX)
			return false;
		memcpy(out + n, l->tok, l->len);
		n += l->len;
		dot_before = l->tok[l->len - 1] == '.';
		lex_next(l);
	}
	out[n] = '\0';
	return true;
}

/* addr-spec inside <...>, after the '<': [obs-route] local-part "@" domain ">" */
static bool
lex_angle_addr(struct lex *l, char *domain)
{
	bool ok;

	lex_next(l);
	if (is_special(l, '@')) {
		/* obs-route "@a,@b:" -- skipped, it names no author. */
		while (l->type != T_END && l->type != T_BAD && !is_special(l, ':') && !is_special(l, '>'))
			lex_next(l);
		if (!is_special(l, ':'))
			return false;
		lex_next(l);
	}
	if (lex_words(l, true, &ok) == 0 || !ok || !is_special(l, '@'))
		return false;
	lex_next(l);
	if (!lex_domain(l, domain) || !is_special(l, '>'))
		return false;
	lex_next(l);
	return true;
}

/* mailbox = name-addr / addr-spec; the current token is its first. */
static bool
lex_mailbox(struct lex *l, char *domain)
{
	bool dotted;
	size_t words = lex_words(l, true, &dotted);

	if (is_special(l, '<'))
		return lex_angle_addr(l, domain); /* the words were a display name */
	if (words == 0 || !dotted || !is_special(l, '@'))
		return false;
	lex_next(l);
	return lex_domain(l, domain);
}

/*
 * parse_from - the mailbox-list in v[0..n): how many mailboxes (0 if it does
 * not parse) and the domain of the first in first_domain.
 */
static unsigned
parse_from(const char *v, size_t n, char first_domain[HK_DOMAIN_MAX])
{
	struct lex l = { .p = v, .e = v + n };
	char domain[HK_DOMAIN_MAX];
	unsigned count = 0;

	first_domain[0] = '\0';
	lex_next(&l);
	for (;;) {
		while (is_special(&l, ','))
			lex_next(&l); /* obs-mbox-list: empty elements */
		if (l.type == T_END)
			break;
		if (!lex_mailbox(&l, domain))
			return 0;
		if (count++ == 0)
			memcpy(first_domain, domain, strlen(domain) + 1);
		if (l.type == T_END)
			break;
		if (!is_special(&l, ','))
			return 0; /* text after a mailbox */
	}
	return count;
}

/* --- the header block ----------------------------------------------------- */

/* ftext: printable ASCII but ':' (RFC 5322 3.6.8). */
static bool
is_ftext(unsigned char c)
{
	return c >= 33 && c <= 126 && c != ':';
}

static bool
name_is(const char *name, size_t n, const char *want)
{
	return strlen(want) == n && strncasecmp(name, want, n) == 0;
}

void
ingress_headers_scan(const char *body, size_t len, struct ingress_headers *info)
{
	const char *from = NULL; /* the first From:'s value, continuations included */
	size_t from_len = 0, off = 0;
	bool in_from = false;

	memset(info, 0, sizeof(*info));
	info->len = len;
	while (off < len) {
		const char *line = body + off;
		const char *lf = memchr(line, '\n', len - off);
		size_t raw = lf ? (size_t)(lf - line) : len - off;
		size_t l = raw > 0 && line[raw - 1] == '\r' ? raw - 1 : raw;
		size_t next = off + raw + (lf ? 1 : 0);

		if (l == 0) {
			info->len = next;
			info->has_body = lf != NULL;
			break;
		}
		if (l > info->max_line_len)
			info->max_line_len = l;
		if (line[0] == ' ' || line[0] == '\t') {
			if (off == 0)
				info->malformed = true; /* continues nothing */
			if (in_from)
				from_len = (size_t)(line + l - from);
		} else {
			size_t i = 0, name_len;
			in_from = false;
			while (i < l && is_ftext((unsigned char)line[i]))
				i++;
			name_len = i;
			while (i < l && (line[i] == ' ' || line[i] == '\t'))
				i++; /* obs: blanks before the colon */
			if (name_len == 0 || i == l || line[i] != ':') {
				info->malformed = true;
			} else if (name_is(line, name_len, "Message-ID")) {
				info->has_message_id = true;
			} else if (name_is(line, name_len, "Date")) {
				info->has_date = true;
			} else if (name_is(line, name_len, "From") && info->from_fields++ == 0) {
				from = line + i + 1;
				from_len = l - i - 1;
				in_from = true;
			}
		}
		off = next;
	}
	if (from != NULL) {
		char domain[HK_DOMAIN_MAX];
		info->from_mailboxes = parse_from(from, from_len, domain);
		if (info->from_mailboxes > 0 && domain[0] != '\0' &&
		    hk_domain_canon(domain, info->from_domain) != 0)
			info->from_domain[0] = '\0';
	}
}
