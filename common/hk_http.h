/*
 * hk_http - a node's HTTP endpoint for operations: /healthz, /readyz,
 * /metrics (Prometheus text) and role-specific GET paths (a router's
 * /cluster), served by libmicrohttpd on its own thread.
 *
 * Handlers run on that thread, never on the node's loop: they must read only
 * what the role published for them (atomics, or a snapshot under a mutex
 * that the role refreshes on its loop), never the role's loop state.
 *
 *   GET /healthz  200 {"status":"ok"} while the node's loop beats (hk_http_beat
 *                 at least every HK_HTTP_STALL_MS), else 503
 *   GET /readyz   200 {"status":"ready"}, or 503 {"status":"not ready",
 *                 "reason":"..."} as the role's ready() says
 *   GET /metrics  the role's metrics() in text format 0.0.4
 *   GET other     the role's get(), or 404
 *   HEAD          as GET without the body; any other method: 405
 */
#ifndef HK_HTTP_H
#define HK_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hk_prom.h"

#define HK_HTTP_STALL_MS 5000

typedef struct hk_http hk_http;

struct hk_http_handlers {
	void *arg;
	/* ready - true, or false and a short REASON. NULL: always ready. */
	bool (*ready)(void *arg, char *reason, size_t reasonlen);
	/* metrics - add the role's families to P (node label set). May be NULL. */
	void (*metrics)(void *arg, hk_prom *p);
	/* get - another path: an HTTP status and a JSON *body (malloc'd, caller
	 * frees), or 0 for "no such path" (404). May be NULL. */
	int (*get)(void *arg, const char *path, char **body, size_t *len);
};

/*
 * hk_http_start - serve HOST:PORT (PORT 0: any free port) for node NODE with
 * H (copied; H->arg must stay valid until hk_http_stop). Returns 0 and *out,
 * or -1 with a message in err.
 */
int hk_http_start(hk_http **out, const char *host, uint16_t port, const char *node,
    const struct hk_http_handlers *h, char *err, size_t errlen);

/* hk_http_port - the port actually bound. */
uint16_t hk_http_port(const hk_http *http);

/* hk_http_beat - the node's loop is alive (call from the loop, at least every second). */
void hk_http_beat(hk_http *http);

/* hk_http_stop - stop serving (waits for a request being answered) and free;
 * NULLs the caller's pointer. After it, no handler runs. NULL is fine. */
void hk_http_stop(hk_http **http);

#endif
