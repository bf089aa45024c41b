/* router_shard: shard numbers of enqueues (generation << 16 | index). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "router_shard.h"

/* Generation 0 is the historical numbering: the first recipient's index,
 * whatever its size. */
static void
test_generation_zero_is_the_index(void **state)
{
	uint32_t s;

	(void)state;
	assert_int_equal(router_shard(0, 0, &s), 0);
	assert_int_equal(s, 0);
	assert_int_equal(router_shard(0, 7, &s), 0);
	assert_int_equal(s, 7);
	assert_int_equal(router_shard(0, 70000, &s), 0);
	assert_int_equal(s, 70000);
}

static void
test_later_generations(void **state)
{
	uint32_t s;

	(void)state;
	assert_int_equal(router_shard(1, 0, &s), 0);
	assert_int_equal(s, 0x10000);
	assert_int_equal(router_shard(3, 5, &s), 0);
	assert_int_equal(s, 3u << 16 | 5);
	assert_int_equal(router_shard(0xffff, 0xffff, &s), 0);
	assert_int_equal(s, 0xffffffffu);
	assert_int_equal(router_shard(0x10000, 0, &s), -1);
	assert_int_equal(router_shard(1, 0x10000, &s), -1);
}

/* No two (generation, index) pairs with a number share it, for the sizes a
 * message can have (max_recipients is far under 65536 in practice). */
static void
test_no_collisions(void **state)
{
	static uint8_t seen[1u << 20];
	uint32_t s;

	(void)state;
	memset(seen, 0, sizeof(seen));
	for (uint32_t g = 0; g < 16; g++) {
		for (size_t i = 0; i < 65536; i += 1 + (i % 7)) {
			assert_int_equal(router_shard(g, i, &s), 0);
			assert_true(s < sizeof(seen));
			assert_int_equal(seen[s], 0);
			seen[s] = 1;
		}
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_generation_zero_is_the_index),
		cmocka_unit_test(test_later_generations),
		cmocka_unit_test(test_no_collisions),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
