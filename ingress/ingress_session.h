/*
 * ingress_session - one inbound ESMTP dialogue, from the greeting to the
 * close, as a state machine (see ingress_session.c for the states).
 *
 * A session owns its TCP handle and one timer. It talks to the rest of the
 * node only through struct ingress_env: it hands a finished transaction to
 * env->submit() and waits, without executing further commands, until the
 * node calls ingress_session_submitted() or the submit timeout fires.
 */
#ifndef INGRESS_SESSION_H
#define INGRESS_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "hk_config.h"
#include "hk_id.h"
#include "hk_rate.h"
#include "ingress_auth.h"

typedef struct ingress_session ingress_session;

struct ingress_rcpt {
	char *addr;             /* local@domain, domain canonical */
	char **params;          /* "KEY=VALUE", verbatim */
	size_t n_params;
};

/* A transaction ready to be queued; everything points into the session and
 * is valid only during the env->submit() call. */
struct ingress_txn {
	const char *id;
	const char *tenant;     /* the authenticated tenant, or network_tenant */
	const char *pool;       /* the tenant's IP pool */
	const char *mail_from;  /* "" for the null sender */
	char *const *mail_params;
	size_t n_mail_params;
	const struct ingress_rcpt *rcpts;
	size_t n_rcpts;
	const char *body;       /* Received header + message, CRLF, not dot-stuffed */
	size_t body_len;
	int64_t received_at_ms;
	const char *client_address;
};

/* What a session needs from its node. Owned by the node; outlives every
 * session (the node waits for all of them to close before freeing it). */
struct ingress_env {
	const struct hk_ingress_conf *conf;
	const char *node_name;
	hk_idgen *idgen;
	/* The server context for new TLS sessions, or NULL without tls:. The
	 * node may swap it (certificate reload); a session that started TLS
	 * keeps the context it started with. */
	SSL_CTX *tls_ctx;
	/* Sessions of every listener, against conf->max_sessions (NULL: each
	 * listener counts its own). */
	size_t *n_sessions;
	/* Credentials and password checks for AUTH; NULL: AUTH is not offered. */
	ingress_auth *auth;
	/* Open sessions per client IP key (ingress_limits_ip_key), every
	 * listener's, against conf->max_sessions_per_ip; NULL: no limit. */
	hk_count *ip_sessions;
	/* Failed AUTH per client IP key: a bucket of conf->auth_failure_limit
	 * per auth_failure_window; an empty bucket blocks the IP. NULL: none. */
	hk_rate *auth_failures;
	/* submit - send TXN to a router. On 0 the answer comes later through
	 * ingress_session_submitted(s, ...) unless cancel(req_id) is called
	 * first; otherwise a negative errno (-EAGAIN: no router connected). */
	int (*submit)(void *arg, ingress_session *s, const struct ingress_txn *txn, uint64_t *req_id);
	/* cancel - forget a pending request: the session gave up on it. */
	void (*cancel)(void *arg, uint64_t req_id);
	/* admit - may tenant T start a message now (its rate_limit)? If not,
	 * *retry_ms says when. NULL: no limits. */
	bool (*admit)(void *arg, const struct hk_tenant_conf *t, uint64_t *retry_ms);
	void *arg;
};

typedef void (*ingress_session_closed_cb)(ingress_session *s, void *arg);

/*
 * ingress_session_new - a session whose TCP handle is initialised on LOOP,
 * ready for uv_accept(server, ingress_session_stream(s)), speaking as
 * listener LCONF says (relay, submission, smtps; both outlive it). Call
 * ingress_session_start() after a successful accept, or
 * ingress_session_close() if it failed. CLOSED is called once, just before
 * the session is freed.
 */
ingress_session *ingress_session_new(uv_loop_t *loop, const struct ingress_env *env,
    const struct hk_listener_conf *lconf, ingress_session_closed_cb closed, void *arg);

uv_stream_t *ingress_session_stream(ingress_session *s);

/* ingress_session_start - send the greeting (smtps: start the TLS
 * handshake first) and start the dialogue. */
void ingress_session_start(ingress_session *s);

/* ingress_session_submitted - the router's answer to the pending request.
 * The caller has already removed it from its wait table. BUSY (only when
 * !ok): the router refused it over a cap (Refusal REFUSAL_BUSY), answered
 * 451 4.3.2; any other refusal is 451 4.3.0 with REASON. */
void ingress_session_submitted(ingress_session *s, bool ok, bool busy, const char *reason);

/*
 * ingress_session_close - close every handle now, dropping unsent replies
 * and cancelling a pending request; the session is freed from the last
 * close callback. Safe to call more than once and from the session's own
 * callbacks. If GOODBYE is not NULL it is written first, best effort.
 */
void ingress_session_close(ingress_session *s, const char *reason, const char *goodbye);

#endif
