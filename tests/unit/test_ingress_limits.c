/*
 * test_ingress_limits - client address keys (IPv4, mapped, IPv6 /64) and
 * the end-of-message checks: bare LF policy and header line length.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>

#include <cmocka.h>

#include "ingress_limits.h"

static void
key_of(const char *addr, char out[INGRESS_IP_KEY_MAX])
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, addr, &((struct sockaddr_in *)&ss)->sin_addr) == 1)
		ss.ss_family = AF_INET;
	else {
		assert_int_equal(inet_pton(AF_INET6, addr, &((struct sockaddr_in6 *)&ss)->sin6_addr), 1);
		ss.ss_family = AF_INET6;
	}
	assert_int_equal(ingress_limits_ip_key((struct sockaddr *)&ss, out), 0);
}

static void
test_ip_keys(void **state)
{
	char k[INGRESS_IP_KEY_MAX];
	struct sockaddr sa = { .sa_family = AF_UNIX };

	(void)state;
	key_of("192.0.2.7", k);
	assert_string_equal(k, "192.0.2.7");
	key_of("::ffff:192.0.2.7", k);       /* IPv4-mapped: the IPv4 address */
	assert_string_equal(k, "192.0.2.7");
	key_of("2001:db8:1:2:3:4:5:6", k);   /* a /64 is one client */
	assert_string_equal(k, "2001:db8:1:2::/64");
	key_of("2001:db8:1:2:ffff::1", k);
	assert_string_equal(k, "2001:db8:1:2::/64");
	key_of("2001:db8:1:3::1", k);        /* the next /64 is another */
	assert_string_equal(k, "2001:db8:1:3::/64");
	key_of("::1", k);
	assert_string_equal(k, "::/64");
	key_of("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", k);
	assert_string_equal(k, "ffff:ffff:ffff:ffff::/64");
	assert_int_equal(ingress_limits_ip_key(&sa, k), -1);
	assert_string_equal(k, "");
}

static struct hk_ingress_conf
conf(enum hk_bare_lf bare_lf, uint32_t hdr_max)
{
	return (struct hk_ingress_conf){ .bare_lf = bare_lf, .max_header_line_length = hdr_max };
}

static bool
check(const struct hk_ingress_conf *c, bool bare_lf, const char *msg, char err[INGRESS_REPLY_MAX],
    const char **limit)
{
	err[0] = '\0';
	*limit = NULL;
	return ingress_limits_message(c, bare_lf, msg, strlen(msg), err, limit);
}

static void
test_bare_lf_policy(void **state)
{
	struct hk_ingress_conf rej = conf(HK_BARE_LF_REJECT, 998), norm = conf(HK_BARE_LF_NORMALIZE, 998);
	char err[INGRESS_REPLY_MAX];
	const char *limit;

	(void)state;
	assert_true(check(&rej, true, "Subject: x\r\n\r\nbody\r\n", err, &limit));
	assert_string_equal(err, "550 5.5.2 Error: bare <LF> received");
	assert_string_equal(limit, "bare_lf");
	assert_false(check(&norm, true, "Subject: x\r\n\r\nbody\r\n", err, &limit));
	assert_false(check(&rej, false, "Subject: x\r\n\r\nbody\r\n", err, &limit));
}

static void
test_header_line_length(void **state)
{
	struct hk_ingress_conf c = conf(HK_BARE_LF_REJECT, 100);
	char err[INGRESS_REPLY_MAX], msg[1200], a[600], b[600];
	const char *limit;

	(void)state;
	memset(a, 'a', sizeof(a) - 1);
	a[sizeof(a) - 1] = '\0';
	memset(b, 'b', sizeof(b) - 1);
	b[sizeof(b) - 1] = '\0';
	/* 100 characters: allowed; 101: not. */
	snprintf(msg, sizeof(msg), "Subject: %.*s\r\n\r\nbody\r\n", 91, a);
	assert_false(check(&c, false, msg, err, &limit));
	snprintf(msg, sizeof(msg), "Subject: %.*s\r\n\r\nbody\r\n", 92, a);
	assert_true(check(&c, false, msg, err, &limit));
	assert_string_equal(err, "554 5.6.0 Message rejected: header line too long (more than 100 characters)");
	assert_string_equal(limit, "max_header_line_length");
	/* A folded field counts line by line; body lines do not count. */
	snprintf(msg, sizeof(msg), "Subject: %.*s\r\n %.*s\r\n\r\n%.*s\r\n", 80, a, 90, b, 500, a);
	assert_false(check(&c, false, msg, err, &limit));
	/* Bare LF is judged first. */
	assert_true(check(&c, true, "Subject: x\r\n\r\nbody\r\n", err, &limit));
	assert_string_equal(limit, "bare_lf");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ip_keys),
		cmocka_unit_test(test_bare_lf_policy),
		cmocka_unit_test(test_header_line_length),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
