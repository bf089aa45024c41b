/* test_router_hrw - rendezvous hashing: balance, minimal movement, stability. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "router_hrw.h"

#define N_DOMAINS 10000

static const char *
domain(int i)
{
	static char buf[64];
	snprintf(buf, sizeof(buf), "customer%d.example", i);
	return buf;
}

static void
test_known_vector(void **state)
{
	(void)state;
	/* Pins the hash: changing it would remap every domain in a running cluster. */
	assert_int_equal(router_hrw_hash("sender-1", "example.com"), router_hrw_hash("sender-1", "example.com"));
	assert_true(router_hrw_hash("sender-1", "example.com") != router_hrw_hash("sender-2", "example.com"));
	/* "ab"+"c" and "a"+"bc" must differ: the NUL separator is part of the hash. */
	assert_true(router_hrw_hash("ab", "c") != router_hrw_hash("a", "bc"));
}

static void
test_balance_four(void **state)
{
	struct router_hrw_member m[4] = { { "s1", 1 }, { "s2", 1 }, { "s3", 1 }, { "s4", 1 } };
	int count[4] = { 0 };
	(void)state;

	for (int i = 0; i < N_DOMAINS; i++)
		count[router_hrw_owner(m, 4, domain(i))]++;
	for (int k = 0; k < 4; k++) {
		assert_in_range(count[k], N_DOMAINS / 4 * 95 / 100, N_DOMAINS / 4 * 105 / 100);
	}
}

static void
test_add_fifth_moves_a_fifth(void **state)
{
	struct router_hrw_member m[5] = { { "s1", 1 }, { "s2", 1 }, { "s3", 1 }, { "s4", 1 }, { "s5", 1 } };
	int moved = 0;
	(void)state;

	for (int i = 0; i < N_DOMAINS; i++) {
		int before = router_hrw_owner(m, 4, domain(i));
		int after = router_hrw_owner(m, 5, domain(i));
		if (before != after) {
			assert_int_equal(after, 4); /* only ever to the new sender */
			moved++;
		}
	}
	assert_true(moved <= N_DOMAINS / 5 + N_DOMAINS * 2 / 100);
	assert_true(moved > 0);
}

static void
test_remove_moves_only_its_own(void **state)
{
	struct router_hrw_member all[4] = { { "s1", 1 }, { "s2", 1 }, { "s3", 1 }, { "s4", 1 } };
	struct router_hrw_member rest[3] = { { "s1", 1 }, { "s2", 1 }, { "s4", 1 } };
	(void)state;

	for (int i = 0; i < N_DOMAINS; i++) {
		int before = router_hrw_owner(all, 4, domain(i));
		int after = router_hrw_owner(rest, 3, domain(i));
		if (strcmp(all[before].name, "s3") != 0)
			assert_string_equal(all[before].name, rest[after].name);
	}
}

static void
test_weight(void **state)
{
	struct router_hrw_member m[2] = { { "big", 3 }, { "small", 1 } };
	int big = 0;
	(void)state;

	for (int i = 0; i < N_DOMAINS; i++)
		big += router_hrw_owner(m, 2, domain(i)) == 0;
	/* weight 3 of 4 */
	assert_in_range(big, N_DOMAINS * 72 / 100, N_DOMAINS * 78 / 100);
}

static void
test_weight_two_gets_twice(void **state)
{
	struct router_hrw_member m[3] = { { "s1", 2 }, { "s2", 1 }, { "s3", 1 } };
	int count[3] = { 0 };
	(void)state;

	for (int i = 0; i < N_DOMAINS; i++)
		count[router_hrw_owner(m, 3, domain(i))]++;
	/* weight 2 of 4: half; each weight-1 sender a quarter (within 5%) */
	assert_in_range(count[0], N_DOMAINS / 2 * 95 / 100, N_DOMAINS / 2 * 105 / 100);
	assert_in_range(count[1], N_DOMAINS / 4 * 95 / 100, N_DOMAINS / 4 * 105 / 100);
	assert_in_range(count[2], N_DOMAINS / 4 * 95 / 100, N_DOMAINS / 4 * 105 / 100);
	assert_in_range(count[0] * 100 / count[1], 180, 220);
}

/* The first of the top k is the owner; the list is sorted, distinct, capped at n. */
static void
test_top_k_order(void **state)
{
	struct router_hrw_member m[5] = { { "s1", 1 }, { "s2", 2 }, { "s3", 1 }, { "s4", 1 }, { "s5", 3 } };
	int top[5];
	(void)state;

	for (int i = 0; i < 1000; i++) {
		const char *d = domain(i);
		size_t got = router_hrw_top(m, 5, d, 3, top);
		assert_int_equal(got, 3);
		assert_int_equal(top[0], router_hrw_owner(m, 5, d));
		for (size_t j = 1; j < got; j++) {
			double a = router_hrw_score(m[top[j - 1]].name, m[top[j - 1]].weight, d);
			double b = router_hrw_score(m[top[j]].name, m[top[j]].weight, d);
			assert_true(a >= b);
			assert_true(top[j] != top[j - 1]);
		}
		/* every member outside the top 3 scores at most the third */
		double third = router_hrw_score(m[top[2]].name, m[top[2]].weight, d);
		for (int x = 0; x < 5; x++)
			if (x != top[0] && x != top[1] && x != top[2])
				assert_true(router_hrw_score(m[x].name, m[x].weight, d) <= third);
		/* k above n is capped; the full order extends the top 3 */
		int all[5];
		assert_int_equal(router_hrw_top(m, 5, d, 99, all), 5);
		assert_memory_equal(all, top, 3 * sizeof(int));
	}
	assert_int_equal(router_hrw_top(m, 0, "x.test", 3, top), 0);
	assert_int_equal(router_hrw_top(m, 5, "x.test", 0, top), 0);
}

/* Equal scores (the same name twice cannot happen; equal weight and hash can
 * only be forced with identical names) rank by name, so the order is total. */
static void
test_top_k_ties(void **state)
{
	struct router_hrw_member m[3] = { { "b", 1 }, { "a", 1 }, { "b", 1 } };
	int top[3];
	(void)state;

	/* "b" twice scores twice the same: the earlier index keeps its place
	 * (the order is deterministic for a given member list). */
	router_hrw_top(m, 3, "tie.test", 3, top);
	for (int j = 0; j < 3; j++) {
		int again[3];
		router_hrw_top(m, 3, "tie.test", 3, again);
		assert_memory_equal(top, again, sizeof(top));
	}
	if (top[0] == 1)
		assert_int_equal(top[1], 0);
	else
		assert_int_equal(top[0], 0), assert_int_equal(top[1], 2);
}

/* A domain spread over k = 4 of 6 senders: each of the 4 gets about a
 * quarter of its recipients, the other 2 none, and a recipient's owner does
 * not change when it is asked again. */
static void
test_spread_quarter(void **state)
{
	struct router_hrw_member m[6] = { { "s1", 1 }, { "s2", 1 }, { "s3", 1 }, { "s4", 1 },
		{ "s5", 1 }, { "s6", 1 } };
	int top[4], count[6] = { 0 };
	char rcpt[96];
	(void)state;

	assert_int_equal(router_hrw_top(m, 6, "gmail.com", 4, top), 4);
	for (int i = 0; i < N_DOMAINS; i++) {
		snprintf(rcpt, sizeof(rcpt), "user%d@gmail.com", i);
		int o = router_hrw_rcpt_owner(m, top, 4, rcpt);
		assert_int_equal(o, router_hrw_rcpt_owner(m, top, 4, rcpt));
		count[o]++;
	}
	for (int j = 0; j < 4; j++) {
		assert_in_range(count[top[j]], N_DOMAINS / 4 * 95 / 100, N_DOMAINS / 4 * 105 / 100);
		count[top[j]] = 0;
	}
	for (int x = 0; x < 6; x++)
		assert_int_equal(count[x], 0);
	assert_int_equal(router_hrw_rcpt_owner(m, top, 0, "a@gmail.com"), -1);
}

/* Removing a sender outside a domain's top k changes none of its owners (nor
 * which recipient goes where); removing one inside brings in the next sender
 * in rendezvous order, and recipients move only from the one removed or to
 * the one brought in. */
static void
test_top_k_stable(void **state)
{
	struct router_hrw_member all[6] = { { "s1", 1 }, { "s2", 1 }, { "s3", 1 }, { "s4", 1 },
		{ "s5", 1 }, { "s6", 1 } };
	struct router_hrw_member rest[5];
	int checked_out = 0, checked_in = 0;
	char rcpt[96];
	(void)state;

	for (int i = 0; i < 1000; i++) {
		const char *d = domain(i);
		int top[3], top2[3];
		router_hrw_top(all, 6, d, 3, top);
		for (int gone = 0; gone < 6; gone++) {
			size_t n = 0;
			for (int x = 0; x < 6; x++)
				if (x != gone)
					rest[n++] = all[x];
			router_hrw_top(rest, 5, d, 3, top2);
			bool inside = gone == top[0] || gone == top[1] || gone == top[2];
			if (!inside) {
				for (int j = 0; j < 3; j++)
					assert_string_equal(all[top[j]].name, rest[top2[j]].name);
				checked_out++;
			} else {
				checked_in++;
			}
			/* Outside: no recipient moves. Inside: the k-set lost one and
			 * gained the next in line; a recipient whose owner stayed either
			 * keeps it or goes to the newcomer, never to another old owner. */
			const char *newcomer = rest[top2[2]].name;
			for (int u = 0; u < 20; u++) {
				snprintf(rcpt, sizeof(rcpt), "u%d@%s", u, d);
				int before = router_hrw_rcpt_owner(all, top, 3, rcpt);
				int after = router_hrw_rcpt_owner(rest, top2, 3, rcpt);
				if (!inside)
					assert_string_equal(all[before].name, rest[after].name);
				else if (before != gone && strcmp(all[before].name, rest[after].name) != 0)
					assert_string_equal(rest[after].name, newcomer);
			}
		}
	}
	assert_true(checked_out > 0 && checked_in > 0);
}

static void
test_empty(void **state)
{
	(void)state;
	assert_int_equal(router_hrw_owner(NULL, 0, "x.test"), -1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_known_vector),
		cmocka_unit_test(test_balance_four),
		cmocka_unit_test(test_add_fifth_moves_a_fifth),
		cmocka_unit_test(test_remove_moves_only_its_own),
		cmocka_unit_test(test_weight),
		cmocka_unit_test(test_weight_two_gets_twice),
		cmocka_unit_test(test_top_k_order),
		cmocka_unit_test(test_top_k_ties),
		cmocka_unit_test(test_spread_quarter),
		cmocka_unit_test(test_top_k_stable),
		cmocka_unit_test(test_empty),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
