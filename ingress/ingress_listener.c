/*
 * ingress_listener - accept connections and enforce the session limit.
 *
 * A node has one listener per configured address; each hands its mode
 * (relay, submission, smtps) to the sessions it starts. max_sessions counts
 * the sessions of every listener of the node (env->n_sessions).
 *
 * Past max_sessions a connection is still accepted, told "421 4.3.2 Too many
 * connections" and closed, so that the client retries later instead of
 * waiting in the kernel's backlog. Every live session and every such refusal
 * is on a list, so that closing the listener closes everything it opened.
 */
/* System */
#include <errno.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Third-party */
#include <uv.h>

/* common/ */
#include "hk_log.h"
#include "hk_util.h"

/* This role */
#include "ingress_limits.h"
#include "ingress_listener.h"

/* A live session, as the listener knows it. */
struct conn {
	struct conn *prev, *next;
	ingress_session *s;
	ingress_listener *l;
};

/* A connection refused for being over max_sessions. */
struct refusal {
	struct refusal *prev, *next;
	uv_tcp_t tcp;
	uv_write_t write;
	ingress_listener *l;
	bool closing;
};

struct ingress_listener {
	uv_tcp_t server;
	bool server_open;
	uv_loop_t *loop;
	const struct ingress_env *env;
	const struct hk_listener_conf *lconf;
	struct conn *conns;
	size_t own_sessions;
	size_t *n_sessions;     /* env->n_sessions, or own_sessions */
	struct refusal *refusals;
	uint16_t port;
	bool closing;
	void (*done)(void *arg);
	void *done_arg;
};

static const char too_many[] = "421 4.3.2 Too many connections\r\n";

#define LIST_INSERT(head, e) do {                       \
		(e)->prev = NULL;                       \
		(e)->next = (head);                     \
		if (head)                               \
			(head)->prev = (e);             \
		(head) = (e);                           \
	} while (0)
#define LIST_REMOVE(head, e) do {                       \
		if ((e)->prev)                          \
			(e)->prev->next = (e)->next;    \
		else                                    \
			(head) = (e)->next;             \
		if ((e)->next)                          \
			(e)->next->prev = (e)->prev;    \
	} while (0)

/* Call DONE once nothing of ours is open any more. */
static void
listener_maybe_done(ingress_listener *l)
{
	if (!l->closing || l->server_open || l->conns || l->refusals)
		return;
	if (l->done)
		l->done(l->done_arg);
	free(l);
}

static void
on_session_closed(ingress_session *s, void *arg)
{
	struct conn *c = arg;
	ingress_listener *l = c->l;

	(void)s;
	LIST_REMOVE(l->conns, c);
	(*l->n_sessions)--;
	free(c);
	listener_maybe_done(l);
}

static void
on_refusal_closed(uv_handle_t *h)
{
	struct refusal *r = h->data;
	ingress_listener *l = r->l;

	LIST_REMOVE(l->refusals, r);
	free(r);
	listener_maybe_done(l);
}

static void
refusal_close(struct refusal *r)
{
	if (r->closing)
		return;
	r->closing = true;
	uv_close((uv_handle_t *)&r->tcp, on_refusal_closed);
}

static void
on_refusal_written(uv_write_t *req, int status)
{
	(void)status;
	refusal_close(req->data);
}

static void
refuse(ingress_listener *l)
{
	struct refusal *r = xcalloc(1, sizeof(*r));
	uv_buf_t b = uv_buf_init((char *)too_many, sizeof(too_many) - 1);
	struct sockaddr_storage ss;
	int len = sizeof(ss);
	char client[INGRESS_IP_KEY_MAX] = "unknown";

	r->l = l;
	r->tcp.data = r->write.data = r;
	uv_tcp_init(l->loop, &r->tcp);
	LIST_INSERT(l->refusals, r);
	/* On an smtps port the client expects a TLS handshake: a plaintext 421
	 * would only be noise, so it just sees the connection close. */
	if (uv_accept((uv_stream_t *)&l->server, (uv_stream_t *)&r->tcp) != 0) {
		refusal_close(r);
		return;
	}
	if (uv_tcp_getpeername(&r->tcp, (struct sockaddr *)&ss, &len) == 0)
		ingress_limits_ip_key((struct sockaddr *)&ss, client);
	hk_log_warn("limit_exceeded", "{s:s, s:s, s:i, s:s}", "limit", "max_sessions",
	    "client", client, "max_sessions", (int)l->env->conf->max_sessions,
	    "reply", "421 4.3.2 Too many connections");
	if (l->lconf->mode == HK_LISTEN_SMTPS ||
	    uv_write(&r->write, (uv_stream_t *)&r->tcp, &b, 1, on_refusal_written) != 0)
		refusal_close(r);
}

static void
on_connection(uv_stream_t *server, int status)
{
	ingress_listener *l = server->data;
	struct conn *c;
	int rc;

	if (status < 0) {
		hk_log_warn("accept_failed", "{s:s}", "error", uv_strerror(status));
		return;
	}
	if (l->closing)
		return;
	if (*l->n_sessions >= l->env->conf->max_sessions) {
		refuse(l);
		return;
	}
	c = xcalloc(1, sizeof(*c));
	c->l = l;
	c->s = ingress_session_new(l->loop, l->env, l->lconf, on_session_closed, c);
	LIST_INSERT(l->conns, c);
	(*l->n_sessions)++;
	if ((rc = uv_accept(server, ingress_session_stream(c->s))) != 0) {
		hk_log_warn("accept_failed", "{s:s}", "error", uv_strerror(rc));
		ingress_session_close(c->s, "accept failed", NULL);
		return;
	}
	ingress_session_start(c->s);
}

static void
on_server_closed(uv_handle_t *h)
{
	ingress_listener *l = h->data;

	l->server_open = false;
	listener_maybe_done(l);
}

/* Resolve the configured host (numeric, or a name at start-up). */
static int
listen_addr(const char *host, uint16_t port, struct sockaddr_storage *ss)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *res;

	if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0 ||
	    uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0)
		return 0;
	if (getaddrinfo(host, NULL, &hints, &res) != 0 || res == NULL)
		return -EADDRNOTAVAIL;
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
	freeaddrinfo(res);
	return 0;
}

int
ingress_listener_new(ingress_listener **out, uv_loop_t *loop, const struct ingress_env *env,
    const struct hk_listener_conf *lconf)
{
	const struct hk_listener_conf *c = lconf;
	ingress_listener *l;
	struct sockaddr_storage ss;
	int rc, len = sizeof(ss);
	char host[INET6_ADDRSTRLEN], where[INET6_ADDRSTRLEN + 16];

	*out = NULL;
	if ((rc = listen_addr(c->host, c->port, &ss)) != 0) {
		hk_log_error("listen_failed", "{s:s, s:s}", "host", c->host,
		    "error", "cannot resolve the listen address");
		return rc;
	}
	l = xcalloc(1, sizeof(*l));
	l->loop = loop;
	l->env = env;
	l->lconf = lconf;
	l->n_sessions = env->n_sessions ? env->n_sessions : &l->own_sessions;
	uv_tcp_init(loop, &l->server);
	l->server.data = l;
	l->server_open = true;
	if ((rc = uv_tcp_bind(&l->server, (struct sockaddr *)&ss, 0)) != 0 ||
	    (rc = uv_listen((uv_stream_t *)&l->server, 511, on_connection)) != 0 ||
	    (rc = uv_tcp_getsockname(&l->server, (struct sockaddr *)&ss, &len)) != 0) {
		hk_log_error("listen_failed", "{s:s, s:i, s:s}", "host", c->host,
		    "port", (int)c->port, "error", uv_strerror(rc));
		ingress_listener_close(l, NULL, NULL);
		return rc;
	}
	if (ss.ss_family == AF_INET6) {
		l->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
		uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof(host));
		snprintf(where, sizeof(where), "[%s]:%u", host, l->port);
	} else {
		l->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof(host));
		snprintf(where, sizeof(where), "%s:%u", host, l->port);
	}
	hk_log_info("ingress_listening", "{s:s, s:s, s:b}", "listen", where,
	    "mode", hk_listen_mode_name(lconf->mode), "tls", env->tls_ctx != NULL);
	*out = l;
	return 0;
}

uint16_t
ingress_listener_port(const ingress_listener *l)
{
	return l->port;
}

void
ingress_listener_close(ingress_listener *l, void (*done)(void *arg), void *arg)
{
	char goodbye[300];
	struct conn *c, *next;
	struct refusal *r, *rnext;

	if (l->closing)
		return;
	l->closing = true;
	l->done = done;
	l->done_arg = arg;
	snprintf(goodbye, sizeof(goodbye), "421 4.3.2 %s Service shutting down\r\n",
	    l->env->conf->hostname);
	/* Closing a session only schedules its free; the lists stay valid. */
	for (c = l->conns; c != NULL; c = next) {
		next = c->next;
		ingress_session_close(c->s, "node stopping", goodbye);
	}
	for (r = l->refusals; r != NULL; r = rnext) {
		rnext = r->next;
		refusal_close(r);
	}
	uv_close((uv_handle_t *)&l->server, on_server_closed);
}
