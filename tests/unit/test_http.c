/* test_http - Prometheus text formatting (hk_prom) and the router's bounded
 * set of recent domains (router_domains). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "hk_prom.h"
#include "router_domains.h"

static void
test_prom_samples(void **state)
{
	hk_prom *p = hk_prom_new("router-1");
	size_t len;
	char *t;
	(void)state;

	hk_prom_family(p, "hikyaku_x_total", "counter", "Xs.");
	hk_prom_u64(p, "hikyaku_x_total", NULL, NULL, 42);
	hk_prom_u64(p, "hikyaku_x_total", "sender", "s-1", 18446744073709551615ULL);
	hk_prom_double(p, "hikyaku_g", NULL, NULL, 0.5);
	t = hk_prom_finish(&p, &len);
	assert_null(p);
	assert_int_equal(len, strlen(t));
	assert_string_equal(t,
	    "# HELP hikyaku_x_total Xs.\n"
	    "# TYPE hikyaku_x_total counter\n"
	    "hikyaku_x_total{node=\"router-1\"} 42\n"
	    "hikyaku_x_total{node=\"router-1\",sender=\"s-1\"} 18446744073709551615\n"
	    "hikyaku_g{node=\"router-1\"} 0.5\n");
	free(t);
}

static void
test_prom_escapes_label_values(void **state)
{
	hk_prom *p = hk_prom_new("n\"o\\de\n");
	char *t;
	(void)state;

	hk_prom_u64(p, "m", "l", "a\"b\\c\nd", 1);
	t = hk_prom_finish(&p, NULL);
	assert_string_equal(t, "m{node=\"n\\\"o\\\\de\\n\",l=\"a\\\"b\\\\c\\nd\"} 1\n");
	free(t);
}

static void
test_prom_grows(void **state)
{
	hk_prom *p = hk_prom_new("n");
	char label[64], *t;
	size_t len;
	(void)state;

	for (int i = 0; i < 2000; i++) {
		snprintf(label, sizeof(label), "sender-%04d", i);
		hk_prom_u64(p, "hikyaku_router_enqueues_in_flight", "sender", label, (uint64_t)i);
	}
	t = hk_prom_finish(&p, &len);
	assert_int_equal(len, strlen(t));
	assert_non_null(strstr(t, "hikyaku_router_enqueues_in_flight{node=\"n\",sender=\"sender-1999\"} 1999\n"));
	free(t);
}

static void
test_prom_histogram(void **state)
{
	struct hk_hist h;
	hk_prom *p = hk_prom_new("i");
	char *t;
	(void)state;

	memset(&h, 0, sizeof(h));
	hk_hist_observe(&h, 500);       /* 0.5 ms: le=0.001 */
	hk_hist_observe(&h, 1000);      /* exactly 1 ms: le=0.001 */
	hk_hist_observe(&h, 30000);     /* 30 ms: le=0.05 */
	hk_hist_observe(&h, 9000000);   /* 9 s: over every bound */
	hk_prom_hist(p, "lat_seconds", NULL, NULL, &h);
	t = hk_prom_finish(&p, NULL);
	assert_non_null(strstr(t, "lat_seconds_bucket{node=\"i\",le=\"0.001\"} 2\n"));
	assert_non_null(strstr(t, "lat_seconds_bucket{node=\"i\",le=\"0.025\"} 2\n"));
	assert_non_null(strstr(t, "lat_seconds_bucket{node=\"i\",le=\"0.05\"} 3\n"));
	assert_non_null(strstr(t, "lat_seconds_bucket{node=\"i\",le=\"5\"} 3\n"));
	assert_non_null(strstr(t, "lat_seconds_bucket{node=\"i\",le=\"+Inf\"} 4\n"));
	assert_non_null(strstr(t, "lat_seconds_sum{node=\"i\"} 9.031500\n"));
	assert_non_null(strstr(t, "lat_seconds_count{node=\"i\"} 4\n"));
	free(t);
}

static size_t
copy_list(router_domains *d, const char **out, char **buf)
{
	size_t n;
	char *p = *buf = router_domains_copy(d, &n);

	for (size_t i = 0; i < n; i++) {
		out[i] = p;
		p += strlen(p) + 1;
	}
	return n;
}

static void
test_domains_lru(void **state)
{
	router_domains *d = router_domains_new(3);
	const char *list[8];
	char *buf;
	(void)state;

	router_domains_touch(d, "a.test");
	router_domains_touch(d, "b.test");
	router_domains_touch(d, "a.test");     /* again: not counted twice, now the newest */
	assert_int_equal(router_domains_count(d), 2);
	router_domains_touch(d, "c.test");
	router_domains_touch(d, "d.test");     /* full: b.test, the least recent, goes */
	assert_int_equal(router_domains_count(d), 3);
	assert_false(router_domains_has(d, "b.test"));
	assert_true(router_domains_has(d, "a.test"));
	assert_int_equal(copy_list(d, list, &buf), 3);
	assert_string_equal(list[0], "d.test");
	assert_string_equal(list[1], "c.test");
	assert_string_equal(list[2], "a.test");
	free(buf);
	router_domains_free(&d);
	assert_null(d);
}

static void
test_domains_bounded_under_churn(void **state)
{
	router_domains *d = router_domains_new(1000);
	char name[64], *buf;
	size_t n;
	(void)state;

	for (int i = 0; i < 50000; i++) {
		snprintf(name, sizeof(name), "customer%d.example", i);
		router_domains_touch(d, name);
		if (i % 7 == 0)
			router_domains_touch(d, "hot.example");   /* stays: used all the time */
	}
	assert_int_equal(router_domains_count(d), 1000);
	assert_true(router_domains_has(d, "hot.example"));
	assert_true(router_domains_has(d, "customer49999.example"));
	assert_false(router_domains_has(d, "customer48000.example"));
	buf = router_domains_copy(d, &n);
	assert_int_equal(n, 1000);
	assert_string_equal(buf, "customer49999.example");
	free(buf);
	router_domains_free(&d);
}

static void
test_domains_empty(void **state)
{
	router_domains *d = router_domains_new(ROUTER_DOMAINS_MAX);
	size_t n = 99;
	char *buf = router_domains_copy(d, &n);
	(void)state;

	assert_int_equal(n, 0);
	free(buf);
	router_domains_free(&d);
	router_domains_free(&d);   /* NULL is fine */
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_prom_samples),
		cmocka_unit_test(test_prom_escapes_label_values),
		cmocka_unit_test(test_prom_grows),
		cmocka_unit_test(test_prom_histogram),
		cmocka_unit_test(test_domains_lru),
		cmocka_unit_test(test_domains_bounded_under_churn),
		cmocka_unit_test(test_domains_empty),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
