/*
 * hk_prom - the Prometheus text exposition format (version 0.0.4), built
 * into a string.
 *
 * Every sample gets the `node` label first, then at most one more label:
 *
 *     hk_prom *p = hk_prom_new("router-1");
 *     hk_prom_family(p, "hikyaku_router_submissions_total", "counter", "Submissions received.");
 *     hk_prom_u64(p, "hikyaku_router_submissions_total", NULL, NULL, 42);
 *     char *text = hk_prom_finish(&p, &len);   // caller frees text
 *
 * Label values are escaped (\\, \" and \n); names are the caller's
 * constants and are not checked. Pure code: no locks, no I/O.
 */
#ifndef HK_PROM_H
#define HK_PROM_H

#include <stddef.h>
#include <stdint.h>

typedef struct hk_prom hk_prom;

/* A histogram with fixed upper bounds (in the unit of the sum), filled by
 * one thread and read by another: every field is atomic. */
#define HK_HIST_BUCKETS 12
struct hk_hist {
	_Atomic uint64_t buckets[HK_HIST_BUCKETS]; /* not cumulative: count of le[i-1] < v <= le[i] */
	_Atomic uint64_t over;                     /* v > the last bound */
	_Atomic uint64_t count;
	_Atomic uint64_t sum_us;                   /* sum in microseconds */
};

/* The bounds of every hk_hist, in seconds. */
extern const double hk_hist_le[HK_HIST_BUCKETS];

/* hk_hist_observe - count one observation of US microseconds (any thread). */
void hk_hist_observe(struct hk_hist *h, uint64_t us);

/* hk_prom_new - an empty exposition whose samples carry node="NODE". */
hk_prom *hk_prom_new(const char *node);

/* hk_prom_family - the # HELP and # TYPE lines (TYPE: counter, gauge, histogram). */
void hk_prom_family(hk_prom *p, const char *name, const char *type, const char *help);

/* hk_prom_u64, hk_prom_double - one sample; LABEL and VALUE may be NULL
 * (then only the node label). */
void hk_prom_u64(hk_prom *p, const char *name, const char *label, const char *value, uint64_t v);
/* hk_prom_one - a family with one unlabelled sample: the common case. */
void hk_prom_one(hk_prom *p, const char *name, const char *type, const char *help, uint64_t v);
void hk_prom_double(hk_prom *p, const char *name, const char *label, const char *value, double v);

/* hk_prom_hist - the _bucket, _sum (seconds) and _count samples of H. */
void hk_prom_hist(hk_prom *p, const char *name, const char *label, const char *value,
    const struct hk_hist *h);

/* hk_prom_finish - the text (caller frees) and its length; frees P and NULLs it. */
char *hk_prom_finish(hk_prom **p, size_t *len);

#endif
