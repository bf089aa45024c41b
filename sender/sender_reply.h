/*
 * sender_reply - incremental parser for SMTP server replies (RFC 5321 §4.2).
 *
 * Bytes from the socket go in as they arrive; complete replies come out, one
 * at a time. A reply is one or more lines "DDD-text" ending with "DDD text"
 * (or a bare "DDD"). Malformed input is an error the caller must treat as
 * fatal for the connection: a line that does not start with three digits
 * (first digit 2-5) and a separator, a line longer than SENDER_REPLY_LINE_MAX,
 * or a multi-line reply whose lines disagree on the code. Lines may end in
 * CRLF or a bare LF. The parser allocates nothing.
 */
#ifndef SENDER_REPLY_H
#define SENDER_REPLY_H

#include <stddef.h>

#define SENDER_REPLY_LINE_MAX 2048     /* bytes per line, CRLF excluded */
#define SENDER_REPLY_TEXT_MAX 512      /* the joined text kept per reply */
#define SENDER_REPLY_LINES_MAX 8192    /* bytes of raw line texts kept per reply */

struct sender_reply {
	int code;                               /* 200..599 */
	char text[SENDER_REPLY_TEXT_MAX];       /* "250 text of line 1 text of line 2", truncated */
	size_t n_lines;                         /* lines in the reply */
	/* Each line's text (after "DDD-"/"DDD "), NUL-separated, as far as
	 * SENDER_REPLY_LINES_MAX allows; n_kept of them. For EHLO keywords. */
	char lines[SENDER_REPLY_LINES_MAX];
	size_t n_kept;
};

struct sender_reply_parser {
	char line[SENDER_REPLY_LINE_MAX + 2];   /* the line being assembled */
	size_t len;
	size_t lines_used;                      /* bytes used in cur.lines */
	int failed;                             /* sticky: once malformed, always malformed */
	int complete;                           /* cur was handed out: reset before reuse */
	struct sender_reply cur;                /* the reply being assembled */
	char error[128];                        /* why the input was malformed */
};

/* sender_reply_init - reset the parser for a new connection. */
void sender_reply_init(struct sender_reply_parser *p);

/* sender_reply_feed - consume bytes from BUF until one reply completes.
 * Returns 1 with *out pointing at the reply (valid until the next call; the
 * caller feeds the rest of BUF, after *used bytes, again), 0 when all LEN
 * bytes were consumed without completing a reply, -1 when the input is
 * malformed (p->error says why; sticky). */
int sender_reply_feed(struct sender_reply_parser *p, const char *buf, size_t len,
    size_t *used, const struct sender_reply **out);

/* sender_reply_line - the Nth kept line text of R, or NULL past the end. */
const char *sender_reply_line(const struct sender_reply *r, size_t n);

#endif
