/*
 * router_http - what a router shows on its HTTP endpoint: /readyz (a live
 * sender), /metrics and GET /cluster (the members it sees and how many of
 * the recently routed domains each owns).
 *
 * The router's loop publishes here (router_obs_members every tick, a
 * domain per routed recipient, counters as they move); the HTTP thread only
 * reads through the handlers, under the obs lock or from atomics.
 */
#ifndef ROUTER_HTTP_H
#define ROUTER_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hk_config.h"
#include "hk_http.h"
#include "hk_prom.h"

/* One member as the loop saw it at its last tick. Strings are copied. */
struct router_member_view {
	const char *name;
	const char *endpoint;
	uint32_t weight;
	uint64_t queue_depth;
	bool draining;
	bool alive;
	int64_t last_seen_ms;   /* Unix epoch ms of its last heartbeat */
	uint64_t inflight;      /* enqueues sent to it and not answered */
};

/* Counters the loop bumps directly (atomics: the HTTP thread reads them). */
struct router_stats {
	_Atomic uint64_t submissions;   /* SubmitRequests received */
	_Atomic uint64_t acked;         /* answered ok */
	_Atomic uint64_t nacked;        /* answered not ok (any reason) */
	_Atomic uint64_t enqueues;      /* EnqueueRequests sent */
	_Atomic uint64_t enqueue_nacks; /* EnqueueReplies not ok */
	_Atomic uint64_t resends;       /* re-splits after a part failed (failover) */
	_Atomic uint64_t handoffs;      /* handoffs taken from senders (queue moving owner) */
	_Atomic uint64_t busy;          /* nacked as busy (a cap or a full pipe) */
	struct hk_hist ack_latency;     /* enqueue sent -> its EnqueueReply */
};

typedef struct router_obs router_obs;

/* router_obs_new - CFG (read for hot_domains:) must outlive the obs; it is
 * never changed after load, so the HTTP thread may read it. */
router_obs *router_obs_new(const char *node, size_t max_domains, const struct hk_config *cfg);
void router_obs_free(router_obs **obs);

struct router_stats *router_obs_stats(router_obs *obs);

/* router_obs_handlers - the HTTP handlers, reading OBS. */
void router_obs_handlers(router_obs *obs, struct hk_http_handlers *out);

/* router_obs_members - replace the member snapshot (loop thread). */
void router_obs_members(router_obs *obs, const struct router_member_view *m, size_t n);

/* router_obs_domain - DOMAIN was routed now (loop thread). */
void router_obs_domain(router_obs *obs, const char *domain);

/* router_obs_cluster_json - the /cluster document (any thread; caller frees). */
char *router_obs_cluster_json(router_obs *obs);

#endif
