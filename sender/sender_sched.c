/*
 * sender_sched - the delivery scheduler: due recipients -> jobs (one message,
 * one domain) -> MX lookup -> SMTP -> one outcome per recipient.
 *
 * A job's life: picked (its recipients enter the in-flight set) -> DNS ->
 * SMTP -> ended (outcomes reported, job freed). The in-flight set outlives
 * the job: an entry leaves it only when the owner has committed the outcome
 * (sender_sched_release), because until then the queue still shows the
 * recipient due and the next scan would pick it twice.
 */

/* System */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* common/ */
#include "hk_log.h"
#include "hk_u64map.h"
#include "hk_tls.h"
#include "hk_util.h"

/* This role */
#include "sender_class.h"
#include "sender_dns.h"
#include "sender_pool.h"
#include "sender_sched.h"
#include "sender_shaping.h"
#include "sender_warmup.h"
#include "sender_smtp.h"

/* ---- the in-flight set: (id, idx), open addressing ---- */

struct iset_ent {
	char *id;               /* NULL: empty; &tomb: deleted */
	uint32_t idx;
};

struct iset {
	struct iset_ent *e;
	size_t cap, n, used;    /* used = live + tombstones */
};

static char tomb;

static uint64_t
iset_hash(const char *id, uint32_t idx)
{
	uint64_t h = 1469598103934665603ULL;
	for (const unsigned char *p = (const unsigned char *)id; *p; p++)
		h = (h ^ *p) * 1099511628211ULL;
	for (int i = 0; i < 4; i++, idx >>= 8)
		h = (h ^ (idx & 0xff)) * 1099511628211ULL;
	return h;
}

/* iset_slot - where (id, idx) is, or where it would go (first free slot). */
static struct iset_ent *
iset_slot(struct iset *s, const char *id, uint32_t idx, bool *found)
{
	size_t mask = s->cap - 1, i = iset_hash(id, idx) & mask;
	struct iset_ent *free_slot = NULL;

	*found = false;
	for (;; i = (i + 1) & mask) {
		struct iset_ent *e = &s->e[i];
		if (e->id == NULL)
			return free_slot ? free_slot : e;
		if (e->id == &tomb) {
			if (free_slot == NULL)
				free_slot = e;
		} else if (e->idx == idx && strcmp(e->id, id) == 0) {
			*found = true;
			return e;
		}
	}
}

static void
iset_grow(struct iset *s)
{
	struct iset old = *s;
	bool found;

	s->cap = old.cap ? (old.n * 4 > old.cap ? old.cap * 2 : old.cap) : 64;
	s->e = xcalloc(s->cap, sizeof(*s->e));
	s->n = s->used = 0;
	for (size_t i = 0; i < old.cap; i++) {
		if (old.e[i].id == NULL || old.e[i].id == &tomb)
			continue;
		*iset_slot(s, old.e[i].id, old.e[i].idx, &found) = old.e[i];
		s->n++;
		s->used++;
	}
	free(old.e);
}

static bool
iset_has(struct iset *s, const char *id, uint32_t idx)
{
	bool found;
	if (s->n == 0)
		return false;
	iset_slot(s, id, idx, &found);
	return found;
}

static void
iset_add(struct iset *s, const char *id, uint32_t idx)
{
	bool found;

	/* Keep at least half the slots empty so that probes end quickly. */
	if ((s->used + 1) * 2 > s->cap)
		iset_grow(s);
	struct iset_ent *e = iset_slot(s, id, idx, &found);
	if (found)
		return;
	if (e->id == NULL)
		s->used++;
	e->id = xstrdup(id);
	e->idx = idx;
	s->n++;
}

static bool
iset_del(struct iset *s, const char *id, uint32_t idx)
{
	bool found;
	if (s->n == 0)
		return false;
	struct iset_ent *e = iset_slot(s, id, idx, &found);
	if (!found)
		return false;
	free(e->id);
	e->id = &tomb;
	s->n--;
	return true;
}

static void
iset_free(struct iset *s)
{
	for (size_t i = 0; i < s->cap; i++)
		if (s->e[i].id != NULL && s->e[i].id != &tomb)
			free(s->e[i].id);
	free(s->e);
	memset(s, 0, sizeof(*s));
}

/* ---- per-domain state: jobs running, back-off of a failing domain ---- */

struct dstate {
	char *domain;
	uint64_t hash;
	uint32_t jobs;                  /* running now */
	uint32_t failures;              /* attempts in a row no MX took */
	int64_t backoff_until_ms;       /* no new job before */
	int64_t hold_until_ms;          /* briefly no new job: its sources had no budget */
	int64_t paced_until_ms;         /* a rate refused it lately: ... */
	uint32_t paced_jobs;            /* ... at most this many jobs at once meanwhile */
	struct dstate *next;            /* same hash */
	struct dstate *lprev, *lnext;   /* every one, for the end */
};

/* ---- jobs ---- */

struct job_rcpt {
	uint32_t idx;
	uint32_t attempts;              /* before this one */
	int64_t queued_at_ms;           /* max_lifetime counts from here */
	int64_t first_attempt_ms;
	char *address;
	char *params;                   /* RCPT parameters, NUL-terminated, back to back */
	size_t params_len;
};

struct job {
	sender_sched *s;
	struct job *prev, *next;
	char *id;
	char *domain;
	Hk__Submission *meta;           /* tenant, mail_from */
	uint8_t *body;
	size_t body_len;
	struct job_rcpt *r;
	struct sender_smtp_rcpt *sr;    /* codes and replies, parallel to r */
	size_t n, cap;
	struct sender_smtp_job sj;
	sender_smtp *smtp;              /* while SMTP runs */
	bool dns_pending;
	bool postponed;                 /* ended waiting for a budget (job_postpone) */
	/* The source chosen after DNS and what it holds until the job ends. */
	const struct sender_shaping_rule *rule;
	const struct hk_pool_addr *src;
	bool shaped;                    /* a shaping connection/message is counted */
	uint32_t wu_taken;              /* recipients of warm-up budget taken */
	int64_t wu_taken_at;
	int64_t start_ms;
};

struct sender_sched {
	uv_loop_t *loop;
	sender_queue *q;
	const struct hk_sender_conf *conf;
	sender_dns *dns;
	sender_smtp_pool *pool;         /* SMTP connections kept between jobs */
	SSL_CTX *tls_ctx;               /* the client context of every job */
	uv_timer_t timer;
	sender_outcome_cb cb;
	void *arg;
	struct iset inflight;
	hk_u64map *domains;             /* struct dstate by domain hash */
	sender_pools *pools;            /* source addresses by tenant pool */
	sender_shaping *shaping;        /* per-destination limits (NULL: none) */
	sender_warmup *warmup;          /* warm-up budgets (NULL: none) */
	struct dstate *dlist;           /* all of them */
	int64_t swept_ms;               /* dlist last swept (on_tick) */
	sender_sched_filter_fn filter;  /* deliverable here? (NULL: all) */
	void *filter_arg;
	struct job *jobs;               /* running, doubly linked */
	size_t n_jobs;
	uint64_t rng;
	bool stopping, timer_closed;
	sender_sched_done_cb done;
	void *done_arg;
};

static uint64_t
dstate_hash(const char *domain)
{
	uint64_t h = 1469598103934665603ULL;
	for (const unsigned char *p = (const unsigned char *)domain; *p; p++)
		h = (h ^ *p) * 1099511628211ULL;
	return h ? h : 1;       /* hk_u64map keys are non-zero */
}

static struct dstate *
dstate_find(sender_sched *s, const char *domain, bool create)
{
	hk_u64map *m = s->domains;
	uint64_t h = dstate_hash(domain);
	struct dstate *head = hk_u64map_get(m, h), *d;

	for (d = head; d; d = d->next)
		if (strcmp(d->domain, domain) == 0)
			return d;
	if (!create)
		return NULL;
	d = xcalloc(1, sizeof(*d));
	d->domain = xstrdup(domain);
	d->hash = h;
	d->next = head;
	hk_u64map_put(m, h, d);
	d->lnext = s->dlist;
	if (s->dlist)
		s->dlist->lprev = d;
	s->dlist = d;
	return d;
}

/* domain_limit - jobs D may run at once: its connection limit, or one
 * probe while it is failing. */
static uint32_t
domain_limit(const sender_sched *s, const struct dstate *d)
{
	if (d->failures > 0)
		return 1;
	/* Paced by its rule: more jobs at once would only be postponed. */
	if (d->paced_until_ms > hk_now_ms() && d->paced_jobs < s->conf->max_connections_per_domain)
		return d->paced_jobs;
	return s->conf->max_connections_per_domain;
}

/* dstate_gc - forget D once it says nothing: no job, no failure. */
static void
dstate_gc(sender_sched *s, struct dstate *d)
{
	hk_u64map *m = s->domains;

	if (d->jobs > 0 || d->failures > 0 || d->hold_until_ms > hk_now_ms() ||
	    d->paced_until_ms > hk_now_ms())
		return;
	if (d->lprev)
		d->lprev->lnext = d->lnext;
	else
		s->dlist = d->lnext;
	if (d->lnext)
		d->lnext->lprev = d->lprev;
	struct dstate *head = hk_u64map_get(m, d->hash), **pp = &head;
	while (*pp != d)
		pp = &(*pp)->next;
	*pp = d->next;
	if (head)
		hk_u64map_put(m, d->hash, head);
	else
		hk_u64map_pop(m, d->hash);
	free(d->domain);
	free(d);
}


uint64_t
sender_retry_delay(uint32_t min_ms, uint32_t max_ms, uint32_t attempts, double u)
{
	uint64_t d = min_ms;

	for (uint32_t i = 1; i < attempts && d < max_ms; i++)
		d *= 2;
	if (d > max_ms)
		d = max_ms;
	if (u < 0)
		u = 0;
	if (u >= 1)
		u = 0.999999;
	return (uint64_t)((double)d * (0.9 + 0.2 * u));
}

/* rng_unit - xorshift64*, in [0, 1): jitter needs spread, not secrecy. */
static double
rng_unit(sender_sched *s)
{
	s->rng ^= s->rng >> 12;
	s->rng ^= s->rng << 25;
	s->rng ^= s->rng >> 27;
	return (double)((s->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static void
job_free(struct job *j)
{
	for (size_t i = 0; i < j->n; i++) {
		free(j->r[i].address);
		free(j->r[i].params);
	}
	free(j->r);
	free(j->sr);
	free(j->id);
	free(j->domain);
	free(j->body);
	if (j->meta)
		hk__submission__free_unpacked(j->meta, NULL);
	free(j);
}

static void sched_maybe_done(sender_sched *s);
static void job_settle(struct job *j, int64_t now);
static void job_feedback(struct job *j, const char *reply, const struct sender_class *cl,
    int64_t now);

/*
 * job_domain_result - the job's domain has one job less; and if no MX host
 * took the session (DNS failed, no address answered, every greeting
 * refused), the domain as a whole is backed off (retry_min doubling up to
 * retry_max, with jitter): its other recipients wait instead of each
 * trying a dead destination in turn. A session taken resets that.
 */
static void
job_domain_result(struct job *j, int64_t now)
{
	sender_sched *s = j->s;
	struct dstate *d = dstate_find(s, j->domain, false);

	if (d == NULL)
		return;
	if (d->jobs > 0)
		d->jobs--;
	if (s->stopping || j->n == 0 || j->postponed) {
		/* an aborted or postponed job says nothing about the domain */
	} else if (j->sj.mx_host[0] != '\0') {
		if (d->failures > 0)
			hk_log_info("domain_backoff_end", "{s:s, s:i}", "domain", d->domain,
			    "failures", (int)d->failures);
		d->failures = 0;
		d->backoff_until_ms = 0;
	} else if (j->sr[0].code / 100 == 4 && d->backoff_until_ms <= now) {
		/* Jobs started together fail together: one failure per period. */
		uint64_t delay = sender_retry_delay(s->conf->retry_min_ms, s->conf->retry_max_ms,
		    ++d->failures, rng_unit(s));
		d->backoff_until_ms = now + (int64_t)delay;
		hk_log_info("domain_backoff", "{s:s, s:i, s:I, s:s}", "domain", d->domain,
		    "failures", (int)d->failures, "ms", (json_int_t)delay, "reply", j->sr[0].reply);
	}
	dstate_gc(s, d);
}

/* job_end - classify each recipient's reply (sender_class), report its
 * outcome and free the job. */
static void
job_end(struct job *j)
{
	sender_sched *s = j->s;
	int64_t now = hk_now_ms();
	const char *tenant = j->meta && j->meta->tenant ? j->meta->tenant : "";

	for (size_t i = 0; i < j->n && !j->postponed; i++) {
		struct job_rcpt *r = &j->r[i];
		struct sender_smtp_rcpt *sr = &j->sr[i];
		struct sender_class cl;

		sender_class_reply(sr->code, sr->reply, j->domain, j->sj.mx_host, &cl);
		struct sender_outcome o = {
			.id = j->id, .idx = r->idx, .tenant = tenant, .rcpt = r->address,
			.domain = j->domain, .mx = j->sj.mx_host, .mx_addr = j->sj.mx_addr,
			.source = j->sj.source_addr,
			.tls = j->sj.tls_version, .reply = sr->reply, .status = cl.status,
			.reason = sender_class_reason_name(cl.reason), .throttled = cl.throttled,
			.provider = cl.provider, .attempts = r->attempts + 1, .attempt_ms = now,
		};

		if (cl.kind == SENDER_CLASS_DELIVERED) {
			o.kind = SENDER_OUT_DELIVERED;
		} else if (cl.kind == SENDER_CLASS_BOUNCED) {
			o.kind = SENDER_OUT_BOUNCED;
		} else if (s->stopping) {
			/* Aborted by the shutdown, not a real attempt: the recipient
			 * stays due as it is and is retried after the restart. */
			iset_del(&s->inflight, j->id, r->idx);
			continue;
		} else {
			/* max_lifetime is time in the queue (as Postfix's
			 * maximal_queue_lifetime), not since the first attempt: a
			 * recipient that waited for a free delivery slot, or for
			 * the sender to come back, has used up that time too. */
			int64_t first = r->queued_at_ms ? r->queued_at_ms :
			    r->first_attempt_ms ? r->first_attempt_ms : j->start_ms;
			if (now - first >= (int64_t)s->conf->max_lifetime_ms) {
				o.kind = SENDER_OUT_EXPIRED;
			} else {
				o.kind = SENDER_OUT_DEFERRED;
				o.next_attempt_ms = now + (int64_t)sender_retry_delay(s->conf->retry_min_ms,
				    s->conf->retry_max_ms, o.attempts, rng_unit(s));
			}
		}
		job_feedback(j, sr->reply, &cl, now);
		s->cb(&o, s->arg);
	}
	job_settle(j, now);
	job_domain_result(j, now);
	if (j->prev)
		j->prev->next = j->next;
	else
		s->jobs = j->next;
	if (j->next)
		j->next->prev = j->prev;
	s->n_jobs--;
	job_free(j);
	/* A slot is free: fill it on the next loop turn, not after the commit
	 * of this job's outcomes (its recipients stay in the in-flight set
	 * until then, so none is picked twice); its parked connection is then
	 * taken at once. */
	sender_sched_kick(s);
	sched_maybe_done(s);
}

/* job_fail - every recipient gets CODE and the reply text; the job ends. */
static void __attribute__((format(printf, 3, 4)))
job_fail(struct job *j, int code, const char *fmt, ...)
{
	char text[sizeof(j->sr[0].reply)];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	for (size_t i = 0; i < j->n; i++) {
		j->sr[i].code = code;
		snprintf(j->sr[i].reply, sizeof(j->sr[i].reply), "%s", text);
	}
	job_end(j);
}

/* job_postpone - no source address may carry the job now: every recipient
 * waits until UNTIL without an attempt (WHY says what it waits for). */
static void __attribute__((format(printf, 3, 4)))
job_postpone(struct job *j, int64_t until, const char *fmt, ...)
{
	sender_sched *s = j->s;
	const char *tenant = j->meta && j->meta->tenant ? j->meta->tenant : "";
	char why[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	for (size_t i = 0; i < j->n; i++) {
		struct sender_outcome o = {
			.kind = SENDER_OUT_POSTPONED, .id = j->id, .idx = j->r[i].idx, .tenant = tenant,
			.rcpt = j->r[i].address, .domain = j->domain, .mx = "", .mx_addr = "",
			.source = "", .tls = "", .reply = why, .status = "", .reason = "budget",
			.provider = "", .attempts = j->r[i].attempts, .attempt_ms = hk_now_ms(),
			.next_attempt_ms = until,
		};
		s->cb(&o, s->arg);
	}
	j->postponed = true;    /* reported: job_end has nothing more to say */
	job_end(j);
}

static void
on_smtp(struct sender_smtp_job *sj, void *arg)
{
	struct job *j = arg;

	(void)sj;
	j->smtp = NULL;
	job_end(j);
}

static void on_tick(uv_timer_t *t);

/* sched_wake_at - scan at WHEN if that is before the next tick. */
static void
sched_wake_at(sender_sched *s, int64_t when)
{
	int64_t now = hk_now_ms(), due = (int64_t)uv_timer_get_due_in(&s->timer);

	if (s->stopping || when - now >= due)
		return;
	uv_timer_start(&s->timer, on_tick, when > now ? (uint64_t)(when - now) : 0,
	    SENDER_SCHED_TICK_MS);
}

/*
 * shape_key - the key of the job's shaping state for source address ADDR:
 * the address for a named rule (one provider, all its domains together);
 * for "default", the address and the domain, so that each destination no
 * rule names is shaped (and suspended after throttling) on its own.
 */
static const char *
shape_key(const struct job *j, const char *addr, char out[SENDER_SHAPING_ADDR_MAX])
{
	if (j->rule == NULL || strcmp(j->rule->name, "default") != 0)
		return addr;
	if (snprintf(out, SENDER_SHAPING_ADDR_MAX, "%s/%s", addr, j->domain) >= SENDER_SHAPING_ADDR_MAX)
		snprintf(out, SENDER_SHAPING_ADDR_MAX, "%s/#%016llx", addr,
		    (unsigned long long)dstate_hash(j->domain));
	return out;
}

/* What a source address is refused for, while job_source looks. */
struct src_try {
	sender_sched *s;
	struct job *j;
	const struct hk_pool_addr *refused[32];
	size_t n_refused;
	int64_t now;
};

/* src_budget - the pool's budget hook: not an address refused already in
 * this choice, and one with warm-up budget for the job's recipients. */
static bool
src_budget(const struct hk_pool_addr *a, void *arg, int64_t *retry_at)
{
	struct src_try *t = arg;
	uint32_t allowed = SENDER_WARMUP_NO_CAP;

	for (size_t i = 0; i < t->n_refused; i++)
		if (t->refused[i] == a)
			return false;
	if (t->s->warmup && a->warmup && a->address &&
	    sender_warmup_budget(t->s->warmup, a->address, t->j->rule->name, t->now, &allowed,
	    retry_at) == 0 && allowed < t->j->n)
		return false;
	return true;
}

/*
 * job_source - choose the job's source address now that its MX (MX_HOST,
 * may be NULL) and so its shaping rule are known: the pool's weighted
 * round robin over addresses with warm-up budget, each tried against the
 * rule's limits (connections, rate, suspension) until one is granted. The
 * grant and the warm-up budget are held until the job ends. With none, the
 * job's recipients wait (postponed, no attempt counted) until the earliest
 * time one could, and the domain is held for at most a second so the scan
 * does not pick its next recipients only to postpone them. false: postponed.
 */
static bool
job_source(struct job *j, const char *mx_host)
{
	sender_sched *s = j->s;
	const char *pool = j->meta->pool && *j->meta->pool ? j->meta->pool : "shared";
	struct src_try t = { .s = s, .j = j, .now = hk_now_ms() };
	int64_t retry_at = INT64_MAX, ra;
	const char *why = "no address has budget left";
	bool paced = false;

	j->rule = s->shaping ? sender_shaping_match(s->shaping, j->domain, mx_host) : NULL;
	if (j->rule == NULL) {
		j->src = sender_pools_pick(s->pools, pool, NULL, NULL, &ra, NULL);
	} else {
		for (;;) {
			const struct hk_pool_addr *a = sender_pools_pick(s->pools, pool, src_budget, &t,
			    &ra, NULL);
			if (ra < retry_at)
				retry_at = ra;
			if (a == NULL)
				break;
			char kbuf[SENDER_SHAPING_ADDR_MAX];
			const char *key = shape_key(j, a->address ? a->address : "", kbuf);
			enum sender_shaping_verdict v = sender_shaping_acquire(s->shaping, j->rule, key,
			    t.now, &ra);
			if (v == SENDER_SHAPING_OK) {
				uint32_t taken = j->n;
				j->shaped = true;
				if (s->warmup && a->warmup && a->address &&
				    sender_warmup_take(s->warmup, a->address, j->rule->name, (uint32_t)j->n,
				    t.now, &taken, &ra) != 0)
					taken = 0;
				if (taken == j->n) {
					j->src = a;
					j->wu_taken = a->warmup ? taken : 0;
					j->wu_taken_at = t.now;
					break;
				}
				/* Budget went between the look and the take: give both back. */
				if (taken > 0)
					sender_warmup_untake(s->warmup, a->address, j->rule->name, taken, t.now, t.now);
				sender_shaping_release(s->shaping, j->rule, key);
				j->shaped = false;
				why = "warm-up budget";
			} else {
				why = sender_shaping_verdict_name(v);
				if (v == SENDER_SHAPING_RATE || v == SENDER_SHAPING_CONNECTIONS)
					paced = true;
			}
			if (ra < retry_at)
				retry_at = ra;
			if (t.n_refused == sizeof(t.refused) / sizeof(t.refused[0]))
				break;
			t.refused[t.n_refused++] = a;
		}
	}
	if (j->src != NULL) {
		j->sj.source_address = j->src->address;
		j->sj.helo_name = j->src->hostname;
		if (j->rule) {
			j->sj.tls_required = j->sj.tls_required || j->rule->tls_required;
			j->sj.max_uses = j->rule->max_messages_per_connection;
		}
		return true;
	}
	/* Wait: a connection slot frees within a job's time; a rate or budget
	 * says when. Never longer than retry_max without looking again. */
	int64_t now = hk_now_ms();
	if (retry_at == INT64_MAX || retry_at - now > (int64_t)s->conf->retry_max_ms)
		retry_at = now + (retry_at == INT64_MAX ? 1000 : (int64_t)s->conf->retry_max_ms);
	struct dstate *d = dstate_find(s, j->domain, true);
	d->hold_until_ms = retry_at < now + 1000 ? retry_at : now + 1000;
	if (paced) {
		d->paced_until_ms = now + 10000;
		d->paced_jobs = j->rule && j->rule->max_connections ? j->rule->max_connections : 1;
	}
	/* A paced rule's next slot is often sooner than the next tick. */
	sched_wake_at(s, d->hold_until_ms);
	job_postpone(j, retry_at, "pool %s, rule %s: %s", pool, j->rule ? j->rule->name : "-", why);
	return false;
}

/* job_feedback - the destination's answer for one recipient (classified
 * once, by job_end) feeds the source's shaping and warm-up state. */
static void
job_feedback(struct job *j, const char *reply, const struct sender_class *cl, int64_t now)
{
	sender_sched *s = j->s;
	const char *addr = j->src && j->src->address ? j->src->address : "";
	char kbuf[SENDER_SHAPING_ADDR_MAX];

	if (j->rule == NULL || j->src == NULL || j->sj.mx_host[0] == '\0')
		return;         /* no source chosen, or no server answered */
	sender_shaping_result(s->shaping, j->rule, shape_key(j, addr, kbuf), cl->throttled, reply, now);
	if (j->wu_taken > 0) {
		enum sender_warmup_outcome o = cl->kind == SENDER_CLASS_DELIVERED ?
		    SENDER_WARMUP_DELIVERED : cl->kind == SENDER_CLASS_BOUNCED ? SENDER_WARMUP_BOUNCED :
		    cl->throttled ? SENDER_WARMUP_THROTTLED : SENDER_WARMUP_DEFERRED;
		sender_warmup_count(s->warmup, addr, j->rule->name, o, now);
	}
}

/* job_settle - what the job's source held goes back: the shaping grant,
 * and the warm-up budget if no server answered (nothing was sent). Once
 * per job, at its end. */
static void
job_settle(struct job *j, int64_t now)
{
	sender_sched *s = j->s;
	const char *addr = j->src && j->src->address ? j->src->address : "";
	char kbuf[SENDER_SHAPING_ADDR_MAX];

	if (j->rule == NULL || j->src == NULL)
		return;
	if (j->sj.mx_host[0] == '\0' && j->wu_taken > 0)
		sender_warmup_untake(s->warmup, addr, j->rule->name, j->wu_taken, j->wu_taken_at, now);
	if (j->shaped)
		sender_shaping_release(s->shaping, j->rule, shape_key(j, addr, kbuf));
	j->shaped = false;
	j->wu_taken = 0;
}

static void
on_dns(const struct sender_dns_result *res, void *arg)
{
	struct job *j = arg;
	sender_sched *s = j->s;
	int rc;

	j->dns_pending = false;
	if (s->stopping) {
		job_fail(j, 451, "451 4.3.2 shutting down");
		return;
	}
	switch (res->status) {
	case SENDER_DNS_OK:
		if (!job_source(j, res->n_addrs ? res->addrs[0].host : NULL))
			return;         /* postponed: no source address has budget */
		j->sj.addrs = res->addrs;       /* copied by sender_smtp_deliver */
		j->sj.n_addrs = res->n_addrs;
		rc = sender_smtp_deliver(&j->smtp, s->loop, &j->sj, on_smtp, j);
		j->sj.addrs = NULL;
		if (rc != 0) {
			j->smtp = NULL;
			job_fail(j, 451, "451 4.4.0 cannot start an SMTP session: %s", strerror(-rc));
		}
		return;
	case SENDER_DNS_NULLMX:
		job_fail(j, 550, "550 5.1.10 domain %s accepts no mail (null MX)", j->domain);
		return;
	case SENDER_DNS_NXDOMAIN:
		job_fail(j, 550, "550 5.1.2 domain %s does not exist: %s", j->domain, res->error);
		return;
	case SENDER_DNS_NOHOST:
		job_fail(j, 451, "451 4.4.4 no address for the mail exchangers of %s: %s",
		    j->domain, res->error);
		return;
	case SENDER_DNS_TEMPFAIL:
	default:
		job_fail(j, 451, "451 4.4.3 DNS lookup for %s failed: %s", j->domain, res->error);
		return;
	}
}

/* job_start - load the message, resolve the domain. The job is running
 * (linked) from here on and ends through job_end. */
static void
job_start(sender_sched *s, struct job *j)
{
	const struct hk_sender_conf *c = s->conf;
	int rc;

	j->start_ms = hk_now_ms();
	j->prev = NULL;
	j->next = s->jobs;
	if (s->jobs)
		s->jobs->prev = j;
	s->jobs = j;
	s->n_jobs++;

	rc = sender_queue_msg_load(s->q, j->id, &j->meta, &j->body, &j->body_len);
	if (rc == -ENOENT) {
		job_fail(j, 554, "554 5.3.0 message data missing from the queue");
		return;
	}
	if (rc != 0) {
		job_fail(j, 451, "451 4.3.0 cannot read the message from the queue");
		return;
	}
	/* The source address (and its EHLO name) is chosen after DNS, when the
	 * destination's shaping rule is known (job_source). */
	j->sj = (struct sender_smtp_job){
		.port = c->delivery_port,
		.connect_timeout_ms = c->connect_timeout_ms,
		.command_timeout_ms = c->command_timeout_ms,
		.mail_from = j->meta->envelope && j->meta->envelope->mail_from
		    ? j->meta->envelope->mail_from : "",
		.mail_params = j->meta->envelope ? j->meta->envelope->mail_params : NULL,
		.n_mail_params = j->meta->envelope ? j->meta->envelope->n_mail_params : 0,
		.body = j->body,
		.body_len = j->body_len,
		.rcpts = j->sr,
		.n_rcpts = j->n,
		.pool = s->pool,
		.tls_ctx = s->tls_ctx,
		.tls_required = hk_sender_tls_required(c, j->domain),
	};
	j->dns_pending = true;
	rc = sender_dns_resolve(s->dns, j->domain, on_dns, j);
	if (rc != 0) {
		j->dns_pending = false;
		job_fail(j, 451, "451 4.4.3 cannot start the DNS lookup for %s", j->domain);
	}
}

/* ---- picking ---- */

struct pick {
	sender_sched *s;
	struct job **jobs;      /* new jobs of this scan */
	size_t n, max;
	int64_t now;
};

/* pick_domain - may DOMAIN get a new job now? Not while it is backed off,
 * at its connection limit, or (as a whole) another sender's. */
static int
pick_domain(const char *domain, int64_t next_ms, void *arg)
{
	struct pick *p = arg;
	sender_sched *s = p->s;
	struct dstate *d = dstate_find(s, domain, false);

	(void)next_ms;
	if (p->n == p->max)
		return SENDER_SCAN_STOP;
	if (d && (d->backoff_until_ms > p->now || d->hold_until_ms > p->now ||
	    d->jobs >= domain_limit(s, d)))
		return SENDER_SCAN_NEXT_DOMAIN;
	if (s->filter && !s->filter(domain, NULL, s->filter_arg))
		return SENDER_SCAN_NEXT_DOMAIN;
	return SENDER_SCAN_CONTINUE;
}

static bool
pick_skip(const char *id, uint32_t idx, void *arg)
{
	struct pick *p = arg;
	return iset_has(&p->s->inflight, id, idx);
}

static int
pick_one(const struct sender_qrcpt *r, void *arg)
{
	struct pick *p = arg;
	struct job *j = NULL;

	if (p->s->filter && !p->s->filter(r->domain, r->address, p->s->filter_arg))
		return 0;
	/* Recipients of one message and domain travel together; they were
	 * queued together, so they are next to each other in the schedule. */
	for (size_t i = p->n; i-- > 0; ) {
		struct job *c = p->jobs[i];
		if (c->n < SENDER_SCHED_RCPTS_PER_JOB && strcmp(c->domain, r->domain) == 0 &&
		    strcmp(c->id, r->id) == 0) {
			j = c;
			break;
		}
	}
	if (j == NULL) {
		if (p->n == p->max)
			return SENDER_SCAN_STOP;
		/* A job is a connection: at most max_connections_per_domain. */
		struct dstate *d = dstate_find(p->s, r->domain, true);
		if (d->jobs >= domain_limit(p->s, d))
			return SENDER_SCAN_NEXT_DOMAIN;
		d->jobs++;
		j = xcalloc(1, sizeof(*j));
		j->s = p->s;
		j->id = xstrdup(r->id);
		j->domain = xstrdup(r->domain);
		p->jobs[p->n++] = j;
	}
	if (j->n == j->cap) {
		j->cap = j->cap ? j->cap * 2 : 4;
		j->r = xrealloc(j->r, j->cap * sizeof(*j->r));
		j->sr = xrealloc(j->sr, j->cap * sizeof(*j->sr));
	}
	j->r[j->n] = (struct job_rcpt){
		.idx = r->idx, .attempts = r->attempts, .queued_at_ms = r->queued_at_ms,
		.first_attempt_ms = r->first_attempt_ms,
		.address = xstrdup(r->address),
		.params = r->params_len ? memcpy(xmalloc(r->params_len), r->params, r->params_len) : NULL,
		.params_len = r->params_len,
	};
	j->n++;
	iset_add(&p->s->inflight, r->id, r->idx);
	return 0;
}

static void
sched_scan(sender_sched *s)
{
	struct pick p = { s, NULL, 0, 0, hk_now_ms() };

	if (s->stopping || s->n_jobs >= s->conf->max_deliveries)
		return;
	p.max = s->conf->max_deliveries - s->n_jobs;
	p.jobs = xcalloc(p.max, sizeof(*p.jobs));
	sender_queue_scan_due_domains(s->q, p.now, pick_domain, pick_skip, pick_one, &p);
	/* The addresses were copied while LMDB's memory was valid; now point
	 * the SMTP recipients at the copies. */
	for (size_t i = 0; i < p.n; i++) {
		struct job *j = p.jobs[i];
		for (size_t k = 0; k < j->n; k++)
			j->sr[k] = (struct sender_smtp_rcpt){ .address = j->r[k].address,
			    .params = j->r[k].params, .params_len = j->r[k].params_len };
	}
	for (size_t i = 0; i < p.n; i++)
		job_start(s, p.jobs[i]);
	free(p.jobs);
}

static void
on_tick(uv_timer_t *t)
{
	sender_sched *s = t->data;
	int64_t now = hk_now_ms();

	/* Domains whose holds ran out with no job to end them. */
	if (now - s->swept_ms >= 10000) {
		for (struct dstate *d = s->dlist, *next; d; d = next) {
			next = d->lnext;
			dstate_gc(s, d);
		}
		s->swept_ms = now;
	}
	sched_scan(s);
}

int
sender_sched_new(sender_sched **out, uv_loop_t *loop, sender_queue *q,
    const struct hk_sender_conf *conf, sender_outcome_cb cb, void *arg,
    char *err, size_t errlen)
{
	sender_sched *s = xcalloc(1, sizeof(*s));

	*out = NULL;
	s->loop = loop;
	s->q = q;
	s->conf = conf;
	s->cb = cb;
	s->arg = arg;
	s->rng = (uint64_t)hk_now_ms() ^ ((uint64_t)(uintptr_t)s << 16) ^ 0x9e3779b97f4a7c15ULL;
	if ((s->tls_ctx = hk_tls_client_ctx(conf->tls_ca_file, err, errlen)) == NULL) {
		free(s);
		return -1;
	}
	if (sender_dns_new(&s->dns, loop, conf->dns_servers, conf->connect_timeout_ms,
	    err, errlen) != 0) {
		SSL_CTX_free(s->tls_ctx);
		free(s);
		return -1;
	}
	s->domains = hk_u64map_new();
	s->pools = sender_pools_new(conf);
	s->pool = sender_smtp_pool_new(loop, conf->connection_cache_time_ms,
	    conf->connection_reuse_limit);
	sender_smtp_pool_set_per_key(s->pool, conf->max_deliveries);
	uv_timer_init(loop, &s->timer);
	s->timer.data = s;
	/* At start nothing is in flight: the first scan resumes the queue. */
	uv_timer_start(&s->timer, on_tick, 0, SENDER_SCHED_TICK_MS);
	*out = s;
	return 0;
}

void
sender_sched_kick(sender_sched *s)
{
	if (!s->stopping)
		uv_timer_start(&s->timer, on_tick, 0, SENDER_SCHED_TICK_MS);
}

void
sender_sched_release(sender_sched *s, const char *id, uint32_t idx)
{
	if (!iset_del(&s->inflight, id, idx))
		hk_log_debug("sched_release_unknown", "{s:s, s:i}", "id", id, "idx", (int)idx);
	/* A delivery slot is free again: fill it on the next loop turn rather
	 * than at the next tick (every release of the turn shares one scan). */
	sender_sched_kick(s);
}

void
sender_sched_set_shaping(sender_sched *s, sender_shaping *shaping, sender_warmup *warmup)
{
	s->shaping = shaping;
	s->warmup = warmup;
}

void
sender_sched_set_filter(sender_sched *s, sender_sched_filter_fn fn, void *arg)
{
	s->filter = fn;
	s->filter_arg = arg;
}

void
sender_sched_hold(sender_sched *s, const char *id, uint32_t idx)
{
	iset_add(&s->inflight, id, idx);
}

bool
sender_sched_held(sender_sched *s, const char *id, uint32_t idx)
{
	return iset_has(&s->inflight, id, idx);
}

size_t
sender_sched_jobs(const sender_sched *s)
{
	return s->n_jobs;
}

size_t
sender_sched_inflight(const sender_sched *s)
{
	return s->inflight.n;
}

static void
sched_maybe_done(sender_sched *s)
{
	if (!s->stopping || !s->timer_closed || s->n_jobs > 0 || s->done == NULL)
		return;
	sender_sched_done_cb done = s->done;
	s->done = NULL;
	done(s->done_arg);
}

static void
on_timer_closed(uv_handle_t *h)
{
	sender_sched *s = h->data;
	s->timer_closed = true;
	sched_maybe_done(s);
}

void
sender_sched_stop(sender_sched *s, sender_sched_done_cb done, void *arg)
{
	if (s->stopping)
		return;
	s->stopping = true;
	s->done = done;
	s->done_arg = arg;
	uv_close((uv_handle_t *)&s->timer, on_timer_closed);
	/* Both end their jobs through callbacks that run later. */
	for (struct job *j = s->jobs; j; j = j->next)
		if (j->smtp)
			sender_smtp_abort(j->smtp);
	/* After the aborts, so that no job parks a connection any more; the
	 * pool QUITs the parked ones and frees itself once they are closed. */
	sender_smtp_pool_close(s->pool);
	s->pool = NULL;
	sender_dns_close(s->dns);
	s->dns = NULL;
}

void
sender_sched_free(sender_sched **sp)
{
	sender_sched *s = *sp;

	if (s == NULL)
		return;
	iset_free(&s->inflight);
	/* Every job has ended: what is left are failing domains. */
	while (s->dlist) {
		struct dstate *d = s->dlist;
		s->dlist = d->lnext;
		free(d->domain);
		free(d);
	}
	hk_u64map_destroy(&s->domains);
	sender_pools_free(&s->pools);
	/* Connections still closing hold their own references (SSL_new). */
	SSL_CTX_free(s->tls_ctx);
	free(s);
	*sp = NULL;
}
