/*
 * hk-ackrouter - a router that acks every submission at once, so bench/run
 * can measure the ingress alone (sessions/s, messages/s) without a sender's
 * synced commit behind it. Bench only: it queues nothing.
 *
 *   hk-ackrouter tcp://127.0.0.1:PORT
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include <zmq.h>

#include "hk_zlink.h"

static uint64_t acked;

static void
on_frame(hk_zlink *link, const void *peer, size_t peer_len, const Hk__Frame *f,
    const uint8_t *body, size_t body_len, void *arg)
{
	(void)body, (void)body_len, (void)arg;
	if (f->body_case != HK__FRAME__BODY_SUBMIT)
		return;
	Hk__SubmitReply rep = HK__SUBMIT_REPLY__INIT;
	Hk__Frame out = HK__FRAME__INIT;
	rep.req_id = f->submit->req_id;
	rep.ok = 1;
	out.body_case = HK__FRAME__BODY_SUBMIT_REPLY;
	out.submit_reply = &rep;
	if (hk_zlink_send(link, peer, peer_len, &out, NULL, 0) == 0)
		acked++;
}

static void
on_signal(uv_signal_t *h, int sig)
{
	(void)sig;
	uv_stop(h->loop);
}

int
main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: hk-ackrouter ENDPOINT\n");
		return 2;
	}
	uv_loop_t *loop = uv_default_loop();
	void *zctx = zmq_ctx_new();
	hk_zlink *link;
	int rc = hk_zlink_new(&link, loop, zctx, ZMQ_ROUTER, "ackrouter", "ackrouter", on_frame, NULL);
	if (rc == 0)
		rc = hk_zlink_bind(link, argv[1]);
	if (rc != 0) {
		fprintf(stderr, "hk-ackrouter: %s: %s\n", argv[1], strerror(-rc));
		return 1;
	}
	uv_signal_t sigterm, sigint;
	uv_signal_init(loop, &sigterm);
	uv_signal_init(loop, &sigint);
	uv_signal_start(&sigterm, on_signal, SIGTERM);
	uv_signal_start(&sigint, on_signal, SIGINT);
	printf("{\"event\":\"ackrouter_listening\",\"endpoint\":\"%s\"}\n", argv[1]);
	fflush(stdout);
	uv_run(loop, UV_RUN_DEFAULT);
	printf("{\"event\":\"ackrouter_stopped\",\"acked\":%llu}\n", (unsigned long long)acked);
	return 0;
}
