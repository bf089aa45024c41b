/*
 * router_http - the router's snapshot for its HTTP endpoint (see router_http.h).
 *
 * GET /cluster copies the members and the recent domains under the lock,
 * then maps each domain to its owner outside it, so the loop waits only for
 * the copies (a few milliseconds at 100k domains), never for the hashing.
 */
/* System */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Third-party */
#include <jansson.h>

/* common/ */
#include "hk_util.h"

/* This role */
#include "router_domains.h"
#include "router_hrw.h"
#include "router_http.h"

struct router_obs {
	pthread_mutex_t lock;
	char *node;
	const struct hk_config *cfg; /* immutable: hot_domains: */
	/* under lock */
	struct router_member_view *members; /* strings owned */
	size_t n_members;
	router_domains *domains;
	/* atomics */
	struct router_stats stats;
};

router_obs *
router_obs_new(const char *node, size_t max_domains, const struct hk_config *cfg)
{
	router_obs *o = xcalloc(1, sizeof(*o));

	o->cfg = cfg;
	pthread_mutex_init(&o->lock, NULL);
	o->node = xstrdup(node);
	o->domains = router_domains_new(max_domains);
	return o;
}

static void
views_free(struct router_member_view *m, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free((char *)m[i].name);
		free((char *)m[i].endpoint);
	}
	free(m);
}

static struct router_member_view *
views_copy(const struct router_member_view *m, size_t n)
{
	struct router_member_view *c = xcalloc(n ? n : 1, sizeof(*c));

	for (size_t i = 0; i < n; i++) {
		c[i] = m[i];
		c[i].name = xstrdup(m[i].name);
		c[i].endpoint = xstrdup(m[i].endpoint ? m[i].endpoint : "");
	}
	return c;
}

void
router_obs_free(router_obs **op)
{
	router_obs *o = *op;

	if (o == NULL)
		return;
	views_free(o->members, o->n_members);
	router_domains_free(&o->domains);
	pthread_mutex_destroy(&o->lock);
	free(o->node);
	free(o);
	*op = NULL;
}

struct router_stats *
router_obs_stats(router_obs *o)
{
	return &o->stats;
}

void
router_obs_members(router_obs *o, const struct router_member_view *m, size_t n)
{
	struct router_member_view *c = views_copy(m, n), *old;
	size_t n_old;

	pthread_mutex_lock(&o->lock);
	old = o->members;
	n_old = o->n_members;
	o->members = c;
	o->n_members = n;
	pthread_mutex_unlock(&o->lock);
	views_free(old, n_old);
}

void
router_obs_domain(router_obs *o, const char *domain)
{
	pthread_mutex_lock(&o->lock);
	router_domains_touch(o->domains, domain);
	pthread_mutex_unlock(&o->lock);
}

/* A copy of the member snapshot (caller frees with views_free). */
static struct router_member_view *
members_copy(router_obs *o, size_t *n)
{
	struct router_member_view *c;

	pthread_mutex_lock(&o->lock);
	c = views_copy(o->members, o->n_members);
	*n = o->n_members;
	pthread_mutex_unlock(&o->lock);
	return c;
}

static bool
candidate(const struct router_member_view *m)
{
	return m->alive && !m->draining;
}

char *
router_obs_cluster_json(router_obs *o)
{
	size_t n, n_domains, n_cands = 0;
	struct router_member_view *m;
	struct router_hrw_member *cands;
	size_t *cand_of, *owned;
	char *domains, *p, *out;
	int64_t now = hk_now_ms();
	json_t *doc, *arr;

	pthread_mutex_lock(&o->lock);
	m = views_copy(o->members, o->n_members);
	n = o->n_members;
	domains = router_domains_copy(o->domains, &n_domains);
	pthread_mutex_unlock(&o->lock);

	/* Owners as on_submit computes them now: live, non-draining members. */
	cands = xcalloc(n ? n : 1, sizeof(*cands));
	cand_of = xcalloc(n ? n : 1, sizeof(*cand_of));
	owned = xcalloc(n ? n : 1, sizeof(*owned));
	for (size_t i = 0; i < n; i++) {
		if (!candidate(&m[i]))
			continue;
		cands[n_cands].name = m[i].name;
		cands[n_cands].weight = m[i].weight ? m[i].weight : 1;
		cand_of[n_cands++] = i;
	}
	p = domains;
	size_t unowned = 0;
	int *top = xcalloc(n ? n : 1, sizeof(*top));
	for (size_t d = 0; d < n_domains; d++) {
		/* A hot domain counts for each of its top k owners. */
		size_t k = o->cfg ? hk_config_hot_k(o->cfg, p) : 1;
		size_t got = router_hrw_top(cands, n_cands, p, k, top);
		if (got == 0)
			unowned++;
		for (size_t j = 0; j < got; j++)
			owned[cand_of[top[j]]]++;
		p += strlen(p) + 1;
	}
	free(top);

	arr = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(arr, json_pack("{s:s, s:s, s:i, s:I, s:b, s:I, s:b, s:I, s:I}",
		    "id", m[i].name, "endpoint", m[i].endpoint, "weight", (int)m[i].weight,
		    "queue_depth", (json_int_t)m[i].queue_depth, "draining", m[i].draining,
		    "heartbeat_age_ms", (json_int_t)(now - m[i].last_seen_ms), "live", m[i].alive,
		    "inflight", (json_int_t)m[i].inflight, "domains", (json_int_t)owned[i]));
	doc = json_pack("{s:s, s:o, s:I, s:I}", "node", o->node, "members", arr,
	    "domains_seen", (json_int_t)n_domains, "domains_unowned", (json_int_t)unowned);
	out = json_dumps(doc, JSON_COMPACT);
	json_decref(doc);
	free(domains);
	free(cands);
	free(cand_of);
	free(owned);
	views_free(m, n);
	return out;
}

/* ---- handlers (HTTP thread) ---- */

static bool
obs_ready(void *arg, char *reason, size_t len)
{
	router_obs *o = arg;
	size_t n, live = 0;
	struct router_member_view *m = members_copy(o, &n);

	for (size_t i = 0; i < n; i++)
		live += candidate(&m[i]);
	views_free(m, n);
	if (live == 0)
		snprintf(reason, len, n ? "no live, non-draining sender" : "no sender has joined");
	return live > 0;
}

static void
obs_metrics(void *arg, hk_prom *p)
{
	router_obs *o = arg;
	struct router_stats *s = &o->stats;
	size_t n, live = 0, n_domains;
	struct router_member_view *m = members_copy(o, &n);

	for (size_t i = 0; i < n; i++)
		live += candidate(&m[i]);
	pthread_mutex_lock(&o->lock);
	n_domains = router_domains_count(o->domains);
	pthread_mutex_unlock(&o->lock);

	hk_prom_one(p, "hikyaku_router_submissions_total", "counter", "Submissions received from ingress nodes.", s->submissions);
	hk_prom_one(p, "hikyaku_router_acks_total", "counter", "Submissions acked to the ingress (every owner queued it).", s->acked);
	hk_prom_one(p, "hikyaku_router_nacks_total", "counter", "Submissions nacked to the ingress (no sender, a sender refused, timeout, shutdown).", s->nacked);
	hk_prom_one(p, "hikyaku_router_enqueues_total", "counter", "Enqueues sent to senders.", s->enqueues);
	hk_prom_one(p, "hikyaku_router_enqueue_nacks_total", "counter", "Enqueues a sender answered with a refusal.", s->enqueue_nacks);
	hk_prom_one(p, "hikyaku_router_resends_total", "counter", "Failed parts of submissions re-split over the live senders and resent.", s->resends);
	hk_prom_one(p, "hikyaku_router_handoffs_total", "counter", "Handoffs of queued recipients taken from senders (their owner changed).", s->handoffs);
	hk_prom_one(p, "hikyaku_router_busy_total", "counter", "Submissions nacked as busy (max_pending, max_inflight_per_sender, a full pipe).", s->busy);
	hk_prom_family(p, "hikyaku_router_ack_latency_seconds", "histogram", "Time from an enqueue sent to its sender's reply.");
	hk_prom_hist(p, "hikyaku_router_ack_latency_seconds", NULL, NULL, &s->ack_latency);
	hk_prom_one(p, "hikyaku_router_members", "gauge", "Senders this router has heard from.", n);
	hk_prom_one(p, "hikyaku_router_members_live", "gauge", "Live, non-draining senders (the rendezvous candidates).", live);
	hk_prom_one(p, "hikyaku_router_domains_seen", "gauge", "Distinct destination domains in the recent-domain set.", n_domains);
	hk_prom_family(p, "hikyaku_router_enqueues_in_flight", "gauge", "Enqueues sent to the sender and not answered yet.");
	for (size_t i = 0; i < n; i++)
		hk_prom_u64(p, "hikyaku_router_enqueues_in_flight", "sender", m[i].name, m[i].inflight);
	hk_prom_family(p, "hikyaku_router_member_queue_depth", "gauge", "Queue depth in the sender's last heartbeat.");
	for (size_t i = 0; i < n; i++)
		hk_prom_u64(p, "hikyaku_router_member_queue_depth", "sender", m[i].name, m[i].queue_depth);
	hk_prom_family(p, "hikyaku_router_member_live", "gauge", "1 if the sender's heartbeats are fresh.");
	for (size_t i = 0; i < n; i++)
		hk_prom_u64(p, "hikyaku_router_member_live", "sender", m[i].name, m[i].alive);
	views_free(m, n);
}

static int
obs_get(void *arg, const char *path, char **body, size_t *len)
{
	if (strcmp(path, "/cluster") != 0)
		return 0;
	*body = router_obs_cluster_json(arg);
	*len = strlen(*body);
	return 200;
}

void
router_obs_handlers(router_obs *o, struct hk_http_handlers *out)
{
	*out = (struct hk_http_handlers){
		.arg = o, .ready = obs_ready, .metrics = obs_metrics, .get = obs_get,
	};
}
