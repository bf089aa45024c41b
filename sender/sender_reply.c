/*
 * sender_reply - incremental parser for SMTP server replies.
 *
 * A pure module: no I/O, no allocation, so it can be fed any byte split the
 * network produces and tested on its own. Reply texts are reduced to
 * printable ASCII (other bytes become '?') because they end up in JSON logs
 * and DSNs.
 */

/* System */
#include <stdio.h>
#include <string.h>

/* This role */
#include "sender_reply.h"

/* reply_reset - start assembling a new reply. */
static void
reply_reset(struct sender_reply_parser *p)
{
	p->cur.code = 0;
	p->cur.text[0] = '\0';
	p->cur.n_lines = 0;
	p->cur.n_kept = 0;
	p->lines_used = 0;
	p->complete = 0;
}

void
sender_reply_init(struct sender_reply_parser *p)
{
	p->len = 0;
	p->failed = 0;
	p->error[0] = '\0';
	reply_reset(p);
}

/* reply_fail - mark the stream malformed. */
static int
reply_fail(struct sender_reply_parser *p, const char *why)
{
	p->failed = 1;
	snprintf(p->error, sizeof(p->error), "%s", why);
	return -1;
}

/* reply_clean - the byte as it may appear in kept text. */
static char
reply_clean(unsigned char c)
{
	if (c == '\t')
		return ' ';
	if (c < 0x20 || c >= 0x7f)
		return '?';
	return (char)c;
}

/* reply_line - one complete line (terminator stripped). Returns 1 when the
 * line ends the reply, 0 when more lines follow, -1 when malformed. */
static int
reply_line(struct sender_reply_parser *p, const char *line, size_t len)
{
	struct sender_reply *r = &p->cur;
	int code, last;
	size_t i, tl, room;
	const char *text;

	if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' ||
	    line[2] < '0' || line[2] > '9')
		return reply_fail(p, "reply line does not start with a 3-digit code");
	if (len == 3 || line[3] == ' ')
		last = 1;
	else if (line[3] == '-')
		last = 0;
	else
		return reply_fail(p, "reply code not followed by space or hyphen");
	code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	if (r->n_lines > 0 && code != r->code)
		return reply_fail(p, "multi-line reply with mixed codes");
	if (r->n_lines == 0) {
		r->code = code;
		snprintf(r->text, sizeof(r->text), "%03d", code);
	}
	r->n_lines++;

	text = len > 4 ? line + 4 : "";
	tl = len > 4 ? len - 4 : 0;

	/* Joined text: "code text1 text2 ...", as much as fits. */
	if (tl > 0) {
		size_t at = strlen(r->text);
		if (at + 1 < sizeof(r->text)) {
			r->text[at++] = ' ';
			for (i = 0; i < tl && at + 1 < sizeof(r->text); i++)
				r->text[at++] = reply_clean((unsigned char)text[i]);
			r->text[at] = '\0';
		}
	}

	/* Raw line texts for keyword scans (EHLO), NUL-separated; a line that
	 * does not fit whole is dropped rather than cut. */
	room = sizeof(r->lines) - p->lines_used;
	if (tl + 1 <= room) {
		for (i = 0; i < tl; i++)
			r->lines[p->lines_used + i] = reply_clean((unsigned char)text[i]);
		r->lines[p->lines_used + tl] = '\0';
		p->lines_used += tl + 1;
		r->n_kept++;
	}
	return last;
}

int
sender_reply_feed(struct sender_reply_parser *p, const char *buf, size_t len,
    size_t *used, const struct sender_reply **out)
{
	size_t i;
	int rc;

	*used = 0;
	if (p->failed)
		return -1;
	if (p->complete)
		reply_reset(p);
	for (i = 0; i < len; i++) {
		char c = buf[i];
		if (c != '\n') {
			/* One byte of slack for the CR of a maximal line. */
			if (p->len >= SENDER_REPLY_LINE_MAX + 1)
				return reply_fail(p, "reply line longer than 2048 bytes");
			p->line[p->len++] = c;
			continue;
		}
		if (p->len > 0 && p->line[p->len - 1] == '\r')
			p->len--;
		if (p->len > SENDER_REPLY_LINE_MAX)
			return reply_fail(p, "reply line longer than 2048 bytes");
		rc = reply_line(p, p->line, p->len);
		p->len = 0;
		if (rc < 0)
			return -1;
		if (rc == 1) {
			*used = i + 1;
			p->complete = 1;
			*out = &p->cur;
			return 1;
		}
	}
	*used = len;
	return 0;
}

const char *
sender_reply_line(const struct sender_reply *r, size_t n)
{
	const char *s = r->lines;
	size_t k;

	if (n >= r->n_kept)
		return NULL;
	for (k = 0; k < n; k++)
		s += strlen(s) + 1;
	return s;
}
