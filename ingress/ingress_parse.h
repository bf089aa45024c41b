/*
 * ingress_parse - the pure parts of the ESMTP server: command lines, MAIL/RCPT
 * paths and their parameters, and the DATA reader. The parameters' rules are
 * in ingress_param, BDAT in ingress_bdat, header scanning in ingress_headers.
 *
 * Nothing here touches a socket, a clock or a global: every function works on
 * the bytes it is given and on state the caller owns, so the unit tests and a
 * fuzzer can drive it directly. Errors come back as a complete SMTP reply line
 * (code, enhanced code, text naming what was wrong; no CRLF) in a caller
 * buffer, so the session only forwards them.
 */
#ifndef INGRESS_PARSE_H
#define INGRESS_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define INGRESS_LINE_MAX 512      /* command line, CRLF included (RFC 5321 4.5.3.1.4) */
#define INGRESS_TEXT_LINE_MAX 998 /* DATA line, CRLF excluded (4.5.3.1.6) */
#define INGRESS_ADDR_MAX 254      /* address without brackets (path <= 256) */
#define INGRESS_PARAMS_MAX 10     /* ESMTP parameters on one MAIL or RCPT */
#define INGRESS_REPLY_MAX 256     /* an error reply built by this module */

/* --- command lines ------------------------------------------------------- */

/* A growable byte buffer with a hard limit on what may be appended. */
struct ingress_buf {
	char *data;
	size_t len;
	size_t cap;
};

/* ingress_buf_append - append n bytes (xrealloc; cannot fail). */
void ingress_buf_append(struct ingress_buf *b, const void *p, size_t n);
void ingress_buf_free(struct ingress_buf *b);

struct ingress_linereader {
	bool discarding;        /* inside an overlong line: drop through its LF */
};

enum ingress_line_result {
	INGRESS_LINE_MORE,      /* no complete line yet: read more */
	INGRESS_LINE_OK,        /* a line: data[0..*line_len) without CR/LF */
	INGRESS_LINE_TOO_LONG,  /* a line longer than INGRESS_LINE_MAX: reply 500 */
};

/*
 * ingress_line_next - find the next command line in data[0..len).
 * Sets *consumed to the bytes the caller must drop from the front of its
 * buffer (possibly non-zero for every result). For INGRESS_LINE_OK, *line
 * points at the line inside data and *line_len excludes its CRLF (or bare
 * LF). An overlong line is reported once, as soon as it is known to be too
 * long, and its remaining bytes are then dropped as they arrive, so it is
 * never buffered whole. An unterminated line short enough to still become
 * valid is left unconsumed.
 */
enum ingress_line_result ingress_line_next(struct ingress_linereader *r,
    const char *data, size_t len, size_t *consumed, const char **line, size_t *line_len);

/* A command line split into its verb (upper-cased) and arguments. */
struct ingress_cmdline {
	char verb[16];
	const char *args;       /* after the verb and its separating blanks; "" if none */
};

/*
 * ingress_cmd_split - split LINE (len bytes plus a NUL, no CRLF) into verb and
 * args; trailing blanks are cut off in place. A verb that is not 1-15
 * letters comes back as "" (unrecognized). Returns 0, or -1 with the reply
 * in err when the line holds a NUL byte.
 */
int ingress_cmd_split(char *line, size_t len, struct ingress_cmdline *out,
    char err[INGRESS_REPLY_MAX]);

/* --- MAIL FROM / RCPT TO ------------------------------------------------- */

enum ingress_path_kind { INGRESS_PATH_MAIL, INGRESS_PATH_RCPT };

/* Flags for ingress_parse_path2. */
enum {
	INGRESS_PATH_UTF8_OK = 1 << 0,    /* SMTPUTF8 transaction: UTF-8 local parts and ORCPT (RFC 6531) */
	INGRESS_PATH_LITERAL_OK = 1 << 1, /* accept [IPv4] / [IPv6:...] as the domain; the
	                                   * caller routes it (hk_domain_of refuses it) */
};

struct ingress_param {
	const char *text;       /* "KEY" or "KEY=VALUE", verbatim, into the args */
	size_t len;
};

enum ingress_body {
	INGRESS_BODY_NONE,      /* no BODY= */
	INGRESS_BODY_7BIT,
	INGRESS_BODY_8BITMIME,
	INGRESS_BODY_BINARYMIME, /* RFC 3030: only with BDAT, the caller's to enforce */
};

enum ingress_ret { INGRESS_RET_NONE, INGRESS_RET_FULL, INGRESS_RET_HDRS };

/* NOTIFY= bits (RFC 3461 4.1); 0 when absent. NEVER is never combined. */
enum {
	INGRESS_NOTIFY_NEVER = 1 << 0,
	INGRESS_NOTIFY_SUCCESS = 1 << 1,
	INGRESS_NOTIFY_FAILURE = 1 << 2,
	INGRESS_NOTIFY_DELAY = 1 << 3,
};

enum ingress_orcpt_type {
	INGRESS_ORCPT_NONE,
	INGRESS_ORCPT_RFC822,   /* "rfc822;" xtext (RFC 3461 4.2) */
	INGRESS_ORCPT_UTF8,     /* "utf-8;" utf-8-addr-xtext/unitext (RFC 6533 3) */
};

#define INGRESS_ENVID_MAX 100   /* RFC 3461 4.4 */
#define INGRESS_ORCPT_MAX 500   /* RFC 3461 4.2 */

/*
 * A parsed MAIL or RCPT. Every parameter is also in params[] verbatim (the
 * sender carries them on as written); the typed fields below are decoded.
 * Which extensions the EHLO offered (SMTPUTF8, CHUNKING for BINARYMIME, DSN,
 * AUTH) is the caller's to check.
 */
struct ingress_path {
	char addr[INGRESS_ADDR_MAX + 1]; /* local@domain as written (U-label -> A-label); "" for <> */
	struct ingress_param params[INGRESS_PARAMS_MAX];
	size_t n_params;
	bool has_size;
	uint64_t size;          /* SIZE=, when has_size */
	/* MAIL */
	enum ingress_body body; /* BODY= (RFC 6152, RFC 3030) */
	bool smtputf8;          /* SMTPUTF8 (RFC 6531) */
	enum ingress_ret ret;   /* RET= (RFC 3461) */
	bool has_envid;
	char envid[INGRESS_ENVID_MAX + 1]; /* ENVID=, xtext decoded */
	bool has_auth;
	char auth[INGRESS_ADDR_MAX + 1];   /* AUTH=, xtext decoded; "" for AUTH=<> (RFC 4954 5) */
	/* RCPT */
	unsigned notify;        /* INGRESS_NOTIFY_* bits, 0 without NOTIFY= */
	enum ingress_orcpt_type orcpt_type;
	char orcpt[INGRESS_ORCPT_MAX + 1]; /* ORCPT= address, decoded (UTF-8 for the utf-8 type) */
	/* both */
	bool non_ascii;         /* the local part has UTF-8 (allowed only under SMTPUTF8) */
	bool literal;           /* the domain is an address literal (INGRESS_PATH_LITERAL_OK) */
};

/*
 * ingress_parse_path2 - parse the arguments of MAIL ("FROM:<a@b> SIZE=10") or
 * RCPT ("TO:<a@b> NOTIFY=NEVER"): the keyword, the path and the parameters.
 * Returns 0 with *out filled (params point into args), or -1 with the reply
 * in err:
 *   501 5.5.4  the keyword; malformed, duplicated or bad parameter values
 *   555 5.5.4  a parameter we do not know (or not on this command)
 *   501 5.1.7 / 5.1.3  bad sender / recipient syntax, invalid UTF-8 included
 *   553 5.6.7  a non-ASCII local part outside an SMTPUTF8 transaction (for
 *              MAIL, its own SMTPUTF8 parameter counts)
 *   553 5.7.1  relay tricks: source routes, address literals (unless
 *              INGRESS_PATH_LITERAL_OK), and in a recipient '%' and '!'
 *              routing; a quoted local part hiding '@' (or in a recipient
 *              '%' or '!'), checked on the unquoted text
 * Policy beyond that (relay rights, size limit) is the caller's.
 */
int ingress_parse_path2(const char *args, enum ingress_path_kind kind, unsigned flags,
    struct ingress_path *out, char err[INGRESS_REPLY_MAX]);

/* ingress_parse_path - ingress_parse_path2 without flags: ASCII local parts
 * (unless a MAIL carries SMTPUTF8), domain names only. */
int ingress_parse_path(const char *args, enum ingress_path_kind kind, struct ingress_path *out,
    char err[INGRESS_REPLY_MAX]);

/*
 * ingress_utf8_char - length of the well-formed UTF-8 character at p[0..n)
 * (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF), 1 for
 * ASCII, 0 if the bytes are not one (or are truncated).
 */
size_t ingress_utf8_char(const char *p, size_t n);

/* --- DATA ---------------------------------------------------------------- */

enum ingress_data_state {
	INGRESS_DATA_BOL,       /* at the start of a line */
	INGRESS_DATA_DOT,       /* a '.' at the start of a line */
	INGRESS_DATA_DOT_CR,    /* ".\r" at the start of a line */
	INGRESS_DATA_TEXT,      /* inside a line */
	INGRESS_DATA_CR,        /* a '\r' inside a line, LF not seen yet */
	INGRESS_DATA_DONE,      /* CRLF.CRLF seen */
};

/*
 * The DATA reader: dot-unstuffs, normalises bare LF to CRLF, stops at the
 * first CRLF "." CRLF (a lone "." after a bare LF is not the end: only the
 * standard sequence ends the data, so a message cannot be smuggled past a
 * downstream server that reads the line endings differently), and appends the
 * message to `out` until something makes it unacceptable. From then on the
 * rest is read and dropped, so memory stays bounded by `limit`.
 */
struct ingress_data {
	/* read-only for callers */
	enum ingress_data_state state;
	uint64_t size;          /* message bytes after unstuffing and CRLF */
	bool too_big;           /* size went over limit */
	bool line_too_long;     /* a line over INGRESS_TEXT_LINE_MAX */
	bool nul;               /* a NUL byte */
	bool bare_lf;           /* a line ended by a bare LF (stored as CRLF) */
	/* private */
	bool prev_crlf;         /* the previous line ended in a real CRLF */
	size_t line_len;        /* raw bytes of the current line so far */
	size_t limit;
	struct ingress_buf *out;
};

/* ingress_data_init - start reading a message into OUT (appended to, not reset). */
void ingress_data_init(struct ingress_data *d, struct ingress_buf *out, size_t limit);

/* ingress_data_feed - consume bytes up to and including the end-of-data
 * line; returns how many were consumed (less than len only once done). */
size_t ingress_data_feed(struct ingress_data *d, const char *p, size_t len);

static inline bool
ingress_data_done(const struct ingress_data *d)
{
	return d->state == INGRESS_DATA_DONE;
}

/* ingress_data_failed - false if the message may be queued, else the reply
 * for the end of data in err (552 size, 550 line length, 554 NUL). */
bool ingress_data_failed(const struct ingress_data *d, char err[INGRESS_REPLY_MAX]);

/* ingress__msg_failed - the end-of-message reply shared by DATA and BDAT:
 * false if nothing is wrong. */
bool ingress__msg_failed(bool too_big, bool line_too_long, bool nul, char err[INGRESS_REPLY_MAX]);

#endif
