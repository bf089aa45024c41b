/*
 * hk_tls - OpenSSL for Hikyaku: contexts built from configuration, and a
 * TLS connection engine over memory BIOs.
 *
 * The engine never touches a socket: the owner pushes the bytes it read
 * (ciphertext) in, reads plaintext out, writes plaintext in, and pulls the
 * ciphertext to send. That keeps libuv (or any other I/O) outside, so the
 * ingress server and the sender's client share it. Everything here is used
 * from one thread at a time per object; an SSL_CTX may be shared (OpenSSL
 * reference-counts it: a connection keeps its context alive).
 */
#ifndef HK_TLS_H
#define HK_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#include "hk_config.h"

/*
 * hk_tls_server_ctx - a server context from CONF: TLS 1.2 and 1.3 only, the
 * certificate chain and key (checked to match), the TLS 1.2 cipher list and
 * the TLS 1.3 suites when given. Reads files: call at start-up or reload,
 * not per connection. Returns the context (caller owns: SSL_CTX_free) or
 * NULL with the reason, naming the file, in err.
 */
SSL_CTX *hk_tls_server_ctx(const struct hk_tls_conf *conf, char *err, size_t errlen);

/*
 * hk_tls_client_ctx - a client context for outbound SMTP: TLS 1.2 and 1.3
 * only, no renegotiation or compression, and opportunistic by design: the
 * handshake never fails on the server's certificate (SSL_VERIFY_NONE), but
 * the certificate is still checked against CA_FILE (PEM), or OpenSSL's
 * default trust store when CA_FILE is NULL, and the result is kept for the
 * caller to read (hk_tls_conn_verified). Reads files: call at start-up.
 * Returns the context (caller owns: SSL_CTX_free) or NULL with the reason
 * in err.
 */
SSL_CTX *hk_tls_client_ctx(const char *ca_file, char *err, size_t errlen);

/* hk_tls_ctx_describe - subject and serial (hex) of the context's
 * certificate, for logs. */
void hk_tls_ctx_describe(SSL_CTX *ctx, char *subject, size_t slen, char *serial, size_t serlen);

typedef struct hk_tls_conn hk_tls_conn;

enum {
	HK_TLS_AGAIN = 0,       /* nothing more until more ciphertext is pushed */
	HK_TLS_CLOSED = -1,     /* the peer sent close_notify */
	HK_TLS_ERROR = -2,      /* protocol error: drop the connection */
};

/* hk_tls_conn_new - a connection on CTX (server or client side). Caller owns
 * it: hk_tls_conn_free. NULL only if OpenSSL is out of memory. */
hk_tls_conn *hk_tls_conn_new(SSL_CTX *ctx, bool server);
void hk_tls_conn_free(hk_tls_conn **c);

/* hk_tls_conn_push - ciphertext from the peer (all of it is taken). */
void hk_tls_conn_push(hk_tls_conn *c, const void *p, size_t n);

/* hk_tls_conn_handshake - advance the handshake: 1 done, HK_TLS_AGAIN, or
 * HK_TLS_ERROR with the reason in err. Pull afterwards: there may be
 * records (or an alert) to send. */
int hk_tls_conn_handshake(hk_tls_conn *c, char *err, size_t errlen);

/* hk_tls_conn_read - plaintext into buf: bytes (> 0), HK_TLS_AGAIN,
 * HK_TLS_CLOSED or HK_TLS_ERROR. Pull afterwards. */
int hk_tls_conn_read(hk_tls_conn *c, void *buf, size_t cap);

/* hk_tls_conn_write - encrypt all of p[0..n) for the peer; 0 or HK_TLS_ERROR. */
int hk_tls_conn_write(hk_tls_conn *c, const void *p, size_t n);

/* hk_tls_conn_close_notify - queue our close_notify alert. */
void hk_tls_conn_close_notify(hk_tls_conn *c);

/* hk_tls_conn_pending - ciphertext bytes waiting to be pulled. */
size_t hk_tls_conn_pending(hk_tls_conn *c);

/* hk_tls_conn_pull - move up to cap bytes of ciphertext to send into buf. */
size_t hk_tls_conn_pull(hk_tls_conn *c, void *buf, size_t cap);

/* hk_tls_conn_describe - "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384
 * (256/256 bits)", as Postfix writes it in Received headers. */
void hk_tls_conn_describe(hk_tls_conn *c, char *out, size_t len);

const char *hk_tls_conn_version(hk_tls_conn *c);
const char *hk_tls_conn_cipher(hk_tls_conn *c);

/* hk_tls_conn_set_peer_name - client side, before the handshake: send HOST
 * as SNI and check the certificate against it (for hk_tls_conn_verified).
 * An IP literal is checked as an address and never sent as SNI. Returns 0,
 * or HK_TLS_ERROR if OpenSSL refuses the name. */
int hk_tls_conn_set_peer_name(hk_tls_conn *c, const char *host);

/* hk_tls_conn_verified - after the handshake: whether the peer sent a
 * certificate that chains to a trusted CA (and matches the name given to
 * hk_tls_conn_set_peer_name). When not, WHY (may be NULL) says why. */
bool hk_tls_conn_verified(hk_tls_conn *c, char *why, size_t whylen);

#endif
