/*
 * test_sender_pool - source address choice: smooth weighted round robin,
 * addresses without budget passed by, spill-over to warm addresses only,
 * unknown pools to "shared".
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "sender_pool.h"

static struct hk_pool_addr shared_a[] = {
	{ "10.0.0.1", "one.example", 1, false },
	{ "10.0.0.2", "two.example", 3, false },
	{ "10.0.0.3", "new.example", 1, true },
};
static struct hk_pool_addr acme_a[] = {
	{ "10.0.1.1", "acme.example", 1, true },
};
static struct hk_pool_conf pools[] = {
	{ "shared", shared_a, 3, NULL, 1 },
	{ "acme", acme_a, 1, "shared", 2 },
};
static struct hk_sender_conf conf = { .pools = pools, .n_pools = 2 };

/* Budget: none for the addresses named in arg (NULL-terminated). */
static bool
no_budget_for(const struct hk_pool_addr *a, void *arg, int64_t *retry_at)
{
	for (const char *const *n = arg; *n; n++)
		if (strcmp(*n, a->address) == 0) {
			*retry_at = 5000;
			return false;
		}
	return true;
}

static void
test_weighted_round_robin(void **state)
{
	sender_pools *sp = sender_pools_new(&conf);
	int count[3] = { 0 };
	int64_t retry;
	const char *used;
	(void)state;

	for (int i = 0; i < 50; i++) {
		const struct hk_pool_addr *a = sender_pools_pick(sp, "shared", NULL, NULL, &retry, &used);
		assert_non_null(a);
		assert_string_equal(used, "shared");
		count[a - shared_a]++;
	}
	assert_int_equal(count[0], 10);
	assert_int_equal(count[1], 30);
	assert_int_equal(count[2], 10);
	sender_pools_free(&sp);
	assert_null(sp);
}

static void
test_budget_and_spill(void **state)
{
	sender_pools *sp = sender_pools_new(&conf);
	const char *acme_out[] = { "10.0.1.1", NULL };
	const char *all_out[] = { "10.0.1.1", "10.0.0.1", "10.0.0.2", "10.0.0.3", NULL };
	const char *two_out[] = { "10.0.0.2", NULL };
	int64_t retry;
	const char *used;
	(void)state;

	/* Only the addresses with budget. */
	for (int i = 0; i < 10; i++) {
		const struct hk_pool_addr *a = sender_pools_pick(sp, "shared", no_budget_for,
		    (void *)two_out, &retry, NULL);
		assert_non_null(a);
		assert_string_not_equal(a->address, "10.0.0.2");
	}
	/* acme's own address has none: spill to shared's warm addresses only. */
	for (int i = 0; i < 10; i++) {
		const struct hk_pool_addr *a = sender_pools_pick(sp, "acme", no_budget_for,
		    (void *)acme_out, &retry, &used);
		assert_non_null(a);
		assert_string_equal(used, "shared");
		assert_false(a->warmup);
	}
	/* Nothing anywhere: wait, with the earliest time a budget gave. */
	assert_null(sender_pools_pick(sp, "acme", no_budget_for, (void *)all_out, &retry, NULL));
	assert_int_equal(retry, 5000);
	/* A pool this sender does not have: "shared". */
	assert_non_null(sender_pools_pick(sp, "elsewhere", NULL, NULL, &retry, &used));
	assert_string_equal(used, "shared");
	assert_non_null(sender_pools_pick(sp, NULL, NULL, NULL, &retry, &used));
	assert_string_equal(used, "shared");
	sender_pools_free(&sp);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_weighted_round_robin),
		cmocka_unit_test(test_budget_and_spill),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
