/*
 * ingress_parse - the pure parts of the ESMTP server: command lines, MAIL/RCPT
 * paths and their parameters, and the DATA reader.
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

struct ingress_param {
	const char *text;       /* "KEY" or "KEY=VALUE", verbatim, into the args */
	size_t len;
};

struct ingress_path {
	char addr[INGRESS_ADDR_MAX + 1]; /* local@domain as written (U-label -> A-label); "" for <> */
	struct ingress_param params[INGRESS_PARAMS_MAX];
	size_t n_params;
	bool has_size;
	uint64_t size;          /* SIZE=, when has_size */
};

/*
 * ingress_parse_path - parse the arguments of MAIL ("FROM:<a@b> SIZE=10") or
 * RCPT ("TO:<a@b> NOTIFY=NEVER"): the keyword, the path and the parameters.
 * Returns 0 with *out filled (params point into args), or -1 with the reply
 * in err: 501 5.5.4 for the keyword, 501 5.1.7 / 5.1.3 for a bad sender /
 * recipient address, 501 5.5.4 / 555 5.5.4 for bad / unsupported parameters.
 * Policy (relay rights, size limit) is the caller's.
 */
int ingress_parse_path(const char *args, enum ingress_path_kind kind, struct ingress_path *out,
    char err[INGRESS_REPLY_MAX]);

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

#endif
