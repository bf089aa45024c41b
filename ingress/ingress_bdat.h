/*
 * ingress_bdat - CHUNKING (RFC 3030): the BDAT command line and the reader
 * for its chunks.
 *
 * A chunk is exactly the number of octets its command announced, with no
 * end marker and no dot-stuffing, so the reader copies bytes as they are. The
 * one change it makes: unless the transaction is BODY=BINARYMIME, a bare LF
 * is stored as CRLF, the same as the DATA reader does, so that a message
 * means the same whichever way it came in and whichever way it goes out
 * (the sender relays with DATA). A BINARYMIME body is octets, not lines: it
 * is kept byte for byte, and NUL and line length are not faults in it.
 */
#ifndef INGRESS_BDAT_H
#define INGRESS_BDAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ingress_parse.h"

#define INGRESS_BDAT_SIZE_MAX INT64_MAX /* largest chunk-size accepted (2^63 - 1) */

/*
 * ingress_parse_bdat - the arguments of "BDAT <chunk-size> [LAST]" (as left
 * by ingress_cmd_split). Returns 0 with *size and *last, or -1 with a 501
 * 5.5.4 reply in err (no size, not digits, over INGRESS_BDAT_SIZE_MAX, junk
 * after the size). The caller must still read the chunk, whatever it decides.
 */
int ingress_parse_bdat(const char *args, uint64_t *size, bool *last, char err[INGRESS_REPLY_MAX]);

/*
 * The chunk reader for one message: ingress_bdat_chunk() for each BDAT,
 * then ingress_bdat_feed() until ingress_bdat_chunk_done(). Bytes are
 * appended to `out` until something makes the message unacceptable; from
 * then on they are counted and dropped, so memory stays bounded by `limit`.
 */
struct ingress_bdat {
	/* read-only for callers */
	uint64_t size;          /* message bytes as stored (bare LF counted as CRLF) */
	uint64_t remaining;     /* octets of the current chunk still to come */
	bool too_big;           /* size went over limit */
	bool line_too_long;     /* a line over INGRESS_TEXT_LINE_MAX */
	bool nul;               /* a NUL byte */
	bool bare_lf;           /* a LF without CR (stored as CRLF unless binary) */
	bool binary;            /* BODY=BINARYMIME: bytes kept as they are */
	/* private */
	bool cr;                /* the last byte was a CR, its line not ended yet */
	size_t line_len;        /* characters of the current line, CR/LF excluded */
	size_t limit;
	struct ingress_buf *out;
};

/* ingress_bdat_init - start a message read into OUT (appended to, not reset). */
void ingress_bdat_init(struct ingress_bdat *b, struct ingress_buf *out, size_t limit, bool binary);

/* ingress_bdat_chunk - a BDAT of SIZE octets was accepted: read them next. */
void ingress_bdat_chunk(struct ingress_bdat *b, uint64_t size);

/* ingress_bdat_feed - consume up to the rest of the current chunk from p;
 * returns how many bytes were consumed (less than len only at its end). */
size_t ingress_bdat_feed(struct ingress_bdat *b, const char *p, size_t len);

static inline bool
ingress_bdat_chunk_done(const struct ingress_bdat *b)
{
	return b->remaining == 0;
}

/* ingress_bdat_failed - after the LAST chunk: false if the message may be
 * queued, else the reply in err (552 size, 550 line length, 554 NUL). */
bool ingress_bdat_failed(const struct ingress_bdat *b, char err[INGRESS_REPLY_MAX]);

#endif
