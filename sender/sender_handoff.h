/*
 * sender_handoff - hand queued recipients on to their owner when the owner
 * of their domain changes (a sender joined, left, or we drain).
 *
 * Every router answers our heartbeats with the live members it sees
 * (MemberView). A recipient is *foreign* when every fresh view (younger than
 * three heartbeats) that lists us names another sender as its owner, by the
 * routers' own rule (router_hrw_pick with the domain's hot_domains: k); with
 * no fresh view, or no other sender to own it, it stays ours. Foreign
 * recipients are not delivered here (the scheduler's filter) but sent, one
 * message at a time with their queue state (attempts, times, last reply), as
 * a SubmitRequest through a router whose view agrees; the router enqueues
 * them at the owner and answers once the owner committed them. Only then are
 * they removed here (the DONE callback: the owner turns it into queue
 * operations and releases the recipients from the scheduler once
 * committed). A nack, a send failure or a timeout lets them go and they are
 * tried again later; the new owner's dedup by origin makes a repeat harmless.
 *
 * Work is driven by a "dirty" flag: set when a view changes, when a foreign
 * recipient is committed (a late enqueue, a deferral), every few minutes as
 * a safety net, and while the last scan found foreign recipients. A scan
 * walks the queue's schedule; it holds at most HANDOFF_MAX_PENDING messages
 * in flight. It walks only the domains that are not wholly ours (and the
 * hot ones), through the queue's per-domain ready queues.
 */
#ifndef SENDER_HANDOFF_H
#define SENDER_HANDOFF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "hk_config.h"
#include "hk_zlink.h"
#include "sender_queue.h"
#include "sender_sched.h"

typedef struct sender_handoff sender_handoff;

/* Counters for /metrics: written on the loop, read on the HTTP thread. */
struct sender_handoff_stats {
	_Atomic uint64_t msgs_sent;     /* handoff requests sent */
	_Atomic uint64_t rcpts_acked;   /* recipients committed at their new owner */
	_Atomic uint64_t refused;       /* requests nacked, unsendable or timed out */
	_Atomic uint64_t foreign;       /* foreign recipients the last scan saw */
};

/* DONE: the new owner holds these recipients of message ID: remove them
 * here (they are held in the scheduler until then). */
typedef void (*sender_handoff_done_fn)(const char *id, const uint32_t *idx, size_t n, void *arg);

struct sender_handoff_conf {
	uv_loop_t *loop;
	sender_queue *q;
	sender_sched *sched;
	const struct hk_config *cfg;    /* hot_domains: */
	const char *self;               /* our node name */
	hk_zlink **links;               /* one per router, as heartbeats go */
	const char *const *link_names;  /* the routers' names, for logs */
	size_t n_links;
	uint32_t heartbeat_interval_ms;
	sender_handoff_done_fn done;
	void *arg;
	struct sender_handoff_stats *stats;
};

/* sender_handoff_new - start (a timer on the loop). The conf's pointers
 * must outlive the handoff. */
sender_handoff *sender_handoff_new(const struct sender_handoff_conf *conf);

/* sender_handoff_view - router LINK's latest MemberView. */
void sender_handoff_view(sender_handoff *h, size_t link, const Hk__MemberView *v);

/* sender_handoff_reply - a SubmitReply on LINK (to one of our requests). */
void sender_handoff_reply(sender_handoff *h, size_t link, const Hk__SubmitReply *rep);

/* sender_handoff_mine - is recipient RCPT of DOMAIN (canonical) ours to
 * deliver? The scheduler's filter. RCPT NULL: is the domain as a whole ours
 * (true for a hot domain, decided per recipient)? */
bool sender_handoff_mine(sender_handoff *h, const char *domain, const char *rcpt);

/* sender_handoff_touch - recipient RCPT of DOMAIN was committed here (new
 * or deferred): look again soon if it is foreign. */
void sender_handoff_touch(sender_handoff *h, const char *domain, const char *rcpt);

/* sender_handoff_busy - requests in flight (draining waits for them). */
size_t sender_handoff_busy(const sender_handoff *h);

/* sender_handoff_close - stop: forget requests in flight (their recipients
 * stay queued here; the scheduler is stopped by its owner), close the timer
 * and free once it is closed. */
void sender_handoff_close(sender_handoff *h);

#endif
