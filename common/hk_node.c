/*
 * hk_node - run nodes: one (`hikyaku ROLE --node N`) or every node of the
 * file (`hikyaku all`), each on its own thread and libuv loop.
 *
 * Roles are started from the main thread before their loop runs (libuv lets a
 * loop be set up from any thread while it is not running), so a failed start
 * is known before anything serves. Signals are blocked in every thread and
 * taken by sigwait() in the main thread, which then wakes each loop with a
 * uv_async to run the role's stop() (SIGINT, SIGTERM), reload() (SIGHUP) or
 * drain() (SIGUSR1). Once every node told to drain has called
 * hk_node_drained(), the process sends itself SIGTERM: a clean stop.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#include "hk_log.h"
#include "hk_node.h"
#include "hk_util.h"

/* Nodes told to drain that have not called hk_node_drained() yet; set by
 * the main thread on the first SIGUSR1, before any drain() can run. */
static _Atomic size_t drains_left;

static const struct hk_role_ops *
ops_for(const struct hk_role_ops *const *roles, size_t n, enum hk_role role)
{
	for (size_t i = 0; i < n; i++)
		if (roles[i]->role == role)
			return roles[i];
	return NULL;
}

static void
on_stop_async(uv_async_t *a)
{
	struct hk_node *node = a->data;

	hk_log_info("node_stopping", NULL);
	if (node->http) {
		hk_http_stop(&node->http);  /* no handler reads the role from now on */
		uv_close((uv_handle_t *)&node->http_timer, NULL);
	}
	node->ops->stop(node);
	uv_close((uv_handle_t *)&node->stop_async, NULL);
	uv_close((uv_handle_t *)&node->reload_async, NULL);
	uv_close((uv_handle_t *)&node->drain_async, NULL);
}

static void
on_reload_async(uv_async_t *a)
{
	struct hk_node *node = a->data;

	if (node->ops->reload && !node->stopping)
		node->ops->reload(node);
}

static void
on_drain_async(uv_async_t *a)
{
	struct hk_node *node = a->data;

	if (node->ops->drain && !node->stopping)
		node->ops->drain(node);
}

void
hk_node_drained(struct hk_node *node)
{
	(void)node;
	if (atomic_fetch_sub(&drains_left, 1) == 1) {
		hk_log_info("node_drained", NULL);
		kill(getpid(), SIGTERM);  /* taken by sigwait(): the usual stop */
	}
}

static void
node_thread(void *arg)
{
	struct hk_node *node = arg;

	hk_log_set_node(node->conf->name);
	uv_run(node->loop, UV_RUN_DEFAULT);
	hk_log_info("node_stopped", NULL);
	if (!node->stopping) {
		/* The loop ended on its own: bring the whole process down. */
		node->exit_code = 1;
		kill(getpid(), SIGTERM);
	}
}

static void
on_http_timer(uv_timer_t *t)
{
	struct hk_node *node = t->data;

	if (node->publish)
		node->publish(node);
	hk_http_beat(node->http);
}

/* Serve the node's http: address; on failure the role is stopped again. */
static int
node_http_start(struct hk_node *node)
{
	const struct hk_node_conf *nc = node->conf;
	char err[256];

	if (nc->http_host == NULL)
		return 0;
	if (node->publish)
		node->publish(node);
	if (hk_http_start(&node->http, nc->http_host, nc->http_port, nc->name, &node->http_handlers,
	    err, sizeof(err)) != 0) {
		hk_log_error("http_failed", "{s:s}", "error", err);
		node->ops->stop(node);
		return -1;
	}
	uv_timer_init(node->loop, &node->http_timer);
	node->http_timer.data = node;
	uv_timer_start(&node->http_timer, on_http_timer, 1000, 1000);
	hk_log_info("http_listening", "{s:s, s:i}", "host", nc->http_host,
	    "port", (int)hk_http_port(node->http));
	return 0;
}

static int
node_start(struct hk_node *node, const struct hk_config *cfg, const struct hk_node_conf *nc,
    void *zctx, const struct hk_role_ops *ops)
{
	node->cfg = cfg;
	node->conf = nc;
	node->zctx = zctx;
	node->ops = ops;
	node->loop = xcalloc(1, sizeof(uv_loop_t));
	uv_loop_init(node->loop);
	uv_async_init(node->loop, &node->stop_async, on_stop_async);
	node->stop_async.data = node;
	uv_async_init(node->loop, &node->reload_async, on_reload_async);
	node->reload_async.data = node;
	uv_async_init(node->loop, &node->drain_async, on_drain_async);
	node->drain_async.data = node;
	hk_log_set_node(nc->name);
	if (node->ops->start(node) != 0) {
		hk_log_error("node_start_failed", "{s:s}", "role", hk_role_name(nc->role));
		return -1;
	}
	if (node_http_start(node) != 0) {
		hk_log_error("node_start_failed", "{s:s}", "role", hk_role_name(nc->role));
		return -1;
	}
	hk_log_info("node_started", "{s:s}", "role", hk_role_name(nc->role));
	return 0;
}

/* Stop a node whose loop is not running on a thread (start-up failure). */
static void
node_abort(struct hk_node *node, bool started)
{
	if (node->http) {
		hk_http_stop(&node->http);
		uv_close((uv_handle_t *)&node->http_timer, NULL);
	}
	if (started)
		node->ops->stop(node);
	uv_close((uv_handle_t *)&node->stop_async, NULL);
	uv_close((uv_handle_t *)&node->reload_async, NULL);
	uv_close((uv_handle_t *)&node->drain_async, NULL);
	uv_run(node->loop, UV_RUN_DEFAULT);
}

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: hikyaku ingress|router|sender --config FILE --node NAME\n"
	    "       hikyaku all --config FILE\n"
	    "  --config FILE   cluster configuration (YAML, see docs/CONFIG.md)\n"
	    "  --node NAME     this node's section (default: $HIKYAKU_NODE)\n"
	    "  --log-level L   debug, info (default), warn or error\n");
}

int
hk_node_main(int argc, char **argv, const struct hk_role_ops *const *roles, size_t n_roles)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "node", required_argument, NULL, 'n' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *cmd = argv[1], *config = NULL, *name = getenv("HIKYAKU_NODE");
	struct hk_config *cfg = NULL;
	struct hk_node *nodes;
	size_t n_nodes = 0;
	char err[512];
	int ch, rc = 0;
	bool all = !strcmp(cmd, "all");

	optind = 2;
	while ((ch = getopt_long(argc, argv, "c:n:l:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': config = optarg; break;
		case 'n': name = optarg; break;
		case 'l':
			if (!strcmp(optarg, "debug")) hk_log_set_level(HK_LOG_DEBUG);
			else if (!strcmp(optarg, "info")) hk_log_set_level(HK_LOG_INFO);
			else if (!strcmp(optarg, "warn")) hk_log_set_level(HK_LOG_WARN);
			else if (!strcmp(optarg, "error")) hk_log_set_level(HK_LOG_ERROR);
			else { usage(stderr); return 2; }
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (config == NULL || optind != argc || (!all && (name == NULL || *name == '\0'))) {
		usage(stderr);
		return 2;
	}
	if (hk_config_load(config, &cfg, err, sizeof(err)) != 0) {
		hk_log_error("config_error", "{s:s}", "error", err);
		return 1;
	}
	if (all) {
		hk_config_use_inproc(cfg);
		n_nodes = cfg->n_nodes;
	} else {
		const struct hk_node_conf *nc = hk_config_node(cfg, name);
		if (nc == NULL || strcmp(hk_role_name(nc->role), cmd) != 0) {
			hk_log_error("config_error", "{s:s, s:s, s:s}", "error",
			    nc ? "the node has another role" : "no such node in the file",
			    "node", name, "role", cmd);
			hk_config_free(&cfg);
			return 1;
		}
		n_nodes = 1;
	}

	/* Block the stop, reload and drain signals everywhere; the main thread
	 * takes them. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	void *zctx = zmq_ctx_new();
	nodes = xcalloc(n_nodes, sizeof(*nodes));
	size_t started = 0;
	for (size_t i = 0; i < n_nodes; i++) {
		const struct hk_node_conf *nc = all ? &cfg->nodes[i] : hk_config_node(cfg, name);
		const struct hk_role_ops *ops = ops_for(roles, n_roles, nc->role);
		if (ops == NULL) {
			hk_log_error("node_start_failed", "{s:s, s:s}", "node", nc->name,
			    "error", "role not built into this binary");
			rc = 1;
			break;
		}
		if (node_start(&nodes[started], cfg, nc, zctx, ops) != 0) {
			node_abort(&nodes[started], false);
			rc = 1;
			break;
		}
		started++;
	}
	if (rc != 0) {
		for (size_t i = 0; i < started; i++)
			node_abort(&nodes[i], true);
	} else {
		for (size_t i = 0; i < started; i++)
			uv_thread_create(&nodes[i].thread, node_thread, &nodes[i]);
		int sig;
		bool draining = false;
		hk_log_set_node(all ? "hikyaku" : name);
		for (;;) {
			sigwait(&sigs, &sig);
			hk_log_info("signal", "{s:i}", "signal", sig);
			if (sig == SIGHUP) {
				for (size_t i = 0; i < started; i++)
					uv_async_send(&nodes[i].reload_async);
			} else if (sig == SIGUSR1) {
				/* Drain once: every node with a drain hook (in `all`,
				 * each sender) is told; a second SIGUSR1 changes nothing. */
				size_t n = 0;
				for (size_t i = 0; i < started; i++)
					n += nodes[i].ops->drain != NULL;
				if (draining || n == 0) {
					hk_log_warn("drain_ignored", "{s:s}", "reason",
					    draining ? "already draining" : "no node here drains");
					continue;
				}
				draining = true;
				drains_left = n;
				for (size_t i = 0; i < started; i++)
					if (nodes[i].ops->drain)
						uv_async_send(&nodes[i].drain_async);
			} else {
				break;
			}
		}
		for (size_t i = 0; i < started; i++) {
			nodes[i].stopping = true;
			uv_async_send(&nodes[i].stop_async);
		}
		for (size_t i = 0; i < started; i++) {
			uv_thread_join(&nodes[i].thread);
			rc |= nodes[i].exit_code;
		}
	}
	for (size_t i = 0; i < n_nodes; i++) {
		if (nodes[i].loop) {
			uv_loop_close(nodes[i].loop);
			free(nodes[i].loop);
		}
	}
	free(nodes);
	zmq_ctx_term(zctx);
	hk_config_free(&cfg);
	return rc;
}
