/* test_zlink - frames and bodies across a real ZeroMQ pair on a libuv loop;
 * malformed input is dropped without reaching the callback. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include <zmq.h>

#include "hk_zlink.h"

struct rx {
	int frames;
	char from[64];
	char peer[64];
	char body[64];
	uint64_t req_id;
	uv_loop_t *loop;
	int want;
};

static void
on_rx(hk_zlink *l, const void *peer, size_t peer_len, const Hk__Frame *f,
    const uint8_t *body, size_t body_len, void *arg)
{
	struct rx *rx = arg;
	(void)l;
	rx->frames++;
	snprintf(rx->from, sizeof(rx->from), "%s", f->from_node);
	snprintf(rx->peer, sizeof(rx->peer), "%.*s", (int)peer_len, (const char *)peer);
	snprintf(rx->body, sizeof(rx->body), "%.*s", (int)body_len, body ? (const char *)body : "");
	if (f->body_case == HK__FRAME__BODY_SUBMIT_REPLY)
		rx->req_id = f->submit_reply->req_id;
	if (rx->frames == rx->want)
		uv_stop(rx->loop);
}

static void
on_guard(uv_timer_t *t)
{
	uv_stop(t->loop); /* the test's upper bound; asserts below tell what was missing */
}

static void
run_until(uv_loop_t *loop, struct rx *rx, int want)
{
	uv_timer_t guard;
	rx->want = want;
	uv_timer_init(loop, &guard);
	uv_timer_start(&guard, on_guard, 5000, 0);
	if (rx->frames < want)
		uv_run(loop, UV_RUN_DEFAULT);
	uv_close((uv_handle_t *)&guard, NULL);
	uv_run(loop, UV_RUN_NOWAIT);
}

static void
test_roundtrip_and_garbage(void **state)
{
	uv_loop_t loop;
	void *ctx = zmq_ctx_new();
	hk_zlink *router, *dealer;
	struct rx at_router = { .loop = &loop }, at_dealer = { .loop = &loop };
	(void)state;

	uv_loop_init(&loop);
	assert_int_equal(hk_zlink_new(&router, &loop, ctx, ZMQ_ROUTER, NULL, "r", on_rx, &at_router), 0);
	assert_int_equal(hk_zlink_new(&dealer, &loop, ctx, ZMQ_DEALER, "d1", "d1", on_rx, &at_dealer), 0);
	assert_int_equal(hk_zlink_bind(router, "inproc://test"), 0);
	assert_int_equal(hk_zlink_connect(dealer, "inproc://test"), 0);

	/* A heartbeat with a body frame, dealer -> router. */
	Hk__Heartbeat hb = HK__HEARTBEAT__INIT;
	hb.node_id = "d1";
	hb.role = HK__ROLE__ROLE_SENDER;
	Hk__Frame f = HK__FRAME__INIT;
	f.body_case = HK__FRAME__BODY_HEARTBEAT;
	f.heartbeat = &hb;
	assert_int_equal(hk_zlink_send(dealer, NULL, 0, &f, "BODY", 4), 0);
	run_until(&loop, &at_router, 1);
	assert_int_equal(at_router.frames, 1);
	assert_string_equal(at_router.from, "d1");
	assert_string_equal(at_router.peer, "d1");
	assert_string_equal(at_router.body, "BODY");

	/* A reply routed back by identity; an unknown identity fails loudly. */
	Hk__SubmitReply rep = HK__SUBMIT_REPLY__INIT;
	rep.req_id = 42;
	rep.ok = 1;
	Hk__Frame g = HK__FRAME__INIT;
	g.body_case = HK__FRAME__BODY_SUBMIT_REPLY;
	g.submit_reply = &rep;
	assert_int_equal(hk_zlink_send(router, "nobody", 6, &g, NULL, 0), -EHOSTUNREACH);
	assert_int_equal(hk_zlink_send(router, "d1", 2, &g, NULL, 0), 0);
	run_until(&loop, &at_dealer, 1);
	assert_int_equal(at_dealer.req_id, 42);
	assert_string_equal(at_dealer.from, "r");

	/* Garbage from a raw socket: not protobuf, a wrong version, four parts. */
	void *raw = zmq_socket(ctx, ZMQ_DEALER);
	int zero = 0;
	zmq_setsockopt(raw, ZMQ_LINGER, &zero, sizeof(zero));
	zmq_setsockopt(raw, ZMQ_ROUTING_ID, "raw", 3);
	assert_int_equal(zmq_connect(raw, "inproc://test"), 0);
	zmq_send(raw, "\xff\xff\xff garbage", 11, 0);
	Hk__Frame v = HK__FRAME__INIT;
	v.version = 99;
	v.body_case = HK__FRAME__BODY_HEARTBEAT;
	v.heartbeat = &hb;
	uint8_t buf[256];
	size_t n = hk__frame__pack(&v, buf);
	zmq_send(raw, buf, n, 0);
	zmq_send(raw, "a", 1, ZMQ_SNDMORE);
	zmq_send(raw, "b", 1, ZMQ_SNDMORE);
	zmq_send(raw, "c", 1, 0);
	/* Then a valid one: when it arrives, the garbage before it was handled. */
	f.version = 1;
	f.from_node = "raw";
	n = hk__frame__pack(&f, buf);
	zmq_send(raw, buf, n, 0);
	run_until(&loop, &at_router, 2);
	assert_int_equal(at_router.frames, 2);
	assert_string_equal(at_router.from, "raw");
	assert_int_equal(hk_zlink_dropped(router), 3);
	zmq_close(raw);

	hk_zlink_close(router);
	hk_zlink_close(dealer);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&loop), 0);
	zmq_ctx_term(ctx);
}

static void
test_dealer_without_peer(void **state)
{
	uv_loop_t loop;
	void *ctx = zmq_ctx_new();
	hk_zlink *dealer;
	struct rx rx = { .loop = &loop };
	(void)state;

	uv_loop_init(&loop);
	assert_int_equal(hk_zlink_new(&dealer, &loop, ctx, ZMQ_DEALER, "d", "d", on_rx, &rx), 0);
	assert_int_equal(hk_zlink_connect(dealer, "tcp://127.0.0.1:1"), 0);
	Hk__Heartbeat hb = HK__HEARTBEAT__INIT;
	hb.node_id = "d";
	Hk__Frame f = HK__FRAME__INIT;
	f.body_case = HK__FRAME__BODY_HEARTBEAT;
	f.heartbeat = &hb;
	/* ZMQ_IMMEDIATE: nothing connected, so the send fails instead of queueing. */
	assert_int_equal(hk_zlink_send(dealer, NULL, 0, &f, NULL, 0), -EAGAIN);
	hk_zlink_close(dealer);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&loop), 0);
	zmq_ctx_term(ctx);
}

static void
test_decode_rules(void **state)
{
	const char *why = NULL;
	uint8_t buf[512];
	(void)state;

	Hk__Frame f = HK__FRAME__INIT;
	f.version = 1;
	size_t n = hk__frame__pack(&f, buf);
	assert_null(hk_msg_decode(buf, n, &why));
	assert_string_equal(why, "no message body (unknown kind)");

	Hk__Submission s = HK__SUBMISSION__INIT;
	Hk__SubmitRequest req = HK__SUBMIT_REQUEST__INIT;
	req.msg = &s;
	f.body_case = HK__FRAME__BODY_SUBMIT;
	f.submit = &req;
	n = hk__frame__pack(&f, buf);
	assert_null(hk_msg_decode(buf, n, &why));
	assert_string_equal(why, "submission without id");

	s.id = "01J";
	Hk__Envelope env = HK__ENVELOPE__INIT;
	s.envelope = &env;
	n = hk__frame__pack(&f, buf);
	assert_null(hk_msg_decode(buf, n, &why));
	assert_string_equal(why, "submission without recipients");

	Hk__Recipient r = HK__RECIPIENT__INIT, *rp = &r;
	r.address = "a@b.test";
	env.rcpts = &rp;
	env.n_rcpts = 1;
	n = hk__frame__pack(&f, buf);
	Hk__Frame *ok = hk_msg_decode(buf, n, &why);
	assert_non_null(ok);
	assert_string_equal(hk_msg_name(ok), "SubmitRequest");
	hk__frame__free_unpacked(ok, NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip_and_garbage),
		cmocka_unit_test(test_dealer_without_peer),
		cmocka_unit_test(test_decode_rules),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
