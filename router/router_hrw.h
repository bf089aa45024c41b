/*
 * router_hrw - weighted rendezvous (highest-random-weight) hashing of
 * destination domains over senders.
 *
 * score(s, d) = weight(s) / -ln(u), u = uniform(0,1) from
 * splitmix64(fnv1a64(s.name "\0" d)) (the top 53 bits, centred). The owner of
 * d is the sender with the highest score; ties go to the smaller name. This
 * definition is a contract: every router must compute the same owner from the
 * same membership (tests recompute it independently).
 *
 * A hot domain (hot_domains: in the config) is spread over its top k senders
 * in the same order (router_hrw_top); each recipient then goes to one of them
 * by a second rendezvous, keyed by the recipient address over those k
 * (router_hrw_rcpt_owner). So a recipient keeps its owner while membership is
 * unchanged, a sender outside a domain's top k never changes its owners, and
 * when one of the k goes only its own recipients move.
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

/*
 * router_hrw_top - the indices of DOMAIN's top min(k, n) members by score,
 * best first, ties to the smaller name, into out_idx (room for min(k, n)).
 * Returns how many were written. out_idx[0] is router_hrw_owner()'s answer.
 */
size_t router_hrw_top(const struct router_hrw_member *members, size_t n, const char *domain,
    size_t k, int out_idx[]);

/*
 * router_hrw_rcpt_owner - which of the k members in top_idx (from
 * router_hrw_top) owns recipient RCPT: the highest weighted score of RCPT's
 * address among them. -1 if k == 0.
 */
int router_hrw_rcpt_owner(const struct router_hrw_member *members, const int top_idx[], size_t k,
    const char *rcpt);

/*
 * router_hrw_pick - the index of the member that owns recipient RCPT of
 * DOMAIN when the domain is spread over its top K members (K <= 1: the
 * domain's owner; K is capped at n). -1 if n == 0. This is the one ownership
 * rule: routers split by it and senders decide by it what to hand on.
 */
int router_hrw_pick(const struct router_hrw_member *members, size_t n, size_t k,
    const char *domain, const char *rcpt);

#endif
