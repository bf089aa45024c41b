/*
 * sender_pool - choosing the source address of a delivery from the IP pool
 * of the message's tenant.
 *
 * Each pool (pools: of the sender, docs/CONFIG.md) is a list of addresses
 * with an EHLO name and a weight. A pick is a smooth weighted round robin
 * (as nginx's upstreams: each eligible address gains its weight, the
 * richest is taken and pays the sum back) over the pool's addresses that
 * BUDGET allows; when none does, over the warm (not warm-up) addresses of
 * the pool it spills to, if any; otherwise nothing, with the earliest time
 * a budget said it could (the mail waits, never bounces). A message whose
 * pool this sender does not have goes out of "shared" (or the first pool),
 * with a warning per unknown name.
 */
#ifndef SENDER_POOL_H
#define SENDER_POOL_H

#include <stdbool.h>
#include <stdint.h>
#include "hk_config.h"

typedef struct sender_pools sender_pools;

/* BUDGET: may A carry one more delivery now? If not, *retry_at (ms) says
 * when it might. NULL: every address always may. */
typedef bool (*sender_pool_budget_fn)(const struct hk_pool_addr *a, void *arg, int64_t *retry_at);

sender_pools *sender_pools_new(const struct hk_sender_conf *conf);
void sender_pools_free(sender_pools **sp);

/* sender_pools_pick - the source address for a message of pool NAME (NULL
 * or "": "shared"). NULL when no address has budget: *retry_at is then the
 * earliest time one might (INT64_MAX if unknown). *pool_used (may be NULL)
 * names the pool the address came from. */
const struct hk_pool_addr *sender_pools_pick(sender_pools *sp, const char *name,
    sender_pool_budget_fn budget, void *arg, int64_t *retry_at, const char **pool_used);

#endif
