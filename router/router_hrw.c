/*
 * router_hrw - weighted rendezvous hashing (see router_hrw.h for the contract).
 */
#include <math.h>
#include <string.h>

#include "router_hrw.h"

static uint64_t
fnv1a64(uint64_t h, const void *data, size_t len)
{
	const unsigned char *p = data;
	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static uint64_t
splitmix64(uint64_t x)
{
	uint64_t z = x + 0x9E3779B97F4A7C15ULL;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

uint64_t
router_hrw_hash(const char *node, const char *domain)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	h = fnv1a64(h, node, strlen(node) + 1); /* the NUL separates the two */
	h = fnv1a64(h, domain, strlen(domain));
	return splitmix64(h);
}

double
router_hrw_score(const char *node, uint32_t weight, const char *domain)
{
	double u = ((double)(router_hrw_hash(node, domain) >> 11) + 0.5) / 9007199254740992.0;
	return (double)weight / -log(u);
}

int
router_hrw_owner(const struct router_hrw_member *m, size_t n, const char *domain)
{
	int best = -1;
	double best_score = 0;

	for (size_t i = 0; i < n; i++) {
		double s = router_hrw_score(m[i].name, m[i].weight, domain);
		if (best < 0 || s > best_score ||
		    (s == best_score && strcmp(m[i].name, m[best].name) < 0)) {
			best = (int)i;
			best_score = s;
		}
	}
	return best;
}

/* Does (score a, name na) rank before (b, nb)? Higher score, then smaller name. */
static int
ranks_before(double a, const char *na, double b, const char *nb)
{
	return a > b || (a == b && strcmp(na, nb) < 0);
}

size_t
router_hrw_top(const struct router_hrw_member *m, size_t n, const char *domain, size_t k, int out_idx[])
{
	double top_score[k < n ? (k ? k : 1) : (n ? n : 1)];
	size_t got = 0;

	if (k > n)
		k = n;
	/* Insertion into a sorted list of at most k: n and k are small. */
	for (size_t i = 0; i < n; i++) {
		double s = router_hrw_score(m[i].name, m[i].weight, domain);
		size_t pos = got;
		while (pos > 0 && ranks_before(s, m[i].name, top_score[pos - 1], m[out_idx[pos - 1]].name))
			pos--;
		if (pos >= k)
			continue;
		size_t last = got < k ? got : k - 1;
		for (size_t j = last; j > pos; j--) {
			out_idx[j] = out_idx[j - 1];
			top_score[j] = top_score[j - 1];
		}
		out_idx[pos] = (int)i;
		top_score[pos] = s;
		if (got < k)
			got++;
	}
	return got;
}

int
router_hrw_rcpt_owner(const struct router_hrw_member *m, const int top_idx[], size_t k, const char *rcpt)
{
	int best = -1;
	double best_score = 0;

	for (size_t i = 0; i < k; i++) {
		const struct router_hrw_member *c = &m[top_idx[i]];
		double s = router_hrw_score(c->name, c->weight, rcpt);
		if (best < 0 || ranks_before(s, c->name, best_score, m[best].name)) {
			best = top_idx[i];
			best_score = s;
		}
	}
	return best;
}

int
router_hrw_pick(const struct router_hrw_member *m, size_t n, size_t k, const char *domain,
    const char *rcpt)
{
	if (k <= 1 || n <= 1)
		return router_hrw_owner(m, n, domain);
	if (k > n)
		k = n;
	int top[k];
	k = router_hrw_top(m, n, domain, k, top);
	return router_hrw_rcpt_owner(m, top, k, rcpt);
}
