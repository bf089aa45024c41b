/*
 * sender_pool - source address choice by weighted round robin over the
 * tenant's pool (see sender_pool.h).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hk_log.h"
#include "hk_util.h"
#include "sender_pool.h"

struct pool {
	const struct hk_pool_conf *conf;
	int64_t *cw;                    /* current weight per address */
	bool warned;
};

struct sender_pools {
	struct pool *p;
	size_t n;
	size_t dflt;                    /* "shared", else 0 */
	char **unknown;                 /* names warned about */
	size_t n_unknown;
};

sender_pools *
sender_pools_new(const struct hk_sender_conf *conf)
{
	sender_pools *sp = xcalloc(1, sizeof(*sp));

	sp->n = conf->n_pools;
	sp->p = xcalloc(sp->n ? sp->n : 1, sizeof(*sp->p));
	for (size_t i = 0; i < sp->n; i++) {
		sp->p[i].conf = &conf->pools[i];
		sp->p[i].cw = xcalloc(conf->pools[i].n_addrs ? conf->pools[i].n_addrs : 1, sizeof(int64_t));
		if (strcmp(conf->pools[i].name, "shared") == 0)
			sp->dflt = i;
	}
	return sp;
}

void
sender_pools_free(sender_pools **spp)
{
	sender_pools *sp = *spp;

	if (sp == NULL)
		return;
	for (size_t i = 0; i < sp->n; i++)
		free(sp->p[i].cw);
	for (size_t i = 0; i < sp->n_unknown; i++)
		free(sp->unknown[i]);
	free(sp->unknown);
	free(sp->p);
	free(sp);
	*spp = NULL;
}

static struct pool *
pool_find(sender_pools *sp, const char *name)
{
	for (size_t i = 0; i < sp->n; i++)
		if (strcmp(sp->p[i].conf->name, name) == 0)
			return &sp->p[i];
	return NULL;
}

/* wrr - one smooth weighted round robin step over P's addresses that
 * BUDGET allows (and, with WARM_ONLY, that are not in warm-up). */
static const struct hk_pool_addr *
wrr(struct pool *p, bool warm_only, sender_pool_budget_fn budget, void *arg, int64_t *retry_at)
{
	const struct hk_pool_conf *c = p->conf;
	int64_t total = 0;
	ssize_t best = -1;

	for (size_t i = 0; i < c->n_addrs; i++) {
		const struct hk_pool_addr *a = &c->addrs[i];
		int64_t when = INT64_MAX;
		if (warm_only && a->warmup)
			continue;
		if (budget && !budget(a, arg, &when)) {
			if (when < *retry_at)
				*retry_at = when;
			continue;
		}
		p->cw[i] += a->weight;
		total += a->weight;
		if (best < 0 || p->cw[i] > p->cw[best])
			best = (ssize_t)i;
	}
	if (best < 0)
		return NULL;
	p->cw[best] -= total;
	return &c->addrs[best];
}

const struct hk_pool_addr *
sender_pools_pick(sender_pools *sp, const char *name, sender_pool_budget_fn budget, void *arg,
    int64_t *retry_at, const char **pool_used)
{
	struct pool *p = NULL;
	const struct hk_pool_addr *a;

	*retry_at = INT64_MAX;
	if (sp->n == 0)
		return NULL;
	if (name && *name && (p = pool_find(sp, name)) == NULL) {
		bool seen = false;
		for (size_t i = 0; i < sp->n_unknown && !seen; i++)
			seen = strcmp(sp->unknown[i], name) == 0;
		if (!seen && sp->n_unknown < 64) {
			sp->unknown = xrealloc(sp->unknown, (sp->n_unknown + 1) * sizeof(char *));
			sp->unknown[sp->n_unknown++] = xstrdup(name);
			hk_log_warn("pool_unknown", "{s:s, s:s}", "pool", name, "using",
			    sp->p[sp->dflt].conf->name);
		}
	}
	if (p == NULL)
		p = &sp->p[sp->dflt];
	if ((a = wrr(p, false, budget, arg, retry_at)) != NULL) {
		if (pool_used)
			*pool_used = p->conf->name;
		return a;
	}
	if (p->conf->spill_to && (p = pool_find(sp, p->conf->spill_to)) != NULL &&
	    (a = wrr(p, true, budget, arg, retry_at)) != NULL) {
		if (pool_used)
			*pool_used = p->conf->name;
		return a;
	}
	return NULL;
}
