/*
 * hk_logrl - rate limit for log lines about junk from the network.
 *
 * A peer that sends garbage, or a heartbeat storm, must not turn into a log
 * storm. Each kind of junk line owns one struct hk_logrl (zeroed to start):
 * at most PER_SEC lines are written per second, and the first line of a new
 * second reports how many were suppressed before it. Time is passed in (any
 * millisecond clock), so tests need no sleeps. Not thread-safe: one per loop.
 */
#ifndef HK_LOGRL_H
#define HK_LOGRL_H

#include <stdbool.h>
#include <stdint.h>

struct hk_logrl {
	int64_t window_ms;      /* start of the current one-second window */
	uint32_t n;             /* lines allowed in it */
	uint64_t suppressed;    /* lines refused since the last allowed one */
};

/*
 * hk_logrl_allow - may one more line be written at NOW_MS? On true,
 * *suppressed is the number of lines refused since the previous allowed one
 * (0 mostly): put it in the line so nothing is silently lost.
 */
bool hk_logrl_allow(struct hk_logrl *rl, int64_t now_ms, uint32_t per_sec, uint64_t *suppressed);

/*
 * hk_logrl_flush - lines refused and not yet reported, once their window is
 * over: true with *suppressed > 0 when a summary line is due (call it from a
 * timer, so the end of a storm is reported even if no junk follows).
 */
bool hk_logrl_flush(struct hk_logrl *rl, int64_t now_ms, uint64_t *suppressed);

#endif
