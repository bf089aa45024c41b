/*
 * hk_http - libmicrohttpd serving /healthz, /readyz, /metrics and a role's
 * own paths (see hk_http.h). One internal polling thread per node; requests
 * are small and answered from snapshots, so one thread is plenty.
 */
/* System */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* Third-party */
#include <jansson.h>
#include <microhttpd.h>

/* common/ */
#include "hk_http.h"
#include "hk_util.h"

struct hk_http {
	struct MHD_Daemon *d;
	struct hk_http_handlers h;
	char *node;
	uint16_t port;
	_Atomic int64_t last_beat_ms;
};

static enum MHD_Result
respond(struct MHD_Connection *c, unsigned status, const char *type, char *body, size_t len)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	enum MHD_Result ret;

	if (r == NULL) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

/* A JSON object {"status": STATUS[, "reason": REASON]}. */
static enum MHD_Result
respond_status(struct MHD_Connection *c, unsigned code, const char *status, const char *reason)
{
	json_t *o = json_pack("{s:s}", "status", status);
	char *body;

	if (reason)
		json_object_set_new(o, "reason", json_string(reason));
	body = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return respond(c, code, "application/json", body, strlen(body));
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
    const char *version, const char *upload, size_t *upload_size, void **req)
{
	hk_http *http = cls;
	char reason[256] = "";

	(void)version;
	(void)upload;
	(void)upload_size;
	(void)req;
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return respond_status(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed", method);
	if (!strcmp(url, "/healthz")) {
		int64_t age = hk_now_ms() - http->last_beat_ms;
		if (age > HK_HTTP_STALL_MS) {
			snprintf(reason, sizeof(reason), "the node's loop has not run for %lld ms", (long long)age);
			return respond_status(c, MHD_HTTP_SERVICE_UNAVAILABLE, "stalled", reason);
		}
		return respond_status(c, MHD_HTTP_OK, "ok", NULL);
	}
	if (!strcmp(url, "/readyz")) {
		if (http->h.ready && !http->h.ready(http->h.arg, reason, sizeof(reason)))
			return respond_status(c, MHD_HTTP_SERVICE_UNAVAILABLE, "not ready", reason);
		return respond_status(c, MHD_HTTP_OK, "ready", NULL);
	}
	if (!strcmp(url, "/metrics")) {
		hk_prom *p = hk_prom_new(http->node);
		size_t len;
		hk_prom_one(p, "hikyaku_up", "gauge", "1 while the node serves.", 1);
		if (http->h.metrics)
			http->h.metrics(http->h.arg, p);
		char *text = hk_prom_finish(&p, &len);
		return respond(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len);
	}
	if (http->h.get) {
		char *body = NULL;
		size_t len = 0;
		int status = http->h.get(http->h.arg, url, &body, &len);
		if (status > 0)
			return respond(c, (unsigned)status, "application/json", body, len);
		free(body);
	}
	return respond_status(c, MHD_HTTP_NOT_FOUND, "not found", url);
}

int
hk_http_start(hk_http **out, const char *host, uint16_t port, const char *node,
    const struct hk_http_handlers *h, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
	struct addrinfo *ai = NULL;
	char portstr[8];
	unsigned flags = MHD_USE_POLL_INTERNAL_THREAD;
	hk_http *http;
	int rc;

	snprintf(portstr, sizeof(portstr), "%u", port);
	if ((rc = getaddrinfo(host, portstr, &hints, &ai)) != 0) {
		snprintf(err, errlen, "%s: %s", host, gai_strerror(rc));
		return -1;
	}
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	http = xcalloc(1, sizeof(*http));
	http->h = *h;
	http->node = xstrdup(node);
	http->last_beat_ms = hk_now_ms();
	http->d = MHD_start_daemon(flags, port, NULL, NULL, on_request, http,
	    MHD_OPTION_SOCK_ADDR, ai->ai_addr,
	    MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
	    MHD_OPTION_END);
	freeaddrinfo(ai);
	if (http->d == NULL) {
		snprintf(err, errlen, "cannot listen on %s:%u (in use, or not an address of this host)",
		    host, port);
		free(http->node);
		free(http);
		return -1;
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(http->d, MHD_DAEMON_INFO_BIND_PORT);
	http->port = di ? di->port : port;
	*out = http;
	return 0;
}

uint16_t
hk_http_port(const hk_http *http)
{
	return http->port;
}

void
hk_http_beat(hk_http *http)
{
	if (http)
		http->last_beat_ms = hk_now_ms();
}

void
hk_http_stop(hk_http **pp)
{
	hk_http *http = *pp;

	if (http == NULL)
		return;
	MHD_stop_daemon(http->d);
	free(http->node);
	free(http);
	*pp = NULL;
}
