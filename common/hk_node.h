/*
 * hk_node - the skeleton every role runs in: a libuv loop, a ZeroMQ context,
 * its configuration, and start/stop hooks.
 *
 * `hikyaku ROLE --config F --node N` runs one node in the main thread.
 * `hikyaku all --config F` runs every node of the file, each in its own thread
 * with its own loop, sharing one ZeroMQ context and talking over inproc://.
 *
 * A role provides hk_role_ops. start() sets up its handles on node->loop and
 * returns 0, or logs why, closes what it opened and returns -1. stop() is
 * called on the loop's thread when the node must end, and must close every
 * handle it opened so that uv_run() returns. reload(), if not NULL, is
 * called on the loop's thread on SIGHUP: re-read what can change without a
 * restart (certificates), keeping the old state if the new one is bad.
 * drain(), if not NULL, is called on the loop's thread on SIGUSR1: stop
 * taking new work, finish what is held, then call hk_node_drained() once.
 */
#ifndef HK_NODE_H
#define HK_NODE_H

#include <stdbool.h>
#include <uv.h>
#include "hk_config.h"
#include "hk_http.h"

struct hk_node {
	/* public, read-only for roles */
	const struct hk_config *cfg;
	const struct hk_node_conf *conf;
	uv_loop_t *loop;
	void *zctx;
	/* the role's own state */
	void *role;
	/* Operations endpoint (the node's `http:` key). start() fills
	 * http_handlers (their arg must live until stop() returns) and may set
	 * publish, which then runs on the loop every second to refresh what
	 * the handlers read. The server starts after start() and is stopped
	 * before stop(), so no handler runs outside start..stop. */
	struct hk_http_handlers http_handlers;
	void (*publish)(struct hk_node *node);
	hk_http *http;          /* NULL without an http: key */
	/* private */
	uv_async_t stop_async;
	uv_async_t reload_async; /* SIGHUP */
	uv_async_t drain_async;  /* SIGUSR1 */
	uv_timer_t http_timer;  /* beat and publish, when http is set */
	uv_thread_t thread;
	const struct hk_role_ops *ops;
	int exit_code;
	_Atomic bool stopping;   /* set before stop_async is sent */
};

struct hk_role_ops {
	enum hk_role role;
	int (*start)(struct hk_node *node);
	void (*stop)(struct hk_node *node);
	void (*reload)(struct hk_node *node); /* optional */
	void (*drain)(struct hk_node *node);  /* optional */
};

/* Each role library defines its table; main.c hands them to hk_node_main. */
extern const struct hk_role_ops ingress_ops;
extern const struct hk_role_ops router_ops;
extern const struct hk_role_ops sender_ops;

/* hk_node_drained - called once, on the node's loop, by a role whose drain()
 * has finished. When every node of the process that was told to drain has
 * called it, the process stops as on SIGTERM (exit 0). */
void hk_node_drained(struct hk_node *node);

/* hk_node_main - the `hikyaku ROLE|all` entry point. roles[] lists the role
 * tables linked into the binary (n of them). Returns the exit code. */
int hk_node_main(int argc, char **argv, const struct hk_role_ops *const *roles, size_t n_roles);

#endif
