/*
 * sender_smtp - the outbound SMTP client: one mail transaction, to the first
 * of a list of MX addresses that will talk, on a new connection or on one
 * kept open from an earlier transaction (a pool, as Postfix's scache).
 *
 * Written as a state table (enter-state sends the command, the reply chooses
 * the next state). Tries the addresses in order until one answers the greeting
 * with 2xx; then EHLO (falling back to HELO), MAIL FROM, one RCPT per
 * recipient (pipelined when PIPELINING is offered), DATA with dot-stuffing.
 * The client's MAIL/RCPT parameters are relayed as the server allows: a
 * message that needs SMTPUTF8 (550 5.6.7) or BINARYMIME with CHUNKING (554
 * 5.6.3, sent with BDAT) fails permanently at a server without them; DSN
 * parameters (RET, ENVID, NOTIFY, ORCPT) go only to a server that offers DSN
 * (RFC 3461 5.2: without it, DSNs would be ours to send; they are dropped).
 * Every recipient ends with a final code and the reply that decided it:
 * its RCPT reply if that was not 2xx, else the reply to the end of data.
 * Any failure before a recipient's fate is known (connect, timeout, dropped
 * connection, 4xx/5xx on MAIL or DATA) is applied to every undecided
 * recipient; connection-level failures are reported as 4xx (retry later).
 *
 * Connection reuse: with a pool in the job, a healthy connection is parked
 * after the transaction instead of being QUIT (after an RSET when the
 * transaction did not end with a final reply to DATA), and a later job for
 * the same (address, port, source address, HELO name) starts at MAIL FROM on
 * it. A parked connection that turns out dead before its first reply (EOF,
 * reset, 421) is dropped and the job goes on with another parked connection
 * or a new one to the same address: that is not a failed attempt.
 *
 * TLS (RFC 3207): with a client context in the job, STARTTLS is used
 * whenever the server offers it; after the handshake EHLO is sent again and
 * only the new extension list counts. Opportunistic by default (RFC 7435):
 * the certificate is checked and the verdict reported, never required.
 * What happens when TLS does not work out, as Postfix does it (levels "may"
 * and "encrypt"):
 *   - STARTTLS not offered: opportunistic, plaintext; required, 451 4.7.4
 *     "TLS is required, but was not offered" and the next address (QUIT).
 *   - STARTTLS refused (4xx/5xx): opportunistic, plaintext on the same
 *     connection (RFC 3207 4); required, 451 4.7.4 and the next address.
 *   - Handshake failure (or the connection lost or timed out during it, or
 *     before MAIL right after it): opportunistic, the same address again on
 *     a new connection in plaintext, once (Postfix's RETRY_AS_PLAINTEXT; a
 *     domain whose only MX has broken TLS would otherwise never get mail,
 *     while plaintext is what a server without STARTTLS gets anyway);
 *     required, 451 4.7.5 and the next address.
 * A required destination is never sent anything after EHLO in plaintext.
 * In the pool a TLS connection and a plaintext one never share a key: a job
 * that requires TLS takes only TLS connections; any job prefers them.
 */
#ifndef SENDER_SMTP_H
#define SENDER_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>
#include <uv.h>
#include "sender_dns.h"

typedef struct sender_smtp_pool sender_smtp_pool;

struct sender_smtp_rcpt {
	const char *address;            /* in */
	const char *params;             /* in: RCPT parameters as the client wrote them,
	                                 * NUL-terminated, back to back; may be NULL */
	size_t params_len;              /* in: bytes of params */
	int code;                       /* out: 250, 450, 550, ... */
	char reply[512];                /* out: the remote reply (or our reason) */
};

struct sender_smtp_job {
	/* in */
	const char *helo_name;
	const char *source_address;     /* bind here before connect, or NULL */
	const struct sender_mx_addr *addrs; /* in order; copied at start */
	size_t n_addrs;
	uint16_t port;                  /* destination TCP port */
	uint32_t connect_timeout_ms;
	uint32_t command_timeout_ms;
	const char *mail_from;          /* "" for the null sender */
	char *const *mail_params;       /* MAIL parameters as the client wrote them */
	size_t n_mail_params;
	const uint8_t *body;            /* CRLF lines, not dot-stuffed */
	size_t body_len;
	struct sender_smtp_rcpt *rcpts;
	size_t n_rcpts;
	sender_smtp_pool *pool;         /* reuse connections, or NULL (QUIT each) */
	uint32_t max_uses;              /* transactions a connection may carry for this
	                                 * destination (shaping); 0: the pool's limit */
	SSL_CTX *tls_ctx;               /* STARTTLS with this client context (hk_tls_client_ctx),
	                                 * or NULL: never */
	bool tls_required;              /* never in plaintext: defer instead (needs tls_ctx). The
	                                 * hook for policies: tls_required_domains today,
	                                 * shaping rules, MTA-STS or DANE later */
	/* out */
	char mx_host[256];              /* the host that took the session, or "" */
	char mx_addr[64];               /* its address as text */
	char source_addr[64];           /* our end of that session (the source IP), or "" */
	char tls_version[16];           /* "TLSv1.3", or "" when the session was plaintext */
	char tls_cipher[64];            /* "TLS_AES_256_GCM_SHA384", or "" */
	bool tls_verified;              /* the certificate chained to a trusted CA and
	                                 * matched the MX host name (recorded, not required) */
};

/* Called exactly once per job, asynchronously, on the loop's thread. */
typedef void (*sender_smtp_cb)(struct sender_smtp_job *job, void *arg);

typedef struct sender_smtp sender_smtp;

/* sender_smtp_deliver - start a transaction. The job and everything it points
 * to must stay valid until cb runs (tls_ctx too; connections take their
 * own reference). Returns 0 and a handle in *out (valid until cb runs), or
 * negative (cb not called): -EINVAL for a bad job (tls_required without
 * tls_ctx) or a pool made for another loop. */
int sender_smtp_deliver(sender_smtp **out, uv_loop_t *loop,
    struct sender_smtp_job *job, sender_smtp_cb cb, void *arg);

/* sender_smtp_abort - end the transaction now (shutdown): undecided
 * recipients get 451 "aborted", cb runs (asynchronously), the connection is
 * closed (never parked). */
void sender_smtp_abort(sender_smtp *s);

/*
 * sender_smtp_pool_new - a connection pool for jobs on LOOP. A connection
 * stays parked at most IDLE_MS (then QUIT), carries at most MAX_USES
 * transactions; IDLE_MS 0 or MAX_USES 1 turn reuse off. Never fails.
 */
sender_smtp_pool *sender_smtp_pool_new(uv_loop_t *loop, uint32_t idle_ms, uint32_t max_uses);

/* sender_smtp_pool_set_per_key - park up to N connections with one key (an
 * MX address, source and EHLO name; at least the built-in 64): as many as
 * deliveries run at once, or a job ending while the next scan has not yet
 * run QUITs a connection the next job must open again (many domains behind
 * one MX). */
void sender_smtp_pool_set_per_key(sender_smtp_pool *p, size_t n);

/*
 * sender_smtp_pool_close - QUIT and close every parked connection; nothing
 * is parked from now on. Jobs still running may finish (their connections
 * are closed, not parked) but no new job may use the pool. The pool frees
 * itself once its last connection is closed and its last job ended: P is
 * invalid after this call. NULL is fine.
 */
void sender_smtp_pool_close(sender_smtp_pool *p);

struct sender_smtp_pool_stats {
	size_t idle;                    /* connections parked now */
	uint64_t connects;              /* connections opened by the pool's jobs */
	uint64_t reused;                /* transactions started on a parked connection */
	uint64_t stale;                 /* parked connections found dead when reused */
	uint64_t parked;                /* connections parked after a transaction */
	uint64_t tls;                   /* TLS handshakes completed */
};

/* sender_smtp_pool_stats - counters since the pool was made. */
void sender_smtp_pool_stats(const sender_smtp_pool *p, struct sender_smtp_pool_stats *out);

#endif
