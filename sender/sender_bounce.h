/*
 * sender_bounce - a DSN about a queued message, as a Submission ready to be
 * queued (a SENDER_QOP_ENQUEUE op): from <>, to the original envelope
 * sender, with the tenant and pool of the original, SMTPUTF8 and
 * BODY=8BITMIME as the DSN needs (sender_dsn.h). Used by the sender for its
 * own bounces, expiries and delays, and by `hikyaku queue bounce`; both
 * queue it in the same transaction that records the outcome.
 */
#ifndef SENDER_BOUNCE_H
#define SENDER_BOUNCE_H

#include <stddef.h>
#include <stdint.h>
#include "hikyaku.pb-c.h"
#include "hk_id.h"
#include "sender_dsn.h"

/* A DSN and the Submission that carries it; the Submission points into the
 * struct and into the original's meta (which must outlive it). */
struct sender_bounce {
	Hk__Submission sub;
	Hk__Envelope env;
	Hk__Recipient rcpt, *rcpt_p;
	char *params[2];
	char id[HK_ID_LEN + 1];
	struct sender_dsn dsn;          /* sub's body: dsn.data, dsn.len */
};

/*
 * sender_bounce_make - build into *b the DSN about message META (its
 * envelope sender, MAIL parameters, tenant, pool, arrival) and BODY for
 * RCPTS (already chosen with sender_dsn_wanted), reported by REPORTING_MTA,
 * with the new message id ID, at NOW; INGRESS_NODE names who made it.
 * Returns 0; 1 if no DSN can be sent (a null sender, no recipient, a sender
 * address without a valid domain; why says which); -1 on a build error
 * (why). Free with sender_bounce_free() after 0.
 */
int sender_bounce_make(struct sender_bounce *b, const Hk__Submission *meta, const uint8_t *body,
    size_t body_len, const struct sender_dsn_rcpt *rcpts, size_t n, const char *reporting_mta,
    const char *id, int64_t now, const char *ingress_node, char *why, size_t whylen);

void sender_bounce_free(struct sender_bounce *b);

#endif
