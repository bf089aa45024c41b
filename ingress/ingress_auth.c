/*
 * ingress_auth - SASL PLAIN/LOGIN decoding, credential lookup, password
 * checks on the thread pool and their cache.
 *
 * A check is a job: queued, then run on a pool thread (hk_passwd_verify, the
 * only thing a pool thread touches, on the job's own copies), then finished
 * on the loop, where the cache is updated and the caller called back unless
 * it cancelled. At most max_running jobs are on the pool at once; the others
 * wait in order. The object may be destroyed while jobs are out: it is freed
 * when the last one comes back.
 */
/* System */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Third-party */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <uv.h>

/* common/ */
#include "hk_passwd.h"
#include "hk_util.h"

/* This role */
#include "ingress_auth.h"

#define AUTH_CACHE_MAX 1024

struct cred {
	const char *user;
	const char *hash;
	const struct hk_tenant_conf *tenant;
};

struct cache_entry {
	unsigned char key[32];  /* SHA-256(user NUL password NUL hash) */
	uint64_t expires;       /* uv_now() ms */
	const struct hk_tenant_conf *tenant;
};

struct ingress_auth_job {
	uv_work_t work;
	ingress_auth *a;
	ingress_auth_job *next; /* waiting list */
	char *password;         /* wiped when done */
	const char *hash;       /* the user's, or a stand-in for an unknown user */
	const struct hk_tenant_conf *tenant; /* NULL for an unknown user */
	unsigned char key[32];
	bool ok;
	ingress_auth_cb cb;     /* NULL once cancelled */
	void *arg;
};

struct ingress_auth {
	uv_loop_t *loop;
	struct cred *creds;
	size_t n_creds;
	unsigned max_running, running;
	size_t jobs;            /* waiting or running */
	ingress_auth_job *wait_head, *wait_tail;
	uint64_t cache_ms;
	struct cache_entry cache[AUTH_CACHE_MAX];
	size_t n_cache;
	bool destroyed;
};

/* --- base64 and SASL ----------------------------------------------------- */

static int
b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z') return c - 'A';
	if (c >= 'a' && c <= 'z') return c - 'a' + 26;
	if (c >= '0' && c <= '9') return c - '0' + 52;
	if (c == '+') return 62;
	if (c == '/') return 63;
	return -1;
}

int
ingress_b64_decode(const char *in, char *out, size_t cap)
{
	size_t len = strlen(in), n = 0;

	if (strcmp(in, "=") == 0) {
		if (cap == 0)
			return -1;
		out[0] = '\0';
		return 0;
	}
	if (len == 0 || len % 4 != 0)
		return -1;
	for (size_t i = 0; i < len; i += 4) {
		int v[4], pad = 0;
		for (int j = 0; j < 4; j++) {
			unsigned char c = (unsigned char)in[i + j];
			if (c == '=' && i + 4 == len && j >= 2) {
				v[j] = 0;
				pad++;
				continue;
			}
			if (pad > 0 || (v[j] = b64_value(c)) < 0)
				return -1;
		}
		uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
		/* Canonical encoding only: the bits under the padding are zero. */
		if ((pad == 1 && (w & 0xff)) || (pad == 2 && (w & 0xffff)))
			return -1;
		if (n + 3 - (size_t)pad >= cap)
			return -1;
		out[n++] = (char)(w >> 16);
		if (pad < 2)
			out[n++] = (char)(w >> 8 & 0xff);
		if (pad < 1)
			out[n++] = (char)(w & 0xff);
	}
	out[n] = '\0';
	return (int)n;
}

void
ingress_b64_encode(const void *in, size_t n, char *out, size_t cap)
{
	if (cap < 4 * ((n + 2) / 3) + 1) {
		if (cap > 0)
			out[0] = '\0';
		return;
	}
	EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

int
ingress_sasl_plain(const char *b64, char user[INGRESS_AUTH_USER_MAX + 1],
    char pass[INGRESS_AUTH_PASS_MAX + 1])
{
	char buf[INGRESS_AUTH_USER_MAX * 2 + INGRESS_AUTH_PASS_MAX + 4];
	const char *authzid, *authcid, *passwd;
	int n, rc = INGRESS_SASL_OK;

	if ((n = ingress_b64_decode(b64, buf, sizeof(buf))) < 0)
		return strlen(b64) * 3 / 4 >= sizeof(buf) ? INGRESS_SASL_MALFORMED : INGRESS_SASL_BAD_BASE64;
	/* authzid NUL authcid NUL passwd (RFC 4616 2) */
	authzid = buf;
	authcid = memchr(buf, '\0', (size_t)n);
	passwd = authcid ? memchr(authcid + 1, '\0', (size_t)(buf + n - authcid - 1)) : NULL;
	if (authcid == NULL || passwd == NULL || memchr(passwd + 1, '\0', (size_t)(buf + n - passwd - 1)))
		rc = INGRESS_SASL_MALFORMED;
	else if (strlen(++authcid) > INGRESS_AUTH_USER_MAX || strlen(++passwd) > INGRESS_AUTH_PASS_MAX ||
	    *authcid == '\0' || *passwd == '\0')
		rc = INGRESS_SASL_MALFORMED;
	else if (*authzid != '\0' && strcmp(authzid, authcid) != 0)
		rc = INGRESS_SASL_AUTHZID;
	else {
		strcpy(user, authcid);
		strcpy(pass, passwd);
	}
	OPENSSL_cleanse(buf, sizeof(buf));
	return rc;
}

int
ingress_sasl_field(const char *b64, char *out, size_t cap)
{
	int n = ingress_b64_decode(b64, out, cap);

	if (n < 0)
		return strlen(b64) * 3 / 4 >= cap ? INGRESS_SASL_MALFORMED : INGRESS_SASL_BAD_BASE64;
	if (n == 0 || memchr(out, '\0', (size_t)n)) {
		OPENSSL_cleanse(out, cap);
		return INGRESS_SASL_MALFORMED;
	}
	return INGRESS_SASL_OK;
}

/* --- cache ----------------------------------------------------------------- */

static void
cache_key(const char *user, const char *password, const char *hash, unsigned char key[32])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned int len = 32;

	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	EVP_DigestUpdate(md, user, strlen(user) + 1);
	EVP_DigestUpdate(md, password, strlen(password) + 1);
	EVP_DigestUpdate(md, hash, strlen(hash));
	EVP_DigestFinal_ex(md, key, &len);
	EVP_MD_CTX_free(md);
}

static const struct hk_tenant_conf *
cache_get(ingress_auth *a, const unsigned char key[32])
{
	uint64_t now = uv_now(a->loop);

	for (size_t i = 0; i < a->n_cache; i++)
		if (a->cache[i].expires > now && CRYPTO_memcmp(a->cache[i].key, key, 32) == 0)
			return a->cache[i].tenant;
	return NULL;
}

static void
cache_put(ingress_auth *a, const unsigned char key[32], const struct hk_tenant_conf *t)
{
	uint64_t now = uv_now(a->loop);
	size_t slot = a->n_cache;

	/* The same key again, an expired entry, or the one closest to expiry. */
	for (size_t i = 0; i < a->n_cache; i++) {
		if (a->cache[i].expires <= now || CRYPTO_memcmp(a->cache[i].key, key, 32) == 0) {
			slot = i;
			break;
		}
	}
	if (slot == AUTH_CACHE_MAX) {
		slot = 0;
		for (size_t i = 1; i < a->n_cache; i++)
			if (a->cache[i].expires < a->cache[slot].expires)
				slot = i;
	}
	if (slot == a->n_cache)
		a->n_cache++;
	memcpy(a->cache[slot].key, key, 32);
	a->cache[slot].expires = now + a->cache_ms;
	a->cache[slot].tenant = t;
}

/* --- jobs ------------------------------------------------------------------- */

static void auth_start_waiting(ingress_auth *a);

static void
auth_free(ingress_auth *a)
{
	OPENSSL_cleanse(a->cache, sizeof(a->cache));
	free(a->creds);
	free(a);
}

/* Pool thread: only the job's own fields. */
static void
on_work(uv_work_t *w)
{
	ingress_auth_job *j = w->data;

	j->ok = hk_passwd_verify(j->password, j->hash) && j->tenant != NULL;
}

static void
on_work_done(uv_work_t *w, int status)
{
	ingress_auth_job *j = w->data;
	ingress_auth *a = j->a;
	const struct hk_tenant_conf *t = status == 0 && j->ok ? j->tenant : NULL;

	OPENSSL_cleanse(j->password, strlen(j->password));
	free(j->password);
	a->running--;
	a->jobs--;
	if (a->destroyed) {
		if (a->jobs == 0)
			auth_free(a);
		else
			auth_start_waiting(a);
		free(j);
		return;
	}
	if (t != NULL)
		cache_put(a, j->key, t);
	OPENSSL_cleanse(j->key, sizeof(j->key));
	auth_start_waiting(a);
	if (j->cb)
		j->cb(j->arg, t);
	free(j);
}

static void
auth_start_waiting(ingress_auth *a)
{
	while (a->running < a->max_running && a->wait_head != NULL) {
		ingress_auth_job *j = a->wait_head;
		a->wait_head = j->next;
		if (a->wait_head == NULL)
			a->wait_tail = NULL;
		a->running++;
		/* uv_queue_work only fails for a NULL work_cb. */
		uv_queue_work(a->loop, &j->work, on_work, on_work_done);
	}
}

ingress_auth *
ingress_auth_new(uv_loop_t *loop, const struct hk_config *cfg, unsigned max_running, uint64_t cache_ms)
{
	ingress_auth *a = xcalloc(1, sizeof(*a));
	size_t n = 0;

	a->loop = loop;
	a->max_running = max_running ? max_running : 1;
	a->cache_ms = cache_ms;
	for (size_t i = 0; i < cfg->n_tenants; i++)
		n += cfg->tenants[i].n_credentials;
	a->creds = xcalloc(n ? n : 1, sizeof(*a->creds));
	for (size_t i = 0; i < cfg->n_tenants; i++) {
		const struct hk_tenant_conf *t = &cfg->tenants[i];
		for (size_t j = 0; j < t->n_credentials; j++)
			a->creds[a->n_creds++] = (struct cred){ t->credentials[j].user, t->credentials[j].hash, t };
	}
	return a;
}

void
ingress_auth_destroy(ingress_auth **ap)
{
	ingress_auth *a = *ap;

	if (a == NULL)
		return;
	*ap = NULL;
	/* Waiting jobs never ran: drop them now. */
	while (a->wait_head) {
		ingress_auth_job *j = a->wait_head;
		a->wait_head = j->next;
		OPENSSL_cleanse(j->password, strlen(j->password));
		free(j->password);
		free(j);
		a->jobs--;
	}
	a->wait_tail = NULL;
	a->destroyed = true;
	if (a->jobs == 0)
		auth_free(a);
}

size_t
ingress_auth_users(const ingress_auth *a)
{
	return a->n_creds;
}

int
ingress_auth_check(ingress_auth *a, const char *user, const char *password,
    ingress_auth_cb cb, void *arg, ingress_auth_job **jobp, const struct hk_tenant_conf **tenant)
{
	const struct cred *c = NULL;
	ingress_auth_job *j;

	*jobp = NULL;
	*tenant = NULL;
	for (size_t i = 0; i < a->n_creds; i++) {
		if (strcmp(a->creds[i].user, user) == 0) {
			c = &a->creds[i];
			break;
		}
	}
	j = xcalloc(1, sizeof(*j));
	j->a = a;
	j->work.data = j;
	j->cb = cb;
	j->arg = arg;
	if (c != NULL) {
		j->hash = c->hash;
		j->tenant = c->tenant;
		cache_key(user, password, c->hash, j->key);
		if ((*tenant = cache_get(a, j->key)) != NULL) {
			OPENSSL_cleanse(j->key, sizeof(j->key));
			free(j);
			return 1;
		}
	} else {
		/* An unknown user costs what a known one does (any real hash will do;
		 * with no users at all there is no one to find out about). */
		j->hash = a->n_creds ? a->creds[0].hash : "";
	}
	j->password = xstrdup(password);
	if (a->wait_tail)
		a->wait_tail->next = j;
	else
		a->wait_head = j;
	a->wait_tail = j;
	a->jobs++;
	auth_start_waiting(a);
	*jobp = j;
	return 0;
}

void
ingress_auth_cancel(ingress_auth_job *j)
{
	if (j != NULL)
		j->cb = NULL;
}
