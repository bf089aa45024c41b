/*
 * hk_passwd - salted, deliberately slow password hashes (crypt(3) strings,
 * libxcrypt). New hashes are SHA-512 crypt "$6$rounds=R$<salt>$<hash>";
 * verification also takes yescrypt ("$y$") and bcrypt ("$2b$"). Passwords
 * are never stored, only these strings. Every function is thread-safe.
 */
#ifndef HK_PASSWD_H
#define HK_PASSWD_H

#include <stdbool.h>
#include <stddef.h>

#define HK_PASSWD_DEFAULT_ROUNDS 100000u
#define HK_PASSWD_MIN_ROUNDS 1000u      /* SHA-512 crypt's own bounds */
#define HK_PASSWD_MAX_ROUNDS 999999999u
#define HK_PASSWD_MAX_LEN 511           /* longest password in bytes (libxcrypt's limit) */
#define HK_PASSWD_HASH_SIZE 128         /* room for any hash hk_passwd_hash writes, NUL included */

/* hk_passwd_hash - a new "$6$rounds=R$<salt>$<hash>" string for PASSWORD with a random salt
 * (from getrandom via crypt_gensalt_rn). rounds 0 = default (HK_PASSWD_DEFAULT_ROUNDS = 100000).
 * Returns 0, or -1 with errno set: EINVAL for an empty password or rounds out of range,
 * ERANGE for a password longer than HK_PASSWD_MAX_LEN or OUTLEN too small
 * (HK_PASSWD_HASH_SIZE is always enough). */
int hk_passwd_hash(const char *password, unsigned rounds, char *out, size_t outlen);

/* hk_passwd_verify - true iff PASSWORD matches HASH (a crypt(3) string this library supports);
 * compares in constant time; a malformed or unsupported hash is false (never crashes), and so
 * is an empty or NULL password. Slow by design (milliseconds): callers run it off their event
 * loop (uv_queue_work). To not reveal which users exist, verify unknown users against a
 * dummy hash of the same kind rather than answering at once.
 * bcrypt only looks at the first 72 bytes of a password. */
bool hk_passwd_verify(const char *password, const char *hash);

/* hk_passwd_hash_ok - is HASH a well-formed hash we can verify? (config validation; names no
 * secret). Checks the syntax of the three supported kinds without hashing, so it is fast. */
bool hk_passwd_hash_ok(const char *hash);

#endif
