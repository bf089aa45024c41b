/*
 * hk_passwd - crypt(3) password hashes through libxcrypt's reentrant calls
 * (crypt_rn, crypt_gensalt_rn), so verifications may run on several worker
 * threads at once.
 *
 * Only three kinds are accepted, and each is checked for syntax before
 * libxcrypt sees it: that keeps weak legacy kinds (DES, MD5) out of the
 * configuration, and lets hk_passwd_hash_ok() catch a mangled hash at
 * start-up without the cost of hashing (yescrypt's parameter encoding is the
 * one part left to libxcrypt).
 */
#include <crypt.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hk_passwd.h"
#include "hk_util.h"

/* The alphabet of crypt(3)'s base64; bcrypt uses the same characters in another order. */
static const char b64[] = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static size_t
b64_span(const char *s)
{
	return strspn(s, b64);
}

/* sha512_ok - after "$6$": [rounds=R$]salt$hash, salt 1-16 characters, hash 86. */
static bool
sha512_ok(const char *p)
{
	size_t n;

	if (strncmp(p, "rounds=", 7) == 0) {
		p += 7;
		n = strspn(p, "0123456789");
		/* The counts libxcrypt takes: no leading zero, 1000 to 999999999. */
		if (n == 0 || n > 9 || p[0] == '0' || p[n] != '$')
			return false;
		unsigned long rounds = strtoul(p, NULL, 10);
		if (rounds < HK_PASSWD_MIN_ROUNDS || rounds > HK_PASSWD_MAX_ROUNDS)
			return false;
		p += n + 1;
	}
	/* A longer salt is silently cut to 16, so such a hash could never match. */
	n = b64_span(p);
	if (n < 1 || n > 16 || p[n] != '$')
		return false;
	p += n + 1;
	return b64_span(p) == 86 && p[86] == '\0';
}

/* yescrypt_ok - after "$y$": params$salt$hash, hash 43 characters. The
 * parameters' encoding is left to libxcrypt (verify fails on bad ones). */
static bool
yescrypt_ok(const char *p)
{
	size_t n = b64_span(p);

	if (n < 1 || p[n] != '$')
		return false;
	p += n + 1;
	n = b64_span(p);
	if (n < 1 || n > 86 || p[n] != '$')
		return false;
	p += n + 1;
	return b64_span(p) == 43 && p[43] == '\0';
}

/* bcrypt_ok - after "$2b$": cost (04-31) $ 22 salt + 31 hash characters. */
static bool
bcrypt_ok(const char *p)
{
	if (p[0] < '0' || p[0] > '9' || p[1] < '0' || p[1] > '9' || p[2] != '$')
		return false;
	int cost = (p[0] - '0') * 10 + (p[1] - '0');
	if (cost < 4 || cost > 31)
		return false;
	p += 3;
	/* The salt's last character carries 2 bits; any other value is
	 * rewritten by crypt, and the result would never equal the hash. */
	return b64_span(p) == 53 && p[53] == '\0' && strchr(".Oeu", p[21]) != NULL;
}

bool
hk_passwd_hash_ok(const char *hash)
{
	if (hash == NULL || strnlen(hash, CRYPT_OUTPUT_SIZE) >= CRYPT_OUTPUT_SIZE)
		return false;
	if (strncmp(hash, "$6$", 3) == 0)
		return sha512_ok(hash + 3);
	if (strncmp(hash, "$y$", 3) == 0)
		return yescrypt_ok(hash + 3);
	if (strncmp(hash, "$2b$", 4) == 0)
		return bcrypt_ok(hash + 4);
	return false;
}

/* ct_equal - compare without an early exit, so the time taken does not say
 * how long a prefix of a guess's hash matched. */
static bool
ct_equal(const char *a, const char *b, size_t n)
{
	volatile unsigned char diff = 0;

	for (size_t i = 0; i < n; i++)
		diff |= (unsigned char)(a[i] ^ b[i]);
	return diff == 0;
}

/* hash_with - crypt_rn into a heap crypt_data (32 KB, kept off worker
 * stacks), wiped afterwards: it held the password. Copies into OUT. */
static int
hash_with(const char *password, const char *setting, char *out, size_t outlen)
{
	struct crypt_data *cd = xcalloc(1, sizeof(*cd));
	const char *res = crypt_rn(password, setting, cd, sizeof(*cd));
	int err = 0;

	if (res == NULL)
		err = errno;
	else if (strlen(res) >= outlen)
		err = ERANGE;
	else
		memcpy(out, res, strlen(res) + 1);
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	if (err != 0) {
		errno = err;
		return -1;
	}
	return 0;
}

int
hk_passwd_hash(const char *password, unsigned rounds, char *out, size_t outlen)
{
	char setting[CRYPT_GENSALT_OUTPUT_SIZE], with_rounds[CRYPT_GENSALT_OUTPUT_SIZE];
	char rnd[16]; /* SHA-512 crypt uses 12 (16 salt characters); the rest is ignored */

	if (rounds == 0)
		rounds = HK_PASSWD_DEFAULT_ROUNDS;
	if (password == NULL || *password == '\0' || rounds < HK_PASSWD_MIN_ROUNDS ||
	    rounds > HK_PASSWD_MAX_ROUNDS) {
		errno = EINVAL;
		return -1;
	}
	if (strlen(password) > HK_PASSWD_MAX_LEN) {
		errno = ERANGE;
		return -1;
	}
	if (hk_random(rnd, sizeof(rnd)) != 0)
		return -1;
	if (crypt_gensalt_rn("$6$", rounds, rnd, (int)sizeof(rnd), setting, (int)sizeof(setting)) == NULL)
		return -1;
	/* libxcrypt leaves "rounds=" out at SHA-512 crypt's historic default
	 * (5000); put it back so every hash we write has one format. */
	if (strncmp(setting, "$6$rounds=", 10) != 0) {
		int n = snprintf(with_rounds, sizeof(with_rounds), "$6$rounds=%u$%s", rounds, setting + 3);
		if (n < 0 || (size_t)n >= sizeof(with_rounds)) {
			errno = ERANGE; /* not with libxcrypt's 16-character salts */
			return -1;
		}
		memcpy(setting, with_rounds, sizeof(setting));
	}
	return hash_with(password, setting, out, outlen);
}

bool
hk_passwd_verify(const char *password, const char *hash)
{
	char out[CRYPT_OUTPUT_SIZE];

	/* An empty password never authenticates, whatever hash was configured. */
	if (password == NULL || *password == '\0' || !hk_passwd_hash_ok(hash))
		return false;
	if (hash_with(password, hash, out, sizeof(out)) != 0)
		return false;
	/* The lengths are not secret: both come from the hash's kind. */
	size_t n = strlen(hash);
	return strlen(out) == n && ct_equal(out, hash, n);
}
