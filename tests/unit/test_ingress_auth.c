/*
 * test_ingress_auth - SASL PLAIN/LOGIN decoding, and password checks on a
 * real libuv loop and thread pool: results, the cache, unknown users,
 * cancellation, and destruction while checks are still out.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "hk_config.h"
#include "hk_passwd.h"
#include "ingress_auth.h"

static void
test_b64(void **state)
{
	char out[16];
	(void)state;

	assert_int_equal(ingress_b64_decode("aGVsbG8=", out, sizeof(out)), 5);
	assert_string_equal(out, "hello");
	assert_int_equal(ingress_b64_decode("aGk=", out, sizeof(out)), 2);
	assert_int_equal(ingress_b64_decode("YWJj", out, sizeof(out)), 3);
	assert_int_equal(ingress_b64_decode("=", out, sizeof(out)), 0); /* RFC 4954: empty */
	assert_string_equal(out, "");
	assert_int_equal(ingress_b64_decode("", out, sizeof(out)), -1);
	assert_int_equal(ingress_b64_decode("aGVsbG8", out, sizeof(out)), -1);   /* no padding */
	assert_int_equal(ingress_b64_decode("aGVs bG8=", out, sizeof(out)), -1); /* blank */
	assert_int_equal(ingress_b64_decode("aG=sbG8=", out, sizeof(out)), -1);  /* '=' inside */
	assert_int_equal(ingress_b64_decode("aGk=aGk=", out, sizeof(out)), -1);  /* padding mid-way */
	assert_int_equal(ingress_b64_decode("aGl=", out, sizeof(out)), -1);      /* non-canonical */
	assert_int_equal(ingress_b64_decode("YWJjZGVmZ2hpamtsbW5vcHE=", out, sizeof(out)), -1); /* too long */
	ingress_b64_encode("hello", 5, out, sizeof(out));
	assert_string_equal(out, "aGVsbG8=");
}

static void
test_sasl(void **state)
{
	char user[INGRESS_AUTH_USER_MAX + 1], pass[INGRESS_AUTH_PASS_MAX + 1], b64[2048];
	(void)state;

	ingress_b64_encode("\0alice\0pw d", 11, b64, sizeof(b64));
	assert_int_equal(ingress_sasl_plain(b64, user, pass), INGRESS_SASL_OK);
	assert_string_equal(user, "alice");
	assert_string_equal(pass, "pw d");
	ingress_b64_encode("alice\0alice\0pw", 14, b64, sizeof(b64));
	assert_int_equal(ingress_sasl_plain(b64, user, pass), INGRESS_SASL_OK);
	ingress_b64_encode("admin\0alice\0pw", 14, b64, sizeof(b64));
	assert_int_equal(ingress_sasl_plain(b64, user, pass), INGRESS_SASL_AUTHZID);
	ingress_b64_encode("alice\0pw", 8, b64, sizeof(b64));
	assert_int_equal(ingress_sasl_plain(b64, user, pass), INGRESS_SASL_MALFORMED);
	ingress_b64_encode("\0alice\0", 7, b64, sizeof(b64));
	assert_int_equal(ingress_sasl_plain(b64, user, pass), INGRESS_SASL_MALFORMED); /* empty password */
	ingress_b64_encode("\0alice\0pw\0x", 11, b64, sizeof(b64));
	assert_int_equal(ingress_sasl_plain(b64, user, pass), INGRESS_SASL_MALFORMED);
	assert_int_equal(ingress_sasl_plain("%%%%", user, pass), INGRESS_SASL_BAD_BASE64);
	assert_int_equal(ingress_sasl_plain("=", user, pass), INGRESS_SASL_MALFORMED);

	assert_int_equal(ingress_sasl_field("YWxpY2U=", user, sizeof(user)), INGRESS_SASL_OK);
	assert_string_equal(user, "alice");
	assert_int_equal(ingress_sasl_field("=", user, sizeof(user)), INGRESS_SASL_MALFORMED);
	assert_int_equal(ingress_sasl_field("YQBi", user, sizeof(user)), INGRESS_SASL_MALFORMED); /* "a\0b" */
	assert_int_equal(ingress_sasl_field("Y*==", user, sizeof(user)), INGRESS_SASL_BAD_BASE64);
}

/* --- checks on a loop ----------------------------------------------------- */

struct result {
	int calls;
	const struct hk_tenant_conf *tenant;
};

static void
on_result(void *arg, const struct hk_tenant_conf *t)
{
	struct result *r = arg;

	r->calls++;
	r->tenant = t;
}

struct fixture {
	uv_loop_t loop;
	struct hk_config cfg;
	struct hk_tenant_conf tenants[2];
	struct hk_credential creds[2];
	char hash[2][HK_PASSWD_HASH_SIZE];
};

static struct fixture *
fixture_new(void)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_int_equal(uv_loop_init(&f->loop), 0);
	assert_int_equal(hk_passwd_hash("right", 1000, f->hash[0], sizeof(f->hash[0])), 0);
	assert_int_equal(hk_passwd_hash("other", 1000, f->hash[1], sizeof(f->hash[1])), 0);
	f->creds[0] = (struct hk_credential){ "alice", f->hash[0] };
	f->creds[1] = (struct hk_credential){ "bob", f->hash[1] };
	f->tenants[0] = (struct hk_tenant_conf){ .name = "acme", .credentials = &f->creds[0], .n_credentials = 1 };
	f->tenants[1] = (struct hk_tenant_conf){ .name = "beta", .credentials = &f->creds[1], .n_credentials = 1 };
	f->cfg.tenants = f->tenants;
	f->cfg.n_tenants = 2;
	return f;
}

static void
fixture_free(struct fixture *f)
{
	assert_int_equal(uv_loop_close(&f->loop), 0);
	free(f);
}

/* Start a check; returns 1 (answered from the cache) or 0 (pending). */
static int
check(ingress_auth *a, const char *user, const char *pw, struct result *r, ingress_auth_job **job)
{
	const struct hk_tenant_conf *t = NULL;
	int rc = ingress_auth_check(a, user, pw, on_result, r, job, &t);

	if (rc == 1)
		on_result(r, t);
	return rc;
}

static void
test_checks_and_cache(void **state)
{
	struct fixture *f = fixture_new();
	ingress_auth *a = ingress_auth_new(&f->loop, &f->cfg, 1, 60000);
	struct result r[6] = { { 0, NULL } };
	ingress_auth_job *job;
	(void)state;

	assert_int_equal(ingress_auth_users(a), 2);
	/* Several at once with max_running 1: all answered, in any order. */
	assert_int_equal(check(a, "alice", "right", &r[0], &job), 0);
	assert_int_equal(check(a, "alice", "wrong", &r[1], &job), 0);
	assert_int_equal(check(a, "bob", "other", &r[2], &job), 0);
	assert_int_equal(check(a, "nobody", "right", &r[3], &job), 0);
	assert_int_equal(check(a, "bob", "right", &r[4], &job), 0); /* alice's password */
	uv_run(&f->loop, UV_RUN_DEFAULT);
	for (int i = 0; i < 5; i++)
		assert_int_equal(r[i].calls, 1);
	assert_ptr_equal(r[0].tenant, &f->tenants[0]);
	assert_null(r[1].tenant);
	assert_ptr_equal(r[2].tenant, &f->tenants[1]);
	assert_null(r[3].tenant);
	assert_null(r[4].tenant);
	/* A success is now cached; a failure never is. */
	memset(r, 0, sizeof(r));
	assert_int_equal(check(a, "alice", "right", &r[0], &job), 1);
	assert_ptr_equal(r[0].tenant, &f->tenants[0]);
	assert_int_equal(check(a, "alice", "wrong", &r[1], &job), 0);
	/* Cancelled: the check runs but nobody is called. */
	assert_int_equal(check(a, "bob", "x", &r[2], &job), 0);
	ingress_auth_cancel(job);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(r[1].calls, 1);
	assert_null(r[1].tenant);
	assert_int_equal(r[2].calls, 0);
	ingress_auth_destroy(&a);
	assert_null(a);
	fixture_free(f);
}

static void
test_cache_expires(void **state)
{
	struct fixture *f = fixture_new();
	ingress_auth *a = ingress_auth_new(&f->loop, &f->cfg, 2, 0); /* no caching */
	struct result r = { 0, NULL };
	ingress_auth_job *job;
	(void)state;

	assert_int_equal(check(a, "alice", "right", &r, &job), 0);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_ptr_equal(r.tenant, &f->tenants[0]);
	assert_int_equal(check(a, "alice", "right", &r, &job), 0); /* not from the cache */
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(r.calls, 2);
	ingress_auth_destroy(&a);
	fixture_free(f);
}

/* Destroyed with checks running and waiting: nothing is called back, and
 * the object goes when the last check returns (ASan checks the rest). */
static void
test_destroy_while_checking(void **state)
{
	struct fixture *f = fixture_new();
	ingress_auth *a = ingress_auth_new(&f->loop, &f->cfg, 1, 60000);
	struct result r[3] = { { 0, NULL } };
	ingress_auth_job *job;
	(void)state;

	for (int i = 0; i < 3; i++)
		assert_int_equal(check(a, "alice", "right", &r[i], &job), 0);
	ingress_auth_destroy(&a);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	for (int i = 0; i < 3; i++)
		assert_int_equal(r[i].calls, 0);
	fixture_free(f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_b64),
		cmocka_unit_test(test_sasl),
		cmocka_unit_test(test_checks_and_cache),
		cmocka_unit_test(test_cache_expires),
		cmocka_unit_test(test_destroy_while_checking),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
