/*
 * sender_handoff - hand queued recipients on to their new owner (see
 * sender_handoff.h for the protocol).
 *
 * A request's life: collected by a scan (its recipients are held in the
 * scheduler's in-flight set, so neither a delivery nor the next scan takes
 * them) -> sent through a router -> answered: ok hands the recipients to
 * DONE (they stay held until the owner's commit removes them), anything
 * else releases them -> or timed out: released. Scans run only when no
 * request is in flight, and at once when the last one is answered, so the
 * queue is walked once per round of at most HANDOFF_MAX_PENDING messages.
 */

/* System */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Third-party */
#include <jansson.h>
#include <zmq.h>

/* common/ */
#include "hk_log.h"
#include "hk_util.h"

/* router/: the ownership rule is the routers' */
#include "router_hrw.h"

/* This role */
#include "sender_handoff.h"

#define HANDOFF_TICK_MS 250
#define HANDOFF_MAX_PENDING 64          /* messages in flight */
#define HANDOFF_MAX_RCPTS 1000          /* recipients per request */
#define HANDOFF_TIMEOUT_MS 30000        /* no answer: let go, try again */
#define HANDOFF_RETRY_MS 1000           /* after a refusal */
#define HANDOFF_RECHECK_MS (5 * 60 * 1000) /* safety net: look anyway */

/* One router's latest view, as rendezvous candidates. */
struct view {
	int64_t at_ms;                  /* 0: none yet */
	uint64_t hash;                  /* of what it said, to see changes */
	char **names;                   /* owned copies */
	struct router_hrw_member *cands; /* live, non-draining */
	size_t n_names, n_cands;
	bool has_self;                  /* it lists us (alive) */
	int self_cand;                  /* our index in cands, -1 if not one */
};

struct req {
	uint64_t req_id;                /* 0: free slot */
	size_t link;
	int64_t deadline_ms;
	char *id;
	uint32_t *idx;
	size_t n;
};

struct sender_handoff {
	struct sender_handoff_conf c;
	uv_timer_t timer;
	struct view *views;
	struct req pending[HANDOFF_MAX_PENDING];
	size_t n_pending;
	uint64_t next_req_id;
	size_t next_link;               /* round robin */
	bool dirty;
	int64_t retry_at_ms;            /* no scan before (after a refusal) */
	int64_t last_scan_ms;
	uint64_t episode_rcpts;         /* handed on since the last quiet scan */
	int64_t episode_start_ms;
	bool closing;
};

/* ---- views and ownership ---- */

static int64_t
fresh_ms(const sender_handoff *h)
{
	int64_t f = 3 * (int64_t)h->c.heartbeat_interval_ms;
	return f < 3000 ? 3000 : f;
}

static bool
view_fresh(const sender_handoff *h, const struct view *v, int64_t now)
{
	return v->at_ms > 0 && now - v->at_ms <= fresh_ms(h) && v->has_self;
}

static void
view_clear(struct view *v)
{
	for (size_t i = 0; i < v->n_names; i++)
		free(v->names[i]);
	free(v->names);
	free(v->cands);
	v->names = NULL;
	v->cands = NULL;
	v->n_names = v->n_cands = 0;
}

static uint64_t
fnv(uint64_t h, const void *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ ((const unsigned char *)p)[i]) * 1099511628211ULL;
	return h;
}

void
sender_handoff_view(sender_handoff *h, size_t link, const Hk__MemberView *mv)
{
	struct view *v;
	uint64_t hash = 1469598103934665603ULL;

	if (link >= h->c.n_links)
		return;
	v = &h->views[link];
	for (size_t i = 0; i < mv->n_members; i++) {
		const Hk__MemberView__Member *m = mv->members[i];
		uint8_t d = m->draining;
		hash = fnv(hash, m->node_id, strlen(m->node_id) + 1);
		hash = fnv(hash, &m->weight, sizeof(m->weight));
		hash = fnv(hash, &d, 1);
	}
	v->at_ms = hk_now_ms();
	if (hash == v->hash && v->names != NULL)
		return;
	view_clear(v);
	v->hash = hash;
	v->has_self = false;
	v->self_cand = -1;
	v->names = xcalloc(mv->n_members ? mv->n_members : 1, sizeof(*v->names));
	v->cands = xcalloc(mv->n_members ? mv->n_members : 1, sizeof(*v->cands));
	for (size_t i = 0; i < mv->n_members; i++) {
		const Hk__MemberView__Member *m = mv->members[i];
		char *name = xstrdup(m->node_id);
		v->names[v->n_names++] = name;
		if (strcmp(name, h->c.self) == 0) {
			v->has_self = true;
			if (!m->draining)
				v->self_cand = (int)v->n_cands;
		}
		if (!m->draining)
			v->cands[v->n_cands++] = (struct router_hrw_member){ name, m->weight ? m->weight : 1 };
	}
	h->dirty = true;
	hk_log_info("member_view", "{s:s, s:i, s:i, s:b}", "router", h->c.link_names[link],
	    "members", (int)v->n_names, "candidates", (int)v->n_cands, "owner_candidate",
	    v->self_cand >= 0);
}

bool
sender_handoff_mine(sender_handoff *h, const char *domain, const char *rcpt)
{
	int64_t now = hk_now_ms();
	bool any = false;
	uint32_t k = hk_config_hot_k(h->c.cfg, domain);

	if (rcpt == NULL && k > 1)
		return true;    /* a hot domain is decided per recipient */
	for (size_t i = 0; i < h->c.n_links; i++) {
		struct view *v = &h->views[i];
		if (!view_fresh(h, v, now))
			continue;
		if (v->n_cands == 0)
			return true;    /* nobody else to take it */
		any = true;
		int o = router_hrw_pick(v->cands, v->n_cands, k, domain, rcpt);
		if (o == v->self_cand)
			return true;
	}
	return !any;
}

void
sender_handoff_touch(sender_handoff *h, const char *domain, const char *rcpt)
{
	if (!h->dirty && !sender_handoff_mine(h, domain, rcpt))
		h->dirty = true;
}

size_t
sender_handoff_busy(const sender_handoff *h)
{
	return h->n_pending;
}

/* ---- requests ---- */

static void
req_release(sender_handoff *h, struct req *r)
{
	for (size_t i = 0; i < r->n; i++)
		sender_sched_release(h->c.sched, r->id, r->idx[i]);
}

static void
req_free(sender_handoff *h, struct req *r)
{
	free(r->id);
	free(r->idx);
	memset(r, 0, sizeof(*r));
	h->n_pending--;
}

/* A recipient collected by a scan, with the state it travels with. */
struct crcpt {
	uint32_t idx;
	char *address;
	char **params;
	size_t n_params;
	uint32_t attempts;
	int64_t queued_at_ms, first_attempt_ms, last_attempt_ms, next_attempt_ms;
	char *reply;
};

struct cmsg {
	char *id;
	struct crcpt *r;
	size_t n, cap;
};

struct scan {
	sender_handoff *h;
	struct cmsg *m;
	size_t n, max;
	uint64_t foreign;
};

/* scan_dom - pass by a domain that is wholly ours (not a hot one). */
static int
scan_dom(const char *domain, int64_t next_ms, void *arg)
{
	struct scan *sc = arg;

	(void)next_ms;
	if (sc->n == sc->max)
		return SENDER_SCAN_STOP;
	if (hk_config_hot_k(sc->h->c.cfg, domain) <= 1 && sender_handoff_mine(sc->h, domain, NULL))
		return SENDER_SCAN_NEXT_DOMAIN;
	return SENDER_SCAN_CONTINUE;
}

static bool
scan_skip(const char *id, uint32_t idx, void *arg)
{
	struct scan *sc = arg;
	return sender_sched_held(sc->h->c.sched, id, idx);
}

static int
scan_one(const struct sender_qrcpt *r, void *arg)
{
	struct scan *sc = arg;
	struct cmsg *m = NULL;

	if (sender_handoff_mine(sc->h, r->domain, r->address))
		return 0;
	sc->foreign++;
	for (size_t i = sc->n; i-- > 0; )
		if (strcmp(sc->m[i].id, r->id) == 0) {
			m = &sc->m[i];
			break;
		}
	if (m == NULL) {
		if (sc->n == sc->max)
			return SENDER_SCAN_STOP;        /* a full round: the rest in the next */
		m = &sc->m[sc->n++];
		m->id = xstrdup(r->id);
	}
	if (m->n == HANDOFF_MAX_RCPTS)
		return 0;
	if (m->n == m->cap) {
		m->cap = m->cap ? m->cap * 2 : 8;
		m->r = xrealloc(m->r, m->cap * sizeof(*m->r));
	}
	struct crcpt *c = &m->r[m->n++];
	*c = (struct crcpt){
		.idx = r->idx, .address = xstrdup(r->address), .attempts = r->attempts,
		.queued_at_ms = r->queued_at_ms, .first_attempt_ms = r->first_attempt_ms,
		.last_attempt_ms = r->last_attempt_ms, .next_attempt_ms = r->next_attempt_ms,
		.reply = xstrdup(r->reply),
	};
	c->params = xcalloc(r->n_params ? r->n_params : 1, sizeof(char *));
	for (const char *p = r->params; c->n_params < r->n_params &&
	     p < r->params + r->params_len; p += strlen(p) + 1)
		c->params[c->n_params++] = xstrdup(p);
	return 0;
}

static void
cmsg_free(struct cmsg *m)
{
	for (size_t i = 0; i < m->n; i++) {
		struct crcpt *c = &m->r[i];
		free(c->address);
		for (size_t j = 0; j < c->n_params; j++)
			free(c->params[j]);
		free(c->params);
		free(c->reply);
	}
	free(m->r);
	free(m->id);
}

/* pick_link - a router whose fresh view lists us, round robin; -1 if none. */
static int
pick_link(sender_handoff *h, int64_t now)
{
	for (size_t t = 0; t < h->c.n_links; t++) {
		size_t i = (h->next_link + t) % h->c.n_links;
		if (view_fresh(h, &h->views[i], now)) {
			h->next_link = i + 1;
			return (int)i;
		}
	}
	return -1;
}

/* send_msg - one SubmitRequest for M's collected recipients: true if sent
 * (its recipients are then held). */
static bool
send_msg(sender_handoff *h, struct cmsg *m, int64_t now)
{
	Hk__Submission *meta = NULL;
	uint8_t *body = NULL;
	size_t body_len = 0;
	int link = pick_link(h, now), rc;
	struct req *slot = NULL;

	if (link < 0)
		return false;
	for (size_t i = 0; i < HANDOFF_MAX_PENDING; i++)
		if (h->pending[i].req_id == 0) {
			slot = &h->pending[i];
			break;
		}
	if (slot == NULL)
		return false;
	rc = sender_queue_msg_load(h->c.q, m->id, &meta, &body, &body_len);
	if (rc != 0) {
		/* Gone meanwhile (delivered, deleted): nothing to hand on. */
		hk_log_debug("handoff_load_failed", "{s:s, s:i}", "id", m->id, "rc", rc);
		return false;
	}

	Hk__Recipient *rc_v = xcalloc(m->n, sizeof(*rc_v));
	Hk__Recipient **rc_p = xcalloc(m->n, sizeof(*rc_p));
	Hk__Handoff *ho = xcalloc(m->n, sizeof(*ho));
	for (size_t i = 0; i < m->n; i++) {
		struct crcpt *c = &m->r[i];
		hk__recipient__init(&rc_v[i]);
		hk__handoff__init(&ho[i]);
		rc_v[i].address = c->address;
		rc_v[i].params = c->params;
		rc_v[i].n_params = c->n_params;
		ho[i].from_node = (char *)h->c.self;
		ho[i].from_idx = c->idx;
		ho[i].attempts = c->attempts;
		ho[i].queued_at_ms = c->queued_at_ms;
		ho[i].first_attempt_ms = c->first_attempt_ms;
		ho[i].last_attempt_ms = c->last_attempt_ms;
		ho[i].next_attempt_ms = c->next_attempt_ms;
		ho[i].last_reply = c->reply;
		rc_v[i].handoff = &ho[i];
		rc_p[i] = &rc_v[i];
	}
	Hk__Envelope env = HK__ENVELOPE__INIT;
	if (meta->envelope)
		env = *meta->envelope;
	env.rcpts = rc_p;
	env.n_rcpts = m->n;
	Hk__Submission sub = *meta;
	sub.envelope = &env;
	sub.body_size = body_len;
	Hk__SubmitRequest req = HK__SUBMIT_REQUEST__INIT;
	req.req_id = ++h->next_req_id;
	req.msg = &sub;
	Hk__Frame f = HK__FRAME__INIT;
	f.body_case = HK__FRAME__BODY_SUBMIT;
	f.submit = &req;
	rc = hk_zlink_send(h->c.links[link], NULL, 0, &f, body, body_len);
	free(ho);
	free(rc_p);
	free(rc_v);
	free(body);
	hk__submission__free_unpacked(meta, NULL);
	if (rc != 0) {
		hk_log_warn("handoff_not_sent", "{s:s, s:s, s:s}", "id", m->id, "router",
		    h->c.link_names[link], "error", zmq_strerror(-rc));
		return false;
	}
	*slot = (struct req){ req.req_id, (size_t)link, now + HANDOFF_TIMEOUT_MS, m->id,
	    xcalloc(m->n, sizeof(uint32_t)), m->n };
	m->id = NULL;   /* the request owns it now */
	for (size_t i = 0; i < m->n; i++) {
		slot->idx[i] = m->r[i].idx;
		sender_sched_hold(h->c.sched, slot->id, slot->idx[i]);
	}
	h->n_pending++;
	h->c.stats->msgs_sent++;
	return true;
}

/* scan - one round: collect foreign recipients, send a request per
 * message. */
static void
scan(sender_handoff *h, int64_t now)
{
	struct scan sc = { .h = h, .max = HANDOFF_MAX_PENDING - h->n_pending };
	size_t sent = 0;

	h->last_scan_ms = now;
	if (pick_link(h, now) < 0) {
		h->dirty = false;       /* no fresh view: everything is ours */
		return;
	}
	sc.m = xcalloc(sc.max ? sc.max : 1, sizeof(*sc.m));
	if (sender_queue_scan_due_domains(h->c.q, INT64_MAX, scan_dom, scan_skip, scan_one, &sc) != 0)
		h->retry_at_ms = now + HANDOFF_RETRY_MS;
	h->c.stats->foreign = sc.foreign;
	for (size_t i = 0; i < sc.n; i++) {
		if (send_msg(h, &sc.m[i], now))
			sent++;
		cmsg_free(&sc.m[i]);
	}
	free(sc.m);
	if (sc.n > 0 && sent == 0) {
		h->retry_at_ms = now + HANDOFF_RETRY_MS;
		h->c.stats->refused++;
	}
	if (sc.foreign > 0 && h->episode_start_ms == 0)
		h->episode_start_ms = now;
	if (sc.foreign == 0 && h->n_pending == 0) {
		h->dirty = false;
		if (h->episode_start_ms != 0)
			hk_log_info("handoff_complete", "{s:I, s:I}", "rcpts",
			    (json_int_t)h->episode_rcpts, "ms", (json_int_t)(now - h->episode_start_ms));
		h->episode_rcpts = 0;
		h->episode_start_ms = 0;
	}
}

static void
on_tick(uv_timer_t *t)
{
	sender_handoff *h = t->data;
	int64_t now = hk_now_ms();

	if (h->closing)
		return;
	for (size_t i = 0; i < HANDOFF_MAX_PENDING; i++) {
		struct req *r = &h->pending[i];
		if (r->req_id == 0 || r->deadline_ms > now)
			continue;
		hk_log_warn("handoff_timeout", "{s:s, s:s, s:i}", "id", r->id, "router",
		    h->c.link_names[r->link], "rcpts", (int)r->n);
		h->c.stats->refused++;
		req_release(h, r);
		req_free(h, r);
		h->dirty = true;
	}
	if (!h->dirty && now - h->last_scan_ms >= HANDOFF_RECHECK_MS)
		h->dirty = true;
	if (h->dirty && h->n_pending == 0 && now >= h->retry_at_ms)
		scan(h, now);
}

void
sender_handoff_reply(sender_handoff *h, size_t link, const Hk__SubmitReply *rep)
{
	struct req *r = NULL;

	for (size_t i = 0; i < HANDOFF_MAX_PENDING; i++)
		if (h->pending[i].req_id == rep->req_id && h->pending[i].link == link) {
			r = &h->pending[i];
			break;
		}
	if (r == NULL) {
		hk_log_debug("handoff_late_reply", "{s:I}", "req_id", (json_int_t)rep->req_id);
		return;
	}
	if (rep->ok) {
		hk_log_info("handed_off", "{s:s, s:i, s:s}", "id", r->id, "rcpts", (int)r->n,
		    "router", h->c.link_names[link]);
		h->c.stats->rcpts_acked += r->n;
		h->episode_rcpts += r->n;
		h->c.done(r->id, r->idx, r->n, h->c.arg);      /* held until committed */
	} else {
		hk_log_warn("handoff_refused", "{s:s, s:s, s:s}", "id", r->id, "router",
		    h->c.link_names[link], "reason", rep->reason ? rep->reason : "");
		h->c.stats->refused++;
		req_release(h, r);
		h->retry_at_ms = hk_now_ms() + HANDOFF_RETRY_MS;
	}
	req_free(h, r);
	h->dirty = true;
	/* The round is over: the next one at once (its scan skips what is
	 * still held for the removal commit). */
	if (h->n_pending == 0 && !h->closing)
		uv_timer_start(&h->timer, on_tick, 0, HANDOFF_TICK_MS);
}

/* ---- life ---- */

sender_handoff *
sender_handoff_new(const struct sender_handoff_conf *conf)
{
	sender_handoff *h = xcalloc(1, sizeof(*h));

	h->c = *conf;
	h->views = xcalloc(conf->n_links ? conf->n_links : 1, sizeof(*h->views));
	h->next_req_id = (uint64_t)hk_now_ms() << 16;  /* unlike any before a restart */
	h->last_scan_ms = hk_now_ms();
	uv_timer_init(conf->loop, &h->timer);
	h->timer.data = h;
	uv_timer_start(&h->timer, on_tick, HANDOFF_TICK_MS, HANDOFF_TICK_MS);
	return h;
}

static void
on_closed(uv_handle_t *t)
{
	sender_handoff *h = t->data;

	for (size_t i = 0; i < h->c.n_links; i++)
		view_clear(&h->views[i]);
	free(h->views);
	free(h);
}

void
sender_handoff_close(sender_handoff *h)
{
	if (h == NULL || h->closing)
		return;
	h->closing = true;
	for (size_t i = 0; i < HANDOFF_MAX_PENDING; i++)
		if (h->pending[i].req_id)
			req_free(h, &h->pending[i]);
	uv_close((uv_handle_t *)&h->timer, on_closed);
}
