/*
 * ingress_headers - a look at a received message's header block (RFC 5322)
 * for the end-of-message checks: is there a Message-ID and a Date (to add
 * them when missing), which domain is the From: in (a tenant may only send
 * from its own), how long is the longest header line, and is the block well
 * formed.
 *
 * It reads, it does not rewrite: only the first mailbox of From: is parsed
 * (display names, quoted strings, comments, folding, angle addresses, groups),
 * strictly enough that a From: which a mail client could read differently
 * gives no domain at all.
 */
#ifndef INGRESS_HEADERS_H
#define INGRESS_HEADERS_H

#include <stdbool.h>
#include <stddef.h>

/* common/ */
#include "hk_domain.h"

struct ingress_headers {
	size_t len;             /* bytes of the header block, its empty line included */
	bool has_body;          /* an empty line ended the block (else it is all header) */
	bool has_message_id;    /* a Message-ID: field, whatever its value */
	bool has_date;          /* a Date: field, whatever its value */
	unsigned from_fields;   /* From: fields seen (RFC 5322 wants exactly one) */
	unsigned from_mailboxes; /* mailboxes in the first From:, 0 if it does not parse */
	char from_domain[HK_DOMAIN_MAX]; /* canonical domain of its first mailbox, or "" */
	size_t max_line_len;    /* longest header line, CR/LF excluded */
	bool malformed;         /* a line that is neither "name:" nor a continuation */
};

/*
 * ingress_headers_scan - scan the header block at the start of body[0..len):
 * lines (CRLF or bare LF) up to the first empty one. from_domain is set only
 * when the whole first From: field parses as a mailbox list (or group) and
 * its first mailbox has a valid domain name; it is then lower-case ASCII
 * (A-labels), as hk_domain_canon makes it.
 */
void ingress_headers_scan(const char *body, size_t len, struct ingress_headers *info);

#endif
