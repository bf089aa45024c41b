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
