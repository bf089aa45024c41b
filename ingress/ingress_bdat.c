/*
 * ingress_bdat - the BDAT command and chunk reader (see ingress_bdat.h).
 */
/* System */
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* This role */
#include "ingress_bdat.h"
#include "ingress_parse.h"

static bool
is_blank(char c)
{
	return c == ' ' || c == '\t';
}

int
ingress_parse_bdat(const char *args, uint64_t *size, bool *last, char err[INGRESS_REPLY_MAX])
{
	const char *p = args;
	uint64_t n = 0;

	*size = 0;
	*last = false;
	if (*p < '0' || *p > '9')
		goto syntax;
	for (; *p >= '0' && *p <= '9'; p++) {
		uint64_t d = (uint64_t)(*p - '0');
		if (n > ((uint64_t)INGRESS_BDAT_SIZE_MAX - d) / 10) {
			snprintf(err, INGRESS_REPLY_MAX, "501 5.5.4 BDAT chunk size too large");
			return -1;
		}
		n = n * 10 + d;
	}
	if (*p != '\0' && !is_blank(*p))
		goto syntax;
	while (is_blank(*p))
		p++;
	if (strncasecmp(p, "LAST", 4) == 0 && (p[4] == '\0' || is_blank(p[4]))) {
		*last = true;
		for (p += 4; is_blank(*p); p++)
			;
	}
	if (*p != '\0')
		goto syntax;
	*size = n;
	return 0;
syntax:
	snprintf(err, INGRESS_REPLY_MAX, "501 5.5.4 Syntax: BDAT chunk-size [LAST]");
	return -1;
}

void
ingress_bdat_init(struct ingress_bdat *b, struct ingress_buf *out, size_t limit, bool binary)
{
	memset(b, 0, sizeof(*b));
	b->binary = binary;
	b->limit = limit;
	b->out = out;
}

void
ingress_bdat_chunk(struct ingress_bdat *b, uint64_t size)
{
	b->remaining = size;
}

/* Does the message stay storable? In a binary body NUL and long lines are content. */
static bool
bdat_refused(const struct ingress_bdat *b)
{
	return b->too_big || (!b->binary && (b->line_too_long || b->nul));
}

/* Append message bytes, or just count them once the message is refused. */
static void
emit(struct ingress_bdat *b, const char *p, size_t n)
{
	if (n == 0)
		return;
	if (b->size + n > b->limit)
		b->too_big = true;
	b->size += n;
	if (!bdat_refused(b))
		ingress_buf_append(b->out, p, n);
}

size_t
ingress_bdat_feed(struct ingress_bdat *b, const char *p, size_t len)
{
	size_t n = len < b->remaining ? len : (size_t)b->remaining;
	size_t start = 0;

	for (size_t i = 0; i < n; i++) {
		char c = p[i];
		if (c == '\n') {
			if (!b->cr) {
				b->bare_lf = true;
				if (!b->binary) {
					/* Store CRLF: what comes before, a CR, then this LF. */
					emit(b, p + start, i - start);
					emit(b, "\r", 1);
					start = i;
				}
			}
			b->cr = false;
			b->line_len = 0;
			continue;
		}
		if (b->cr && ++b->line_len > INGRESS_TEXT_LINE_MAX)
			b->line_too_long = true; /* the CR before was content */
		b->cr = c == '\r';
		if (b->cr)
			continue;
		if (c == '\0')
			b->nul = true;
		if (++b->line_len > INGRESS_TEXT_LINE_MAX)
			b->line_too_long = true;
	}
	emit(b, p + start, n - start);
	b->remaining -= n;
	return n;
}

bool
ingress_bdat_failed(const struct ingress_bdat *b, char err[INGRESS_REPLY_MAX])
{
	if (b->binary)
		return ingress__msg_failed(b->too_big, false, false, err);
	return ingress__msg_failed(b->too_big, b->line_too_long, b->nul, err);
}
