/*
 * ingress_auth - SMTP AUTH for the ingress: the SASL PLAIN and LOGIN
 * encodings (RFC 4616, RFC 4954), the credentials of every tenant, and the
 * password check, which is slow on purpose and so runs on libuv's thread
 * pool. Successful checks are remembered for a short time, keyed by a
 * SHA-256 of (user, password, hash), so that a client reconnecting often does
 * not pay for the hash each time; failures are never cached.
 *
 * Passwords are copied only into the job that checks them and wiped
 * (OPENSSL_cleanse) when it is done; callers wipe their own copies.
 */
#ifndef INGRESS_AUTH_H
#define INGRESS_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "hk_config.h"

#define INGRESS_AUTH_USER_MAX 255
#define INGRESS_AUTH_PASS_MAX 511

/* --- SASL encodings (pure) ----------------------------------------------- */

enum {
	INGRESS_SASL_OK = 0,
	INGRESS_SASL_BAD_BASE64 = -1,  /* 501 5.5.2 */
	INGRESS_SASL_MALFORMED = -2,   /* 501 5.5.2: not authzid NUL authcid NUL passwd, or too long */
	INGRESS_SASL_AUTHZID = -3,     /* 535 5.7.8: authzid is neither empty nor the authcid */
};

/* ingress_b64_decode - strict base64 (RFC 4648, padding required, no
 * blanks) of IN into out[0..cap); "=" alone is the empty string (RFC 4954
 * 4). Returns the length, or -1 if malformed or longer than cap - 1. out is
 * NUL-terminated. */
int ingress_b64_decode(const char *in, char *out, size_t cap);

/* ingress_b64_encode - base64 of in[0..n) into out (cap >= 4 * ((n + 2) / 3) + 1). */
void ingress_b64_encode(const void *in, size_t n, char *out, size_t cap);

/* ingress_sasl_plain - decode an AUTH PLAIN response into user and password
 * (NUL-terminated). One of INGRESS_SASL_*. */
int ingress_sasl_plain(const char *b64, char user[INGRESS_AUTH_USER_MAX + 1],
    char pass[INGRESS_AUTH_PASS_MAX + 1]);

/* ingress_sasl_field - decode one AUTH LOGIN response (user name or
 * password, no NUL inside allowed) into out. One of INGRESS_SASL_*. */
int ingress_sasl_field(const char *b64, char *out, size_t cap);

/* --- credentials and checks ---------------------------------------------- */

typedef struct ingress_auth ingress_auth;
typedef struct ingress_auth_job ingress_auth_job;

/* The result of a check: the user's tenant, or NULL if the check failed. */
typedef void (*ingress_auth_cb)(void *arg, const struct hk_tenant_conf *tenant);

/*
 * ingress_auth_new - the credentials of every tenant in CFG (which outlives
 * the object); checks run on LOOP's thread pool, at most MAX_RUNNING at a
 * time (the pool is shared with the sender's commits in `hikyaku all`), and
 * successes are cached for CACHE_MS. Caller destroys it.
 */
ingress_auth *ingress_auth_new(uv_loop_t *loop, const struct hk_config *cfg,
    unsigned max_running, uint64_t cache_ms);

/* ingress_auth_destroy - free now, or when the last check in flight returns
 * (their callbacks are not called any more). NULLs the caller's pointer. */
void ingress_auth_destroy(ingress_auth **a);

/* ingress_auth_users - how many user names are configured. */
size_t ingress_auth_users(const ingress_auth *a);

/*
 * ingress_auth_check - is PASSWORD right for USER? Returns 1 with *tenant
 * set when a cached success answers at once. Otherwise returns 0 and *job:
 * CB(ARG, tenant or NULL) is called later on the loop, unless
 * ingress_auth_cancel(*job) is called first. An unknown user is checked
 * against a real hash too, so that the answer takes as long.
 */
int ingress_auth_check(ingress_auth *a, const char *user, const char *password,
    ingress_auth_cb cb, void *arg, ingress_auth_job **job, const struct hk_tenant_conf **tenant);

/* ingress_auth_cancel - the caller no longer waits: CB will not be called. */
void ingress_auth_cancel(ingress_auth_job *job);

#endif
