/*
 * hk_prom - Prometheus text format (see hk_prom.h).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hk_prom.h"
#include "hk_util.h"

struct hk_prom {
	char *buf;
	size_t len, cap;
	char *node;             /* escaped */
};

const double hk_hist_le[HK_HIST_BUCKETS] = {
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
};

void
hk_hist_observe(struct hk_hist *h, uint64_t us)
{
	size_t i;

	for (i = 0; i < HK_HIST_BUCKETS; i++)
		if ((double)us <= hk_hist_le[i] * 1e6)
			break;
	if (i < HK_HIST_BUCKETS)
		h->buckets[i]++;
	else
		h->over++;
	h->sum_us += us;
	h->count++;
}

static void
put(hk_prom *p, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(p->buf + p->len, p->cap - p->len, fmt, ap);
		va_end(ap);
		if (n >= 0 && (size_t)n < p->cap - p->len)
			break;
		p->cap = p->cap * 2 + (n > 0 ? (size_t)n : 0);
		p->buf = xrealloc(p->buf, p->cap);
	}
	p->len += (size_t)n;
}

/* A label value with \, " and newline escaped. Caller frees. */
static char *
escape(const char *s)
{
	char *out = xmalloc(strlen(s) * 2 + 1), *o = out;

	for (; *s; s++) {
		if (*s == '\\' || *s == '"') {
			*o++ = '\\';
			*o++ = *s;
		} else if (*s == '\n') {
			*o++ = '\\';
			*o++ = 'n';
		} else {
			*o++ = *s;
		}
	}
	*o = '\0';
	return out;
}

hk_prom *
hk_prom_new(const char *node)
{
	hk_prom *p = xcalloc(1, sizeof(*p));

	p->cap = 4096;
	p->buf = xmalloc(p->cap);
	p->buf[0] = '\0';
	p->node = escape(node);
	return p;
}

void
hk_prom_family(hk_prom *p, const char *name, const char *type, const char *help)
{
	/* HELP text escapes only \ and newline; ours are constants without either. */
	put(p, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
labels(hk_prom *p, const char *label, const char *value, const char *le)
{
	put(p, "{node=\"%s\"", p->node);
	if (label && value) {
		char *v = escape(value);
		put(p, ",%s=\"%s\"", label, v);
		free(v);
	}
	if (le)
		put(p, ",le=\"%s\"", le);
	put(p, "}");
}

void
hk_prom_u64(hk_prom *p, const char *name, const char *label, const char *value, uint64_t v)
{
	put(p, "%s", name);
	labels(p, label, value, NULL);
	put(p, " %llu\n", (unsigned long long)v);
}

void
hk_prom_double(hk_prom *p, const char *name, const char *label, const char *value, double v)
{
	put(p, "%s", name);
	labels(p, label, value, NULL);
	if (isnan(v))
		put(p, " NaN\n");
	else if (isinf(v))
		put(p, " %s\n", v > 0 ? "+Inf" : "-Inf");
	else
		put(p, " %.17g\n", v);
}

void
hk_prom_hist(hk_prom *p, const char *name, const char *label, const char *value,
    const struct hk_hist *h)
{
	uint64_t cum = 0, count = h->count, sum_us = h->sum_us;
	char le[32];

	/* Read apart from the writer: keep the buckets cumulative and within count. */
	for (size_t i = 0; i < HK_HIST_BUCKETS; i++) {
		cum += h->buckets[i];
		if (cum > count)
			count = cum;
		snprintf(le, sizeof(le), "%g", hk_hist_le[i]);
		put(p, "%s_bucket", name);
		labels(p, label, value, le);
		put(p, " %llu\n", (unsigned long long)cum);
	}
	cum += h->over;
	if (cum > count)
		count = cum;
	put(p, "%s_bucket", name);
	labels(p, label, value, "+Inf");
	put(p, " %llu\n", (unsigned long long)count);
	put(p, "%s_sum", name);
	labels(p, label, value, NULL);
	put(p, " %.6f\n", (double)sum_us / 1e6);
	put(p, "%s_count", name);
	labels(p, label, value, NULL);
	put(p, " %llu\n", (unsigned long long)count);
}

char *
hk_prom_finish(hk_prom **pp, size_t *len)
{
	hk_prom *p = *pp;
	char *out = p->buf;

	if (len)
		*len = p->len;
	free(p->node);
	free(p);
	*pp = NULL;
	return out;
}

void
hk_prom_one(hk_prom *p, const char *name, const char *type, const char *help, uint64_t v)
{
	hk_prom_family(p, name, type, help);
	hk_prom_u64(p, name, NULL, NULL, v);
}
