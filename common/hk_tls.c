/*
 * hk_tls - OpenSSL contexts from configuration and the memory-BIO engine.
 *
 * Errors are taken from OpenSSL's per-thread error queue, which is cleared
 * before each operation so that a stale entry from another connection on
 * the same thread is never blamed on this one.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include "hk_tls.h"
#include "hk_util.h"

struct hk_tls_conn {
	SSL *ssl;
	BIO *rbio;      /* ciphertext from the peer */
	BIO *wbio;      /* ciphertext for the peer */
};

/* The first error on the queue, as text; the queue is emptied. */
static void
ssl_error(char *err, size_t errlen, const char *what, const char *path)
{
	unsigned long e = ERR_get_error();
	char buf[256];

	if (e != 0)
		ERR_error_string_n(e, buf, sizeof(buf));
	else
		snprintf(buf, sizeof(buf), "unknown error");
	ERR_clear_error();
	if (path)
		snprintf(err, errlen, "%s %s: %s", what, path, buf);
	else
		snprintf(err, errlen, "%s: %s", what, buf);
}

SSL_CTX *
hk_tls_server_ctx(const struct hk_tls_conf *conf, char *err, size_t errlen)
{
	SSL_CTX *ctx;

	ERR_clear_error();
	if ((ctx = SSL_CTX_new(TLS_server_method())) == NULL) {
		ssl_error(err, errlen, "SSL_CTX_new", NULL);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/* Renegotiation is a CPU lever for a client and buys us nothing. */
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
	    SSL_OP_NO_COMPRESSION);
	/* Idle SMTP sessions are the common case: keep no record buffers. */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	if (SSL_CTX_use_certificate_chain_file(ctx, conf->certificate) != 1) {
		ssl_error(err, errlen, "cannot load certificate", conf->certificate);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, conf->key, SSL_FILETYPE_PEM) != 1) {
		ssl_error(err, errlen, "cannot load key", conf->key);
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		ssl_error(err, errlen, "key does not match certificate", conf->key);
		goto fail;
	}
	if (conf->ciphers && SSL_CTX_set_cipher_list(ctx, conf->ciphers) != 1) {
		ssl_error(err, errlen, "bad ciphers", conf->ciphers);
		goto fail;
	}
	if (conf->ciphersuites && SSL_CTX_set_ciphersuites(ctx, conf->ciphersuites) != 1) {
		ssl_error(err, errlen, "bad ciphersuites", conf->ciphersuites);
		goto fail;
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

SSL_CTX *
hk_tls_client_ctx(const char *ca_file, char *err, size_t errlen)
{
	SSL_CTX *ctx;

	ERR_clear_error();
	if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL) {
		ssl_error(err, errlen, "SSL_CTX_new", NULL);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	/* Opportunistic TLS (RFC 7435): any certificate beats plaintext. The
	 * chain is still checked and the verdict kept for the logs. */
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	if (ca_file != NULL) {
		if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
			ssl_error(err, errlen, "cannot load CA file", ca_file);
			goto fail;
		}
	} else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
		/* No system store is not fatal: nothing will verify, that is all. */
		ERR_clear_error();
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

void
hk_tls_ctx_describe(SSL_CTX *ctx, char *subject, size_t slen, char *serial, size_t serlen)
{
	X509 *x = SSL_CTX_get0_certificate(ctx);
	BIGNUM *bn = NULL;
	char *hex = NULL;

	snprintf(subject, slen, "?");
	snprintf(serial, serlen, "?");
	if (x == NULL)
		return;
	X509_NAME_oneline(X509_get_subject_name(x), subject, (int)slen);
	if ((bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL)) != NULL &&
	    (hex = BN_bn2hex(bn)) != NULL)
		snprintf(serial, serlen, "%s", hex);
	OPENSSL_free(hex);
	BN_free(bn);
}

hk_tls_conn *
hk_tls_conn_new(SSL_CTX *ctx, bool server)
{
	hk_tls_conn *c = xcalloc(1, sizeof(*c));

	c->ssl = SSL_new(ctx);
	c->rbio = BIO_new(BIO_s_mem());
	c->wbio = BIO_new(BIO_s_mem());
	if (c->ssl == NULL || c->rbio == NULL || c->wbio == NULL) {
		SSL_free(c->ssl);
		BIO_free(c->rbio);
		BIO_free(c->wbio);
		free(c);
		return NULL;
	}
	/* An empty read BIO means "want more", not end of file. */
	BIO_set_mem_eof_return(c->rbio, -1);
	SSL_set_bio(c->ssl, c->rbio, c->wbio); /* the SSL owns both now */
	if (server)
		SSL_set_accept_state(c->ssl);
	else
		SSL_set_connect_state(c->ssl);
	return c;
}

void
hk_tls_conn_free(hk_tls_conn **cp)
{
	hk_tls_conn *c = *cp;

	if (c == NULL)
		return;
	SSL_free(c->ssl);
	free(c);
	*cp = NULL;
}

void
hk_tls_conn_push(hk_tls_conn *c, const void *p, size_t n)
{
	/* A memory BIO takes everything (it grows). */
	if (n > 0)
		BIO_write(c->rbio, p, (int)n);
}

int
hk_tls_conn_handshake(hk_tls_conn *c, char *err, size_t errlen)
{
	int rc;

	ERR_clear_error();
	if ((rc = SSL_do_handshake(c->ssl)) == 1)
		return 1;
	switch (SSL_get_error(c->ssl, rc)) {
	case SSL_ERROR_WANT_READ:
	case SSL_ERROR_WANT_WRITE:
		return HK_TLS_AGAIN;
	default:
		ssl_error(err, errlen, "handshake", NULL);
		return HK_TLS_ERROR;
	}
}

int
hk_tls_conn_read(hk_tls_conn *c, void *buf, size_t cap)
{
	int rc;

	if (cap == 0)
		return HK_TLS_AGAIN;
	ERR_clear_error();
	if ((rc = SSL_read(c->ssl, buf, cap > INT32_MAX ? INT32_MAX : (int)cap)) > 0)
		return rc;
	switch (SSL_get_error(c->ssl, rc)) {
	case SSL_ERROR_WANT_READ:
	case SSL_ERROR_WANT_WRITE:
		return HK_TLS_AGAIN;
	case SSL_ERROR_ZERO_RETURN:
		return HK_TLS_CLOSED;
	default:
		ERR_clear_error();
		return HK_TLS_ERROR;
	}
}

int
hk_tls_conn_write(hk_tls_conn *c, const void *p, size_t n)
{
	size_t done;

	if (n == 0)
		return 0;
	ERR_clear_error();
	/* Into a memory BIO a write succeeds whole or fails. */
	if (SSL_write_ex(c->ssl, p, n, &done) != 1 || done != n) {
		ERR_clear_error();
		return HK_TLS_ERROR;
	}
	return 0;
}

void
hk_tls_conn_close_notify(hk_tls_conn *c)
{
	ERR_clear_error();
	if (SSL_is_init_finished(c->ssl))
		SSL_shutdown(c->ssl);
	ERR_clear_error();
}

size_t
hk_tls_conn_pending(hk_tls_conn *c)
{
	return BIO_ctrl_pending(c->wbio);
}

size_t
hk_tls_conn_pull(hk_tls_conn *c, void *buf, size_t cap)
{
	int n = BIO_read(c->wbio, buf, cap > INT32_MAX ? INT32_MAX : (int)cap);

	return n > 0 ? (size_t)n : 0;
}

void
hk_tls_conn_describe(hk_tls_conn *c, char *out, size_t len)
{
	const SSL_CIPHER *ci = SSL_get_current_cipher(c->ssl);
	int alg_bits = 0, bits = ci ? SSL_CIPHER_get_bits(ci, &alg_bits) : 0;

	snprintf(out, len, "%s with cipher %s (%d/%d bits)", SSL_get_version(c->ssl),
	    ci ? SSL_CIPHER_get_name(ci) : "?", bits, alg_bits);
}

const char *
hk_tls_conn_version(hk_tls_conn *c)
{
	return SSL_get_version(c->ssl);
}

const char *
hk_tls_conn_cipher(hk_tls_conn *c)
{
	const SSL_CIPHER *ci = SSL_get_current_cipher(c->ssl);

	return ci ? SSL_CIPHER_get_name(ci) : "";
}

int
hk_tls_conn_set_peer_name(hk_tls_conn *c, const char *host)
{
	unsigned char ip[16];
	int rc;

	if (host == NULL || *host == '\0')
		return 0;
	ERR_clear_error();
	if (inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1) {
		/* RFC 6066 3: no literal IP addresses in SNI. */
		X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
		rc = X509_VERIFY_PARAM_set1_ip_asc(vp, host);
	} else {
		rc = SSL_set_tlsext_host_name(c->ssl, host) == 1 && SSL_set1_host(c->ssl, host) == 1;
	}
	ERR_clear_error();
	return rc == 1 ? 0 : HK_TLS_ERROR;
}

bool
hk_tls_conn_verified(hk_tls_conn *c, char *why, size_t whylen)
{
	long v;

	if (SSL_get0_peer_certificate(c->ssl) == NULL) {
		if (why)
			snprintf(why, whylen, "no peer certificate");
		return false;
	}
	if ((v = SSL_get_verify_result(c->ssl)) != X509_V_OK) {
		if (why)
			snprintf(why, whylen, "%s", X509_verify_cert_error_string(v));
		return false;
	}
	if (why)
		snprintf(why, whylen, "ok");
	return true;
}
