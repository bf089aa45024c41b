/*
 * sender_notify - the DSNs the sender owes for its own outcomes.
 *
 * Outcomes are noted as they come (bounced and expired: a failure report;
 * deferred: perhaps a delay report); at the start of the commit that records
 * them, sender_notify_flush() reads each noted recipient as it still stands
 * in the queue (its RCPT parameters, queued time, previous attempt), decides
 * with sender_dsn_wanted() whether a DSN is due, and builds one DSN per
 * message for its due recipients (sender_bounce), handed to EMIT to be
 * queued in that same commit. A delay report is sent once per recipient:
 * when NOTIFY asks for DELAY and its time in the queue passes
 * delay_warning_time with this attempt (0: at the first deferral).
 */
#ifndef SENDER_NOTIFY_H
#define SENDER_NOTIFY_H

#include <stddef.h>
#include <stdint.h>
#include "hikyaku.pb-c.h"
#include "sender_queue.h"
#include "sender_sched.h"

typedef struct sender_notify sender_notify;

struct sender_notify_conf {
	sender_queue *q;
	const char *reporting_mta;      /* our host name */
	const char *node;               /* names the maker of DSNs (ingress_node) */
	uint32_t delay_warning_ms;
	uint32_t max_lifetime_ms;       /* for Will-Retry-Until */
};

/* EMIT: a DSN to queue. MSG (unpacked, free with
 * hk__submission__free_unpacked) and BODY (free) are the callee's; ABOUT is
 * the original's id, N the recipients reported. */
typedef void (*sender_notify_emit_fn)(Hk__Submission *msg, uint8_t *body, size_t body_len,
    const char *about, size_t n, void *arg);

sender_notify *sender_notify_new(const struct sender_notify_conf *conf);
void sender_notify_free(sender_notify **n);

/* sender_notify_outcome - note O (delivered outcomes are ignored). */
void sender_notify_outcome(sender_notify *n, const struct sender_outcome *o);

/* sender_notify_flush - build the DSNs due for everything noted (see
 * above) at NOW and forget the notes. Returns the DSNs emitted. */
size_t sender_notify_flush(sender_notify *n, int64_t now, sender_notify_emit_fn emit, void *arg);

#endif
