/*
 * test_ingress_session - the ESMTP dialogue over a real loopback socket,
 * with the router replaced by a fake ingress_env.
 *
 * The listener and sessions run on a libuv loop in the test's thread; a
 * client thread speaks SMTP with blocking sockets and records the first
 * failure (cmocka's asserts must not jump across threads). Every wait is on
 * an expected reply or on EOF, with a receive timeout only as a safety net.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "hk_config.h"
#include "hk_id.h"
#include "hk_log.h"
#include "ingress_listener.h"
#include "ingress_session.h"

struct harness {
	uv_loop_t loop;
	struct hk_ingress_conf conf;
	struct hk_listener_conf lconf;
	struct hk_tenant_conf tenant;
	struct hk_cidr net;
	struct ingress_env env;
	ingress_listener *listener;
	uint16_t port;
	uv_async_t done_async;
	uv_thread_t thread;
	void (*client)(struct harness *h);
	char fail[1024];
	bool listener_done;

	/* the fake router */
	int submit_rc;          /* what submit() returns */
	int answer_ms;          /* answer after this long; -1 never */
	bool answer_ok;
	bool answer_busy;
	const char *answer_reason;
	uv_timer_t answer_timer;
	ingress_session *pending;
	uint64_t pending_id, next_id;
	int n_submits, n_cancels, n_answers;
	char *body;
	size_t body_len;
	char from[300];
	char rcpts[1024];       /* space-separated */
	size_t n_rcpts;
	char id[HK_ID_LEN + 1];
	char params[256];       /* mail params, space-separated */
};

/* --- the fake router (loop thread) --------------------------------------- */

static void
on_answer(uv_timer_t *t)
{
	struct harness *h = t->data;
	ingress_session *s = h->pending;

	if (s == NULL)
		return; /* the session cancelled: a late answer finds no one */
	h->pending = NULL;
	h->n_answers++;
	ingress_session_submitted(s, h->answer_ok, h->answer_busy, h->answer_reason);
}

static int
fake_submit(void *arg, ingress_session *s, const struct ingress_txn *t, uint64_t *req_id)
{
	struct harness *h = arg;

	h->n_submits++;
	if (h->submit_rc != 0)
		return h->submit_rc;
	free(h->body);
	h->body = malloc(t->body_len + 1);
	memcpy(h->body, t->body, t->body_len);
	h->body[t->body_len] = '\0';
	h->body_len = t->body_len;
	snprintf(h->from, sizeof(h->from), "%s", t->mail_from);
	snprintf(h->id, sizeof(h->id), "%s", t->id);
	h->rcpts[0] = h->params[0] = '\0';
	for (size_t i = 0; i < t->n_rcpts; i++)
		snprintf(h->rcpts + strlen(h->rcpts), sizeof(h->rcpts) - strlen(h->rcpts), "%s%s",
		    i ? " " : "", t->rcpts[i].addr);
	for (size_t i = 0; i < t->n_mail_params; i++)
		snprintf(h->params + strlen(h->params), sizeof(h->params) - strlen(h->params), "%s%s",
		    i ? " " : "", t->mail_params[i]);
	h->n_rcpts = t->n_rcpts;
	h->pending = s;
	h->pending_id = ++h->next_id;
	*req_id = h->pending_id;
	if (h->answer_ms >= 0)
		uv_timer_start(&h->answer_timer, on_answer, (uint64_t)h->answer_ms, 0);
	return 0;
}

static void
fake_cancel(void *arg, uint64_t req_id)
{
	struct harness *h = arg;

	if (h->pending && req_id == h->pending_id) {
		h->pending = NULL;
		h->n_cancels++;
	}
}

/* --- harness -------------------------------------------------------------- */

static void
on_listener_done(void *arg)
{
	((struct harness *)arg)->listener_done = true;
}

static void
on_done_async(uv_async_t *a)
{
	struct harness *h = a->data;

	ingress_listener_close(h->listener, on_listener_done, h);
	uv_close((uv_handle_t *)&h->answer_timer, NULL);
	uv_close((uv_handle_t *)&h->done_async, NULL);
}

static void
client_thread(void *arg)
{
	struct harness *h = arg;

	h->client(h);
	uv_async_send(&h->done_async);
}

static struct harness *
harness_new(void)
{
	struct harness *h = calloc(1, sizeof(*h));

	h->lconf.host = "127.0.0.1";
	h->lconf.port = 0;
	h->lconf.mode = HK_LISTEN_RELAY;
	h->conf.listeners = &h->lconf;
	h->conf.n_listeners = 1;
	h->conf.hostname = "relay.hikyaku.test";
	assert_int_equal(hk_cidr_parse("127.0.0.0/8", &h->net), 0);
	h->conf.relay_networks = &h->net;
	h->conf.n_relay_networks = 1;
	h->conf.network_tenant = "default";
	h->tenant.name = "default";
	h->conf.tenant = &h->tenant;
	h->conf.submit_timeout_ms = 5000;
	h->conf.command_timeout_ms = 5000;
	h->conf.data_timeout_ms = 5000;
	h->conf.max_message_size = 1 << 20;
	h->conf.max_recipients = 100;
	h->conf.max_sessions = 10;
	h->conf.max_errors = 50;
	h->conf.max_header_line_length = 998;
	h->conf.bare_lf = HK_BARE_LF_NORMALIZE; /* the DATA reader tests store bare LF as CRLF */
	h->answer_ms = 0;
	h->answer_ok = true;
	return h;
}

/* Run CLIENT against a listener with H's settings until it is done. */
static void
harness_run(struct harness *h, void (*client)(struct harness *h))
{
	uv_loop_init(&h->loop);
	h->env = (struct ingress_env){
		.conf = &h->conf,
		.node_name = "ingress-test",
		.idgen = hk_idgen_new(),
		.submit = fake_submit,
		.cancel = fake_cancel,
		.arg = h,
	};
	assert_non_null(h->env.idgen);
	uv_timer_init(&h->loop, &h->answer_timer);
	h->answer_timer.data = h;
	uv_async_init(&h->loop, &h->done_async, on_done_async);
	h->done_async.data = h;
	assert_int_equal(ingress_listener_new(&h->listener, &h->loop, &h->env, &h->lconf), 0);
	h->port = ingress_listener_port(h->listener);
	assert_true(h->port != 0);
	h->client = client;
	uv_thread_create(&h->thread, client_thread, h);
	uv_run(&h->loop, UV_RUN_DEFAULT);
	uv_thread_join(&h->thread);
	assert_true(h->listener_done);
	assert_int_equal(uv_loop_close(&h->loop), 0); /* every handle was closed */
	hk_idgen_destroy(&h->env.idgen);
	if (h->fail[0])
		fail_msg("%s", h->fail);
}

static void
harness_free(struct harness *h)
{
	free(h->body);
	free(h);
}

/* --- the client (client thread) ------------------------------------------ */

struct client {
	int fd;
	char buf[8192];
	size_t len;
	char last[600];         /* the last reply line read */
};

#define CHECK(h, cond, ...) do {                                                \
		if (!(cond)) {                                                  \
			if ((h)->fail[0] == '\0')                               \
				snprintf((h)->fail, sizeof((h)->fail), __VA_ARGS__); \
			return;                                                 \
		}                                                               \
	} while (0)

static int
client_connect(struct harness *h, struct client *c)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(h->port) };
	struct timeval tv = { .tv_sec = 10 };

	memset(c, 0, sizeof(*c));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	c->fd = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return connect(c->fd, (struct sockaddr *)&sa, sizeof(sa));
}

static bool
client_send(struct client *c, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
		if (n <= 0)
			return false;
		data += n;
		len -= (size_t)n;
	}
	return true;
}

#define SEND(h, c, str) CHECK(h, client_send(c, str, strlen(str)), "send failed: %s", strerror(errno))

/* Read one line into c->last; false on EOF, error or timeout. */
static bool
client_line(struct client *c)
{
	for (;;) {
		char *lf = memchr(c->buf, '\n', c->len);
		if (lf != NULL) {
			size_t n = (size_t)(lf - c->buf) + 1;
			size_t keep = n - 1 > 0 && c->buf[n - 2] == '\r' ? n - 2 : n - 1;
			if (keep >= sizeof(c->last))
				keep = sizeof(c->last) - 1;
			memcpy(c->last, c->buf, keep);
			c->last[keep] = '\0';
			memmove(c->buf, c->buf + n, c->len - n);
			c->len -= n;
			return true;
		}
		if (c->len == sizeof(c->buf))
			return false;
		ssize_t r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
		if (r <= 0)
			return false;
		c->len += (size_t)r;
	}
}

/* Read a whole (possibly multi-line) reply; c->last is its last line. */
static bool
client_reply(struct client *c)
{
	do {
		if (!client_line(c))
			return false;
	} while (strlen(c->last) >= 4 && c->last[3] == '-');
	return true;
}

#define EXPECT(h, c, prefix) do {                                               \
		bool got_ = client_reply(c);                                    \
		CHECK(h, got_ && strncmp((c)->last, prefix, strlen(prefix)) == 0, \
		    "line %d: expected '%s', got %s'%s'", __LINE__, prefix,     \
		    got_ ? "" : "EOF/timeout after ", (c)->last);               \
	} while (0)

/* After a 421 or 221, the server must close the connection. */
#define EXPECT_EOF(h, c) do {                                                   \
		char b_[64];                                                    \
		CHECK(h, recv((c)->fd, b_, sizeof(b_), 0) == 0,                 \
		    "line %d: expected the server to close", __LINE__);         \
	} while (0)

static void
client_close(struct client *c)
{
	close(c->fd);
}

/* --- tests ----------------------------------------------------------------- */

static void
client_pipelined_message(struct harness *h)
{
	struct client c;

	CHECK(h, client_connect(h, &c) == 0, "connect: %s", strerror(errno));
	EXPECT(h, &c, "220 relay.hikyaku.test ESMTP Hikyaku");
	SEND(h, &c, "EHLO client.test\r\n");
	EXPECT(h, &c, "250 ENHANCEDSTATUSCODES");
	/* One write, four commands: four replies in order (RFC 2920). */
	SEND(h, &c, "MAIL FROM:<Alice@Example.ORG> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<b@x.example>\r\n"
	    "RCPT TO:<c@y.example> NOTIFY=NEVER\r\nDATA\r\n");
	EXPECT(h, &c, "250 2.1.0 Ok");
	EXPECT(h, &c, "250 2.1.5 Ok");
	EXPECT(h, &c, "250 2.1.5 Ok");
	EXPECT(h, &c, "354 ");
	/* The message, split oddly, with a stuffed dot and a bare LF; then a
	 * command pipelined after the end, which must wait for the answer. */
	SEND(h, &c, "Subject: t\r\n\r\n..leading dot\r");
	SEND(h, &c, "\nbare\nend\r\n.");
	SEND(h, &c, "\r\nNOOP\r\n");
	EXPECT(h, &c, "250 2.0.0 Ok: queued as ");
	CHECK(h, strlen(c.last) == strlen("250 2.0.0 Ok: queued as ") + HK_ID_LEN, "id: %s", c.last);
	EXPECT(h, &c, "250 2.0.0 Ok");
	SEND(h, &c, "QUIT\r\n");
	EXPECT(h, &c, "221 2.0.0 Bye");
	EXPECT_EOF(h, &c);
	client_close(&c);
}

static void
test_pipelined_message(void **state)
{
	struct harness *h = harness_new();
	char *hdr_end;

	(void)state;
	h->answer_ms = 50;
	harness_run(h, client_pipelined_message);
	assert_int_equal(h->n_submits, 1);
	assert_int_equal(h->n_answers, 1);
	assert_string_equal(h->from, "Alice@Example.ORG"); /* as written */
	assert_string_equal(h->rcpts, "b@x.example c@y.example");
	assert_string_equal(h->params, "SIZE=100 BODY=8BITMIME");
	/* Received header first, then the message: CRLF, unstuffed. */
	const char *hdr = "Received: from client.test ([127.0.0.1])\r\n\tby relay.hikyaku.test "
	    "(Hikyaku) with ESMTP id ";
	assert_true(strncmp(h->body, hdr, strlen(hdr)) == 0);
	assert_non_null(strstr(h->body, h->id));
	hdr_end = strstr(h->body, "\r\nSubject: t\r\n");
	assert_non_null(hdr_end);
	assert_string_equal(hdr_end + 2, "Subject: t\r\n\r\n.leading dot\r\nbare\r\nend\r\n");
	assert_null(strstr(h->body, " for <")); /* two recipients: no "for" */
	/* No Message-ID or Date in the message: both added after Received. */
	char mid[100];
	snprintf(mid, sizeof(mid), "\r\nMessage-ID: <%s@relay.hikyaku.test>\r\nDate: ", h->id);
	assert_non_null(strstr(h->body, mid));
	assert_true(strstr(h->body, mid) < hdr_end);
	harness_free(h);
}

static void
client_one_rcpt_helo(struct harness *h)
{
	struct client c;

	CHECK(h, client_connect(h, &c) == 0, "connect");
	EXPECT(h, &c, "220 ");
	SEND(h, &c, "HELO old.client\r\n");
	EXPECT(h, &c, "250 relay.hikyaku.test");
	SEND(h, &c, "MAIL FROM:<>\r\n");
	EXPECT(h, &c, "250 ");
	SEND(h, &c, "RCPT TO:<only@x.example>\r\n");
	EXPECT(h, &c, "250 ");
	SEND(h, &c, "RCPT TO:<only@X.EXAMPLE>\r\n"); /* a duplicate */
	EXPECT(h, &c, "250 ");
	SEND(h, &c, "DATA\r\n");
	EXPECT(h, &c, "354 ");
	SEND(h, &c, "hi\r\n.\r\n");
	EXPECT(h, &c, "250 2.0.0 Ok: queued as ");
	client_close(&c);
}

static void
test_received_header_one_rcpt(void **state)
{
	struct harness *h = harness_new();
	char expect[200];

	(void)state;
	harness_run(h, client_one_rcpt_helo);
	assert_int_equal(h->n_submits, 1);
	assert_string_equal(h->from, "");
	assert_int_equal(h->n_rcpts, 1);
	snprintf(expect, sizeof(expect), "Received: from old.client ([127.0.0.1])\r\n\tby relay.hikyaku.test "
	    "(Hikyaku) with SMTP id %s\r\n\tfor <only@x.example>; ", h->id);
	assert_true(strncmp(h->body, expect, strlen(expect)) == 0);
	assert_non_null(strstr(h->body, "\r\nhi\r\n"));
	harness_free(h);
}

static void
client_no_router(struct harness *h)
{
	struct client c;

	CHECK(h, client_connect(h, &c) == 0, "connect");
	EXPECT(h, &c, "220 ");
	SEND(h, &c, "EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@x.example>\r\nDATA\r\n");
	EXPECT(h, &c, "250 ENHANCEDSTATUSCODES");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "354 ");
	SEND(h, &c, "x\r\n.\r\n");
	EXPECT(h, &c, "451 4.3.0 ");
	/* The session goes on: a new transaction may start. */
	SEND(h, &c, "MAIL FROM:<a@x.example>\r\n");
	EXPECT(h, &c, "250 2.1.0");
	client_close(&c);
}

static void
test_no_router(void **state)
{
	struct harness *h = harness_new();

	(void)state;
	h->submit_rc = -EAGAIN;
	harness_run(h, client_no_router);
	assert_int_equal(h->n_submits, 1);
	assert_int_equal(h->n_cancels, 0);
	harness_free(h);
}

static void
client_router_says_no(struct harness *h)
{
	struct client c;

	CHECK(h, client_connect(h, &c) == 0, "connect");
	EXPECT(h, &c, "220 ");
	SEND(h, &c, "EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@x.example>\r\nDATA\r\n");
	EXPECT(h, &c, "250 ENHANCEDSTATUSCODES");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "354 ");
	SEND(h, &c, "x\r\n.\r\n");
	EXPECT(h, &c, "451 4.3.0 sender-2 did not ack ");
	client_close(&c);
}

static void
test_router_says_no(void **state)
{
	struct harness *h = harness_new();

	(void)state;
	h->answer_ok = false;
	h->answer_reason = "sender-2 did not ack\r\n250 fake";
	harness_run(h, client_router_says_no);
	assert_int_equal(h->n_answers, 1);
	harness_free(h);
}

static void
client_router_busy(struct harness *h)
{
	struct client c;

	CHECK(h, client_connect(h, &c) == 0, "connect");
	EXPECT(h, &c, "220 ");
	SEND(h, &c, "EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@x.example>\r\nDATA\r\n");
	EXPECT(h, &c, "250 ENHANCEDSTATUSCODES");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "354 ");
	SEND(h, &c, "x\r\n.\r\n");
	EXPECT(h, &c, "451 4.3.2 System busy, try again later");
	client_close(&c);
}

/* A busy refusal (REFUSAL_BUSY) is 451 4.3.2, whatever the reason says. */
static void
test_router_busy(void **state)
{
	struct harness *h = harness_new();

	(void)state;
	h->answer_ok = false;
	h->answer_busy = true;
	h->answer_reason = "router busy: max_pending submissions in flight";
	harness_run(h, client_router_busy);
	assert_int_equal(h->n_answers, 1);
	harness_free(h);
}

static void
client_submit_timeout(struct harness *h)
{
	struct client c;

	CHECK(h, client_connect(h, &c) == 0, "connect");
	EXPECT(h, &c, "220 ");
	SEND(h, &c, "EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@x.example>\r\nDATA\r\n");
	EXPECT(h, &c, "250 ENHANCEDSTATUSCODES");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "354 ");
	SEND(h, &c, "x\r\n.\r\nRSET\r\n");
	EXPECT(h, &c, "451 4.3.0 Queueing timed out, try again later");
	EXPECT(h, &c, "250 2.0.0 Ok"); /* RSET, executed only after the answer */
	client_close(&c);
}

static void
test_submit_timeout(void **state)
{
	struct harness *h = harness_new();

	(void)state;
	h->answer_ms = -1;
	h->conf.submit_timeout_ms = 100;
	harness_run(h, client_submit_timeout);
	assert_int_equal(h->n_submits, 1);
	assert_int_equal(h->n_cancels, 1);
	assert_int_equal(h->n_answers, 0);
	harness_free(h);
}

static void
client_gone_while_pending(struct harness *h)
{
	struct client c, c2;

	CHECK(h, client_connect(h, &c) == 0, "connect");
	EXPECT(h, &c, "220 ");
	SEND(h, &c, "EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@x.example>\r\nDATA\r\n");
	EXPECT(h, &c, "250 ENHANCEDSTATUSCODES");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "354 ");
	SEND(h, &c, "x\r\n.\r\n");
	client_close(&c);
	/* Another client is still served while the first one's answer is late. */
	CHECK(h, client_connect(h, &c2) == 0, "connect");
	EXPECT(h, &c2, "220 ");
	SEND(h, &c2, "NOOP\r\n");
	EXPECT(h, &c2, "250 ");
	client_close(&c2);
}

static void
test_gone_while_pending(void **state)
{
	struct harness *h = harness_new();

	(void)state;
	h->answer_ms = -1;
	harness_run(h, client_gone_while_pending);
	/* Either the session saw the hang-up and cancelled, or the listener
	 * closed it at shutdown while pending: both cancel, no answer given. */
	assert_int_equal(h->n_submits, 1);
	assert_int_equal(h->n_cancels, 1);
	assert_int_equal(h->n_answers, 0);
	harness_free(h);
}

static void
client_order_and_syntax(struct harness *h)
{
	struct client c;
	static char huge[1024 * 1024 + 1];

	CHECK(h, client_connect(h, &c) == 0, "connect");
	EXPECT(h, &c, "220 ");
	SEND(h, &c, "MAIL FROM:<a@x.example>\r\n");
	EXPECT(h, &c, "503 5.5.1 Error: send HELO/EHLO first");
	SEND(h, &c, "EHLO\r\n");
	EXPECT(h, &c, "501 5.5.4 Syntax: EHLO hostname");
	SEND(h, &c, "EHLO c\r\nRCPT TO:<b@x.example>\r\nDATA\r\n");
	EXPECT(h, &c, "250 ENHANCEDSTATUSCODES");
	EXPECT(h, &c, "503 5.5.1 Error: need MAIL command");
	EXPECT(h, &c, "503 5.5.1 Error: need MAIL command");
	SEND(h, &c, "MAIL FROM:<a@x.example>\r\nDATA\r\nMAIL FROM:<a@x.example>\r\n");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "503 5.5.1 Error: need RCPT command");
	EXPECT(h, &c, "503 5.5.1 Error: nested MAIL command");
	SEND(h, &c, "RCPT TO:<a%b@x.example>\r\nRCPT TO:b@x.example\r\nRCPT TO:<\"a@b\"@x.example>\r\n");
	EXPECT(h, &c, "553 5.7.1 Recipient address rejected: %-hack");
	EXPECT(h, &c, "501 5.1.3 ");
	EXPECT(h, &c, "553 5.7.1 Recipient address rejected: quoted local part with '@'");
	SEND(h, &c, "XYZZY\r\nVRFY bob\r\nHELP\r\nRSET extra\r\n");
	EXPECT(h, &c, "500 5.5.1 Command unrecognized");
	EXPECT(h, &c, "252 ");
	EXPECT(h, &c, "214 ");
	EXPECT(h, &c, "501 5.5.4 ");
	CHECK(h, client_send(&c, "NO\0OP\r\n", 7), "send");
	EXPECT(h, &c, "500 5.5.2 NUL character not allowed");
	/* A 1 MB line: one 500, and the session still works. */
	memset(huge, 'x', sizeof(huge) - 1);
	CHECK(h, client_send(&c, huge, sizeof(huge) - 1), "send");
	SEND(h, &c, "\r\nNOOP\r\n");
	EXPECT(h, &c, "500 5.5.2 Line too long");
	EXPECT(h, &c, "250 2.0.0 Ok");
	SEND(h, &c, "QUIT\r\n");
	EXPECT(h, &c, "221 ");
	EXPECT_EOF(h, &c);
	client_close(&c);
}

static void
test_order_and_syntax(void **state)
{
	struct harness *h = harness_new();

	(void)state;
	harness_run(h, client_order_and_syntax);
	assert_int_equal(h->n_submits, 0);
	harness_free(h);
}

static void
client_limits(struct harness *h)
{
	struct client c;
	char line[1200];

	CHECK(h, client_connect(h, &c) == 0, "connect");
	EXPECT(h, &c, "220 ");
	SEND(h, &c, "EHLO c\r\n");
	EXPECT(h, &c, "250 ENHANCEDSTATUSCODES");
	SEND(h, &c, "MAIL FROM:<a@x.example> SIZE=2001\r\n");
	EXPECT(h, &c, "552 5.3.4 Message size exceeds fixed limit");
	SEND(h, &c, "MAIL FROM:<a@x.example> SIZE=2000\r\n");
	EXPECT(h, &c, "250 ");
	SEND(h, &c, "RCPT TO:<1@x.example>\r\nRCPT TO:<2@x.example>\r\nRCPT TO:<3@x.example>\r\n");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "452 4.5.3 Too many recipients");
	/* Too big: read to the end, then 552, nothing queued. */
	SEND(h, &c, "DATA\r\n");
	EXPECT(h, &c, "354 ");
	for (int i = 0; i < 60; i++)
		SEND(h, &c, "0123456789012345678901234567890123456789\r\n");
	SEND(h, &c, ".\r\n");
	EXPECT(h, &c, "552 5.3.4 ");
	/* A line over 998 characters: 550 at the end. */
	SEND(h, &c, "MAIL FROM:<a@x.example>\r\nRCPT TO:<1@x.example>\r\nDATA\r\n");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "354 ");
	memset(line, 'y', 999);
	strcpy(line + 999, "\r\n.\r\n");
	SEND(h, &c, line);
	EXPECT(h, &c, "550 5.6.0 ");
	/* NUL in the data: 554 at the end. */
	SEND(h, &c, "MAIL FROM:<a@x.example>\r\nRCPT TO:<1@x.example>\r\nDATA\r\n");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "354 ");
	CHECK(h, client_send(&c, "a\0b\r\n.\r\n", 8), "send");
	EXPECT(h, &c, "554 5.6.0 ");
	client_close(&c);
}

static void
test_limits(void **state)
{
	struct harness *h = harness_new();

	(void)state;
	h->conf.max_message_size = 2000;
	h->conf.max_recipients = 2;
	harness_run(h, client_limits);
	assert_int_equal(h->n_submits, 0);
	harness_free(h);
}

static void
client_relay_denied(struct harness *h)
{
	struct client c;

	CHECK(h, client_connect(h, &c) == 0, "connect");
	EXPECT(h, &c, "220 ");
	SEND(h, &c, "EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@x.example>\r\nDATA\r\n");
	EXPECT(h, &c, "250 ENHANCEDSTATUSCODES");
	EXPECT(h, &c, "250 2.1.0"); /* MAIL is fine: the refusal is at RCPT */
	EXPECT(h, &c, "554 5.7.1 Relay access denied");
	EXPECT(h, &c, "503 5.5.1 Error: need RCPT command");
	client_close(&c);
}

static void
test_relay_denied(void **state)
{
	struct harness *h = harness_new();

	(void)state;
	assert_int_equal(hk_cidr_parse("10.0.0.0/8", &h->net), 0);
	harness_run(h, client_relay_denied);
	assert_int_equal(h->n_submits, 0);
	harness_free(h);
}

static void
client_timeouts(struct harness *h)
{
	struct client c;

	/* Idle between commands. */
	CHECK(h, client_connect(h, &c) == 0, "connect");
	EXPECT(h, &c, "220 ");
	EXPECT(h, &c, "421 4.4.2 relay.hikyaku.test Error: timeout exceeded");
	EXPECT_EOF(h, &c);
	client_close(&c);
	/* Idle inside DATA: nothing is submitted. */
	CHECK(h, client_connect(h, &c) == 0, "connect");
	EXPECT(h, &c, "220 ");
	SEND(h, &c, "EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@x.example>\r\nDATA\r\n");
	EXPECT(h, &c, "250 ENHANCEDSTATUSCODES");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "250 ");
	EXPECT(h, &c, "354 ");
	SEND(h, &c, "partial message\r\n");
	EXPECT(h, &c, "421 4.4.2 relay.hikyaku.test Error: timeout exceeded");
	EXPECT_EOF(h, &c);
	client_close(&c);
}

static void
test_timeouts(void **state)
{
	struct harness *h = harness_new();

	(void)state;
	h->conf.command_timeout_ms = 150;
	h->conf.data_timeout_ms = 150;
	harness_run(h, client_timeouts);
	assert_int_equal(h->n_submits, 0);
	harness_free(h);
}

static void
client_max_sessions(struct harness *h)
{
	struct client a, b, c;

	CHECK(h, client_connect(h, &a) == 0, "connect");
	EXPECT(h, &a, "220 ");
	CHECK(h, client_connect(h, &b) == 0, "connect");
	EXPECT(h, &b, "220 ");
	CHECK(h, client_connect(h, &c) == 0, "connect");
	EXPECT(h, &c, "421 4.3.2 Too many connections");
	EXPECT_EOF(h, &c);
	client_close(&c);
	/* When one leaves, a new client gets in. */
	SEND(h, &a, "QUIT\r\n");
	EXPECT(h, &a, "221 ");
	EXPECT_EOF(h, &a);
	client_close(&a);
	/* The server may see the new connection before the old close: retry
	 * until admitted, each attempt being answered 220 or 421. */
	for (int i = 0; i < 100; i++) {
		CHECK(h, client_connect(h, &c) == 0, "connect");
		CHECK(h, client_reply(&c), "no greeting");
		client_close(&c);
		if (!strncmp(c.last, "220 ", 4))
			break;
		CHECK(h, !strncmp(c.last, "421 4.3.2", 9), "unexpected %s", c.last);
		CHECK(h, i < 99, "never admitted again");
	}
	SEND(h, &b, "NOOP\r\n");
	EXPECT(h, &b, "250 ");
	client_close(&b);
}

static void
test_max_sessions(void **state)
{
	struct harness *h = harness_new();

	(void)state;
	h->conf.max_sessions = 2;
	harness_run(h, client_max_sessions);
	harness_free(h);
}

/* Replies the client does not read pause execution instead of piling up;
 * a writer thread floods NOOPs while this thread reads every reply. */
struct flood {
	struct client *c;
	int n;
	bool ok;
};

static void
flood_writer(void *arg)
{
	struct flood *f = arg;

	f->ok = true;
	for (int i = 0; i < f->n && f->ok; i++)
		f->ok = client_send(f->c, "NOOP\r\n", 6);
}

static void
client_flood(struct harness *h)
{
	struct client c;
	struct flood f;
	uv_thread_t t;
	int got = 0;

	CHECK(h, client_connect(h, &c) == 0, "connect");
	EXPECT(h, &c, "220 ");
	f = (struct flood){ .c = &c, .n = 50000 };
	uv_thread_create(&t, flood_writer, &f);
	while (got < f.n && client_reply(&c) && !strcmp(c.last, "250 2.0.0 Ok"))
		got++;
	uv_thread_join(&t);
	CHECK(h, f.ok, "writer failed");
	CHECK(h, got == f.n, "got %d of %d replies, last '%s'", got, f.n, c.last);
	client_close(&c);
}

static void
test_flood(void **state)
{
	struct harness *h = harness_new();

	(void)state;
	harness_run(h, client_flood);
	harness_free(h);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pipelined_message),
		cmocka_unit_test(test_received_header_one_rcpt),
		cmocka_unit_test(test_no_router),
		cmocka_unit_test(test_router_says_no),
		cmocka_unit_test(test_router_busy),
		cmocka_unit_test(test_submit_timeout),
		cmocka_unit_test(test_gone_while_pending),
		cmocka_unit_test(test_order_and_syntax),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_relay_denied),
		cmocka_unit_test(test_timeouts),
		cmocka_unit_test(test_max_sessions),
		cmocka_unit_test(test_flood),
	};
	hk_log_set_level(HK_LOG_WARN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
