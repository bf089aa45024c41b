/*
 * sender - the sender role: takes enqueues from routers, commits them to the
 * LMDB queue with group commit, acks, and delivers through the scheduler.
 *
 * Group commit: queue operations (enqueues from routers, outcomes from the
 * scheduler) collect in `next`. When no commit is running, `next` becomes
 * `running` and is committed in ONE write transaction on a libuv worker
 * thread; operations arriving meanwhile collect in the new `next`. When the
 * commit returns (after_work, on the loop), its enqueues are acked (never
 * before: the ack is the durability promise), its outcomes are logged as
 * events and released from the scheduler, and the next batch starts. Only
 * one write transaction exists at a time.
 *
 * Handoff (sender_handoff): recipients whose domain another sender owns now
 * (routers tell us the members they see) are not delivered here but handed
 * on through a router, and removed here once the new owner committed them.
 *
 * Draining (SIGUSR1, sender_drain): heartbeats say draining, so routers give
 * our domains to the next owner; enqueues that still arrive are taken as
 * usual (never nack what a router already sent), and since no domain is ours
 * any more the whole queue is handed on (or, with no other sender alive,
 * delivered here). Once the queue is empty and nothing is in flight, the
 * node reports itself drained and the process stops.
 *
 * Links: one DEALER per router (identity = node name), so that heartbeats
 * reach every router; a reply goes back on the link its request came in on.
 */

/* System */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Third-party */
#include <jansson.h>
#include <uv.h>
#include <zmq.h>

/* common/ */
#include "hk_domain.h"
#include "hk_http.h"
#include "hk_log.h"
#include "hk_node.h"
#include "hk_prom.h"
#include "hk_util.h"
#include "hk_curve.h"
#include "hk_zlink.h"

/* This role */
#include "sender_handoff.h"
#include "sender_notify.h"
#include "sender_shaping.h"
#include "sender_warmup.h"
#include "sender_queue.h"
#include "sender_sched.h"

#define OP_TRIES 3              /* commits an outcome may fail before we give up on it */

/* One queue operation and what to do once it is committed. */
struct sender_op {
	struct sender_qop q;            /* first: the batch holds &op->q */
	/* ENQUEUE: where the ack goes; the copies q points to */
	hk_zlink *link;
	uint64_t req_id;
	Hk__Submission *msg;
	uint8_t *body;
	/* outcomes: the event to log */
	enum sender_outcome_kind out;
	char *id, *tenant, *rcpt, *domain, *mx, *mx_addr, *reply;
	char tls[16];                   /* TLS version of the session, or "" */
	char source[64];                /* our source address on it, or "" */
	char status[16];                /* the reply's RFC 3463 code (sender_class) */
	const char *reason, *provider;  /* static strings */
	bool throttled;
	uint32_t attempts;
	int tries;
};

struct batch {
	struct sender_qop **ops;
	size_t n, cap;
};

struct sender {
	struct hk_node *node;
	const struct hk_sender_conf *conf;
	sender_queue *q;
	sender_sched *sched;
	sender_handoff *handoff;
	sender_notify *notify;          /* DSNs owed for our outcomes */
	sender_shaping *shaping;        /* per-destination limits */
	sender_warmup *warmup;          /* warm-up state (its own LMDB environment) */
	/* Status documents for GET /shaping and /warmup, made on the loop. */
	uv_mutex_t status_lock;
	uv_cond_t status_cond;          /* a publish made them */
	char *shaping_json, *warmup_json;
	_Atomic int64_t status_asked_ms; /* GET /shaping or /warmup wants them newer than this */
	int64_t status_made_ms;         /* (under status_lock) */
	int64_t pruned_ms;              /* shaping pairs last pruned */
	int64_t synced_ms;              /* warm-up state last synced */
	hk_zlink **links;
	size_t n_links;
	uv_timer_t hb_timer;
	uv_timer_t kick;                /* starts a commit on the next loop turn */
	uv_work_t work;
	struct batch next, running;
	bool committing;
	int commit_rc;
	char commit_err[256];
	int64_t commit_started_ms;
	uint64_t hb_seq;
	bool stopping, sched_done, finished;
	bool draining, drained;
	char endpoint[300];             /* in heartbeats: where /metrics etc. are, or "" */
	int64_t drain_started_ms;
	int handles_open;
	/* For the HTTP thread: atomics, written on the loop. */
	struct {
		_Atomic bool queue_open, draining;
		_Atomic uint64_t queue_depth, in_flight;
		_Atomic int64_t router_seen_ms;  /* a heartbeat went out, or an enqueue came in */
		_Atomic uint64_t enqueues, stored, duplicates, enqueue_failed;
		_Atomic uint64_t outcomes[4];    /* by enum sender_outcome_kind - 1 */
		_Atomic uint64_t handed_off;     /* recipients removed after a handoff */
		_Atomic uint64_t dsns;           /* DSNs queued for our own outcomes */
		_Atomic uint64_t postponed;      /* recipients that waited for a budget */
		struct sender_handoff_stats handoff;
	} stats;
};

static void commit_start(struct sender *s);
static void maybe_finish(struct sender *s);
static void drain_check(struct sender *s);

/* ---- operations and batches ---- */

static void
op_free(struct sender_op *op)
{
	if (op->msg)
		hk__submission__free_unpacked(op->msg, NULL);
	free(op->body);
	free(op->id);
	free(op->tenant);
	free(op->rcpt);
	free(op->domain);
	free(op->mx);
	free(op->mx_addr);
	free(op->reply);
	free(op);
}

static void
batch_push(struct batch *b, struct sender_op *op)
{
	if (b->n == b->cap) {
		b->cap = b->cap ? b->cap * 2 : 64;
		b->ops = xrealloc(b->ops, b->cap * sizeof(*b->ops));
	}
	b->ops[b->n++] = &op->q;
}

static void
on_kick(uv_timer_t *t)
{
	commit_start(t->data);
}

/* add_op - queue OP for the next commit; the commit starts on the next loop
 * turn, so that everything arriving in this one shares the transaction. */
static void
add_op(struct sender *s, struct sender_op *op)
{
	batch_push(&s->next, op);
	if (!s->committing)
		uv_timer_start(&s->kick, on_kick, 0, 0);
}

/* ---- replies and events ---- */

static void
send_enqueue_reply(struct sender *s, hk_zlink *link, uint64_t req_id, bool ok, bool dup,
    const char *reason)
{
	Hk__Frame f = HK__FRAME__INIT;
	Hk__EnqueueReply r = HK__ENQUEUE_REPLY__INIT;
	int rc;

	r.req_id = req_id;
	r.ok = ok;
	r.duplicate = dup;
	r.reason = (char *)(reason ? reason : "");
	f.body_case = HK__FRAME__BODY_ENQUEUE_REPLY;
	f.enqueue_reply = &r;
	rc = hk_zlink_send(link, NULL, 0, &f, NULL, 0);
	if (rc != 0)
		/* The router times the request out and the client retries. */
		hk_log_warn("enqueue_reply_failed", "{s:I, s:b, s:s}", "req_id", (json_int_t)req_id, "ok", ok,
		    "error", strerror(-rc));
	(void)s;
}

static const char *
outcome_event(enum sender_outcome_kind k)
{
	switch (k) {
	case SENDER_OUT_DELIVERED: return "delivered";
	case SENDER_OUT_DEFERRED: return "deferred";
	case SENDER_OUT_BOUNCED: return "bounced";
	case SENDER_OUT_EXPIRED: return "expired";
	case SENDER_OUT_POSTPONED: return "postponed";
	}
	return "handed_off";    /* 0: a handoff's removal */
}

/* log_outcome - the delivered/deferred/bounced/expired event, with the
 * reply and what sender_class made of it (status, reason, throttled,
 * provider). */
static void
log_outcome(const struct sender_op *op)
{
	const char *ev = outcome_event(op->out);

	if (op->out == SENDER_OUT_DEFERRED)
		hk_log_info(ev, "{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:s, s:s, s:s, s:b, s:s, s:I}",
		    "id", op->id, "tenant", op->tenant, "rcpt", op->rcpt, "domain", op->domain,
		    "mx", op->mx, "mx_addr", op->mx_addr, "source", op->source, "tls", op->tls,
		    "attempts", (int)op->attempts,
		    "reply", op->reply, "status", op->status, "reason", op->reason,
		    "throttled", (int)op->throttled, "provider", op->provider,
		    "next_attempt_ms", (json_int_t)op->q.next_attempt_ms);
	else
		hk_log_info(ev, "{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:s, s:s, s:s, s:b, s:s}",
		    "id", op->id, "tenant", op->tenant, "rcpt", op->rcpt, "domain", op->domain,
		    "mx", op->mx, "mx_addr", op->mx_addr, "source", op->source, "tls", op->tls,
		    "attempts", (int)op->attempts,
		    "reply", op->reply, "status", op->status, "reason", op->reason,
		    "throttled", (int)op->throttled, "provider", op->provider);
}

/* ---- commit (the worker thread runs only commit_work) ---- */

static void
commit_work(uv_work_t *w)
{
	struct sender *s = w->data;

	s->commit_rc = sender_queue_commit(s->q, s->running.ops, s->running.n,
	    s->commit_err, sizeof(s->commit_err));
}

/* param_value - the value of KEY=VALUE among PARAMS (verbatim, still
 * xtext), or NULL. */
static const char *
param_value(char *const *params, size_t n, const char *key)
{
	size_t k = strlen(key);

	for (size_t i = 0; i < n; i++)
		if (strncasecmp(params[i], key, k) == 0 && params[i][k] == '=')
			return params[i] + k + 1;
	return NULL;
}

/* log_queued - the "queued" event, with what the delivery will carry on:
 * the pool, the DSN parameters of the envelope (RFC 3461) and of each
 * recipient, as the client wrote them. */
static void
log_queued(const Hk__Submission *m, uint32_t shard, uint32_t n_rcpts)
{
	const Hk__Envelope *e = m->envelope;
	json_t *rcpts = json_array();
	const char *envid = NULL, *ret = NULL;

	if (e != NULL) {
		envid = param_value(e->mail_params, e->n_mail_params, "ENVID");
		ret = param_value(e->mail_params, e->n_mail_params, "RET");
		for (size_t i = 0; i < e->n_rcpts; i++) {
			const Hk__Recipient *r = e->rcpts[i];
			json_t *o = json_pack("{s:s}", "rcpt", r->address);
			const char *notify = param_value(r->params, r->n_params, "NOTIFY");
			const char *orcpt = param_value(r->params, r->n_params, "ORCPT");
			if (notify)
				json_object_set_new(o, "notify", json_string(notify));
			if (orcpt)
				json_object_set_new(o, "orcpt", json_string(orcpt));
			json_array_append_new(rcpts, o);
		}
	}
	const char *from = e && e->n_rcpts && e->rcpts[0]->handoff ? e->rcpts[0]->handoff->from_node : NULL;
	hk_log_info("queued", "{s:s, s:s, s:s, s:i, s:i, s:s?, s:s?, s:o, s:s?}", "id", m->id,
	    "tenant", m->tenant, "pool", m->pool ? m->pool : "", "shard", (int)shard,
	    "rcpts", (int)n_rcpts, "envid", envid, "ret", ret, "recipients", rcpts,
	    "handed_from", from);
}

/* commit_dsn_done - a DSN queued with the outcomes it reports (or not). */
static void
commit_dsn_done(struct sender *s, struct sender_op *op, bool *stored)
{
	const Hk__Submission *m = op->msg;
	const char *to = m->envelope->rcpts[0]->address;

	if (s->commit_rc != 0 || op->q.result != SENDER_QR_DONE) {
		hk_log_error("dsn_dropped", "{s:s, s:s, s:s}", "about", op->id, "to", to,
		    "error", s->commit_rc != 0 ? s->commit_err : op->q.why);
		return;
	}
	s->stats.dsns++;
	hk_log_info("dsn_queued", "{s:s, s:s, s:s, s:I, s:I}", "id", m->id, "about", op->id,
	    "to", to, "rcpts", (json_int_t)op->attempts, "size", (json_int_t)op->q.body_len);
	char dom[HK_DOMAIN_MAX];
	if (hk_domain_of(to, dom) == 0)
		sender_handoff_touch(s->handoff, dom, to);
	*stored = true;
}

static void
commit_enqueue_done(struct sender *s, struct sender_op *op, bool *stored)
{
	const Hk__Submission *m = op->msg;

	if (op->link == NULL) {         /* a DSN of ours, not a router's enqueue */
		commit_dsn_done(s, op, stored);
		return;
	}
	if (s->commit_rc != 0) {
		s->stats.enqueue_failed++;
		send_enqueue_reply(s, op->link, op->req_id, false, false, s->commit_err);
		return;
	}
	switch (op->q.result) {
	case SENDER_QR_DONE:
		s->stats.stored++;
		send_enqueue_reply(s, op->link, op->req_id, true, false, NULL);
		log_queued(m, op->q.shard, op->q.n_rcpts);
		*stored = true;
		/* A router with an older view may send us what is not ours. */
		for (size_t i = 0; i < m->envelope->n_rcpts; i++) {
			char dom[HK_DOMAIN_MAX];
			if (hk_domain_of(m->envelope->rcpts[i]->address, dom) == 0)
				sender_handoff_touch(s->handoff, dom, m->envelope->rcpts[i]->address);
		}
		break;
	case SENDER_QR_DUPLICATE:
		s->stats.duplicates++;
		send_enqueue_reply(s, op->link, op->req_id, true, true, NULL);
		hk_log_info("queued_duplicate", "{s:s, s:i}", "id", m->id, "shard", (int)op->q.shard);
		break;
	case SENDER_QR_FAILED:
		send_enqueue_reply(s, op->link, op->req_id, false, false, op->q.why);
		hk_log_error("enqueue_failed", "{s:s, s:i, s:s}", "id", m->id,
		    "shard", (int)op->q.shard, "error", op->q.why);
		break;
	default:
		send_enqueue_reply(s, op->link, op->req_id, false, false, op->q.why);
		hk_log_warn("enqueue_refused", "{s:s, s:i, s:s}", "id", m->id,
		    "shard", (int)op->q.shard, "reason", op->q.why);
		break;
	}
}

static void
stats_outcome(struct sender *s, enum sender_outcome_kind k)
{
	switch (k) {
	case SENDER_OUT_DELIVERED: s->stats.outcomes[0]++; break;
	case SENDER_OUT_DEFERRED: s->stats.outcomes[1]++; break;
	case SENDER_OUT_BOUNCED: s->stats.outcomes[2]++; break;
	case SENDER_OUT_EXPIRED: s->stats.outcomes[3]++; break;
	case SENDER_OUT_POSTPONED: s->stats.postponed++; break;
	}
}

/* commit_outcome_done - false if the op goes into the next batch again. */
static bool
commit_outcome_done(struct sender *s, struct sender_op *op)
{
	bool failed = s->commit_rc != 0 || op->q.result == SENDER_QR_FAILED;

	if (failed) {
		if (++op->tries < OP_TRIES) {
			batch_push(&s->next, op);
			return false;
		}
		/* Given up: the recipient stays due as it was and is tried again. */
		hk_log_error("outcome_dropped", "{s:s, s:s, s:s, s:s}", "event",
		    outcome_event(op->out), "id", op->id, "rcpt", op->rcpt, "error",
		    s->commit_rc != 0 ? s->commit_err : op->q.why);
	} else if (op->q.result == SENDER_QR_DONE && op->q.kind == SENDER_QOP_HANDED_OFF) {
		s->stats.handed_off++;
	} else if (op->q.result == SENDER_QR_DONE && op->out == SENDER_OUT_POSTPONED) {
		stats_outcome(s, op->out);
		/* Pacing waits are routine: only waits of a second or more are news. */
		hk_log(op->q.next_attempt_ms - hk_now_ms() >= 1000 ? HK_LOG_INFO : HK_LOG_DEBUG, "postponed", "{s:s, s:s, s:s, s:I, s:s}", "id", op->id, "rcpt", op->rcpt,
		    "domain", op->domain, "until_ms", (json_int_t)op->q.next_attempt_ms,
		    "reason", op->reply);
	} else if (op->q.result == SENDER_QR_DONE) {
		log_outcome(op);
		stats_outcome(s, op->out);
		if (op->out == SENDER_OUT_DEFERRED)
			sender_handoff_touch(s->handoff, op->domain, op->rcpt);
	} else {
		hk_log_debug("outcome_stale", "{s:s, s:s, s:s}", "event", outcome_event(op->out),
		    "id", op->id, "rcpt", op->rcpt);
	}
	sender_sched_release(s->sched, op->id, op->q.idx);
	return true;
}

static void
commit_done(uv_work_t *w, int status)
{
	struct sender *s = w->data;
	struct batch b = s->running;
	size_t n_enq = 0;
	bool stored = false;

	(void)status;   /* never cancelled */
	s->committing = false;
	memset(&s->running, 0, sizeof(s->running));
	if (s->commit_rc != 0)
		hk_log_error("queue_commit_failed", "{s:s, s:i}", "error", s->commit_err,
		    "ops", (int)b.n);
	else
		hk_log_debug("queue_committed", "{s:i, s:I}", "ops", (int)b.n,
		    "ms", (json_int_t)(hk_now_ms() - s->commit_started_ms));
	for (size_t i = 0; i < b.n; i++) {
		struct sender_op *op = (struct sender_op *)b.ops[i];
		if (op->q.kind == SENDER_QOP_ENQUEUE) {
			commit_enqueue_done(s, op, &stored);
			n_enq++;
		} else if (!commit_outcome_done(s, op)) {
			continue;
		}
		op_free(op);
	}
	free(b.ops);
	if (stored)
		sender_sched_kick(s->sched);
	/* Whatever collected while this commit ran goes now, together. */
	commit_start(s);
	maybe_finish(s);
	drain_check(s);
}

/* emit_dsn - queue a DSN in the batch of the outcomes it reports. */
static void
emit_dsn(Hk__Submission *msg, uint8_t *body, size_t body_len, const char *about, size_t n,
    void *arg)
{
	struct sender *s = arg;
	struct sender_op *op = xcalloc(1, sizeof(*op));

	op->msg = msg;
	op->body = body;
	op->id = xstrdup(about);
	op->attempts = (uint32_t)n;     /* recipients reported, for the log */
	op->q.kind = SENDER_QOP_ENQUEUE;
	op->q.msg = msg;
	op->q.body = body;
	op->q.body_len = body_len;
	op->q.now_ms = hk_now_ms();
	batch_push(&s->next, op);
}

static void
commit_start(struct sender *s)
{
	if (s->committing || s->next.n == 0)
		return;
	/* Before the outcomes commit: the notes read the recipients as they
	 * stood, and their DSNs go into the same transaction. */
	sender_notify_flush(s->notify, hk_now_ms(), emit_dsn, s);
	s->running = s->next;
	memset(&s->next, 0, sizeof(s->next));
	s->committing = true;
	s->commit_started_ms = hk_now_ms();
	s->work.data = s;
	uv_queue_work(s->node->loop, &s->work, commit_work, commit_done);
}

/* ---- scheduler outcomes ---- */

static void
on_outcome(const struct sender_outcome *o, void *arg)
{
	struct sender *s = arg;
	struct sender_op *op = xcalloc(1, sizeof(*op));

	op->out = o->kind;
	op->id = xstrdup(o->id);
	op->tenant = xstrdup(o->tenant);
	op->rcpt = xstrdup(o->rcpt);
	op->domain = xstrdup(o->domain);
	op->mx = xstrdup(o->mx);
	op->mx_addr = xstrdup(o->mx_addr);
	snprintf(op->source, sizeof(op->source), "%s", o->source ? o->source : "");
	snprintf(op->tls, sizeof(op->tls), "%s", o->tls ? o->tls : "");
	op->reply = xstrdup(o->reply);
	snprintf(op->status, sizeof(op->status), "%s", o->status);
	op->reason = o->reason;
	op->provider = o->provider;
	op->throttled = o->throttled;
	op->attempts = o->attempts;
	op->q.id = op->id;
	op->q.idx = o->idx;
	op->q.reply = op->reply;
	sender_notify_outcome(s->notify, o);
	switch (o->kind) {
	case SENDER_OUT_DELIVERED: op->q.kind = SENDER_QOP_DELIVERED; break;
	case SENDER_OUT_DEFERRED:
		op->q.kind = SENDER_QOP_DEFERRED;
		op->q.attempt_ms = o->attempt_ms;
		op->q.next_attempt_ms = o->next_attempt_ms;
		break;
	case SENDER_OUT_BOUNCED:
	case SENDER_OUT_EXPIRED:
		op->q.kind = SENDER_QOP_BOUNCED;        /* its DSN: sender_notify */
		break;
	case SENDER_OUT_POSTPONED:
		op->q.kind = SENDER_QOP_POSTPONED;
		op->q.next_attempt_ms = o->next_attempt_ms;
		break;
	}
	add_op(s, op);
}

/* on_handed_off - the new owner committed these recipients: remove them
 * here (they stay held in the scheduler until the commit). */
static void
on_handed_off(const char *id, const uint32_t *idx, size_t n, void *arg)
{
	struct sender *s = arg;

	for (size_t i = 0; i < n; i++) {
		struct sender_op *op = xcalloc(1, sizeof(*op));
		op->id = xstrdup(id);
		op->q.kind = SENDER_QOP_HANDED_OFF;
		op->q.id = op->id;
		op->q.idx = idx[i];
		add_op(s, op);
	}
}

/* ---- router links ---- */

static size_t
link_index(const struct sender *s, const hk_zlink *link)
{
	for (size_t i = 0; i < s->n_links; i++)
		if (s->links[i] == link)
			return i;
	return s->n_links;
}

static bool
enqueue_valid(const Hk__EnqueueRequest *e, const uint8_t *body, size_t body_len,
    char *why, size_t whylen)
{
	const Hk__Submission *m = e->msg;
	char dom[HK_DOMAIN_MAX];

	if (m == NULL || m->id == NULL || m->id[0] == '\0')
		return snprintf(why, whylen, "no message id"), false;
	if (strlen(m->id) > SENDER_QUEUE_ID_MAX)
		return snprintf(why, whylen, "message id longer than %d bytes", SENDER_QUEUE_ID_MAX), false;
	if (m->envelope == NULL || m->envelope->n_rcpts == 0)
		return snprintf(why, whylen, "no recipients"), false;
	if (m->body_size != body_len || (body == NULL && body_len > 0))
		return snprintf(why, whylen, "body is %zu bytes, body_size says %llu", body_len,
		    (unsigned long long)m->body_size), false;
	for (size_t i = 0; i < m->envelope->n_rcpts; i++)
		if (hk_domain_of(m->envelope->rcpts[i]->address, dom) != 0)
			return snprintf(why, whylen, "recipient %zu has no valid domain", i), false;
	return true;
}

static void
on_enqueue(struct sender *s, hk_zlink *link, const Hk__EnqueueRequest *e,
    const uint8_t *body, size_t body_len)
{
	char why[160];
	struct sender_op *op;
	size_t len;
	uint8_t *buf;

	s->stats.enqueues++;
	s->stats.router_seen_ms = hk_now_ms();
	if (s->stopping) {
		send_enqueue_reply(s, link, e->req_id, false, false, "sender shutting down");
		return;
	}
	if (!enqueue_valid(e, body, body_len, why, sizeof(why))) {
		hk_log_warn("enqueue_invalid", "{s:s, s:s}", "id",
		    e->msg && e->msg->id ? e->msg->id : "", "reason", why);
		send_enqueue_reply(s, link, e->req_id, false, false, why);
		return;
	}
	/* The frame dies with this callback: keep a copy until the commit. */
	op = xcalloc(1, sizeof(*op));
	len = hk__submission__get_packed_size(e->msg);
	buf = xmalloc(len ? len : 1);
	hk__submission__pack(e->msg, buf);
	op->msg = hk__submission__unpack(NULL, len, buf);
	free(buf);
	if (op->msg == NULL) {
		op_free(op);
		send_enqueue_reply(s, link, e->req_id, false, false, "out of memory");
		return;
	}
	if (body_len > 0) {
		op->body = xmalloc(body_len);
		memcpy(op->body, body, body_len);
	}
	op->link = link;
	op->req_id = e->req_id;
	op->q.kind = SENDER_QOP_ENQUEUE;
	op->q.msg = op->msg;
	op->q.shard = e->shard;
	op->q.body = op->body;
	op->q.body_len = body_len;
	op->q.now_ms = hk_now_ms();
	add_op(s, op);
}

static void
on_frame(hk_zlink *link, const void *peer, size_t peer_len, const Hk__Frame *f,
    const uint8_t *body, size_t body_len, void *arg)
{
	struct sender *s = arg;

	(void)peer;
	(void)peer_len;
	switch (f->body_case) {
	case HK__FRAME__BODY_ENQUEUE:
		on_enqueue(s, link, f->enqueue, body, body_len);
		break;
	case HK__FRAME__BODY_MEMBER_VIEW:
		if (!s->stopping)
			sender_handoff_view(s->handoff, link_index(s, link), f->member_view);
		break;
	case HK__FRAME__BODY_SUBMIT_REPLY:
		if (!s->stopping)
			sender_handoff_reply(s->handoff, link_index(s, link), f->submit_reply);
		break;
	default:
		hk_log_debug("frame_ignored", "{s:s, s:s}", "kind", hk_msg_name(f),
		    "from", f->from_node ? f->from_node : "");
		break;
	}
}

/* reputation_housekeeping - on the heartbeat (with or without http:):
 * sync the warm-up state every second (it is written unsynced), and forget
 * idle shaping pairs every minute (the default rule keeps one per domain). */
static void
reputation_housekeeping(struct sender *s)
{
	int64_t now = hk_now_ms();

	if (s->warmup && now - s->synced_ms >= 1000) {
		sender_warmup_sync(s->warmup);
		s->synced_ms = now;
	}
	if (s->shaping && now - s->pruned_ms >= 60000) {
		sender_shaping_prune(s->shaping, now);
		s->pruned_ms = now;
	}
}

static void
on_heartbeat(uv_timer_t *t)
{
	struct sender *s = t->data;
	Hk__Frame f = HK__FRAME__INIT;
	Hk__Heartbeat hb = HK__HEARTBEAT__INIT;

	hb.node_id = s->node->conf->name;
	hb.role = HK__ROLE__ROLE_SENDER;
	hb.endpoint = s->endpoint;
	hb.weight = s->conf->weight;
	hb.queue_depth = sender_queue_depth(s->q);
	hb.draining = s->draining;
	hb.seq = ++s->hb_seq;
	f.body_case = HK__FRAME__BODY_HEARTBEAT;
	f.heartbeat = &hb;
	for (size_t i = 0; i < s->n_links; i++) {
		int rc = hk_zlink_send(s->links[i], NULL, 0, &f, NULL, 0);
		if (rc == 0)
			s->stats.router_seen_ms = hk_now_ms();  /* connected (ZMQ_IMMEDIATE) */
		else
			/* Usually: that router is not connected (yet). */
			hk_log_debug("heartbeat_not_sent", "{s:s, s:s}", "router",
			    s->conf->routers[i], "error", strerror(-rc));
	}
	drain_check(s);
	reputation_housekeeping(s);
}

/* ---- draining ---- */

/* drain_check - once draining: the queue empty, no enqueue waiting for or
 * in a commit, no delivery running, and the grace time past, we are
 * drained. The grace time (two heartbeats) lets the draining heartbeat reach
 * the routers and an enqueue they sent before it arrive here.
 * XXX a router not connected when the draining heartbeats went out may
 * still send us an enqueue after we stop; it then times out there and is
 * resent, as for a sender that died. */
static void
drain_check(struct sender *s)
{
	uint64_t depth;

	if (!s->draining || s->drained || s->stopping)
		return;
	if (hk_now_ms() - s->drain_started_ms < 2 * (int64_t)s->conf->heartbeat_interval_ms)
		return;
	if (s->committing || s->next.n > 0 || sender_sched_jobs(s->sched) > 0 ||
	    sender_handoff_busy(s->handoff) > 0)
		return;
	/* Not sender_queue_depth(): it reads an error as 0, and a queue we
	 * could not read must never count as empty. */
	struct sender_queue_stats st;
	if (sender_queue_stats(s->q, &st) != 0 || (depth = st.rcpts) > 0)
		return;
	s->drained = true;
	hk_log_info("sender_drained", "{s:I}", "ms", (json_int_t)(hk_now_ms() - s->drain_started_ms));
	hk_node_drained(s->node);   /* the node is stopped from the main thread */
}

/* sender_drain - SIGUSR1: report draining from now on (one heartbeat at
 * once), keep taking enqueues and delivering; drain_check ends it. */
static void
sender_drain(struct hk_node *node)
{
	struct sender *s = node->role;

	if (s == NULL || s->stopping || s->draining)
		return;
	s->draining = true;
	s->stats.draining = true;
	s->drain_started_ms = hk_now_ms();
	hk_log_info("sender_draining", "{s:I, s:i}", "queue_depth",
	    (json_int_t)sender_queue_depth(s->q), "in_flight", (int)sender_sched_jobs(s->sched));
	/* Send the draining heartbeat now; the next regular one follows a full
	 * interval later. */
	uv_timer_again(&s->hb_timer);
	on_heartbeat(&s->hb_timer);
}

/* ---- the HTTP endpoint: publish on the loop, read on the HTTP thread ---- */

static void
sender_publish(struct hk_node *node)
{
	struct sender *s = node->role;

	if (s == NULL || s->stopping)
		return;
	s->stats.queue_depth = sender_queue_depth(s->q);
	s->stats.in_flight = sender_sched_jobs(s->sched);
	/* The status documents only when someone asked (hikyaku shaping|warmup
	 * status): with a pair per destination domain they are not small. */
	int64_t now = hk_now_ms(), asked = s->status_asked_ms;
	if (asked <= s->status_made_ms)
		return;
	json_t *sj = s->shaping ? sender_shaping_status_json(s->shaping, now) : json_array();
	json_t *wj = s->warmup ? sender_warmup_status_json(s->warmup, now) : NULL;
	if (wj == NULL)
		wj = json_array();      /* not readable now: an empty list, and the log says why */
	char *a = json_dumps(sj, JSON_COMPACT), *b = json_dumps(wj, JSON_COMPACT);
	json_decref(sj);
	json_decref(wj);
	uv_mutex_lock(&s->status_lock);
	free(s->shaping_json);
	free(s->warmup_json);
	s->shaping_json = a;
	s->warmup_json = b;
	s->status_made_ms = now > asked ? now : asked;
	uv_cond_broadcast(&s->status_cond);
	uv_mutex_unlock(&s->status_lock);
}

static bool
sender_ready(void *arg, char *reason, size_t len)
{
	struct sender *s = arg;
	int64_t fresh = 3 * (int64_t)s->conf->heartbeat_interval_ms;

	if (fresh < 3000)
		fresh = 3000;
	if (!s->stats.queue_open)
		snprintf(reason, len, "queue not open");
	else if (s->stats.router_seen_ms == 0)
		snprintf(reason, len, "no router connected yet");
	else if (hk_now_ms() - s->stats.router_seen_ms > fresh)
		snprintf(reason, len, "no router connected for %lld ms",
		    (long long)(hk_now_ms() - s->stats.router_seen_ms));
	else
		return true;
	return false;
}

/* sender_get - GET /shaping and /warmup: the status documents of the last
 * publish (hikyaku shaping|warmup status). */
static int
sender_get(void *arg, const char *path, char **body, size_t *len)
{
	struct sender *s = arg;
	char **doc = !strcmp(path, "/shaping") ? &s->shaping_json : !strcmp(path, "/warmup")
	    ? &s->warmup_json : NULL;
	int64_t asked = hk_now_ms();

	if (doc == NULL)
		return 0;
	/* Ask the loop for fresh documents and wait for its next publish
	 * (every second), at most 2 s; then serve what there is. */
	uv_mutex_lock(&s->status_lock);
	s->status_asked_ms = asked;
	while (s->status_made_ms < asked && hk_now_ms() - asked < 2000)
		uv_cond_timedwait(&s->status_cond, &s->status_lock, 100 * 1000000ULL);
	*body = xstrdup(*doc ? *doc : "[]");
	uv_mutex_unlock(&s->status_lock);
	*len = strlen(*body);
	return 200;
}

static void
sender_metrics(void *arg, hk_prom *p)
{
	struct sender *s = arg;
	static const char *const kinds[4] = { "delivered", "deferred", "bounced", "expired" };

	hk_prom_one(p, "hikyaku_sender_queue_depth", "gauge", "Recipients in the queue.", s->stats.queue_depth);
	hk_prom_one(p, "hikyaku_sender_draining", "gauge", "1 once SIGUSR1 asked the sender to drain.", s->stats.draining ? 1 : 0);
	hk_prom_one(p, "hikyaku_sender_deliveries_in_flight", "gauge", "Delivery jobs running.", s->stats.in_flight);
	hk_prom_one(p, "hikyaku_sender_enqueues_total", "counter", "Enqueue requests received from routers.", s->stats.enqueues);
	hk_prom_one(p, "hikyaku_sender_enqueues_stored_total", "counter", "Enqueues committed and acked.", s->stats.stored);
	hk_prom_one(p, "hikyaku_sender_enqueues_duplicate_total", "counter", "Enqueues already held, acked again.", s->stats.duplicates);
	hk_prom_one(p, "hikyaku_sender_enqueues_failed_total", "counter", "Enqueues whose commit failed (nacked).", s->stats.enqueue_failed);
	hk_prom_one(p, "hikyaku_sender_handoff_requests_total", "counter", "Handoff requests (one message's foreign recipients) sent to routers.", s->stats.handoff.msgs_sent);
	hk_prom_one(p, "hikyaku_sender_handoff_acked_total", "counter", "Recipients the new owner committed after a handoff.", s->stats.handoff.rcpts_acked);
	hk_prom_one(p, "hikyaku_sender_handed_off_total", "counter", "Recipients removed here after their handoff.", s->stats.handed_off);
	hk_prom_one(p, "hikyaku_sender_handoff_refused_total", "counter", "Handoff requests refused, unsent or timed out (tried again).", s->stats.handoff.refused);
	hk_prom_one(p, "hikyaku_sender_postponed_total", "counter", "Recipients that waited for a source address with budget (warm-up, shaping), not attempted.", s->stats.postponed);
	hk_prom_one(p, "hikyaku_sender_dsns_total", "counter", "Delivery status notifications queued for our own bounces, expiries and delays.", s->stats.dsns);
	hk_prom_one(p, "hikyaku_sender_foreign_recipients", "gauge", "Queued recipients another sender owns, as the last handoff scan saw (lower bound).", s->stats.handoff.foreign);
	for (int i = 0; i < 4; i++) {
		char name[64], help[96];
		snprintf(name, sizeof(name), "hikyaku_sender_%s_total", kinds[i]);
		snprintf(help, sizeof(help), "Recipients %s (the outcome committed).", kinds[i]);
		hk_prom_family(p, name, "counter", help);
		hk_prom_u64(p, name, NULL, NULL, s->stats.outcomes[i]);
	}
}

/* ---- start / stop ---- */

static void
on_handle_closed(uv_handle_t *h)
{
	struct sender *s = h->data;

	if (--s->handles_open == 0) {
		free(s->next.ops);
		free(s->shaping_json);
		free(s->warmup_json);
		uv_cond_destroy(&s->status_cond);
		uv_mutex_destroy(&s->status_lock);
		free(s);
	}
}

/* maybe_finish - once stopping, no job runs and no commit is running or
 * waiting, close the rest. */
static void
maybe_finish(struct sender *s)
{
	if (!s->stopping || !s->sched_done || s->committing || s->next.n > 0 || s->finished)
		return;
	s->finished = true;
	sender_notify_free(&s->notify);
	sender_shaping_free(&s->shaping);      /* detaches from the warm-up env first */
	sender_warmup_close(&s->warmup);
	sender_handoff_close(s->handoff);
	s->handoff = NULL;
	for (size_t i = 0; i < s->n_links; i++)
		hk_zlink_close(s->links[i]);
	free(s->links);
	s->links = NULL;
	sender_sched_free(&s->sched);
	sender_queue_close(&s->q);
	s->node->role = NULL;
	hk_log_info("sender_stopped", NULL);
	s->handles_open = 2;
	uv_close((uv_handle_t *)&s->hb_timer, on_handle_closed);
	uv_close((uv_handle_t *)&s->kick, on_handle_closed);
}

static void
on_sched_done(void *arg)
{
	struct sender *s = arg;

	s->sched_done = true;
	maybe_finish(s);
}

static void
sender_stop(struct hk_node *node)
{
	struct sender *s = node->role;

	if (s == NULL || s->stopping)
		return;
	s->stopping = true;
	uv_timer_stop(&s->hb_timer);
	/* Jobs end through their callbacks; final outcomes are still committed,
	 * and a running commit is always waited for (maybe_finish). */
	sender_sched_stop(s->sched, on_sched_done, s);
}

static bool
sched_filter(const char *domain, const char *rcpt, void *arg)
{
	struct sender *s = arg;
	return s->handoff == NULL || sender_handoff_mine(s->handoff, domain, rcpt);
}

/* reputation_open - the shaping rules (built in, then shaping_file), the
 * warm-up schedule and state (reputation_dir), shaping's adaptive state
 * kept there too, and every pool address registered as warming or warm. */
static int
reputation_open(struct sender *s, char *err, size_t errlen)
{
	const struct hk_sender_conf *c = s->conf;
	sender_warmup_schedule *sched;

	if ((s->shaping = sender_shaping_load(c->shaping_file, err, errlen)) == NULL)
		return -1;
	if ((sched = sender_warmup_schedule_load(c->warmup_file, err, errlen)) == NULL ||
	    sender_warmup_open(&s->warmup, c->reputation_dir, &sched, false, err, errlen) != 0 ||
	    sender_shaping_attach(s->shaping, sender_warmup_env(s->warmup), err, errlen) != 0) {
		sender_warmup_schedule_free(&sched);
		sender_shaping_free(&s->shaping);
		sender_warmup_close(&s->warmup);
		return -1;
	}
	for (size_t i = 0; i < c->n_pools; i++)
		for (size_t k = 0; k < c->pools[i].n_addrs; k++)
			if (c->pools[i].addrs[k].address)
				sender_warmup_set_address(s->warmup, c->pools[i].addrs[k].address,
				    c->pools[i].addrs[k].warmup);
	return 0;
}

static int
sender_start(struct hk_node *node)
{
	const struct hk_sender_conf *c = &node->conf->u.sender;
	struct sender *s = xcalloc(1, sizeof(*s));
	char err[512];
	int rc;

	s->node = node;
	s->conf = c;
	if (sender_queue_open(&s->q, c->queue_path, c->queue_map_size, c->queue_sync,
	    err, sizeof(err)) != 0) {
		hk_log_error("queue_open_failed", "{s:s, s:s}", "path",
		    c->queue_path ? c->queue_path : "", "error", err);
		free(s);
		return -1;
	}
	if (reputation_open(s, err, sizeof(err)) != 0) {
		hk_log_error("reputation_open_failed", "{s:s, s:s}", "path", c->reputation_dir,
		    "error", err);
		sender_queue_close(&s->q);
		free(s);
		return -1;
	}
	uv_mutex_init(&s->status_lock);
	uv_cond_init(&s->status_cond);
	s->links = xcalloc(c->n_routers ? c->n_routers : 1, sizeof(*s->links));
	for (size_t i = 0; i < c->n_routers; i++) {
		int64_t max = (int64_t)hk_config_max_frame(node->cfg);
		rc = hk_zlink_new(&s->links[i], node->loop, node->zctx, ZMQ_DEALER,
		    node->conf->name, node->conf->name, on_frame, s);
		if (rc == 0)
			rc = hk_zlink_setsockopt(s->links[i], ZMQ_MAXMSGSIZE, &max, sizeof(max));
		if (rc == 0 && hk_curve_wanted(node->cfg, c->routers[i]) && hk_curve_client(s->links[i],
		    node->cfg, node->conf->name, node->conf->router_names[i], err, sizeof(err)) != 0) {
			hk_log_error("curve_failed", "{s:s, s:s}", "router", c->routers[i], "error", err);
			hk_zlink_close(s->links[i]);
			goto fail;
		}
		if (rc == 0 && (rc = hk_zlink_connect(s->links[i], c->routers[i])) != 0) {
			hk_zlink_close(s->links[i]);
			s->links[i] = NULL;
		}
		if (rc != 0) {
			hk_log_error("router_connect_failed", "{s:s, s:s}", "endpoint", c->routers[i],
			    "error", zmq_strerror(-rc));
			goto fail;
		}
		s->n_links++;
	}
	if (sender_sched_new(&s->sched, node->loop, s->q, c, on_outcome, s, err, sizeof(err)) != 0) {
		hk_log_error("sender_dns_failed", "{s:s}", "error", err);
		goto fail;
	}
	s->handoff = sender_handoff_new(&(struct sender_handoff_conf){
		.loop = node->loop, .q = s->q, .sched = s->sched, .cfg = node->cfg,
		.self = node->conf->name, .links = s->links,
		.link_names = (const char *const *)node->conf->router_names, .n_links = s->n_links,
		.heartbeat_interval_ms = c->heartbeat_interval_ms, .done = on_handed_off, .arg = s,
		.stats = &s->stats.handoff,
	});
	sender_sched_set_filter(s->sched, sched_filter, s);
	sender_sched_set_shaping(s->sched, s->shaping, s->warmup);
	s->notify = sender_notify_new(&(struct sender_notify_conf){
		.q = s->q, .reporting_mta = c->hostname ? c->hostname : "localhost",
		.node = node->conf->name, .delay_warning_ms = c->delay_warning_ms,
		.max_lifetime_ms = c->max_lifetime_ms,
	});
	if (node->conf->http_host)
		snprintf(s->endpoint, sizeof(s->endpoint), "http://%s:%u", node->conf->http_host,
		    (unsigned)node->conf->http_port);
	uv_timer_init(node->loop, &s->hb_timer);
	uv_timer_init(node->loop, &s->kick);
	s->hb_timer.data = s;
	s->kick.data = s;
	uv_timer_start(&s->hb_timer, on_heartbeat, 0, c->heartbeat_interval_ms);
	node->role = s;
	s->stats.queue_open = true;
	node->http_handlers = (struct hk_http_handlers){
		.arg = s, .ready = sender_ready, .metrics = sender_metrics, .get = sender_get,
	};
	node->publish = sender_publish;
	hk_log_info("sender_ready", "{s:I, s:s, s:i}", "queue_depth",
	    (json_int_t)sender_queue_depth(s->q), "queue", c->queue_path, "routers", (int)s->n_links);
	return 0;

fail:
	for (size_t i = 0; i < s->n_links; i++)
		hk_zlink_close(s->links[i]);
	free(s->links);
	sender_shaping_free(&s->shaping);
	sender_warmup_close(&s->warmup);
	uv_cond_destroy(&s->status_cond);
	uv_mutex_destroy(&s->status_lock);
	sender_queue_close(&s->q);
	free(s);
	return -1;
}

const struct hk_role_ops sender_ops = {
	.role = HK_ROLE_SENDER, .start = sender_start, .stop = sender_stop, .drain = sender_drain,
};
