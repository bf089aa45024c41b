/* test_curve - the curve: config section, key checks, the ZAP decision, the
 * junk-log rate limit, and a real CURVE pair over loopback: a known client
 * key gets through, an unknown one is refused by the ZAP handler. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <zmq.h>

#include "hk_config.h"
#include "hk_curve.h"
#include "hk_logrl.h"
#include "hk_zlink.h"

struct kp {
	char pub[41], sec[41];
};

static char *
write_tmp(const char *text)
{
	static char path[64];
	strcpy(path, "/tmp/hk_test_curve_XXXXXX");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	return path;
}

/* A cluster r1 (router), s1 (sender), i1 (ingress) with keys; EXTRA is
 * appended to the curve: section (or replaces it when it starts with '!'). */
static int
load(struct kp k[3], const char *extra, struct hk_config **cfg, char *err, size_t errlen)
{
	char text[4096];
	int n = snprintf(text, sizeof(text),
	    "nodes:\n"
	    "  r1: {role: router, front: 'tcp://127.0.0.1:7101', back: 'tcp://127.0.0.1:7102'}\n"
	    "  s1: {role: sender, routers: [r1], queue: /tmp/q}\n"
	    "  i1: {role: ingress, listen: '127.0.0.1:2525', routers: [r1], max_message_size: 30M}\n"
	    "curve:\n");
	if (extra && extra[0] == '!')
		snprintf(text + n, sizeof(text) - (size_t)n, "%s", extra + 1);
	else
		snprintf(text + n, sizeof(text) - (size_t)n,
		    "  r1: {public_key: \"%s\", secret_key: \"%s\"}\n"
		    "  s1: {public_key: \"%s\", secret_key: \"%s\"}\n"
		    "  i1: {public_key: \"%s\", secret_key: \"%s\"}\n%s",
		    k[0].pub, k[0].sec, k[1].pub, k[1].sec, k[2].pub, k[2].sec, extra ? extra : "");
	char *path = write_tmp(text);
	int rc = hk_config_load(path, cfg, err, errlen);
	unlink(path);
	return rc;
}

static void
keys(struct kp k[3])
{
	for (int i = 0; i < 3; i++)
		assert_int_equal(zmq_curve_keypair(k[i].pub, k[i].sec), 0);
}

static void
test_config_curve(void **state)
{
	struct kp k[3];
	struct hk_config *cfg;
	char err[512], sec[41], text[256];
	(void)state;

	keys(k);
	assert_int_equal(load(k, NULL, &cfg, err, sizeof(err)), 0);
	assert_string_equal(hk_config_curve(cfg, "r1")->public_key, k[0].pub);
	assert_int_equal(hk_curve_secret(cfg, "s1", sec, err, sizeof(err)), 0);
	assert_string_equal(sec, k[1].sec);
	assert_true(hk_curve_wanted(cfg, "tcp://127.0.0.1:1"));
	assert_false(hk_curve_wanted(cfg, "inproc://r1.front"));
	assert_int_equal(hk_config_max_frame(cfg), (30u << 20) + HK_FRAME_OVERHEAD);
	hk_config_free(&cfg);

	/* Errors: an unknown node, a missing node, a bad key, both secrets. */
	assert_int_equal(load(k, "  x9: {public_key: \"0000000000000000000000000000000000000000\", "
	    "secret_key: \"0000000000000000000000000000000000000000\"}\n", &cfg, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "key 'x9': curve keys for a node that is not in nodes:"));
	snprintf(text, sizeof(text), "!  r1: {public_key: \"%s\", secret_key: \"%s\"}\n", k[0].pub, k[0].sec);
	assert_int_equal(load(k, text, &cfg, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "node 's1' has no CURVE keys"));
	assert_int_equal(load(k, "!  r1: {public_key: short, secret_key: short}\n", &cfg, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "key 'public_key': node 'r1': not a Z85 CURVE key"));
	snprintf(text, sizeof(text), "!  r1: {public_key: \"%s\", secret_key: \"%s\", secret_key_file: /x}\n",
	    k[0].pub, k[0].sec);
	assert_int_equal(load(k, text, &cfg, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "give exactly one of secret_key and secret_key_file"));
	assert_null(cfg);
}

static void
test_secret_file(void **state)
{
	struct kp k[3];
	struct hk_config *cfg;
	char err[512], sec[41], line[64], extra[512];
	(void)state;

	keys(k);
	snprintf(line, sizeof(line), "  %s  \n", k[0].sec);
	char *path = strdup(write_tmp(line));
	snprintf(extra, sizeof(extra),
	    "!  r1: {public_key: \"%s\", secret_key_file: %s}\n"
	    "  s1: {public_key: \"%s\", secret_key: \"%s\"}\n"
	    "  i1: {public_key: \"%s\", secret_key_file: /nonexistent/i1.key}\n",
	    k[0].pub, path, k[1].pub, k[2].sec /* not s1's */, k[2].pub);
	/* Files are read when a node starts, not at load: i1's may be absent here. */
	assert_int_equal(load(k, extra, &cfg, err, sizeof(err)), 0);
	assert_int_equal(hk_curve_secret(cfg, "r1", sec, err, sizeof(err)), 0);
	assert_string_equal(sec, k[0].sec);
	assert_int_equal(hk_curve_secret(cfg, "s1", sec, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "does not belong to its public_key"));
	assert_int_equal(hk_curve_secret(cfg, "i1", sec, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "cannot open secret_key_file /nonexistent/i1.key"));
	hk_config_free(&cfg);
	unlink(path);
	free(path);
}

static void
test_lookup(void **state)
{
	struct kp k[3];
	struct hk_config *cfg;
	char err[512];
	uint8_t bin[32];
	(void)state;

	keys(k);
	assert_int_equal(load(k, NULL, &cfg, err, sizeof(err)), 0);
	zmq_z85_decode(bin, k[2].pub); /* i1 */
	assert_string_equal(hk_curve_lookup(cfg, "front", bin), "i1");
	assert_null(hk_curve_lookup(cfg, "back", bin));
	zmq_z85_decode(bin, k[1].pub); /* s1 */
	assert_string_equal(hk_curve_lookup(cfg, "back", bin), "s1");
	assert_null(hk_curve_lookup(cfg, "front", bin));
	assert_null(hk_curve_lookup(cfg, "other", bin));
	zmq_z85_decode(bin, k[0].pub); /* the router's own key is no client's */
	assert_null(hk_curve_lookup(cfg, "front", bin));
	assert_null(hk_curve_lookup(cfg, "back", bin));
	assert_true(hk_curve_key_ok(k[0].pub));
	assert_false(hk_curve_key_ok("short"));
	assert_false(hk_curve_key_ok(NULL));
	hk_config_free(&cfg);
}

static void
test_logrl(void **state)
{
	struct hk_logrl rl = { 0 };
	uint64_t sup = 99;
	int allowed = 0;
	(void)state;

	for (int i = 0; i < 100; i++)
		allowed += hk_logrl_allow(&rl, 10000, 10, &sup);
	assert_int_equal(allowed, 10);
	assert_false(hk_logrl_allow(&rl, 10999, 10, &sup));
	assert_true(hk_logrl_allow(&rl, 11000, 10, &sup));
	assert_int_equal(sup, 91); /* 90 in the burst, 1 at 10999 */
	assert_true(hk_logrl_allow(&rl, 11001, 10, &sup));
	assert_int_equal(sup, 0);
	/* A clock going back starts a new window rather than blocking for long. */
	assert_true(hk_logrl_allow(&rl, 500, 10, &sup));

	/* The end of a storm is reported by the timer's flush, once. */
	struct hk_logrl st = { 0 };
	for (int i = 0; i < 50; i++)
		hk_logrl_allow(&st, 20000, 10, &sup);
	assert_false(hk_logrl_flush(&st, 20500, &sup)); /* window not over */
	assert_true(hk_logrl_flush(&st, 21000, &sup));
	assert_int_equal(sup, 40);
	assert_false(hk_logrl_flush(&st, 23000, &sup)); /* nothing more to say */
}

/* --- a real CURVE pair on a libuv loop ---------------------------------------- */

struct rx {
	int frames;
	uv_loop_t *loop;
};

static void
on_rx(hk_zlink *l, const void *peer, size_t peer_len, const Hk__Frame *f,
    const uint8_t *body, size_t body_len, void *arg)
{
	struct rx *rx = arg;
	(void)l, (void)peer, (void)peer_len, (void)f, (void)body, (void)body_len;
	rx->frames++;
}

static void
on_guard(uv_timer_t *t)
{
	uv_stop(t->loop);
}

/* Run the loop for MS milliseconds (the handshake and ZAP run meanwhile). */
static void
spin(uv_loop_t *loop, int ms)
{
	uv_timer_t t;
	uv_timer_init(loop, &t);
	uv_timer_start(&t, on_guard, (uint64_t)ms, 0);
	uv_run(loop, UV_RUN_DEFAULT);
	uv_close((uv_handle_t *)&t, NULL);
	uv_run(loop, UV_RUN_NOWAIT);
}

static void
send_hb(hk_zlink *l, const char *node)
{
	Hk__Frame f = HK__FRAME__INIT;
	Hk__Heartbeat hb = HK__HEARTBEAT__INIT;
	hb.node_id = (char *)node;
	hb.role = HK__ROLE__ROLE_SENDER;
	f.body_case = HK__FRAME__BODY_HEARTBEAT;
	f.heartbeat = &hb;
	hk_zlink_send(l, NULL, 0, &f, NULL, 0);
}

static void
test_curve_pair(void **state)
{
	struct kp k[3], stranger;
	struct hk_config *cfg;
	char err[512];
	uv_loop_t loop;
	void *zctx = zmq_ctx_new();
	hk_zlink *router, *good, *bad;
	hk_zap *zap, *zap2;
	struct rx rx = { 0, &loop };
	(void)state;

	keys(k);
	assert_int_equal(load(k, NULL, &cfg, err, sizeof(err)), 0);
	uv_loop_init(&loop);
	assert_int_equal(hk_zap_new(&zap, &loop, zctx, cfg), 0);
	assert_int_equal(hk_zap_new(&zap2, &loop, zctx, cfg), -EADDRINUSE); /* one per context */
	assert_int_equal(hk_zlink_new(&router, &loop, zctx, ZMQ_ROUTER, NULL, "r1", on_rx, &rx), 0);
	assert_int_equal(hk_curve_server(router, cfg, "r1", "back", err, sizeof(err)), 0);
	char ep[128];
	int port = 0;
	for (int p = 27100; p < 27200 && port == 0; p++) {
		snprintf(ep, sizeof(ep), "tcp://127.0.0.1:%d", p);
		if (hk_zlink_bind(router, ep) == 0)
			port = p;
	}
	assert_int_not_equal(port, 0);

	/* s1's keys: its frames arrive. */
	assert_int_equal(hk_zlink_new(&good, &loop, zctx, ZMQ_DEALER, "s1", "s1", on_rx, &rx), 0);
	assert_int_equal(hk_curve_client(good, cfg, "s1", "r1", err, sizeof(err)), 0);
	assert_int_equal(hk_zlink_connect(good, ep), 0);
	/* An unknown key that knows the server key: refused by ZAP. ZMQ_IMMEDIATE
	 * keeps the send from queueing on a connection that never completes. */
	assert_int_equal(zmq_curve_keypair(stranger.pub, stranger.sec), 0);
	assert_int_equal(hk_zlink_new(&bad, &loop, zctx, ZMQ_DEALER, "s9", "s9", on_rx, &rx), 0);
	hk_zlink_setsockopt(bad, ZMQ_CURVE_SERVERKEY, k[0].pub, 41);
	hk_zlink_setsockopt(bad, ZMQ_CURVE_PUBLICKEY, stranger.pub, 41);
	hk_zlink_setsockopt(bad, ZMQ_CURVE_SECRETKEY, stranger.sec, 41);
	assert_int_equal(hk_zlink_connect(bad, ep), 0);
	for (int i = 0; i < 50 && (rx.frames == 0 || hk_zap_refused(zap) == 0); i++) {
		send_hb(good, "s1");
		send_hb(bad, "s9");
		spin(&loop, 20);
	}
	assert_true(rx.frames > 0);
	assert_true(hk_zap_accepted(zap) >= 1);
	assert_true(hk_zap_refused(zap) >= 1);
	int before = rx.frames;
	for (int i = 0; i < 5; i++)
		send_hb(bad, "s9");
	spin(&loop, 100);
	assert_int_equal(rx.frames, before); /* nothing from the stranger */

	hk_zlink_close(good);
	hk_zlink_close(bad);
	hk_zlink_close(router);
	hk_zap_close(zap);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&loop), 0);
	zmq_ctx_term(zctx);
	hk_config_free(&cfg);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_config_curve),
		cmocka_unit_test(test_secret_file),
		cmocka_unit_test(test_lookup),
		cmocka_unit_test(test_logrl),
		cmocka_unit_test(test_curve_pair),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
