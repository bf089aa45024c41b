/*
 * hk_rate - keyed rate limits and live counts for the ingress: messages per
 * tenant, AUTH failures and connections per client IP. Time is passed in by
 * the caller (now_ms, any monotonic millisecond clock such as uv_now), so the
 * module never reads a clock and tests need no sleeps. Keys are copied.
 * Neither type is thread-safe: each belongs to one loop. Every call is O(1).
 */
#ifndef HK_RATE_H
#define HK_RATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct hk_rate hk_rate;

/* hk_rate_new - token buckets keyed by a string: each key may take RATE events per PER_MS
 * with bursts up to BURST (burst 0 = rate). At most MAX_KEYS keys are tracked; when full,
 * the least recently used idle (full-bucket) key is evicted — never a key that is limited.
 * If no idle key is found among the least recently used, a new key is refused (take
 * returns false): the limiter fails closed rather than forget a limit or grow.
 * NULL with errno EINVAL for a rate, period or max_keys of 0 (or a negative or non-finite
 * rate or burst), or with getrandom's errno. Caller frees with hk_rate_free(). */
hk_rate *hk_rate_new(double rate, uint64_t per_ms, double burst, size_t max_keys);
void hk_rate_free(hk_rate *r); /* NULL is fine */

/* hk_rate_take - take N tokens for KEY at NOW_MS: true if allowed (tokens taken), false if over the limit
 * (nothing taken). N above the burst, negative or NaN is never allowed; N = 0 always is.
 * A NOW_MS earlier than the key's last take counts as that time (no refill, no harm). */
bool hk_rate_take(hk_rate *r, const char *key, double n, uint64_t now_ms);

/* hk_rate_retry_ms - how long until N tokens are available for KEY (0 if now); UINT64_MAX
 * if never (N above the burst). Changes nothing: no key is created or refreshed. */
uint64_t hk_rate_retry_ms(hk_rate *r, const char *key, double n, uint64_t now_ms);

/* hk_rate_keys - how many keys are tracked now (at most max_keys). */
size_t hk_rate_keys(const hk_rate *r);

typedef struct hk_count hk_count;   /* live counts per key, e.g. open connections per client IP */

/* hk_count_new - an empty table; NULL with getrandom's errno. Caller frees with hk_count_free(). */
hk_count *hk_count_new(void);
void hk_count_free(hk_count *c); /* NULL is fine */

/* hk_count_add - add DELTA (+1/-1) to KEY's count and return the new count; a key dropping to 0 is removed.
 * A count taken below 0 is kept (a caller's unbalanced -1 shows rather than being clamped). */
long hk_count_add(hk_count *c, const char *key, long delta);
long hk_count_get(const hk_count *c, const char *key); /* 0 if absent */

/* hk_count_keys - how many keys have a non-zero count. */
size_t hk_count_keys(const hk_count *c);

#endif
