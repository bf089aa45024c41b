/*
 * router - split submissions by destination domain, enqueue each part at the
 * domain's owning sender, ack the ingress when every owner acked.
 *
 * The router keeps no durable state: a submission is in flight here only
 * until every recipient is acked by some sender, or it is given up (a
 * sender's nack, resend_window over, no sender left, shutdown), and either
 * way the ingress gets exactly one SubmitReply. A part whose sender goes
 * down or does not ack within enqueue_timeout is split again over the other
 * senders and resent (failover); over max_pending or max_inflight_per_sender
 * a submission is refused at once as busy. Membership is what the senders'
 * heartbeats say; a sender silent for heartbeat_timeout is dead.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "hk_curve.h"
#include "hk_domain.h"
#include "hk_log.h"
#include "hk_logrl.h"
#include "hk_node.h"
#include "hk_u64map.h"
#include "hk_util.h"
#include "hk_zlink.h"
#include "router_domains.h"
#include "router_hrw.h"
#include "router_shard.h"
#include "router_http.h"

#define ROUTER_TICK_MS 250
#define ROUTER_JUNK_LOGS_PER_SEC 10 /* lines about unexpected frames, per second */

struct member {
	char *name;
	uint32_t weight;
	uint64_t queue_depth;
	bool draining;
	bool alive;
	int64_t last_seen_ms;
	char *endpoint;         /* as in its last heartbeat */
	uint64_t inflight;      /* enqueues sent and not answered (router_http) */
};

/* Where each recipient of a pending submission stands: the index of the part
 * it travels in (>= 0), or one of these. */
#define RCPT_ACKED  (-1)        /* a sender acked it: durably queued */
#define RCPT_UNSENT (-2)        /* not in flight: to be (re)sent */

/* One enqueue of a pending submission: the recipients one sender owns. */
struct part {
	uint64_t req_id;        /* 0 once answered or abandoned */
	size_t member;          /* index in r->members */
	int64_t deadline_ms;    /* sent + enqueue_timeout */
};

/* One submission waiting for its owners' acks. It keeps the Submission and
 * the body so that a failed part can be resent to another sender. */
struct pending {
	struct router *r;
	hk_zlink *reply_link;   /* front (an ingress) or back (a handing sender) */
	bool handoff;           /* from a sender handing recipients on */
	uint64_t ingress_req_id;
	char *ingress_peer;
	size_t ingress_peer_len;
	char id[64];
	uint8_t *msg;           /* the Submission, packed */
	size_t msg_len;
	uint8_t *body;
	size_t body_len;
	size_t n_rcpts;
	int *rcpt_part;         /* per recipient: its part, RCPT_ACKED or RCPT_UNSENT */
	struct part *parts;
	size_t n_parts, n_outstanding;
	size_t *excluded;       /* members that failed this submission */
	size_t n_excluded;
	uint32_t generation;    /* of the latest split (router_shard.h) */
	int64_t arrived_ms;
	uint64_t sent_ns;       /* uv_hrtime() when the first enqueues left */
	uv_timer_t timer;       /* the earliest part deadline */
	struct pending *prev, *next; /* router's list of pending submissions */
};

struct router {
	struct hk_node *node;
	const struct hk_router_conf *conf;
	hk_zlink *front, *back;
	uv_timer_t tick;
	struct member *members;
	size_t n_members;
	hk_u64map *enqueues;    /* enqueue req id -> struct pending */
	struct pending *pending; /* every pending submission, for shutdown */
	size_t n_pending;       /* against conf->max_pending */
	uint64_t next_req_id;
	hk_zap *zap;            /* CURVE: who may connect (NULL without curve:) */
	struct hk_logrl junk_log; /* rate limit of frame_unexpected/heartbeat_ignored */
	uint64_t junk;          /* frames ignored: unexpected kind, role or member */
	router_obs *obs;        /* what the HTTP endpoint reads */
};

static struct member *
member_find(struct router *r, const char *name)
{
	for (size_t i = 0; i < r->n_members; i++)
		if (!strcmp(r->members[i].name, name))
			return &r->members[i];
	return NULL;
}

static void publish_members(struct router *r);
static void send_member_view(struct router *r, const char *to);
static void pending_member_down(struct router *r, size_t m);
static void on_pending_timeout(uv_timer_t *t);

/* Count a frame ignored for REASON; log it, at most ROUTER_JUNK_LOGS_PER_SEC
 * lines a second (a storm must not become a log storm). */
static void
router_junk(struct router *r, const char *event, const char *socket, const char *reason,
    const char *kind, const char *from)
{
	uint64_t suppressed;

	r->junk++;
	if (hk_logrl_allow(&r->junk_log, hk_now_ms(), ROUTER_JUNK_LOGS_PER_SEC, &suppressed))
		hk_log_warn(event, "{s:s, s:s, s:s, s:s, s:I, s:I}", "socket", socket, "reason", reason,
		    "kind", kind, "from", from, "ignored", (json_int_t)r->junk,
		    "suppressed", (json_int_t)suppressed);
}

static void
on_heartbeat(struct router *r, const char *from, const Hk__Heartbeat *hb)
{
	struct member *m = member_find(r, hb->node_id);
	const struct hk_node_conf *nc;

	/* Members are the configured senders, each speaking for itself: fake
	 * ids cannot grow the table, whatever their number. */
	if (hb->role != HK__ROLE__ROLE_SENDER) {
		router_junk(r, "heartbeat_ignored", "back", "not a sender", "Heartbeat", hb->node_id);
		return;
	}
	if (strcmp(hb->node_id, from) != 0) {
		router_junk(r, "heartbeat_ignored", "back", "node id differs from the frame's node",
		    "Heartbeat", hb->node_id);
		return;
	}
	if (m == NULL && ((nc = hk_config_node(r->node->cfg, hb->node_id)) == NULL ||
	    nc->role != HK_ROLE_SENDER)) {
		router_junk(r, "heartbeat_ignored", "back", "not a sender of the configuration",
		    "Heartbeat", hb->node_id);
		return;
	}
	if (m == NULL) {
		r->members = xrealloc(r->members, (r->n_members + 1) * sizeof(*r->members));
		m = &r->members[r->n_members++];
		memset(m, 0, sizeof(*m));
		m->name = xstrdup(hb->node_id);
	}
	bool up = !m->alive, was_draining = m->draining;
	bool changed = up || was_draining != hb->draining;
	m->alive = true;
	m->weight = hb->weight ? hb->weight : 1;
	m->queue_depth = hb->queue_depth;
	m->draining = hb->draining;
	m->last_seen_ms = hk_now_ms();
	free(m->endpoint);
	m->endpoint = xstrdup(hb->endpoint ? hb->endpoint : "");
	if (changed)
		publish_members(r);  /* before the log line: what it says is visible */
	if (up)
		hk_log_info("member_up", "{s:s, s:i}", "member", m->name, "weight", (int)hb->weight);
	if (was_draining != m->draining || (up && m->draining))
		hk_log_info("member_draining", "{s:s, s:b, s:I}", "member", m->name,
		    "draining", m->draining, "queue_depth", (json_int_t)m->queue_depth);
	send_member_view(r, m->name);
}

/* send_member_view - tell sender TO the live members we see: what it needs
 * to know which domains it owns (and hand on the others). */
static void
send_member_view(struct router *r, const char *to)
{
	Hk__Frame f = HK__FRAME__INIT;
	Hk__MemberView v = HK__MEMBER_VIEW__INIT;
	Hk__MemberView__Member *mem = xcalloc(r->n_members ? r->n_members : 1, sizeof(*mem));
	Hk__MemberView__Member **ptr = xcalloc(r->n_members ? r->n_members : 1, sizeof(*ptr));
	int rc;

	for (size_t i = 0; i < r->n_members; i++) {
		const struct member *m = &r->members[i];
		if (!m->alive)
			continue;
		hk__member_view__member__init(&mem[v.n_members]);
		mem[v.n_members].node_id = m->name;
		mem[v.n_members].weight = m->weight;
		mem[v.n_members].draining = m->draining;
		ptr[v.n_members] = &mem[v.n_members];
		v.n_members++;
	}
	v.members = ptr;
	f.body_case = HK__FRAME__BODY_MEMBER_VIEW;
	f.member_view = &v;
	if ((rc = hk_zlink_send(r->back, to, strlen(to), &f, NULL, 0)) != 0)
		hk_log_debug("member_view_not_sent", "{s:s, s:s}", "member", to, "error", zmq_strerror(-rc));
	free(ptr);
	free(mem);
}

/* publish_members - the member snapshot for the HTTP endpoint. */
static void
publish_members(struct router *r)
{
	struct router_member_view *v = xcalloc(r->n_members ? r->n_members : 1, sizeof(*v));

	for (size_t i = 0; i < r->n_members; i++) {
		const struct member *m = &r->members[i];
		v[i] = (struct router_member_view){ m->name, m->endpoint, m->weight, m->queue_depth,
		    m->draining, m->alive, m->last_seen_ms, m->inflight };
	}
	router_obs_members(r->obs, v, r->n_members);
	free(v);
}

static void
on_tick(uv_timer_t *t)
{
	struct router *r = t->data;
	int64_t now = hk_now_ms();
	uint64_t suppressed;

	hk_zlink_tick(r->front);
	hk_zlink_tick(r->back);
	if (hk_logrl_flush(&r->junk_log, now, &suppressed))
		hk_log_warn("log_suppressed", "{s:s, s:I, s:I}", "about", "frame_unexpected/heartbeat_ignored",
		    "suppressed", (json_int_t)suppressed, "total", (json_int_t)r->junk);

	for (size_t i = 0; i < r->n_members; i++) {
		struct member *m = &r->members[i];
		if (m->alive && now - m->last_seen_ms > (int64_t)r->conf->heartbeat_timeout_ms) {
			m->alive = false;
			hk_log_warn("member_down", "{s:s, s:I}", "member", m->name,
			    "silent_ms", (json_int_t)(now - m->last_seen_ms));
			pending_member_down(r, i);
		}
	}
	publish_members(r);
}

static bool
pending_excludes(const struct pending *p, size_t member)
{
	for (size_t i = 0; p && i < p->n_excluded; i++)
		if (p->excluded[i] == member)
			return true;
	return false;
}

/* The live, non-draining senders, as rendezvous candidates, without those P
 * (may be NULL) excludes. Caller frees. */
static size_t
live_members(struct router *r, const struct pending *p, struct router_hrw_member **out,
    struct member ***backref)
{
	size_t n = 0;

	*out = xcalloc(r->n_members ? r->n_members : 1, sizeof(**out));
	*backref = xcalloc(r->n_members ? r->n_members : 1, sizeof(**backref));
	for (size_t i = 0; i < r->n_members; i++) {
		if (!r->members[i].alive || r->members[i].draining || pending_excludes(p, i))
			continue;
		(*out)[n].name = r->members[i].name;
		(*out)[n].weight = r->members[i].weight;
		(*backref)[n++] = &r->members[i];
	}
	return n;
}

/* reply_ingress - the one SubmitReply. BUSY: refused by a cap, which the
 * ingress answers 451 4.3.2 (Refusal REFUSAL_BUSY). */
static void
reply_ingress(struct router *r, hk_zlink *link, const void *peer, size_t peer_len, uint64_t req_id,
    bool ok, bool busy, const char *reason)
{
	Hk__Frame f = HK__FRAME__INIT;
	Hk__SubmitReply rep = HK__SUBMIT_REPLY__INIT;
	int rc;

	rep.req_id = req_id;
	rep.ok = ok;
	rep.reason = (char *)(reason ? reason : "");
	rep.refusal = (!ok && busy) ? HK__REFUSAL__REFUSAL_BUSY : HK__REFUSAL__REFUSAL_UNSPECIFIED;
	f.body_case = HK__FRAME__BODY_SUBMIT_REPLY;
	f.submit_reply = &rep;
	if ((rc = hk_zlink_send(link, peer, peer_len, &f, NULL, 0)) != 0)
		hk_log_warn("reply_failed", "{s:s, s:s}", "to", link == r->front ? "ingress" : "sender",
		    "error", zmq_strerror(-rc));
}

static void
pending_closed(uv_handle_t *h)
{
	struct pending *p = h->data;
	free(p->ingress_peer);
	free(p->msg);
	free(p->body);
	free(p->rcpt_part);
	free(p->parts);
	free(p->excluded);
	free(p);
}

/* part_abandon - stop waiting for part K: a reply to it will find nothing. */
static void
part_abandon(struct pending *p, size_t k)
{
	struct part *pt = &p->parts[k];

	if (pt->req_id == 0)
		return;
	hk_u64map_pop(p->r->enqueues, pt->req_id);
	pt->req_id = 0;
	p->r->members[pt->member].inflight--;
	p->n_outstanding--;
}

/* Answer the ingress and forget the submission. */
static void
pending_finish(struct pending *p, bool ok, bool busy, const char *reason)
{
	struct router *r = p->r;

	for (size_t k = 0; k < p->n_parts; k++)
		part_abandon(p, k);
	if (ok)
		router_obs_stats(r->obs)->acked++;
	else
		router_obs_stats(r->obs)->nacked++;
	if (!ok && busy)
		router_obs_stats(r->obs)->busy++;
	if (p->prev)
		p->prev->next = p->next;
	else
		r->pending = p->next;
	if (p->next)
		p->next->prev = p->prev;
	r->n_pending--;
	reply_ingress(r, p->reply_link, p->ingress_peer, p->ingress_peer_len, p->ingress_req_id, ok,
	    busy, reason);
	if (ok)
		hk_log_debug(p->handoff ? "handoff_acked" : "submit_acked", "{s:s, s:i, s:i}", "id", p->id,
		    "owners", (int)p->n_parts, "generation", (int)p->generation);
	else
		hk_log_warn(p->handoff ? "handoff_nacked" : "submit_nacked", "{s:s, s:s, s:b}", "id", p->id,
		    "reason", reason, "busy", busy);
	uv_timer_stop(&p->timer);
	uv_close((uv_handle_t *)&p->timer, pending_closed);
}

/* rcpt_owner - the index in cands of the sender that owns recipient RCPT of
 * DOMAIN (router_hrw_pick, with the domain's hot_domains: k). */
static int
rcpt_owner(struct router *r, const struct router_hrw_member *cands, size_t n_cands,
    const char *domain, const char *rcpt)
{
	return router_hrw_pick(cands, n_cands, hk_config_hot_k(r->node->cfg, domain), domain, rcpt);
}

enum dispatch { DISPATCH_OK, DISPATCH_FAIL, DISPATCH_BUSY };

/* May P still resend a failed part (resend_window since it arrived)? */
static bool
pending_may_resend(const struct pending *p)
{
	return hk_now_ms() - p->arrived_ms < (int64_t)p->r->conf->resend_window_ms;
}

/*
 * pending_dispatch - split P's unsent recipients over the live senders it
 * does not exclude and send one enqueue per owner, in order of each owner's
 * first recipient, numbered router_shard(p->generation, that index). A
 * sender that cannot be reached (not connected) is excluded and its
 * recipients split again in the next generation. DISPATCH_BUSY: an owner is
 * at max_inflight_per_sender or its pipe is full (-EAGAIN): nothing more is
 * sent and the submission is to be nacked as busy; we do not send a busy
 * owner's domains elsewhere, which would split their shaping. *why says why
 * when not DISPATCH_OK.
 */
static enum dispatch
pending_dispatch(struct pending *p, const Hk__Submission *msg, const char **why)
{
	struct router *r = p->r;
	const Hk__Envelope *env = msg->envelope;
	char domain[HK_DOMAIN_MAX];
	enum dispatch res = DISPATCH_OK;

	for (;;) {
		struct router_hrw_member *cands;
		struct member **backref;
		size_t n_cands = live_members(r, p, &cands, &backref);
		int *owner = xcalloc(p->n_rcpts, sizeof(int));
		int *first = xcalloc(n_cands ? n_cands : 1, sizeof(int));
		Hk__Recipient **subset = xcalloc(p->n_rcpts, sizeof(*subset));
		bool again = false;
		uint32_t shard;

		for (size_t o = 0; o < n_cands; o++)
			first[o] = -1;
		if (n_cands == 0) {
			*why = "no sender available";
			res = DISPATCH_FAIL;
			goto next;
		}
		for (size_t i = 0; i < p->n_rcpts; i++) {
			owner[i] = -1;
			if (p->rcpt_part[i] != RCPT_UNSENT)
				continue;
			hk_domain_of(env->rcpts[i]->address, domain); /* checked in on_submit */
			owner[i] = rcpt_owner(r, cands, n_cands, domain, env->rcpts[i]->address);
			if (first[owner[i]] < 0)
				first[owner[i]] = (int)i;
		}
		/* Check before sending anything: a refusal sends nothing. */
		for (size_t o = 0; o < n_cands; o++) {
			if (first[o] < 0)
				continue;
			if (router_shard(p->generation, (size_t)first[o], &shard) != 0) {
				*why = "too many recipients or resends to number the parts";
				res = DISPATCH_FAIL;
				goto next;
			}
			if (backref[o]->inflight >= r->conf->max_inflight_per_sender) {
				*why = "router busy: a sender has max_inflight_per_sender enqueues unanswered";
				res = DISPATCH_BUSY;
				goto next;
			}
		}
		for (size_t i = 0; i < p->n_rcpts; i++) {
			if (owner[i] < 0 || first[owner[i]] != (int)i)
				continue;
			int o = owner[i];
			size_t n = 0;
			for (size_t j = i; j < p->n_rcpts; j++)
				if (owner[j] == o)
					subset[n++] = env->rcpts[j];
			Hk__Envelope sub_env = *env;
			sub_env.rcpts = subset;
			sub_env.n_rcpts = n;
			Hk__Submission sub = *msg;
			sub.envelope = &sub_env;
			Hk__EnqueueRequest enq = HK__ENQUEUE_REQUEST__INIT;
			enq.req_id = ++r->next_req_id;
			router_shard(p->generation, i, &enq.shard);
			enq.msg = &sub;
			Hk__Frame f = HK__FRAME__INIT;
			f.body_case = HK__FRAME__BODY_ENQUEUE;
			f.enqueue = &enq;
			const char *to = backref[o]->name;
			size_t m = (size_t)(backref[o] - r->members);
			int rc = hk_zlink_send(r->back, to, strlen(to), &f, p->body, p->body_len);
			if (rc == -EAGAIN) {
				hk_log_warn("enqueue_busy", "{s:s, s:s}", "id", p->id, "member", to);
				*why = "router busy: a sender's queue at the router is full";
				res = DISPATCH_BUSY;
				goto next;
			}
			if (rc != 0) {
				hk_log_warn("enqueue_send_failed", "{s:s, s:s, s:s}", "id", p->id,
				    "member", to, "error", zmq_strerror(-rc));
				p->excluded = xrealloc(p->excluded, (p->n_excluded + 1) * sizeof(size_t));
				p->excluded[p->n_excluded++] = m;
				again = true;
				continue;
			}
			size_t k = p->n_parts++;
			p->parts = xrealloc(p->parts, p->n_parts * sizeof(*p->parts));
			p->parts[k] = (struct part){ enq.req_id, m,
			    hk_now_ms() + (int64_t)r->conf->enqueue_timeout_ms };
			for (size_t j = i; j < p->n_rcpts; j++)
				if (owner[j] == o)
					p->rcpt_part[j] = (int)k;
			p->n_outstanding++;
			backref[o]->inflight++;
			router_obs_stats(r->obs)->enqueues++;
			hk_u64map_put(r->enqueues, enq.req_id, p);
		}
next:
		free(subset);
		free(first);
		free(owner);
		free(cands);
		free(backref);
		if (res != DISPATCH_OK || !again)
			return res;
		if (!pending_may_resend(p)) {
			*why = "a sender could not be reached";
			return DISPATCH_FAIL;
		}
		p->generation++;
	}
}

/* pending_arm - the timer to P's earliest part deadline. */
static void
pending_arm(struct pending *p)
{
	int64_t now = hk_now_ms(), when = INT64_MAX;

	for (size_t k = 0; k < p->n_parts; k++)
		if (p->parts[k].req_id && p->parts[k].deadline_ms < when)
			when = p->parts[k].deadline_ms;
	if (when == INT64_MAX)
		return;
	uv_timer_start(&p->timer, on_pending_timeout, when > now ? (uint64_t)(when - now) : 0, 0);
}

/*
 * part_fail - part K will not be acked in time (its sender is down, or it
 * timed out): stop waiting for it, exclude its sender from this submission
 * and mark its recipients to be resent. A late ack for it is then ignored;
 * the sender may have queued it anyway, which makes a second copy once it is
 * resent elsewhere: at-least-once, never loss.
 */
static void
part_fail(struct pending *p, size_t k, const char *why)
{
	struct part *pt = &p->parts[k];
	size_t m = pt->member;

	if (pt->req_id == 0)
		return;
	hk_log_warn("enqueue_failed", "{s:s, s:s, s:I, s:s}", "id", p->id, "member",
	    p->r->members[m].name, "req_id", (json_int_t)pt->req_id, "reason", why);
	part_abandon(p, k);
	for (size_t i = 0; i < p->n_rcpts; i++)
		if (p->rcpt_part[i] == (int)k)
			p->rcpt_part[i] = RCPT_UNSENT;
	if (!pending_excludes(p, m)) {
		p->excluded = xrealloc(p->excluded, (p->n_excluded + 1) * sizeof(size_t));
		p->excluded[p->n_excluded++] = m;
	}
}

/* pending_resend - after part_fail: split the unsent recipients again over
 * the other live senders (a new generation), or nack if resend_window is
 * over or that fails. */
static void
pending_resend(struct pending *p, const char *why)
{
	struct router *r = p->r;
	const char *fail = NULL;
	enum dispatch d = DISPATCH_FAIL;

	if (!pending_may_resend(p)) {
		pending_finish(p, false, false, why);
		return;
	}
	p->generation++;
	Hk__Submission *m = hk__submission__unpack(NULL, p->msg_len, p->msg);
	if (m) {
		d = pending_dispatch(p, m, &fail);
		hk__submission__free_unpacked(m, NULL);
	}
	if (d != DISPATCH_OK) {
		pending_finish(p, false, d == DISPATCH_BUSY, fail ? fail : why);
		return;
	}
	router_obs_stats(r->obs)->resends++;
	hk_log_info("submit_resent", "{s:s, s:i, s:s}", "id", p->id, "generation", (int)p->generation,
	    "after", why);
	if (p->n_outstanding == 0)
		pending_finish(p, true, false, NULL);
	else
		pending_arm(p);
}

static void
on_pending_timeout(uv_timer_t *t)
{
	struct pending *p = t->data;
	int64_t now = hk_now_ms();
	bool failed = false;

	for (size_t k = 0; k < p->n_parts; k++) {
		if (p->parts[k].req_id && p->parts[k].deadline_ms <= now) {
			part_fail(p, k, "enqueue_timeout");
			failed = true;
		}
	}
	if (failed)
		pending_resend(p, "timed out waiting for a sender to queue the message");
	else
		pending_arm(p);
}

/* pending_member_down - member M is dead: resend what was in flight to it. */
static void
pending_member_down(struct router *r, size_t m)
{
	struct pending *p, *next;

	for (p = r->pending; p; p = next) {
		bool failed = false;
		next = p->next;
		for (size_t k = 0; k < p->n_parts; k++) {
			if (p->parts[k].req_id && p->parts[k].member == m) {
				part_fail(p, k, "member_down");
				failed = true;
			}
		}
		if (failed)
			pending_resend(p, "a sender went down with the message in flight");
	}
}

/*
 * handoff_check - a SubmitRequest from sender FROM on the back socket hands
 * queued recipients on: each must carry a Handoff from FROM, FROM must be a
 * live member, and no recipient may be FROM's own in our view (the sender
 * and we disagree on the membership: it tries again later, when views meet,
 * rather than us sending its recipients back to it or to a second choice).
 * NULL if fine, else why not; *origin gets FROM's member index.
 */
static const char *
handoff_check(struct router *r, const char *from, const Hk__Envelope *env, size_t *origin)
{
	struct member *m = member_find(r, from);
	struct router_hrw_member *cands;
	struct member **backref;
	char domain[HK_DOMAIN_MAX];
	const char *why = NULL;

	if (m == NULL || !m->alive)
		return "handoff from a sender that is not a live member";
	*origin = (size_t)(m - r->members);
	size_t n = live_members(r, NULL, &cands, &backref);
	for (size_t i = 0; why == NULL && i < env->n_rcpts; i++) {
		const Hk__Recipient *rc = env->rcpts[i];
		if (rc->handoff == NULL || rc->handoff->from_node == NULL ||
		    strcmp(rc->handoff->from_node, from) != 0)
			why = "handoff with a recipient that is not the sender's";
		else if (hk_domain_of(rc->address, domain) != 0)
			why = "recipient without a valid domain";
		else {
			int o = rcpt_owner(r, cands, n, domain, rc->address);
			if (o >= 0 && backref[o] == m)
				why = "this router sees the handing sender as the owner";
		}
	}
	free(cands);
	free(backref);
	return why;
}

/*
 * on_submit - a submission from an ingress (LINK = front), or a handoff from
 * a sender (LINK = back, HANDOFF): split it and enqueue each part at its
 * owner; the one SubmitReply goes back on LINK to PEER.
 */
static void
on_submit(struct router *r, hk_zlink *link, const void *peer, size_t peer_len,
    const Hk__SubmitRequest *req, const uint8_t *body, size_t body_len, bool handoff)
{
	const Hk__Submission *msg = req->msg;
	const Hk__Envelope *env = msg->envelope;
	char domain[HK_DOMAIN_MAX];
	const char *fail = NULL;
	bool busy = false;
	size_t origin = 0;

	router_obs_stats(r->obs)->submissions++;
	if (body == NULL || body_len != msg->body_size)
		fail = "body missing or its size differs from body_size";
	else if (r->n_pending >= r->conf->max_pending) {
		fail = "router busy: max_pending submissions in flight";
		busy = true;
	}
	for (size_t i = 0; fail == NULL && i < env->n_rcpts; i++) {
		if (hk_domain_of(env->rcpts[i]->address, domain) != 0)
			fail = "recipient without a valid domain";
		else if (!handoff && env->rcpts[i]->handoff != NULL)
			fail = "a submission from an ingress carries handoff state";
		else
			router_obs_domain(r->obs, domain);
	}
	if (fail == NULL && handoff)
		fail = handoff_check(r, peer, env, &origin);
	if (fail) {
		router_obs_stats(r->obs)->nacked++;
		if (busy)
			router_obs_stats(r->obs)->busy++;
		reply_ingress(r, link, peer, peer_len, req->req_id, false, busy, fail);
		hk_log_warn(handoff ? "handoff_nacked" : "submit_nacked", "{s:s, s:s, s:b}", "id", msg->id,
		    "reason", fail, "busy", busy);
		return;
	}

	struct pending *p = xcalloc(1, sizeof(*p));
	p->r = r;
	p->reply_link = link;
	p->handoff = handoff;
	if (handoff) {
		/* Never back to the handing sender, even on a resend. */
		p->excluded = xmalloc(sizeof(size_t));
		p->excluded[p->n_excluded++] = origin;
		router_obs_stats(r->obs)->handoffs++;
	}
	p->ingress_req_id = req->req_id;
	p->ingress_peer = xmalloc(peer_len);
	memcpy(p->ingress_peer, peer, peer_len);
	p->ingress_peer_len = peer_len;
	snprintf(p->id, sizeof(p->id), "%s", msg->id);
	p->msg_len = hk__submission__get_packed_size(msg);
	p->msg = xmalloc(p->msg_len ? p->msg_len : 1);
	hk__submission__pack(msg, p->msg);
	p->body = xmalloc(body_len ? body_len : 1);
	memcpy(p->body, body, body_len);
	p->body_len = body_len;
	p->n_rcpts = env->n_rcpts;
	p->rcpt_part = xcalloc(env->n_rcpts ? env->n_rcpts : 1, sizeof(int));
	for (size_t i = 0; i < env->n_rcpts; i++)
		p->rcpt_part[i] = RCPT_UNSENT;
	p->arrived_ms = hk_now_ms();
	p->sent_ns = uv_hrtime();
	uv_timer_init(r->node->loop, &p->timer);
	p->timer.data = p;
	p->next = r->pending;
	if (r->pending)
		r->pending->prev = p;
	r->pending = p;
	r->n_pending++;

	enum dispatch d = pending_dispatch(p, msg, &fail);
	if (d != DISPATCH_OK)
		pending_finish(p, false, d == DISPATCH_BUSY, fail);
	else if (p->n_outstanding == 0)
		pending_finish(p, true, false, NULL);   /* no recipients: nothing to queue */
	else
		pending_arm(p);
}

static void
on_enqueue_reply(struct router *r, const char *from, const Hk__EnqueueReply *rep)
{
	struct pending *p = hk_u64map_pop(r->enqueues, rep->req_id);

	if (p == NULL) {
		/* Late (after a timeout or a resend) or duplicate: normal in a
		 * cluster, and harmless: the part was resent or the ingress was
		 * answered already. */
		hk_log_debug("late_reply", "{s:s, s:I}", "member", from, "req_id", (json_int_t)rep->req_id);
		return;
	}
	size_t k;
	for (k = 0; k < p->n_parts; k++)
		if (p->parts[k].req_id == rep->req_id)
			break;
	if (k == p->n_parts)
		return; /* cannot happen: the map and the parts agree */
	p->parts[k].req_id = 0;
	r->members[p->parts[k].member].inflight--;
	p->n_outstanding--;
	hk_hist_observe(&router_obs_stats(r->obs)->ack_latency, (uv_hrtime() - p->sent_ns) / 1000);
	if (!rep->ok) {
		router_obs_stats(r->obs)->enqueue_nacks++;
		char reason[300];
		snprintf(reason, sizeof(reason), "sender %s: %s", from, rep->reason);
		pending_finish(p, false, false, reason);
		return;
	}
	for (size_t i = 0; i < p->n_rcpts; i++)
		if (p->rcpt_part[i] == (int)k)
			p->rcpt_part[i] = RCPT_ACKED;
	if (p->n_outstanding == 0) {
		for (size_t i = 0; i < p->n_rcpts; i++)
			if (p->rcpt_part[i] != RCPT_ACKED)
				return; /* cannot happen: unsent recipients are sent at once */
		pending_finish(p, true, false, NULL);
	}
}

static void
on_front(hk_zlink *l, const void *peer, size_t peer_len, const Hk__Frame *f,
    const uint8_t *body, size_t body_len, void *arg)
{
	(void)l;
	if (f->body_case == HK__FRAME__BODY_SUBMIT)
		on_submit(arg, l, peer, peer_len, f->submit, body, body_len, false);
	else
		router_junk(arg, "frame_unexpected", "front", "not a submission", hk_msg_name(f), f->from_node);
}

static void
on_back(hk_zlink *l, const void *peer, size_t peer_len, const Hk__Frame *f,
    const uint8_t *body, size_t body_len, void *arg)
{
	struct router *r = arg;

	/* Senders are addressed by routing id, which must be their node name. */
	if (peer_len != strlen(f->from_node) || memcmp(peer, f->from_node, peer_len) != 0) {
		router_junk(r, "frame_unexpected", "back", "routing id differs from node name",
		    hk_msg_name(f), f->from_node);
		return;
	}
	if (f->body_case == HK__FRAME__BODY_HEARTBEAT)
		on_heartbeat(r, f->from_node, f->heartbeat);
	else if (f->body_case == HK__FRAME__BODY_ENQUEUE_REPLY)
		on_enqueue_reply(r, f->from_node, f->enqueue_reply);
	else if (f->body_case == HK__FRAME__BODY_SUBMIT)
		on_submit(r, l, f->from_node, peer_len, f->submit, body, body_len, true);
	else
		router_junk(r, "frame_unexpected", "back", "not a heartbeat, enqueue reply or handoff",
		    hk_msg_name(f), f->from_node);
}

static void router_stop(struct hk_node *node);

/*
 * router_secure - limits and CURVE on both sockets, before they bind: frames
 * over the cluster's largest message are refused by ZeroMQ, and with curve:
 * the ZAP handler is up first (without one libzmq would let any key in).
 */
static int
router_secure(struct router *r)
{
	const struct hk_config *cfg = r->node->cfg;
	int64_t max = (int64_t)hk_config_max_frame(cfg);
	char err[512];
	int rc;

	/* High-water marks (messages per peer), so memory stays bounded: to a
	 * sender, a little over max_inflight_per_sender (the cap keeps the pipe
	 * below it unless parts abandoned at a dead sender still sit in it; past
	 * it a send fails with EAGAIN: busy); to an ingress, one reply per
	 * pending submission; inbound, ZeroMQ's default 1000, after which the
	 * peers' sends wait or fail (an ingress then answers 451 4.3.0). */
	int back_snd = (int)(r->conf->max_inflight_per_sender > INT32_MAX - 64 ?
	    INT32_MAX : r->conf->max_inflight_per_sender + 64);
	int front_snd = (int)(r->conf->max_pending > INT32_MAX - 64 ?
	    INT32_MAX : r->conf->max_pending + 64);
	int rcv = 1000;
	if ((rc = hk_zlink_setsockopt(r->front, ZMQ_MAXMSGSIZE, &max, sizeof(max))) != 0 ||
	    (rc = hk_zlink_setsockopt(r->back, ZMQ_MAXMSGSIZE, &max, sizeof(max))) != 0 ||
	    (rc = hk_zlink_setsockopt(r->back, ZMQ_SNDHWM, &back_snd, sizeof(back_snd))) != 0 ||
	    (rc = hk_zlink_setsockopt(r->front, ZMQ_SNDHWM, &front_snd, sizeof(front_snd))) != 0 ||
	    (rc = hk_zlink_setsockopt(r->back, ZMQ_RCVHWM, &rcv, sizeof(rcv))) != 0 ||
	    (rc = hk_zlink_setsockopt(r->front, ZMQ_RCVHWM, &rcv, sizeof(rcv))) != 0) {
		hk_log_error("router_socket", "{s:s}", "error", zmq_strerror(-rc));
		return -1;
	}
	if (!hk_curve_wanted(cfg, r->conf->front) && !hk_curve_wanted(cfg, r->conf->back))
		return 0;
	if ((rc = hk_zap_new(&r->zap, r->node->loop, r->node->zctx, cfg)) != 0) {
		hk_log_error("curve_failed", "{s:s, s:s}", "what", "ZAP handler", "error", zmq_strerror(-rc));
		return -1;
	}
	if ((hk_curve_wanted(cfg, r->conf->front) &&
	    hk_curve_server(r->front, cfg, r->node->conf->name, "front", err, sizeof(err)) != 0) ||
	    (hk_curve_wanted(cfg, r->conf->back) &&
	    hk_curve_server(r->back, cfg, r->node->conf->name, "back", err, sizeof(err)) != 0)) {
		hk_log_error("curve_failed", "{s:s}", "error", err);
		return -1;
	}
	hk_log_info("curve_enabled", "{s:s, s:s}", "public_key",
	    hk_config_curve(cfg, r->node->conf->name)->public_key, "as", "server");
	return 0;
}

static int
router_start(struct hk_node *node)
{
	struct router *r = xcalloc(1, sizeof(*r));
	int rc;

	node->role = r;
	r->node = node;
	r->conf = &node->conf->u.router;
	r->enqueues = hk_u64map_new();
	r->obs = router_obs_new(node->conf->name, ROUTER_DOMAINS_MAX, node->cfg);
	router_obs_handlers(r->obs, &node->http_handlers);
	uv_timer_init(node->loop, &r->tick);
	r->tick.data = r;
	if ((rc = hk_zlink_new(&r->front, node->loop, node->zctx, ZMQ_ROUTER, NULL,
	    node->conf->name, on_front, r)) != 0 ||
	    (rc = hk_zlink_new(&r->back, node->loop, node->zctx, ZMQ_ROUTER, NULL,
	    node->conf->name, on_back, r)) != 0) {
		hk_log_error("router_socket", "{s:s}", "error", zmq_strerror(-rc));
		goto fail;
	}
	if (router_secure(r) != 0)
		goto fail;
	if ((rc = hk_zlink_bind(r->front, r->conf->front)) != 0) {
		hk_log_error("bind_failed", "{s:s, s:s}", "endpoint", r->conf->front, "error", zmq_strerror(-rc));
		goto fail;
	}
	if ((rc = hk_zlink_bind(r->back, r->conf->back)) != 0) {
		hk_log_error("bind_failed", "{s:s, s:s}", "endpoint", r->conf->back, "error", zmq_strerror(-rc));
		goto fail;
	}
	uv_timer_start(&r->tick, on_tick, ROUTER_TICK_MS, ROUTER_TICK_MS);
	hk_log_info("router_listening", "{s:s, s:s}", "front", r->conf->front, "back", r->conf->back);
	return 0;
fail:
	router_stop(node);
	return -1;
}

static void
router_free(uv_handle_t *h)
{
	struct router *r = h->data;

	for (size_t i = 0; i < r->n_members; i++) {
		free(r->members[i].name);
		free(r->members[i].endpoint);
	}
	free(r->members);
	router_obs_free(&r->obs);
	hk_u64map_destroy(&r->enqueues);
	free(r);
}

static void
router_stop(struct hk_node *node)
{
	struct router *r = node->role;

	/* Fail what is in flight: the ingress answers 451 and the client retries. */
	while (r->pending)
		pending_finish(r->pending, false, false, "router shutting down");
	hk_zlink_close(r->front);
	hk_zlink_close(r->back);
	hk_zap_close(r->zap);
	uv_close((uv_handle_t *)&r->tick, router_free);
}

const struct hk_role_ops router_ops = { HK_ROLE_ROUTER, router_start, router_stop };
