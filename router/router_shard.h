/*
 * router_shard - the shard number of one enqueue: (message id, shard) is the
 * sender's dedup key, so two different recipient sets of one message must
 * never share a shard at the same sender.
 *
 * shard = generation << 16 | index, where index is the position of the
 * part's first recipient in the submission and generation counts the
 * router's splits of that submission: 0 for the first split, +1 for each
 * resend after a failed part (router.c, failover). Generation 0 is the
 * historical numbering (shard = index) and allows any index; a later
 * generation needs index < 65536 and generation < 65536. Within a
 * generation the parts are disjoint and each is named by its first
 * recipient, so the numbers differ; across generations the high bits differ.
 */
#ifndef ROUTER_SHARD_H
#define ROUTER_SHARD_H

#include <stddef.h>
#include <stdint.h>

#define ROUTER_SHARD_MAX_GENERATION 0xffffu
#define ROUTER_SHARD_MAX_INDEX 0xffffu

/* router_shard - 0 and *out, or -1 if (generation, index) has no number. */
int router_shard(uint32_t generation, size_t index, uint32_t *out);

#endif
