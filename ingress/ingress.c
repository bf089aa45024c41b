/*
 * ingress - the ingress role: ESMTP in, SubmitRequest out.
 *
 * One DEALER link (identity = node name) per configured router. Requests go
 * round-robin over the routers that are connected (ZMQ_IMMEDIATE makes a send
 * to an unconnected one fail at once, and the next is tried) and not
 * suspect: a router that let a request time out is suspect for
 * INGRESS_ROUTER_SUSPECT_MS, or until it answers anything, and gets requests
 * only when every connected router is suspect. So a hung router (alive TCP,
 * no answers) costs one 451 per suspect period instead of every other
 * submission; a killed one is dropped by ZeroMQ as its connection closes.
 * The request id's low 8 bits name the router it went to. With no router
 * connected the client gets its 451 at once. Pending requests sit in a wait
 * table (request id -> session). An answer whose id is not there (the
 * session timed out or left, or the answer is from before a restart) is
 * normal in a cluster and only logged at debug level.
 *
 * With a tls: map the node builds one server SSL_CTX at start (a bad
 * certificate stops the start) and a new one on SIGHUP: new sessions get
 * the new context, sessions already in TLS keep theirs (OpenSSL counts the
 * references), and a context that fails to build is logged and not used.
 *
 * AUTH checks the credentials of every tenant of the file (ingress_auth);
 * password hashes run on libuv's thread pool, two at a time per node so
 * that a burst of logins cannot take every pool thread from the sender's
 * commits in `hikyaku all`.
 *
 * A tenant's rate_limit is a token bucket per node (hk_rate), taken at MAIL:
 * with N ingress nodes a tenant may send up to N times its rate in total.
 * Likewise per node, over all its listeners: open sessions per client IP
 * (hk_count) and failed AUTH per client IP (hk_rate).
 */
/* System */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Third-party */
#include <jansson.h>
#include <uv.h>
#include <zmq.h>

/* common/ */
#include "hk_http.h"
#include "hk_log.h"
#include "hk_node.h"
#include "hk_prom.h"
#include "hk_rate.h"
#include "hk_tls.h"
#include "hk_u64map.h"
#include "hk_util.h"
#include "hk_curve.h"
#include "hk_zlink.h"

/* This role */
#include "ingress_auth.h"
#include "ingress_listener.h"
#include "ingress_session.h"

#define INGRESS_AUTH_RUNNING 2               /* password checks on the pool at once */
#define INGRESS_AUTH_CACHE_MS (5 * 60 * 1000) /* a success is remembered this long */
#define INGRESS_AUTH_FAILURE_KEYS 65536      /* client IPs tracked for failed AUTH */
#define INGRESS_ROUTER_SUSPECT_MS 10000      /* a router that timed out is avoided this long */
#define INGRESS_ROUTER_BITS 8                /* low bits of a request id: the router index */

/* One router's link and what its answers (or silence) said. */
struct ingress_router {
	hk_zlink *link;
	uint64_t suspect_until; /* loop time; 0: not suspect */
};

struct ingress {
	struct hk_node *node;
	struct ingress_env env;
	struct ingress_router *routers; /* one per conf->routers */
	size_t n_routers;
	size_t rr;              /* next router to try */
	hk_u64map *wait;        /* req_id -> ingress_session */
	hk_idgen *idgen;
	ingress_listener **listeners;   /* one per conf->listeners */
	size_t n_listeners;
	size_t n_open_listeners;        /* not yet done closing */
	size_t n_sessions;              /* every listener's, for max_sessions */
	hk_rate **rates;                /* per cfg->tenants[i] with a rate_limit, else NULL */
	uint64_t next_req_id;
	bool stopping;
	hk_u64map *sent_at;     /* req_id -> uv_hrtime() of the submit, for the latency */
	/* For the HTTP thread: atomics, written on the loop (publish, replies). */
	struct {
		_Atomic uint64_t sessions_open;
		_Atomic uint64_t accepted, nacked, busy, unavailable, cancelled;
		_Atomic bool router_connected;  /* a router link could take a message */
		_Atomic int64_t last_reply_ms;  /* a router last answered */
		struct hk_hist submit_latency;  /* submit sent -> router's answer */
	} stats;
};

/* A router answered within this long: the ingress counts as ready even if
 * its links are momentarily full. */
#define INGRESS_READY_REPLY_MS 10000

/* ingress_submit - env->submit: one SubmitRequest plus the body frame. */
static int
ingress_submit(void *arg, ingress_session *s, const struct ingress_txn *t, uint64_t *req_id)
{
	struct ingress *ing = arg;
	Hk__Recipient *rv = xcalloc(t->n_rcpts ? t->n_rcpts : 1, sizeof(*rv));
	Hk__Recipient **rp = xcalloc(t->n_rcpts ? t->n_rcpts : 1, sizeof(*rp));
	Hk__Envelope env = HK__ENVELOPE__INIT;
	Hk__Submission sub = HK__SUBMISSION__INIT;
	Hk__SubmitRequest req = HK__SUBMIT_REQUEST__INIT;
	Hk__Frame frame = HK__FRAME__INIT;
	uint64_t id = 0;
	int rc = -EAGAIN;

	/* protobuf-c wants non-const pointers; pack only reads them. */
	for (size_t i = 0; i < t->n_rcpts; i++) {
		hk__recipient__init(&rv[i]);
		rv[i].address = t->rcpts[i].addr;
		rv[i].n_params = t->rcpts[i].n_params;
		rv[i].params = t->rcpts[i].params;
		rp[i] = &rv[i];
	}
	env.mail_from = (char *)t->mail_from;
	env.n_mail_params = t->n_mail_params;
	env.mail_params = (char **)t->mail_params;
	env.n_rcpts = t->n_rcpts;
	env.rcpts = rp;
	sub.id = (char *)t->id;
	sub.tenant = (char *)t->tenant;
	sub.pool = (char *)(t->pool ? t->pool : "");
	sub.envelope = &env;
	sub.body_size = t->body_len;
	sub.ingress_node = (char *)ing->env.node_name;
	sub.received_at_ms = t->received_at_ms;
	sub.client_address = (char *)t->client_address;
	req.msg = &sub;
	frame.body_case = HK__FRAME__BODY_SUBMIT;
	frame.submit = &req;

	/* First pass: connected routers that are not suspect; second: any. */
	uint64_t now = uv_now(ing->node->loop);
	for (int pass = 0; pass < 2 && rc == -EAGAIN; pass++) {
		for (size_t k = 0; k < ing->n_routers; k++) {
			size_t i = (ing->rr + k) % ing->n_routers;
			if (pass == 0 && ing->routers[i].suspect_until > now)
				continue;
			id = (ing->next_req_id++ << INGRESS_ROUTER_BITS) | i;
			req.req_id = id;
			rc = hk_zlink_send(ing->routers[i].link, NULL, 0, &frame, t->body ? t->body : "",
			    t->body_len);
			if (rc != -EAGAIN) {
				ing->rr = (i + 1) % ing->n_routers;
				break;
			}
		}
	}
	free(rp);
	free(rv);
	if (rc != 0) {
		hk_log_warn("submit_failed", "{s:s, s:s}", "id", t->id, "error",
		    rc == -EAGAIN ? "no router connected" : zmq_strerror(-rc));
		ing->stats.unavailable++;
		return rc;
	}
	hk_u64map_put(ing->wait, id, s);
	hk_u64map_put(ing->sent_at, id, (void *)(uintptr_t)(uv_hrtime() | 1));
	hk_log_debug("submit_sent", "{s:s, s:I}", "id", t->id, "req_id", (json_int_t)id);
	*req_id = id;
	return 0;
}

/* ingress_cancel - env->cancel: the session no longer waits for REQ_ID. */
static void
ingress_cancel(void *arg, uint64_t req_id)
{
	struct ingress *ing = arg;
	size_t i = (size_t)(req_id & ((1u << INGRESS_ROUTER_BITS) - 1));

	/* A timeout (or a client gone while waiting): prefer the other routers
	 * for a while; any answer from this one clears it. */
	if (hk_u64map_pop(ing->wait, req_id) != NULL) {
		ing->stats.cancelled++;
		if (i < ing->n_routers) {
			if (ing->routers[i].suspect_until == 0)
				hk_log_warn("router_suspect", "{s:s, s:i}", "router",
				    ing->node->conf->router_names[i], "for_ms", INGRESS_ROUTER_SUSPECT_MS);
			ing->routers[i].suspect_until = uv_now(ing->node->loop) + INGRESS_ROUTER_SUSPECT_MS;
		}
	}
	hk_u64map_pop(ing->sent_at, req_id);
}

/* ingress_admit - env->admit: may tenant T start one more message now? */
static bool
ingress_admit(void *arg, const struct hk_tenant_conf *t, uint64_t *retry_ms)
{
	struct ingress *ing = arg;
	size_t i = (size_t)(t - ing->node->cfg->tenants);
	uint64_t now = uv_now(ing->node->loop);

	if (i >= ing->node->cfg->n_tenants || ing->rates[i] == NULL ||
	    hk_rate_take(ing->rates[i], t->name, 1, now))
		return true;
	*retry_ms = hk_rate_retry_ms(ing->rates[i], t->name, 1, now);
	return false;
}

/* ingress_dispatch - a frame from a router. */
static void
ingress_dispatch(hk_zlink *link, const void *peer, size_t peer_len, const Hk__Frame *frame,
    const uint8_t *body, size_t body_len, void *arg)
{
	struct ingress *ing = arg;
	const Hk__SubmitReply *r;
	ingress_session *s;

	(void)link;
	(void)peer;
	(void)peer_len;
	(void)body;
	(void)body_len;
	if (frame->body_case != HK__FRAME__BODY_SUBMIT_REPLY) {
		hk_log_warn("unexpected_frame", "{s:s, s:s}", "type", hk_msg_name(frame),
		    "from", frame->from_node ? frame->from_node : "");
		return;
	}
	r = frame->submit_reply;
	size_t i = (size_t)(r->req_id & ((1u << INGRESS_ROUTER_BITS) - 1));
	if (i < ing->n_routers && ing->routers[i].suspect_until) {
		ing->routers[i].suspect_until = 0;
		hk_log_info("router_answering", "{s:s}", "router", ing->node->conf->router_names[i]);
	}
	ing->stats.last_reply_ms = hk_now_ms();
	uintptr_t t0 = (uintptr_t)hk_u64map_pop(ing->sent_at, r->req_id);
	if ((s = hk_u64map_pop(ing->wait, r->req_id)) == NULL) {
		hk_log_debug("late_reply", "{s:I, s:b, s:s}", "req_id", (json_int_t)r->req_id,
		    "ok", r->ok, "from", frame->from_node ? frame->from_node : "");
		return;
	}
	if (t0)
		hk_hist_observe(&ing->stats.submit_latency, (uv_hrtime() - t0) / 1000);
	if (r->ok)
		ing->stats.accepted++;
	else if (r->refusal == HK__REFUSAL__REFUSAL_BUSY)
		ing->stats.busy++;
	else
		ing->stats.nacked++;
	ingress_session_submitted(s, r->ok, r->refusal == HK__REFUSAL__REFUSAL_BUSY, r->reason);
}

/* ---- the HTTP endpoint: publish on the loop, read on the HTTP thread ---- */

static void
ingress_publish(struct hk_node *node)
{
	struct ingress *ing = node->role;

	if (ing == NULL || ing->stopping)
		return;
	ing->stats.sessions_open = ing->n_sessions;
	bool any = false;
	for (size_t i = 0; i < ing->n_routers && !any; i++)
		any = hk_zlink_writable(ing->routers[i].link);
	ing->stats.router_connected = any;
}

static bool
ingress_ready(void *arg, char *reason, size_t len)
{
	struct ingress *ing = arg;

	if (ing->stats.router_connected ||
	    hk_now_ms() - ing->stats.last_reply_ms < INGRESS_READY_REPLY_MS)
		return true;
	snprintf(reason, len, "no router connected");
	return false;
}

static void
ingress_metrics(void *arg, hk_prom *p)
{
	struct ingress *ing = arg;

	hk_prom_one(p, "hikyaku_ingress_sessions_open", "gauge", "SMTP sessions open, all listeners.", ing->stats.sessions_open);
	hk_prom_one(p, "hikyaku_ingress_messages_accepted_total", "counter", "Messages a router acked (the client got 250).", ing->stats.accepted);
	hk_prom_family(p, "hikyaku_ingress_messages_refused_total", "counter",
	    "Messages submitted but not queued (the client got 451): nack = a router refused, "
	    "busy = a router was over a cap (451 4.3.2), no_router = none connected, cancelled = timed out or the client left.");
	hk_prom_u64(p, "hikyaku_ingress_messages_refused_total", "reason", "nack", ing->stats.nacked);
	hk_prom_u64(p, "hikyaku_ingress_messages_refused_total", "reason", "busy", ing->stats.busy);
	hk_prom_u64(p, "hikyaku_ingress_messages_refused_total", "reason", "no_router", ing->stats.unavailable);
	hk_prom_u64(p, "hikyaku_ingress_messages_refused_total", "reason", "cancelled", ing->stats.cancelled);
	hk_prom_family(p, "hikyaku_ingress_submit_latency_seconds", "histogram",
	    "Time from a submission sent to its router's answer.");
	hk_prom_hist(p, "hikyaku_ingress_submit_latency_seconds", NULL, NULL, &ing->stats.submit_latency);
	hk_prom_one(p, "hikyaku_ingress_router_connected", "gauge", "1 if a router link could take a message at the last check.", ing->stats.router_connected);
}

static void
ingress_free(struct ingress *ing)
{
	hk_u64map_destroy(&ing->wait);
	hk_u64map_destroy(&ing->sent_at);
	hk_idgen_destroy(&ing->idgen);
	hk_count_free(ing->env.ip_sessions);
	hk_rate_free(ing->env.auth_failures);
	for (size_t i = 0; ing->rates && i < ing->node->cfg->n_tenants; i++)
		hk_rate_free(ing->rates[i]);
	free(ing->rates);
	SSL_CTX_free(ing->env.tls_ctx);
	ingress_auth_destroy(&ing->env.auth); /* freed when its last check returns */
	free(ing->listeners);
	free(ing->routers);
	free(ing);
}

/* A listener closed its last session; after the last listener nothing
 * refers to us any more. */
static void
on_listener_done(void *arg)
{
	struct ingress *ing = arg;

	if (--ing->n_open_listeners > 0)
		return;
	ing->node->role = NULL;
	ingress_free(ing);
}

/* Build the TLS context from the configured files; log what was loaded. */
static SSL_CTX *
ingress_tls_load(const struct hk_ingress_conf *c, const char *event)
{
	char err[512], subject[256], serial[80];
	SSL_CTX *ctx;

	if ((ctx = hk_tls_server_ctx(&c->tls, err, sizeof(err))) == NULL) {
		hk_log_error(!strcmp(event, "tls_loaded") ? "tls_load_failed" : "tls_reload_failed",
		    "{s:s}", "error", err);
		return NULL;
	}
	hk_tls_ctx_describe(ctx, subject, sizeof(subject), serial, sizeof(serial));
	hk_log_info(event, "{s:s, s:s, s:s}", "certificate", c->tls.certificate,
	    "subject", subject, "serial", serial);
	return ctx;
}

/* ingress_reload - SIGHUP: new certificate for new sessions, or keep the old. */
static void
ingress_reload(struct hk_node *node)
{
	struct ingress *ing = node->role;
	SSL_CTX *ctx;

	if (ing == NULL || ing->stopping || !node->conf->u.ingress.has_tls)
		return;
	if ((ctx = ingress_tls_load(&node->conf->u.ingress, "tls_reloaded")) == NULL)
		return; /* logged; the old context stays */
	SSL_CTX_free(ing->env.tls_ctx); /* sessions using it hold their own reference */
	ing->env.tls_ctx = ctx;
}

static void
close_listeners(struct ingress *ing)
{
	size_t n = ing->n_listeners;

	if (n == 0) {
		ing->node->role = NULL;
		ingress_free(ing);
		return;
	}
	/* Count first: a listener with nothing open calls back at once. */
	ing->n_open_listeners = n;
	ing->n_listeners = 0;
	for (size_t i = 0; i < n; i++)
		ingress_listener_close(ing->listeners[i], on_listener_done, ing);
}

static void
ingress_stop(struct hk_node *node)
{
	struct ingress *ing = node->role;

	if (ing == NULL || ing->stopping)
		return;
	ing->stopping = true;
	/* Sessions still waiting are closed below; no answer can reach them. */
	for (size_t i = 0; i < ing->n_routers; i++) {
		hk_zlink_close(ing->routers[i].link);
		ing->routers[i].link = NULL;
	}
	close_listeners(ing);
}

static int
ingress_start(struct hk_node *node)
{
	const struct hk_ingress_conf *c = &node->conf->u.ingress;
	struct ingress *ing;
	int rc;

	ing = xcalloc(1, sizeof(*ing));
	ing->node = node;
	ing->wait = hk_u64map_new();
	ing->sent_at = hk_u64map_new();
	if ((ing->idgen = hk_idgen_new()) == NULL) {
		hk_log_error("ingress_start_failed", "{s:s}", "error", "cannot seed the id generator");
		ingress_free(ing);
		return -1;
	}
	/*
	 * Request ids start from the clock so that a restarted node with the
	 * same identity cannot take a late answer meant for its predecessor as
	 * the answer to a new request (2^20 requests per millisecond of uptime
	 * would be needed to catch up).
	 */
	ing->next_req_id = ((uint64_t)hk_now_ms() << 12) | 1; /* then << INGRESS_ROUTER_BITS */
	ing->rates = xcalloc(node->cfg->n_tenants ? node->cfg->n_tenants : 1, sizeof(*ing->rates));
	for (size_t i = 0; i < node->cfg->n_tenants; i++) {
		const struct hk_tenant_conf *t = &node->cfg->tenants[i];
		/* A burst of the full count: "6000/m" may all come at once. */
		if (t->rate_count && (ing->rates[i] = hk_rate_new(t->rate_count, t->rate_per_ms, 0, 1)) == NULL) {
			hk_log_error("ingress_start_failed", "{s:s, s:s}", "tenant", t->name,
			    "error", "cannot make the rate limiter");
			ingress_free(ing);
			return -1;
		}
	}
	ing->env = (struct ingress_env){
		.conf = c,
		.node_name = node->conf->name,
		.idgen = ing->idgen,
		.submit = ingress_submit,
		.cancel = ingress_cancel,
		.admit = ingress_admit,
		.arg = ing,
		.n_sessions = &ing->n_sessions,
		.auth = ingress_auth_new(node->loop, node->cfg, INGRESS_AUTH_RUNNING, INGRESS_AUTH_CACHE_MS),
	};
	/* With no user anywhere AUTH could only fail: do not offer it. */
	if (ingress_auth_users(ing->env.auth) == 0)
		ingress_auth_destroy(&ing->env.auth);
	/* Failed AUTH per client IP: bursts of the whole limit, refilled over
	 * the window; when the table is full of blocked IPs it fails closed. */
	ing->env.ip_sessions = hk_count_new();
	if (ing->env.auth != NULL)
		ing->env.auth_failures = hk_rate_new(c->auth_failure_limit, c->auth_failure_window_ms,
		    0, INGRESS_AUTH_FAILURE_KEYS);
	if (ing->env.ip_sessions == NULL || (ing->env.auth != NULL && ing->env.auth_failures == NULL)) {
		hk_log_error("ingress_start_failed", "{s:s}", "error", "cannot make the per-IP limits");
		ingress_free(ing);
		return -1;
	}
	if (c->has_tls && (ing->env.tls_ctx = ingress_tls_load(c, "tls_loaded")) == NULL) {
		ingress_free(ing);
		return -1;
	}
	if (c->n_routers >= (1u << INGRESS_ROUTER_BITS)) {
		hk_log_error("ingress_start_failed", "{s:s}", "error", "too many routers (at most 255)");
		ingress_free(ing);
		return -1;
	}
	ing->routers = xcalloc(c->n_routers ? c->n_routers : 1, sizeof(*ing->routers));
	/* Only replies come back: a larger frame is refused by ZeroMQ. */
	int64_t max_frame = (int64_t)HK_FRAME_OVERHEAD;
	for (size_t i = 0; i < c->n_routers; i++) {
		char err[512];
		rc = hk_zlink_new(&ing->routers[i].link, node->loop, node->zctx, ZMQ_DEALER,
		    node->conf->name, node->conf->name, ingress_dispatch, ing);
		if (rc == 0) {
			ing->n_routers++;
			hk_zlink_setsockopt(ing->routers[i].link, ZMQ_MAXMSGSIZE, &max_frame, sizeof(max_frame));
			if (hk_curve_wanted(node->cfg, c->routers[i]) && hk_curve_client(ing->routers[i].link,
			    node->cfg, node->conf->name, node->conf->router_names[i], err, sizeof(err)) != 0) {
				hk_log_error("curve_failed", "{s:s, s:s}", "router", c->routers[i], "error", err);
				for (size_t j = 0; j < ing->n_routers; j++)
					hk_zlink_close(ing->routers[j].link);
				ingress_free(ing);
				return -1;
			}
		}
		if (rc != 0 || (rc = hk_zlink_connect(ing->routers[i].link, c->routers[i])) != 0) {
			hk_log_error("ingress_start_failed", "{s:s, s:s}", "router", c->routers[i],
			    "error", zmq_strerror(-rc));
			for (size_t j = 0; j < ing->n_routers; j++)
				hk_zlink_close(ing->routers[j].link);
			ingress_free(ing);
			return -1;
		}
	}
	ing->listeners = xcalloc(c->n_listeners, sizeof(*ing->listeners));
	for (size_t i = 0; i < c->n_listeners; i++) {
		if (ingress_listener_new(&ing->listeners[i], node->loop, &ing->env, &c->listeners[i]) != 0) {
			/* The ones already open close while node_abort runs the loop. */
			node->role = ing;
			ingress_stop(node);
			return -1;
		}
		ing->n_listeners++;
	}
	node->role = ing;
	node->http_handlers = (struct hk_http_handlers){
		.arg = ing, .ready = ingress_ready, .metrics = ingress_metrics,
	};
	node->publish = ingress_publish;
	return 0;
}

const struct hk_role_ops ingress_ops = { HK_ROLE_INGRESS, ingress_start, ingress_stop, ingress_reload };
