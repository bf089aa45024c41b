/* test_passwd - hashing, verification, tampering and garbage, the other kinds. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <crypt.h>
#include <cmocka.h>

#include "hk_passwd.h"

/* Most tests use the cheapest cost: the code paths are the same. */
#define CHEAP HK_PASSWD_MIN_ROUNDS

/* crypt_hash - a hash of PW made by libxcrypt directly with PREFIX (another kind). */
static void
crypt_hash(const char *prefix, const char *pw, char out[CRYPT_OUTPUT_SIZE])
{
	char setting[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd = calloc(1, sizeof(*cd));

	assert_non_null(crypt_gensalt_rn(prefix, 0, NULL, 0, setting, sizeof(setting)));
	const char *h = crypt_rn(pw, setting, cd, sizeof(*cd));
	assert_non_null(h);
	strcpy(out, h);
	free(cd);
}

static void
test_hash_verify(void **state)
{
	char h[HK_PASSWD_HASH_SIZE];
	(void)state;

	assert_int_equal(hk_passwd_hash("correct horse", CHEAP, h, sizeof(h)), 0);
	assert_true(strncmp(h, "$6$rounds=1000$", 15) == 0);
	assert_true(hk_passwd_hash_ok(h));
	assert_true(hk_passwd_verify("correct horse", h));
	assert_false(hk_passwd_verify("correct horsf", h));
	assert_false(hk_passwd_verify("correct hors", h));
	assert_false(hk_passwd_verify("correct horse ", h));
	assert_false(hk_passwd_verify("Correct horse", h));
	assert_false(hk_passwd_verify("", h));
	assert_false(hk_passwd_verify(NULL, h));

	/* Any byte but NUL is part of a password: UTF-8, spaces, controls. */
	assert_int_equal(hk_passwd_hash("p\xc3\xa4ss \t\x01:$", CHEAP, h, sizeof(h)), 0);
	assert_true(hk_passwd_verify("p\xc3\xa4ss \t\x01:$", h));
	assert_false(hk_passwd_verify("pass \t\x01:$", h));
}

static void
test_default_rounds(void **state)
{
	char h[HK_PASSWD_HASH_SIZE];
	(void)state;

	assert_int_equal(hk_passwd_hash("s3cret", 0, h, sizeof(h)), 0);
	assert_true(strncmp(h, "$6$rounds=100000$", 17) == 0);
	assert_true(hk_passwd_verify("s3cret", h));
}

static void
test_rounds_honoured(void **state)
{
	static const unsigned rounds[] = { 1000, 4999, 5000, 5001, 12345 };
	char h[HK_PASSWD_HASH_SIZE], want[32];
	(void)state;

	for (size_t i = 0; i < sizeof(rounds) / sizeof(rounds[0]); i++) {
		/* 5000 too, which libxcrypt would leave implicit. */
		snprintf(want, sizeof(want), "$6$rounds=%u$", rounds[i]);
		assert_int_equal(hk_passwd_hash("pw", rounds[i], h, sizeof(h)), 0);
		if (strncmp(h, want, strlen(want)) != 0)
			fail_msg("rounds %u gave %s", rounds[i], h);
		assert_true(hk_passwd_verify("pw", h));
	}
	errno = 0;
	assert_int_equal(hk_passwd_hash("pw", 999, h, sizeof(h)), -1);
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_int_equal(hk_passwd_hash("pw", HK_PASSWD_MAX_ROUNDS + 1, h, sizeof(h)), -1);
	assert_int_equal(errno, EINVAL);
}

static void
test_hash_errors(void **state)
{
	char h[HK_PASSWD_HASH_SIZE], small[40], pw[HK_PASSWD_MAX_LEN + 2];
	(void)state;

	errno = 0;
	assert_int_equal(hk_passwd_hash("", CHEAP, h, sizeof(h)), -1);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(hk_passwd_hash(NULL, CHEAP, h, sizeof(h)), -1);
	errno = 0;
	assert_int_equal(hk_passwd_hash("pw", CHEAP, small, sizeof(small)), -1);
	assert_int_equal(errno, ERANGE);

	memset(pw, 'x', HK_PASSWD_MAX_LEN);
	pw[HK_PASSWD_MAX_LEN] = '\0';
	assert_int_equal(hk_passwd_hash(pw, CHEAP, h, sizeof(h)), 0);
	assert_true(hk_passwd_verify(pw, h));
	pw[HK_PASSWD_MAX_LEN] = 'x';
	pw[HK_PASSWD_MAX_LEN + 1] = '\0';
	errno = 0;
	assert_int_equal(hk_passwd_hash(pw, CHEAP, h, sizeof(h)), -1);
	assert_int_equal(errno, ERANGE);
	assert_false(hk_passwd_verify(pw, h)); /* too long is false, not a crash */
}

static void
test_salts_differ(void **state)
{
	char a[HK_PASSWD_HASH_SIZE], b[HK_PASSWD_HASH_SIZE];
	(void)state;

	assert_int_equal(hk_passwd_hash("same", CHEAP, a, sizeof(a)), 0);
	assert_int_equal(hk_passwd_hash("same", CHEAP, b, sizeof(b)), 0);
	assert_string_not_equal(a, b);
	/* The salt itself differs, not only the digest: 16 characters each. */
	const char *sa = a + 15, *sb = b + 15;
	assert_int_equal(strcspn(sa, "$"), 16);
	assert_int_equal(strcspn(sb, "$"), 16);
	assert_memory_not_equal(sa, sb, 16);
	assert_true(hk_passwd_verify("same", a));
	assert_true(hk_passwd_verify("same", b));
}

/* Changing any one character anywhere (rounds, salt, digest) must not verify. */
static void
test_tampered(void **state)
{
	char h[HK_PASSWD_HASH_SIZE], t[HK_PASSWD_HASH_SIZE + 2];
	(void)state;

	assert_int_equal(hk_passwd_hash("pw", CHEAP, h, sizeof(h)), 0);
	for (size_t i = 0; h[i] != '\0'; i++) {
		strcpy(t, h);
		t[i] = t[i] == 'A' ? 'B' : 'A';
		if (hk_passwd_verify("pw", t))
			fail_msg("tampered at %zu still verifies: %s", i, t);
	}
	strcpy(t, h);
	t[strlen(t) - 1] = '\0';
	assert_false(hk_passwd_verify("pw", t));
	assert_false(hk_passwd_hash_ok(t));
	snprintf(t, sizeof(t), "%sA", h);
	assert_false(hk_passwd_verify("pw", t));
	assert_false(hk_passwd_hash_ok(t));
	snprintf(t, sizeof(t), "%s\n", h);
	assert_false(hk_passwd_verify("pw", t));
}

static void
test_garbage(void **state)
{
	static const char *const bad[] = {
		"", "$", "$6", "$6$", "$6$$", "$6$rounds=x$", "$6$rounds=$", "$6$rounds=1000$",
		"$6$rounds=1000$salt", "$6$rounds=1000$salt$", "$6$rounds=1000$salt$short",
		"$6$rounds=01000$saltsalt$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"$6$rounds=999$saltsalt$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"$6$rounds=1000000000$saltsalt$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"$6$rounds=1000$salt!salt$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"$6$rounds=1000$saltsaltsaltsalts$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"$6$rounds=1000$$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"$1$saltsalt$qjXMvbEw8oaL.CzflDugX/",         /* MD5 crypt: refused kind */
		"abJnggxhB/yWI",                             /* DES */
		"$5$saltsalt$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
		"*", "*0", "!", "!!", "x",
		"$y$", "$y$j9T$", "$y$j9T$$", "$y$j9T$salt$", "$y$j9T$salt$tooshort",
		"$2b$", "$2b$05$", "$2b$5$abcdefghijklmnopqrstuuHIrMEWpUCQe2YqFR3sXwQ75u4od..9q",
		"$2b$03$abcdefghijklmnopqrstuuHIrMEWpUCQe2YqFR3sXwQ75u4od..9q",  /* cost < 4 */
		"$2b$05$abcdefghijklmnopqrstuvHIrMEWpUCQe2YqFR3sXwQ75u4od..9q",  /* salt not canonical */
		"$2a$05$abcdefghijklmnopqrstuuHIrMEWpUCQe2YqFR3sXwQ75u4od..9q",  /* $2a$: not accepted */
	};
	char *big = malloc(10241);
	(void)state;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (hk_passwd_hash_ok(bad[i]))
			fail_msg("hash_ok accepts '%s'", bad[i]);
		if (hk_passwd_verify("pw", bad[i]) || hk_passwd_verify("", bad[i]))
			fail_msg("verify accepts '%s'", bad[i]);
	}
	assert_false(hk_passwd_hash_ok(NULL));
	assert_false(hk_passwd_verify("pw", NULL));
	assert_false(hk_passwd_verify(NULL, NULL));

	/* 10 KB strings: plain, and shaped like each kind with a huge field. */
	static const char *const shapes[] = { "", "$6$", "$6$rounds=1000$", "$6$rounds=1000$salt$",
					      "$y$j9T$", "$y$j9T$salt$", "$2b$05$" };
	for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
		memset(big, 'a', 10240);
		big[10240] = '\0';
		memcpy(big, shapes[i], strlen(shapes[i]));
		assert_false(hk_passwd_hash_ok(big));
		assert_false(hk_passwd_verify("pw", big));
		assert_false(hk_passwd_verify(big, big));
	}
	free(big);
}

/* yescrypt and bcrypt hashes (made by libxcrypt itself) verify too. */
static void
test_other_kinds(void **state)
{
	static const char *const prefixes[] = { "$y$", "$2b$" };
	char h[CRYPT_OUTPUT_SIZE], t[CRYPT_OUTPUT_SIZE];
	(void)state;

	for (size_t i = 0; i < 2; i++) {
		crypt_hash(prefixes[i], "other kind", h);
		assert_true(hk_passwd_hash_ok(h));
		assert_true(hk_passwd_verify("other kind", h));
		assert_false(hk_passwd_verify("other kinD", h));
		strcpy(t, h);
		t[strlen(t) - 2] = t[strlen(t) - 2] == 'A' ? 'B' : 'A';
		assert_false(hk_passwd_verify("other kind", t));
	}
	/* SHA-512 crypt with the implicit default cost (no "rounds="), as
	 * other tools write it. */
	crypt_hash("$6$", "implicit", h);
	assert_null(strstr(h, "rounds="));
	assert_true(hk_passwd_hash_ok(h));
	assert_true(hk_passwd_verify("implicit", h));
	/* bcrypt's own well-known vector (OpenBSD, "U*U"). */
	assert_true(hk_passwd_verify("U*U", "$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"));
	assert_false(hk_passwd_verify("U*V", "$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"));
}

static void *
verify_many(void *arg)
{
	const char *h = arg;

	for (int i = 0; i < 10; i++)
		if (!hk_passwd_verify("threads", h) || hk_passwd_verify("threadz", h))
			return (void *)1;
	return NULL;
}

/* Callers verify on uv_queue_work threads: several at once must agree. */
static void
test_threads(void **state)
{
	char h[HK_PASSWD_HASH_SIZE];
	pthread_t th[4];
	void *bad;
	(void)state;

	assert_int_equal(hk_passwd_hash("threads", CHEAP, h, sizeof(h)), 0);
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&th[i], NULL, verify_many, h), 0);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(th[i], &bad), 0);
		assert_null(bad);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hash_verify),
		cmocka_unit_test(test_default_rounds),
		cmocka_unit_test(test_rounds_honoured),
		cmocka_unit_test(test_hash_errors),
		cmocka_unit_test(test_salts_differ),
		cmocka_unit_test(test_tampered),
		cmocka_unit_test(test_garbage),
		cmocka_unit_test(test_other_kinds),
		cmocka_unit_test(test_threads),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
