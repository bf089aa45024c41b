/*
 * hk_rate - keyed token buckets (hk_rate) and live counts (hk_count).
 *
 * A bucket is kept in GCRA form: instead of a token count, each key keeps
 * how far ahead of its last take ("at") its bucket's refill runs ("ahead"):
 * taking n tokens adds n * interval, time pays it back, and a take is
 * refused if it would leave the key more than burst * interval ahead. A key
 * that is no longer ahead has a full bucket: it is idle, and forgetting it
 * changes nothing, which is why only idle keys are evicted. Times stay small
 * differences, so doubles hold them exactly enough even at epoch magnitudes.
 *
 * Both tables are open addressing (linear probing, backward-shift deletion)
 * over entry pointers, hashed with SipHash-2-4 under a random key: client
 * addresses are chosen by clients (an IPv6 client picks its own low 64 bits),
 * and a fixed hash could be flooded into long probe runs.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hk_rate.h"
#include "hk_util.h"

/* How many of the least recently used keys are looked at for an idle one
 * before a new key is refused: bounds the cost of one call. */
#define EVICT_SCAN 16

struct entry {
	struct entry *older, *newer; /* hk_rate's recency list */
	uint64_t hash;
	union {
		struct {
			uint64_t at_ms;  /* last take (never moves back) */
			double ahead_ms; /* refill still owed at at_ms, 0..tau */
		} b;
		long count;
	} v;
	char key[];
};

struct table {
	struct entry **slots;
	size_t cap, count; /* cap a power of two, load at most 1/2 */
	uint64_t k0, k1;   /* SipHash key */
};

/* --- SipHash-2-4 (Aumasson and Bernstein) ------------------------------- */

static uint64_t
rotl(uint64_t x, int b)
{
	return (x << b) | (x >> (64 - b));
}

static void
sipround(uint64_t v[4])
{
	v[0] += v[1]; v[1] = rotl(v[1], 13); v[1] ^= v[0]; v[0] = rotl(v[0], 32);
	v[2] += v[3]; v[3] = rotl(v[3], 16); v[3] ^= v[2];
	v[0] += v[3]; v[3] = rotl(v[3], 21); v[3] ^= v[0];
	v[2] += v[1]; v[1] = rotl(v[1], 17); v[1] ^= v[2]; v[2] = rotl(v[2], 32);
}

static uint64_t
siphash24(uint64_t k0, uint64_t k1, const unsigned char *p, size_t len)
{
	uint64_t v[4] = { k0 ^ 0x736f6d6570736575ULL, k1 ^ 0x646f72616e646f6dULL,
			  k0 ^ 0x6c7967656e657261ULL, k1 ^ 0x7465646279746573ULL };
	uint64_t m, last = (uint64_t)len << 56;

	for (; len >= 8; len -= 8, p += 8) {
		m = 0;
		for (int i = 0; i < 8; i++)
			m |= (uint64_t)p[i] << (8 * i);
		v[3] ^= m;
		sipround(v);
		sipround(v);
		v[0] ^= m;
	}
	for (size_t i = 0; i < len; i++)
		last |= (uint64_t)p[i] << (8 * i);
	v[3] ^= last;
	sipround(v);
	sipround(v);
	v[0] ^= last;
	v[2] ^= 0xff;
	for (int i = 0; i < 4; i++)
		sipround(v);
	return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/* --- the string-keyed table ---------------------------------------------- */

static int
table_init(struct table *t)
{
	uint64_t k[2];

	if (hk_random(k, sizeof(k)) != 0)
		return -1;
	t->k0 = k[0];
	t->k1 = k[1];
	t->cap = 16;
	t->count = 0;
	t->slots = xcalloc(t->cap, sizeof(*t->slots));
	return 0;
}

static void
table_fini(struct table *t)
{
	for (size_t i = 0; i < t->cap; i++)
		free(t->slots[i]);
	free(t->slots);
}

static uint64_t
table_hash(const struct table *t, const char *key)
{
	return siphash24(t->k0, t->k1, (const unsigned char *)key, strlen(key));
}

static struct entry *
table_find(const struct table *t, const char *key, uint64_t h)
{
	size_t mask = t->cap - 1;

	for (size_t i = h & mask; t->slots[i] != NULL; i = (i + 1) & mask)
		if (t->slots[i]->hash == h && strcmp(t->slots[i]->key, key) == 0)
			return t->slots[i];
	return NULL;
}

static void
place(struct entry **slots, size_t cap, struct entry *e)
{
	size_t i = e->hash & (cap - 1);

	while (slots[i] != NULL)
		i = (i + 1) & (cap - 1);
	slots[i] = e;
}

/* table_add - a new entry for KEY (absent), with its value zeroed. */
static struct entry *
table_add(struct table *t, const char *key, uint64_t h)
{
	size_t len = strlen(key);
	struct entry *e = xcalloc(1, sizeof(*e) + len + 1);

	memcpy(e->key, key, len + 1);
	e->hash = h;
	if ((t->count + 1) * 2 > t->cap) {
		size_t cap = t->cap * 2;
		struct entry **slots = xcalloc(cap, sizeof(*slots));
		for (size_t i = 0; i < t->cap; i++)
			if (t->slots[i] != NULL)
				place(slots, cap, t->slots[i]);
		free(t->slots);
		t->slots = slots;
		t->cap = cap;
	}
	place(t->slots, t->cap, e);
	t->count++;
	return e;
}

/* table_del - unlink E and free it. */
static void
table_del(struct table *t, struct entry *e)
{
	size_t mask = t->cap - 1, i = e->hash & mask;

	while (t->slots[i] != e)
		i = (i + 1) & mask;
	/* Shift later members of the probe run back into the hole. */
	for (size_t j = (i + 1) & mask; t->slots[j] != NULL; j = (j + 1) & mask) {
		size_t home = t->slots[j]->hash & mask;
		/* Move j to i if its home is not within (i, j] cyclically. */
		if (((j - home) & mask) >= ((j - i) & mask)) {
			t->slots[i] = t->slots[j];
			i = j;
		}
	}
	t->slots[i] = NULL;
	t->count--;
	free(e);
}

/* --- hk_rate ------------------------------------------------------------- */

struct hk_rate {
	struct table t;
	double interval_ms; /* what one token costs: per_ms / rate */
	double tau_ms;      /* how far ahead a key may run: burst * interval */
	double slack_ms;    /* rounding allowance, far below a millisecond */
	size_t max_keys;
	struct entry *newest, *oldest;
};

hk_rate *
hk_rate_new(double rate, uint64_t per_ms, double burst, size_t max_keys)
{
	if (burst == 0)
		burst = rate;
	if (!(rate > 0) || !isfinite(rate) || !(burst > 0) || !isfinite(burst) ||
	    per_ms == 0 || max_keys == 0) {
		errno = EINVAL;
		return NULL;
	}
	/* A rate so small that a token never comes back is no rate either. */
	double interval = (double)per_ms / rate;
	if (!isfinite(interval * burst)) {
		errno = EINVAL;
		return NULL;
	}
	hk_rate *r = xcalloc(1, sizeof(*r));
	if (table_init(&r->t) != 0) {
		free(r);
		return NULL;
	}
	r->interval_ms = interval;
	r->tau_ms = burst * interval;
	r->slack_ms = r->tau_ms * 1e-9;
	r->max_keys = max_keys;
	return r;
}

void
hk_rate_free(hk_rate *r)
{
	if (r == NULL)
		return;
	table_fini(&r->t);
	free(r);
}

size_t
hk_rate_keys(const hk_rate *r)
{
	return r->t.count;
}

static void
lru_unlink(hk_rate *r, struct entry *e)
{
	*(e->older ? &e->older->newer : &r->oldest) = e->newer;
	*(e->newer ? &e->newer->older : &r->newest) = e->older;
	e->older = e->newer = NULL;
}

static void
lru_push(hk_rate *r, struct entry *e)
{
	e->older = r->newest;
	*(r->newest ? &r->newest->newer : &r->oldest) = e;
	r->newest = e;
}

/* ahead_at - what E still owes at NOW_MS (0 = full bucket, idle). */
static double
ahead_at(const struct entry *e, uint64_t now_ms)
{
	if (now_ms <= e->v.b.at_ms)
		return e->v.b.ahead_ms;
	double owed = e->v.b.ahead_ms - (double)(now_ms - e->v.b.at_ms);
	return owed > 0 ? owed : 0;
}

/* ceil_ms - W (> 0) rounded up, so that a take after that long succeeds. */
static uint64_t
ceil_ms(double w)
{
	return w < 0x1p64 ? (uint64_t)ceil(w) : UINT64_MAX; /* the cast of more is undefined */
}

/* never_fits - N that no bucket can ever give: negative, NaN or above the burst. */
static bool
never_fits(const hk_rate *r, double n)
{
	return !(n >= 0) || n * r->interval_ms > r->tau_ms + r->slack_ms;
}

/* wait_ms - how long until a key owing AHEAD may take N (which fits a bucket). */
static uint64_t
wait_ms(const hk_rate *r, double ahead, double n)
{
	double w = ahead + n * r->interval_ms - r->tau_ms;
	return w <= r->slack_ms ? 0 : ceil_ms(w);
}

/* find_victim - an idle key among the EVICT_SCAN least recently used, or
 * NULL with *WAIT set to when the first of them will be idle. */
static struct entry *
find_victim(const hk_rate *r, uint64_t now_ms, uint64_t *wait)
{
	struct entry *e = r->oldest;
	double soonest = INFINITY;

	for (int i = 0; i < EVICT_SCAN && e != NULL; i++, e = e->newer) {
		double owed = ahead_at(e, now_ms);
		if (owed <= r->slack_ms)
			return e;
		if (owed < soonest)
			soonest = owed;
	}
	*wait = ceil_ms(soonest);
	return NULL;
}

bool
hk_rate_take(hk_rate *r, const char *key, double n, uint64_t now_ms)
{
	uint64_t h = table_hash(&r->t, key), wait;
	struct entry *e = table_find(&r->t, key, h), *victim;
	double ahead = e != NULL ? ahead_at(e, now_ms) : 0;

	if (never_fits(r, n) || wait_ms(r, ahead, n) > 0) {
		if (e != NULL) {
			lru_unlink(r, e);
			lru_push(r, e);
		}
		return false;
	}
	if (e == NULL) {
		if (n == 0)
			return true; /* a full bucket: nothing to remember */
		if (r->t.count >= r->max_keys) {
			if ((victim = find_victim(r, now_ms, &wait)) == NULL)
				return false;
			lru_unlink(r, victim);
			table_del(&r->t, victim);
		}
		e = table_add(&r->t, key, h);
	} else {
		lru_unlink(r, e);
	}
	lru_push(r, e);
	if (now_ms > e->v.b.at_ms)
		e->v.b.at_ms = now_ms;
	e->v.b.ahead_ms = ahead + n * r->interval_ms;
	return true;
}

uint64_t
hk_rate_retry_ms(hk_rate *r, const char *key, double n, uint64_t now_ms)
{
	uint64_t wait;

	if (never_fits(r, n))
		return UINT64_MAX;
	struct entry *e = table_find(&r->t, key, table_hash(&r->t, key));
	if (e != NULL)
		return wait_ms(r, ahead_at(e, now_ms), n);
	if (n == 0 || r->t.count < r->max_keys || find_victim(r, now_ms, &wait) != NULL)
		return 0;
	return wait; /* full of busy keys: until one of them is idle */
}

/* --- hk_count ------------------------------------------------------------ */

struct hk_count {
	struct table t;
};

hk_count *
hk_count_new(void)
{
	hk_count *c = xcalloc(1, sizeof(*c));

	if (table_init(&c->t) != 0) {
		free(c);
		return NULL;
	}
	return c;
}

void
hk_count_free(hk_count *c)
{
	if (c == NULL)
		return;
	table_fini(&c->t);
	free(c);
}

long
hk_count_add(hk_count *c, const char *key, long delta)
{
	uint64_t h = table_hash(&c->t, key);
	struct entry *e = table_find(&c->t, key, h);

	if (delta == 0)
		return e != NULL ? e->v.count : 0;
	if (e == NULL)
		e = table_add(&c->t, key, h);
	long n = e->v.count += delta;
	if (n == 0)
		table_del(&c->t, e);
	return n;
}

long
hk_count_get(const hk_count *c, const char *key)
{
	struct entry *e = table_find(&c->t, key, table_hash(&c->t, key));

	return e != NULL ? e->v.count : 0;
}

size_t
hk_count_keys(const hk_count *c)
{
	return c->t.count;
}
