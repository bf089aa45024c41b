/* test_rate - token buckets on an injected clock, eviction, bounded keys, live counts. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "hk_rate.h"

/* Epoch-sized times as well as small ones: the arithmetic must not lose
 * precision at 1.7e12 ms. */
static const uint64_t bases[] = { 0, 1700000000000ULL };

static void
test_exact_allowance(void **state)
{
	(void)state;

	for (size_t b = 0; b < 2; b++) {
		uint64_t t0 = bases[b];
		hk_rate *r = hk_rate_new(10, 1000, 10, 100);
		assert_non_null(r);
		for (int i = 0; i < 10; i++)
			assert_true(hk_rate_take(r, "k", 1, t0));
		assert_false(hk_rate_take(r, "k", 1, t0));
		assert_false(hk_rate_take(r, "k", 1, t0 + 99));
		assert_true(hk_rate_take(r, "k", 1, t0 + 100));
		assert_false(hk_rate_take(r, "k", 1, t0 + 100));
		/* A long pause refills only up to the burst. */
		for (int i = 0; i < 10; i++)
			assert_true(hk_rate_take(r, "k", 1, t0 + 100000));
		assert_false(hk_rate_take(r, "k", 1, t0 + 100000));
		hk_rate_free(r);
	}

	/* burst 0 means the rate; a burst above it allows more at once. */
	hk_rate *r = hk_rate_new(10, 1000, 0, 100), *big = hk_rate_new(10, 1000, 25, 100);
	for (int i = 0; i < 10; i++)
		assert_true(hk_rate_take(r, "k", 1, 0));
	assert_false(hk_rate_take(r, "k", 1, 0));
	assert_true(hk_rate_take(big, "k", 25, 0));
	assert_false(hk_rate_take(big, "k", 1, 0));
	assert_true(hk_rate_take(big, "k", 1, 100));
	hk_rate_free(r);
	hk_rate_free(big);
}

/* A rate whose interval is not a whole number (333.33 ms) over 10 s, tried
 * every millisecond: exactly burst + 30 pass, none early. */
static void
test_fractional_rate(void **state)
{
	(void)state;

	for (size_t b = 0; b < 2; b++) {
		uint64_t t0 = bases[b];
		hk_rate *r = hk_rate_new(3, 1000, 3, 10);
		int passed = 0;
		for (uint64_t t = 0; t <= 10000; t++) {
			if (hk_rate_take(r, "k", 1, t0 + t)) {
				passed++;
				/* the k-th refill is due at ceil(k * 1000 / 3) */
				if (passed > 3)
					assert_int_equal(t, (uint64_t)ceil((passed - 3) * 1000.0 / 3));
			}
		}
		assert_int_equal(passed, 33);
		hk_rate_free(r);
	}
}

static void
test_retry_ms(void **state)
{
	(void)state;

	for (size_t b = 0; b < 2; b++) {
		uint64_t t0 = bases[b];
		hk_rate *r = hk_rate_new(10, 1000, 10, 100);
		assert_int_equal(hk_rate_retry_ms(r, "k", 1, t0), 0);
		assert_int_equal(hk_rate_retry_ms(r, "k", 10, t0), 0);
		assert_int_equal(hk_rate_retry_ms(r, "k", 11, t0), UINT64_MAX);
		assert_int_equal(hk_rate_keys(r), 0); /* asking creates nothing */

		assert_true(hk_rate_take(r, "k", 10, t0));
		assert_int_equal(hk_rate_retry_ms(r, "k", 1, t0), 100);
		assert_int_equal(hk_rate_retry_ms(r, "k", 5, t0), 500);
		assert_int_equal(hk_rate_retry_ms(r, "k", 10, t0), 1000);
		assert_int_equal(hk_rate_retry_ms(r, "k", 11, t0), UINT64_MAX);
		assert_int_equal(hk_rate_retry_ms(r, "k", 0, t0), 0);
		/* 250 ms later 2.5 tokens are back. */
		assert_int_equal(hk_rate_retry_ms(r, "k", 1, t0 + 250), 0);
		assert_int_equal(hk_rate_retry_ms(r, "k", 3, t0 + 250), 50);
		/* Waiting exactly what it says is enough, one ms less is not. */
		assert_false(hk_rate_take(r, "k", 3, t0 + 299));
		assert_true(hk_rate_take(r, "k", 3, t0 + 300));
		assert_int_equal(hk_rate_retry_ms(r, "k", 1, t0 + 300), 100);
		hk_rate_free(r);
	}
	/* Fractional waits round up, so that retrying then succeeds. */
	hk_rate *r = hk_rate_new(3, 1000, 1, 10);
	assert_true(hk_rate_take(r, "k", 1, 0));
	assert_int_equal(hk_rate_retry_ms(r, "k", 1, 0), 334);
	assert_false(hk_rate_take(r, "k", 1, 333));
	assert_true(hk_rate_take(r, "k", 1, 334));
	hk_rate_free(r);
}

static void
test_independent_keys(void **state)
{
	hk_rate *r = hk_rate_new(2, 1000, 2, 100);
	(void)state;

	assert_true(hk_rate_take(r, "tenant-a", 2, 0));
	assert_false(hk_rate_take(r, "tenant-a", 1, 0));
	assert_true(hk_rate_take(r, "tenant-b", 1, 0));
	assert_true(hk_rate_take(r, "tenant-b", 1, 0));
	assert_false(hk_rate_take(r, "tenant-b", 1, 0));
	assert_true(hk_rate_take(r, "tenant-a2", 2, 0)); /* prefixes are other keys */
	assert_true(hk_rate_take(r, "", 2, 0));          /* so is the empty string */
	assert_int_equal(hk_rate_keys(r), 4);
	assert_int_equal(hk_rate_retry_ms(r, "tenant-a", 1, 0), 500);
	assert_int_equal(hk_rate_retry_ms(r, "tenant-c", 1, 0), 0);
	hk_rate_free(r);
}

static void
test_bad_arguments(void **state)
{
	(void)state;

	errno = 0;
	assert_null(hk_rate_new(0, 1000, 0, 10));
	assert_int_equal(errno, EINVAL);
	assert_null(hk_rate_new(-1, 1000, 0, 10));
	assert_null(hk_rate_new(NAN, 1000, 0, 10));
	assert_null(hk_rate_new(INFINITY, 1000, 0, 10));
	assert_null(hk_rate_new(1, 0, 0, 10));
	assert_null(hk_rate_new(1, 1000, -1, 10));
	assert_null(hk_rate_new(1, 1000, NAN, 10));
	assert_null(hk_rate_new(1, 1000, 0, 0));
	assert_null(hk_rate_new(1e-320, 1000, 1, 10)); /* a token would take forever */
	hk_rate_free(NULL);

	hk_rate *r = hk_rate_new(5, 1000, 5, 10);
	assert_false(hk_rate_take(r, "k", -1, 0));
	assert_false(hk_rate_take(r, "k", NAN, 0));
	assert_false(hk_rate_take(r, "k", INFINITY, 0));
	assert_false(hk_rate_take(r, "k", 6, 0)); /* more than the burst: never */
	assert_int_equal(hk_rate_retry_ms(r, "k", -1, 0), UINT64_MAX);
	assert_int_equal(hk_rate_keys(r), 0);
	assert_true(hk_rate_take(r, "k", 0, 0)); /* a probe, remembered nowhere */
	assert_int_equal(hk_rate_keys(r), 0);
	assert_true(hk_rate_take(r, "k", 5, 0));
	assert_true(hk_rate_take(r, "k", 0, 0)); /* zero always fits */
	assert_false(hk_rate_take(r, "k", 1, 0));
	hk_rate_free(r);
}

/* A clock that steps back refills nothing, and does not let the key take
 * twice for the same stretch of time when it steps forward again. */
static void
test_clock_backwards(void **state)
{
	hk_rate *r = hk_rate_new(10, 1000, 10, 10);
	(void)state;

	assert_true(hk_rate_take(r, "k", 10, 5000));
	assert_false(hk_rate_take(r, "k", 1, 4000));
	assert_int_equal(hk_rate_retry_ms(r, "k", 1, 4000), 100);
	assert_false(hk_rate_take(r, "k", 1, 5099));
	assert_true(hk_rate_take(r, "k", 1, 5100));
	assert_false(hk_rate_take(r, "k", 1, 5100));
	hk_rate_free(r);
}

/* When full, the least recently used idle key goes; a key still owed
 * refill is never dropped, even when it is the oldest. */
static void
test_eviction_keeps_limited(void **state)
{
	hk_rate *r = hk_rate_new(1, 1000, 2, 3);
	(void)state;

	assert_true(hk_rate_take(r, "a", 2, 0)); /* a: owes 2000 ms */
	assert_true(hk_rate_take(r, "b", 1, 1)); /* b: idle from 1001 */
	assert_true(hk_rate_take(r, "c", 1, 2)); /* c: idle from 1002 */
	assert_int_equal(hk_rate_keys(r), 3);

	/* At 1500 a is oldest but still owes 500 ms; b is the oldest idle key. */
	assert_true(hk_rate_take(r, "d", 1, 1500));
	assert_int_equal(hk_rate_keys(r), 3);
	assert_false(hk_rate_take(r, "a", 2, 1500)); /* a's state survived */
	assert_int_equal(hk_rate_retry_ms(r, "a", 2, 1500), 500);
	assert_int_equal(hk_rate_retry_ms(r, "c", 2, 1500), 0);

	/* b was forgotten: it starts again with a full bucket (and evicts c). */
	assert_true(hk_rate_take(r, "b", 2, 1500));
	assert_int_equal(hk_rate_keys(r), 3);
	assert_false(hk_rate_take(r, "a", 2, 1500));
	assert_false(hk_rate_take(r, "b", 1, 1500));
	assert_false(hk_rate_take(r, "d", 2, 1500));

	/* Now a, b and d all owe refill: a new key is refused, and told when
	 * the first of them (a, at 2000) will be idle. */
	assert_false(hk_rate_take(r, "e", 1, 1500));
	assert_int_equal(hk_rate_retry_ms(r, "e", 1, 1500), 500);
	assert_int_equal(hk_rate_keys(r), 3);
	assert_true(hk_rate_take(r, "e", 1, 2000)); /* a is idle again at 2000 */
	assert_int_equal(hk_rate_retry_ms(r, "b", 2, 2000), 1500); /* b kept */
	hk_rate_free(r);
}

static size_t
heap_in_use(void)
{
	return mallinfo2().uordblks;
}

/* 100k distinct keys through a table of 1000: it never holds more, and
 * memory stays flat (mallinfo2 reads 0 under ASan, which only loosens the
 * check there). */
static void
test_many_keys_bounded(void **state)
{
	char key[32];
	(void)state;

	/* Keys arrive one per ms and each is idle 1000 ms after its take: the
	 * oldest is always evictable, so every take passes. */
	hk_rate *r = hk_rate_new(1, 1000, 1, 1000);
	size_t before = heap_in_use();
	for (uint64_t i = 0; i < 100000; i++) {
		snprintf(key, sizeof(key), "198.51.%u.%u", (unsigned)(i >> 8), (unsigned)(i & 255));
		if (!hk_rate_take(r, key, 1, 1000 + i))
			fail_msg("key %llu refused", (unsigned long long)i);
		assert_true(hk_rate_keys(r) <= 1000);
	}
	assert_int_equal(hk_rate_keys(r), 1000);
	size_t grown = heap_in_use() - before;
	if (grown > 256 * 1024)
		fail_msg("heap grew by %zu bytes for 1000 keys", grown);
	hk_rate_free(r);

	/* All at the same instant: the first 1000 fill the table and stay
	 * limited; every later key is refused, none evicts them. */
	r = hk_rate_new(1, 1000, 1, 1000);
	for (uint64_t i = 0; i < 100000; i++) {
		snprintf(key, sizeof(key), "k%llu", (unsigned long long)i);
		assert_int_equal(hk_rate_take(r, key, 1, 0), i < 1000);
	}
	assert_int_equal(hk_rate_keys(r), 1000);
	for (uint64_t i = 0; i < 1000; i++) {
		snprintf(key, sizeof(key), "k%llu", (unsigned long long)i);
		assert_false(hk_rate_take(r, key, 1, 999));
	}
	assert_true(hk_rate_take(r, "late", 1, 1000));
	hk_rate_free(r);
}

static void
test_counts(void **state)
{
	hk_count *c = hk_count_new();
	(void)state;

	assert_non_null(c);
	assert_int_equal(hk_count_get(c, "10.0.0.1"), 0);
	assert_int_equal(hk_count_add(c, "10.0.0.1", 1), 1);
	assert_int_equal(hk_count_add(c, "10.0.0.1", 1), 2);
	assert_int_equal(hk_count_add(c, "10.0.0.2", 1), 1);
	assert_int_equal(hk_count_keys(c), 2);
	assert_int_equal(hk_count_get(c, "10.0.0.1"), 2);
	assert_int_equal(hk_count_add(c, "10.0.0.1", -1), 1);
	assert_int_equal(hk_count_add(c, "10.0.0.1", -1), 0);
	assert_int_equal(hk_count_keys(c), 1); /* gone at 0 */
	assert_int_equal(hk_count_get(c, "10.0.0.1"), 0);
	assert_int_equal(hk_count_add(c, "10.0.0.2", 0), 1);
	assert_int_equal(hk_count_add(c, "10.0.0.3", 0), 0);
	assert_int_equal(hk_count_keys(c), 1); /* adding 0 creates nothing */
	assert_int_equal(hk_count_add(c, "10.0.0.2", -1), 0);
	assert_int_equal(hk_count_keys(c), 0);

	/* An unbalanced -1 shows as -1 rather than vanishing. */
	assert_int_equal(hk_count_add(c, "x", -1), -1);
	assert_int_equal(hk_count_get(c, "x"), -1);
	assert_int_equal(hk_count_add(c, "x", 1), 0);
	assert_int_equal(hk_count_keys(c), 0);
	hk_count_free(c);
	hk_count_free(NULL);
}

/* Many keys up and down: removals in the middle of probe runs keep every
 * other key reachable. */
static void
test_counts_many(void **state)
{
	hk_count *c = hk_count_new();
	char key[32];
	(void)state;

	for (int i = 0; i < 20000; i++) {
		snprintf(key, sizeof(key), "2001:db8::%x", i);
		assert_int_equal(hk_count_add(c, key, 1 + i % 3), 1 + i % 3);
	}
	assert_int_equal(hk_count_keys(c), 20000);
	for (int i = 0; i < 20000; i += 2) {
		snprintf(key, sizeof(key), "2001:db8::%x", i);
		assert_int_equal(hk_count_add(c, key, -(1 + i % 3)), 0);
	}
	assert_int_equal(hk_count_keys(c), 10000);
	for (int i = 0; i < 20000; i++) {
		snprintf(key, sizeof(key), "2001:db8::%x", i);
		assert_int_equal(hk_count_get(c, key), i % 2 ? 1 + i % 3 : 0);
	}
	for (int i = 1; i < 20000; i += 2) {
		snprintf(key, sizeof(key), "2001:db8::%x", i);
		assert_int_equal(hk_count_add(c, key, -(1 + i % 3)), 0);
	}
	assert_int_equal(hk_count_keys(c), 0);
	hk_count_free(c);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exact_allowance),
		cmocka_unit_test(test_fractional_rate),
		cmocka_unit_test(test_retry_ms),
		cmocka_unit_test(test_independent_keys),
		cmocka_unit_test(test_bad_arguments),
		cmocka_unit_test(test_clock_backwards),
		cmocka_unit_test(test_eviction_keeps_limited),
		cmocka_unit_test(test_many_keys_bounded),
		cmocka_unit_test(test_counts),
		cmocka_unit_test(test_counts_many),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
