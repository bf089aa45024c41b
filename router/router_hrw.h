/*
 * router_hrw - weighted rendezvous (highest-random-weight) hashing of
 * destination domains over senders.
 *
 * score(s, d) = weight(s) / -ln(u), u = uniform(0,1) from
 * splitmix64(fnv1a64(s.name "\0" d)) (the top 53 bits, centred). The owner of
 * d is the sender with the highest score; ties go to the smaller name. This
 * definition is a contract: every router must compute the same owner from the
 * same membership (tests recompute it independently).
 */
#ifndef ROUTER_HRW_H
#define ROUTER_HRW_H

#include <stddef.h>
#include <stdint.h>

struct router_hrw_member {
	const char *name;
	uint32_t weight;        /* > 0 */
};

uint64_t router_hrw_hash(const char *node, const char *domain);
double router_hrw_score(const char *node, uint32_t weight, const char *domain);

/* router_hrw_owner - index of DOMAIN's owner among members, or -1 if n == 0. */
int router_hrw_owner(const struct router_hrw_member *members, size_t n, const char *domain);

#endif
