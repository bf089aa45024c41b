/*
 * hk_logrl - at most N log lines per second per kind, counting the rest.
 */
#include "hk_logrl.h"

bool
hk_logrl_allow(struct hk_logrl *rl, int64_t now_ms, uint32_t per_sec, uint64_t *suppressed)
{
	if (now_ms - rl->window_ms >= 1000 || now_ms < rl->window_ms) {
		rl->window_ms = now_ms;
		rl->n = 0;
	}
	if (rl->n >= per_sec) {
		rl->suppressed++;
		return false;
	}
	rl->n++;
	*suppressed = rl->suppressed;
	rl->suppressed = 0;
	return true;
}

bool
hk_logrl_flush(struct hk_logrl *rl, int64_t now_ms, uint64_t *suppressed)
{
	if (rl->suppressed == 0 || (now_ms - rl->window_ms < 1000 && now_ms >= rl->window_ms))
		return false;
	*suppressed = rl->suppressed;
	rl->suppressed = 0;
	rl->window_ms = now_ms;
	rl->n = 1; /* the summary line counts */
	return true;
}
