/*
 * router_shard - shard numbers of enqueues (router_shard.h).
 */
#include "router_shard.h"

int
router_shard(uint32_t generation, size_t index, uint32_t *out)
{
	if (generation == 0) {
		if (index > UINT32_MAX)
			return -1;
		*out = (uint32_t)index;
		return 0;
	}
	if (generation > ROUTER_SHARD_MAX_GENERATION || index > ROUTER_SHARD_MAX_INDEX)
		return -1;
	*out = generation << 16 | (uint32_t)index;
	return 0;
}
