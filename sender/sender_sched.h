/*
 * sender_sched - the delivery scheduler.
 *
 * A timer (and a kick after new mail) scans the queue for recipients that
 * are due and not in flight, domain by domain (sender_queue_scan_due_domains),
 * groups them into jobs of one message and one destination domain (at most
 * max_deliveries jobs at once, and max_connections_per_domain per domain: a
 * job holds one connection), resolves the domain's MX and runs one SMTP
 * transaction per job, on a connection kept
 * open by an earlier job to the same address when there is one (one
 * sender_smtp pool per scheduler). STARTTLS is used wherever offered; a
 * domain of tls_required_domains is never delivered in plaintext (the job's
 * tls_required). Each recipient ends in one outcome reported through the
 * callback. A domain where no MX host took a session (DNS failure, no
 * address answering) is backed off as a whole: no new job before retry_min
 * doubling per failure (capped at retry_max), then one probe job at a time
 * until a session is taken again.
 *
 * The scheduler never writes the queue: its owner turns outcomes into queue
 * operations and calls sender_sched_release() once each one is committed (or
 * given up). Until then the recipient stays in flight and is not picked
 * again, since the queue still shows it due.
 */
#ifndef SENDER_SCHED_H
#define SENDER_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "hk_config.h"
#include "sender_queue.h"

#define SENDER_SCHED_TICK_MS 200        /* scan period */
#define SENDER_SCHED_RCPTS_PER_JOB 100  /* recipients per SMTP transaction */

typedef struct sender_sched sender_sched;

enum sender_outcome_kind {
	SENDER_OUT_DELIVERED = 1,       /* 2xx: remove */
	SENDER_OUT_DEFERRED,            /* 4xx: retry at next_attempt_ms */
	SENDER_OUT_BOUNCED,             /* 5xx: remove (and a DSN: sender_notify) */
	SENDER_OUT_EXPIRED,             /* 4xx past max_lifetime: remove (and a DSN) */
	SENDER_OUT_POSTPONED,           /* not attempted (no source address has budget):
	                                 * wait until next_attempt_ms, no attempt counted */
};

/* One recipient's outcome. Strings are valid during the callback only,
 * except reason and provider, which are static. The reply is classified by
 * sender_class: kind follows its basic code, status/reason/throttled/
 * provider are what sender_class_reply() made of it. */
struct sender_outcome {
	enum sender_outcome_kind kind;
	const char *id;
	uint32_t idx;
	const char *tenant;
	const char *rcpt;
	const char *domain;
	const char *mx;                 /* host that took the session, or "" */
	const char *mx_addr;
	const char *source;             /* our address on that session (the source IP), or "" */
	const char *tls;                /* TLS version of the session ("TLSv1.3"), or "" */
	const char *reply;              /* remote reply, or our reason */
	const char *status;             /* RFC 3463 code of the reply ("5.1.1"), or derived ("4.0.0") */
	const char *reason;             /* static: "none", "throttle", "block", "mailbox", "quota",
	                                 * "policy", "dns", "network", "other" */
	bool throttled;                 /* the destination asked us to slow down */
	const char *provider;           /* static: "gmail", "yahoo", ... or "" */
	uint32_t attempts;              /* including this one */
	int64_t attempt_ms;             /* when this attempt ended */
	int64_t next_attempt_ms;        /* DEFERRED, POSTPONED */
};

typedef void (*sender_outcome_cb)(const struct sender_outcome *o, void *arg);
typedef void (*sender_sched_done_cb)(void *arg);

/* sender_sched_new - a scheduler for Q on LOOP with CONF's delivery settings
 * (its TLS client context is made here: tls_ca_file is read); it starts
 * scanning at once. Returns 0, or -1 with the reason in err. */
int sender_sched_new(sender_sched **out, uv_loop_t *loop, sender_queue *q,
    const struct hk_sender_conf *conf, sender_outcome_cb cb, void *arg,
    char *err, size_t errlen);

/* sender_sched_kick - scan soon (new mail was committed). */
void sender_sched_kick(sender_sched *s);

/* sender_sched_release - the outcome of (id, idx) is committed or given up:
 * the recipient may be picked again by the schedule. */
void sender_sched_release(sender_sched *s, const char *id, uint32_t idx);

/* sender_sched_set_shaping - per-destination limits (SHAPING) and warm-up
 * budgets (WARMUP) for choosing each job's source address; either may be
 * NULL. They must outlive the scheduler. */
struct sender_shaping;
struct sender_warmup;
void sender_sched_set_shaping(sender_sched *s, struct sender_shaping *shaping,
    struct sender_warmup *warmup);

/* sender_sched_set_filter - FN(domain, rcpt, arg) false: the recipient is
 * not ours to deliver (its domain has another owner now and is being handed
 * on); the schedule passes it by. With rcpt NULL it is asked about the
 * whole domain (false: pass the domain by). NULL: deliver everything. */
typedef bool (*sender_sched_filter_fn)(const char *domain, const char *rcpt, void *arg);
void sender_sched_set_filter(sender_sched *s, sender_sched_filter_fn fn, void *arg);

/* sender_sched_hold - put (id, idx) in the in-flight set as if a job had
 * picked it (another part of the sender works on it, e.g. a handoff);
 * sender_sched_release() lets it go. sender_sched_held - is it there? */
void sender_sched_hold(sender_sched *s, const char *id, uint32_t idx);
bool sender_sched_held(sender_sched *s, const char *id, uint32_t idx);

size_t sender_sched_jobs(const sender_sched *s);       /* jobs running */
size_t sender_sched_inflight(const sender_sched *s);   /* recipients held */

/*
 * sender_sched_stop - stop picking, abort SMTP jobs, close the connection
 * pool (parked connections are QUIT) and DNS. Outcomes
 * that are final (delivered, bounced) are still reported; deferrals of
 * aborted jobs are not (the recipients stay due for the next start). DONE
 * runs asynchronously once every job ended and every handle is closed; then
 * free with sender_sched_free().
 */
void sender_sched_stop(sender_sched *s, sender_sched_done_cb done, void *arg);
void sender_sched_free(sender_sched **s);

/* sender_retry_delay - delay after the ATTEMPTS-th failed attempt (1 = the
 * first): min_ms doubling per attempt, capped at max_ms, then scaled by
 * 0.9 + 0.2 * U (U in [0, 1)) so that retries do not move in lockstep. */
uint64_t sender_retry_delay(uint32_t min_ms, uint32_t max_ms, uint32_t attempts, double u);

#endif
