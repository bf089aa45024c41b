/*
 * test_sender_smtp - the SMTP reply parser, and the outbound SMTP client
 * against a real server: tests/unit/smtp_peer.py (asyncio) started once
 * with one listener per behaviour on 127.0.0.x, all on one free port.
 */

/* System */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Third-party */
#include <cmocka.h>
#include <jansson.h>
#include <uv.h>

/* common/ */
#include "hk_tls.h"

/* This role */
#include "sender_reply.h"
#include "sender_smtp.h"

#define PYTHON "/usr/bin/python3"

/* ---------------------------------------------------------------- parser */

/* feed_all - feed S (in pieces of STEP bytes) and collect replies. */
static int
feed_all(struct sender_reply_parser *p, const char *s, size_t step, int *codes,
    char texts[][SENDER_REPLY_TEXT_MAX], int max)
{
	size_t len = strlen(s), off = 0;
	int n = 0;

	while (off < len) {
		size_t chunk = len - off < step ? len - off : step, pos = 0, used;
		while (pos < chunk) {
			const struct sender_reply *r;
			int rc = sender_reply_feed(p, s + off + pos, chunk - pos, &used, &r);
			pos += used;
			if (rc < 0)
				return -1;
			if (rc == 0)
				break;
			if (n < max) {
				codes[n] = r->code;
				snprintf(texts[n], SENDER_REPLY_TEXT_MAX, "%s", r->text);
			}
			n++;
		}
		off += chunk;
	}
	return n;
}

static void
test_reply_multiline_any_split(void **state)
{
	const char *in = "220 mx.test ESMTP\r\n250-mx.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
	    "354\r\n550 5.1.1 no\n";
	(void)state;
	for (size_t step = 1; step <= strlen(in); step++) {
		struct sender_reply_parser p;
		int codes[8];
		char texts[8][SENDER_REPLY_TEXT_MAX];
		sender_reply_init(&p);
		assert_int_equal(feed_all(&p, in, step, codes, texts, 8), 4);
		assert_int_equal(codes[0], 220);
		assert_string_equal(texts[0], "220 mx.test ESMTP");
		assert_int_equal(codes[1], 250);
		assert_string_equal(texts[1], "250 mx.test PIPELINING SIZE 100");
		assert_int_equal(codes[2], 354);
		assert_string_equal(texts[2], "354");
		assert_int_equal(codes[3], 550);     /* bare LF accepted */
		assert_string_equal(texts[3], "550 5.1.1 no");
	}
}

static void
test_reply_lines_kept(void **state)
{
	struct sender_reply_parser p;
	const struct sender_reply *r;
	const char *in = "250-mx\r\n250-8BITMIME\r\n250 SIZE 5\r\n";
	size_t used;

	(void)state;
	sender_reply_init(&p);
	assert_int_equal(sender_reply_feed(&p, in, strlen(in), &used, &r), 1);
	assert_int_equal(used, strlen(in));
	assert_int_equal(r->n_lines, 3);
	assert_string_equal(sender_reply_line(r, 0), "mx");
	assert_string_equal(sender_reply_line(r, 1), "8BITMIME");
	assert_string_equal(sender_reply_line(r, 2), "SIZE 5");
	assert_null(sender_reply_line(r, 3));
}

static void
expect_malformed(const char *in, const char *why)
{
	struct sender_reply_parser p;
	int codes[4];
	char texts[4][SENDER_REPLY_TEXT_MAX];

	sender_reply_init(&p);
	assert_int_equal(feed_all(&p, in, 7, codes, texts, 4), -1);
	assert_non_null(strstr(p.error, why));
	/* Sticky: nothing parses after a malformed line. */
	{
		const struct sender_reply *r;
		size_t used;
		assert_int_equal(sender_reply_feed(&p, "250 ok\r\n", 8, &used, &r), -1);
	}
}

static void
test_reply_malformed(void **state)
{
	char *longline;

	(void)state;
	expect_malformed("hello\r\n", "3-digit");
	expect_malformed("25 short\r\n", "3-digit");
	expect_malformed("650 six\r\n", "3-digit");
	expect_malformed("250x ok\r\n", "space or hyphen");
	expect_malformed("250-a\r\n550 b\r\n", "mixed codes");
	longline = malloc(3000);
	memset(longline, 'a', 2999);
	memcpy(longline, "250 ", 4);
	longline[2997] = '\r';
	longline[2998] = '\n';
	longline[2999] = '\0';
	expect_malformed(longline, "longer than 2048");
	/* Exactly 2048 bytes of line is still fine. */
	{
		struct sender_reply_parser p;
		int codes[1];
		char texts[1][SENDER_REPLY_TEXT_MAX];
		memset(longline, 'b', 2048);
		memcpy(longline, "250 ", 4);
		memcpy(longline + 2048, "\r\n", 3);
		sender_reply_init(&p);
		assert_int_equal(feed_all(&p, longline, 100, codes, texts, 1), 1);
		assert_int_equal(codes[0], 250);
		assert_int_equal(strlen(texts[0]), SENDER_REPLY_TEXT_MAX - 1);
	}
	free(longline);
}

static void
test_reply_control_chars_cleaned(void **state)
{
	struct sender_reply_parser p;
	const struct sender_reply *r;
	const char in[] = "550 a\tb\x01\xff" "c\r\n";
	size_t used;

	(void)state;
	sender_reply_init(&p);
	assert_int_equal(sender_reply_feed(&p, in, sizeof(in) - 1, &used, &r), 1);
	assert_string_equal(r->text, "550 a b??c");
}

/* ------------------------------------------------------------ the peer */

struct peer {
	pid_t pid;
	uint16_t port;
	char dir[64];
	char record[128];
	int skip;
};

static struct peer g_peer;

/* The listeners: address -> behaviour (see smtp_peer.py). */
#define L_GREET421 "127.0.0.10"
#define L_OK "127.0.0.11"
#define L_REFUSED1 "127.0.0.12"
#define L_REFUSED2 "127.0.0.13"
#define L_NOPIPE "127.0.0.14"
#define L_MIXED "127.0.0.15"
#define L_DATA554 "127.0.0.16"
#define L_STALLMAIL "127.0.0.17"
#define L_STALLGREET "127.0.0.18"
#define L_DROPDATA "127.0.0.19"
#define L_NOEHLO "127.0.0.20"
#define L_SIZE100 "127.0.0.21"
#define L_BADGREET "127.0.0.22"
#define L_STALLEOD "127.0.0.23"
#define L_MAILREJ "127.0.0.24"
#define L_DATAALWAYS "127.0.0.25"
#define L_IDLECLOSE "127.0.0.26"        /* closes after each final reply */
#define L_STALECLOSE "127.0.0.27"       /* on a session's 2nd MAIL: closes, no reply */
#define L_STALERESET "127.0.0.28"       /* ...: resets */
#define L_STALE421 "127.0.0.29"         /* ...: 421, then closes */
#define L_STALESTALL "127.0.0.30"       /* ...: never answers */
#define L_TLS "127.0.0.31"              /* offers STARTTLS */
#define L_TLSEHLO "127.0.0.32"          /* ...SIZE 100 in clear, 10 MB and no PIPELINING in TLS */
#define L_TLSREFUSE "127.0.0.33"        /* ...answers it 454 */
#define L_TLSBROKEN "127.0.0.34"        /* ...answers it 220, then garbage */
#define L_TLSINJECT "127.0.0.35"        /* ...a 250 in clear right behind the 220 */
#define L_TLSSTALE "127.0.0.36"         /* ...closes at a session's 2nd MAIL */
#define TLS_HOST "mx.tls.test"          /* the name in the peer's certificate */

static const char *peer_listening[] = {
	L_GREET421, L_OK, L_NOPIPE, L_MIXED, L_DATA554, L_STALLMAIL, L_STALLGREET, L_DROPDATA,
	L_NOEHLO, L_SIZE100, L_BADGREET, L_STALLEOD, L_MAILREJ, L_DATAALWAYS, L_IDLECLOSE,
	L_STALECLOSE, L_STALERESET, L_STALE421, L_STALESTALL, L_TLS, L_TLSEHLO, L_TLSREFUSE,
	L_TLSBROKEN, L_TLSINJECT, L_TLSSTALE,
};

/* free_port - a TCP port nothing listens on, on 127.0.0.1. */
static uint16_t
free_port(void)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
	close(fd);
	return ntohs(sin.sin_port);
}

/* try_connect - whether IP:port accepts a TCP connection now. */
static int
try_connect(const char *ip, uint16_t port)
{
	struct sockaddr_in sin;
	int fd, rc;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(port);
	inet_pton(AF_INET, ip, &sin.sin_addr);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	rc = connect(fd, (struct sockaddr *)&sin, sizeof(sin));
	close(fd);
	return rc == 0;
}

/* peer_script - smtp_peer.py next to this file. */
static void
peer_script(char *out, size_t len)
{
	const char *f = __FILE__;
	const char *slash = strrchr(f, '/');

	if (slash == NULL)
		snprintf(out, len, "tests/unit/smtp_peer.py");
	else
		snprintf(out, len, "%.*s/smtp_peer.py", (int)(slash - f), f);
}

static int
peer_start(void **state)
{
	char script[PATH_MAX], conf[16384];
	struct timespec pause = { 0, 20 * 1000 * 1000 };
	size_t i;
	int tries;

	(void)state;
	memset(&g_peer, 0, sizeof(g_peer));
	peer_script(script, sizeof(script));
	if (access(PYTHON, X_OK) != 0 || access(script, R_OK) != 0) {
		fprintf(stderr, "SKIP: %s or %s not found; SMTP client tests skipped\n", PYTHON, script);
		g_peer.skip = 1;
		return 0;
	}
	snprintf(g_peer.dir, sizeof(g_peer.dir), "/tmp/hk-test-smtp-XXXXXX");
	if (mkdtemp(g_peer.dir) == NULL)
		return -1;
	snprintf(g_peer.record, sizeof(g_peer.record), "%s/record.jsonl", g_peer.dir);
	g_peer.port = free_port();

	{
		unsigned p = g_peer.port;
		snprintf(conf, sizeof(conf),
		    "{\"record\": \"%s\","
		    " \"rcpt\": {\"reject@x.test\": \"550 5.1.1 no such user\","
		    "  \"defer@x.test\": \"450 4.2.1 try later\","
		    "  \"bad@x.test\": \"250x what\"},"
		    " \"listeners\": ["
		    "  {\"host\": \"" L_GREET421 "\", \"port\": %u, \"greeting\": \"421 4.3.2 busy\"},"
		    "  {\"host\": \"" L_OK "\", \"port\": %u},"
		    "  {\"host\": \"" L_NOPIPE "\", \"port\": %u, \"ehlo\": [\"8BITMIME\"]},"
		    "  {\"host\": \"" L_MIXED "\", \"port\": %u,"
		    "   \"final\": \"250-2.0.0 ok\\r\\n250 2.0.0 queued as M1\"},"
		    "  {\"host\": \"" L_DATA554 "\", \"port\": %u, \"data\": \"554 5.6.0 no data today\"},"
		    "  {\"host\": \"" L_STALLMAIL "\", \"port\": %u, \"stall\": \"MAIL\"},"
		    "  {\"host\": \"" L_STALLGREET "\", \"port\": %u, \"stall\": \"GREETING\"},"
		    "  {\"host\": \"" L_DROPDATA "\", \"port\": %u, \"drop_after\": 65536},"
		    "  {\"host\": \"" L_NOEHLO "\", \"port\": %u, \"ehlo_reply\": \"502 5.5.2 no EHLO\"},"
		    "  {\"host\": \"" L_SIZE100 "\", \"port\": %u, \"ehlo\": [\"PIPELINING\", \"SIZE 100\"]},"
		    "  {\"host\": \"" L_BADGREET "\", \"port\": %u, \"greeting\": \"220-hello\\r\\n250 mixed\"},"
		    "  {\"host\": \"" L_STALLEOD "\", \"port\": %u, \"stall\": \"EOD\"},"
		    "  {\"host\": \"" L_MAILREJ "\", \"port\": %u, \"mail\": \"553 5.7.1 sender rejected\"},"
		    "  {\"host\": \"" L_DATAALWAYS "\", \"port\": %u, \"data_always\": true},"
		    "  {\"host\": \"" L_IDLECLOSE "\", \"port\": %u, \"close_after_message\": true},"
		    "  {\"host\": \"" L_STALECLOSE "\", \"port\": %u, \"stale_after\": 1,"
		    "   \"stale_how\": \"close\"},"
		    "  {\"host\": \"" L_STALERESET "\", \"port\": %u, \"stale_after\": 1,"
		    "   \"stale_how\": \"reset\"},"
		    "  {\"host\": \"" L_STALE421 "\", \"port\": %u, \"stale_after\": 1,"
		    "   \"stale_how\": \"421\"},"
		    "  {\"host\": \"" L_STALESTALL "\", \"port\": %u, \"stale_after\": 1,"
		    "   \"stale_how\": \"stall\"},"
		    "  {\"host\": \"" L_TLS "\", \"port\": %u, \"tls\": true,"
		    "   \"ehlo\": [\"STARTTLS\", \"PIPELINING\", \"SIZE 10485760\", \"8BITMIME\"]},"
		    "  {\"host\": \"" L_TLSEHLO "\", \"port\": %u, \"tls\": true,"
		    "   \"ehlo\": [\"STARTTLS\", \"PIPELINING\", \"SIZE 100\"],"
		    "   \"ehlo_tls\": [\"SIZE 10485760\", \"8BITMIME\"]},"
		    "  {\"host\": \"" L_TLSREFUSE "\", \"port\": %u, \"tls\": true,"
		    "   \"ehlo\": [\"STARTTLS\", \"PIPELINING\"],"
		    "   \"starttls_reply\": \"454 4.7.0 TLS not available\"},"
		    "  {\"host\": \"" L_TLSBROKEN "\", \"port\": %u, \"tls\": true, \"tls_broken\": true,"
		    "   \"ehlo\": [\"STARTTLS\", \"PIPELINING\"]},"
		    "  {\"host\": \"" L_TLSINJECT "\", \"port\": %u, \"tls\": true,"
		    "   \"ehlo\": [\"STARTTLS\", \"PIPELINING\"],"
		    "   \"starttls_reply\": \"220 2.0.0 go\\r\\n250 2.0.0 injected\"},"
		    "  {\"host\": \"" L_TLSSTALE "\", \"port\": %u, \"tls\": true,"
		    "   \"ehlo\": [\"STARTTLS\", \"PIPELINING\"], \"stale_after\": 1}"
		    " ]}", g_peer.record, p, p, p, p, p, p, p, p, p, p, p, p, p, p, p, p, p, p, p,
		    p, p, p, p, p, p);
	}

	g_peer.pid = fork();
	if (g_peer.pid < 0)
		return -1;
	if (g_peer.pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);      /* never outlive the test */
		execl(PYTHON, PYTHON, script, conf, (char *)NULL);
		_exit(127);
	}
	/* Wait until every listener accepts: poll connect, not a sleep. */
	for (i = 0; i < sizeof(peer_listening) / sizeof(peer_listening[0]); i++) {
		for (tries = 0; !try_connect(peer_listening[i], g_peer.port); tries++) {
			int st;
			if (tries > 750 || waitpid(g_peer.pid, &st, WNOHANG) == g_peer.pid) {
				fprintf(stderr, "smtp_peer.py did not come up on %s:%u\n",
				    peer_listening[i], g_peer.port);
				return -1;
			}
			nanosleep(&pause, NULL);
		}
	}
	return 0;
}

static int
peer_stop(void **state)
{
	(void)state;
	if (g_peer.pid > 0) {
		kill(g_peer.pid, SIGTERM);
		waitpid(g_peer.pid, NULL, 0);
	}
	if (g_peer.record[0] != '\0')
		unlink(g_peer.record);
	if (g_peer.dir[0] != '\0') {
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/peer-cert.pem", g_peer.dir);
		unlink(path);
		snprintf(path, sizeof(path), "%s/peer-key.pem", g_peer.dir);
		unlink(path);
	}
	if (g_peer.dir[0] != '\0')
		rmdir(g_peer.dir);
	return 0;
}

#define SKIP_WITHOUT_PEER() do { if (g_peer.skip) skip(); } while (0)

/* rec_mark - the number of records so far. */
static size_t
rec_mark(void)
{
	FILE *f = fopen(g_peer.record, "r");
	size_t n = 0;
	int c;

	if (f == NULL)
		return 0;
	while ((c = fgetc(f)) != EOF)
		if (c == '\n')
			n++;
	fclose(f);
	return n;
}

/* rec_find - the first record after line FROM with this event and
 * listener, or NULL. Caller json_decref()s it. */
static json_t *
rec_find(size_t from, const char *event, const char *listener)
{
	FILE *f = fopen(g_peer.record, "r");
	char *line = NULL;
	size_t cap = 0, n = 0;
	json_t *found = NULL;

	if (f == NULL)
		return NULL;
	while (getline(&line, &cap, f) > 0) {
		json_t *j;
		if (n++ < from)
			continue;
		j = json_loads(line, 0, NULL);
		if (j == NULL)
			continue;
		if (strcmp(json_string_value(json_object_get(j, "event")), event) == 0 &&
		    strcmp(json_string_value(json_object_get(j, "listener")), listener) == 0) {
			found = j;
			break;
		}
		json_decref(j);
	}
	free(line);
	fclose(f);
	return found;
}

static int
hexval(char c)
{
	return c >= 'a' ? c - 'a' + 10 : c >= 'A' ? c - 'A' + 10 : c - '0';
}

/* rec_data - the message data of a "message" record (hex-decoded). */
static uint8_t *
rec_data(json_t *rec, size_t *len)
{
	const char *hex = json_string_value(json_object_get(rec, "data_hex"));
	size_t n = strlen(hex) / 2, i;
	uint8_t *out = malloc(n + 1);

	for (i = 0; i < n; i++)
		out[i] = (uint8_t)(hexval(hex[2 * i]) << 4 | hexval(hex[2 * i + 1]));
	*len = n;
	return out;
}

/* rec_commands - the session's command verbs joined by spaces. */
static void
rec_commands(json_t *rec, char *out, size_t len)
{
	json_t *cmds = json_object_get(rec, "commands"), *v;
	size_t i, at = 0;

	out[0] = '\0';
	json_array_foreach(cmds, i, v) {
		at += (size_t)snprintf(out + at, len - at, "%s%s", i ? " " : "", json_string_value(v));
		if (at >= len)
			break;
	}
}

/* ------------------------------------------------------------ jobs */

struct fixture {
	struct sender_smtp_job job;
	struct sender_mx_addr addrs[4];
	struct sender_smtp_rcpt rcpts[4];
	int calls;
};

static void
fx_init(struct fixture *fx, const char *body, size_t body_len)
{
	memset(fx, 0, sizeof(*fx));
	fx->job.helo_name = "client.test";
	fx->job.addrs = fx->addrs;
	fx->job.port = g_peer.port;
	fx->job.connect_timeout_ms = 2000;
	fx->job.command_timeout_ms = 5000;
	fx->job.mail_from = "sender@origin.test";
	fx->job.body = (const uint8_t *)body;
	fx->job.body_len = body_len;
	fx->job.rcpts = fx->rcpts;
}

static void
fx_addr(struct fixture *fx, const char *host, const char *ip)
{
	struct sender_mx_addr *a = &fx->addrs[fx->job.n_addrs++];
	struct sockaddr_in *sin = (struct sockaddr_in *)&a->addr;

	snprintf(a->host, sizeof(a->host), "%s", host);
	a->pref = 10;
	sin->sin_family = AF_INET;
	assert_int_equal(inet_pton(AF_INET, ip, &sin->sin_addr), 1);
	a->addrlen = sizeof(*sin);
}

static void
fx_rcpt(struct fixture *fx, const char *address)
{
	fx->rcpts[fx->job.n_rcpts++].address = address;
}

static void
on_done(struct sender_smtp_job *job, void *arg)
{
	struct fixture *fx = arg;

	assert_ptr_equal(job, &fx->job);
	fx->calls++;
}

/* fx_run - run the job to completion on a private loop; the callback must
 * come exactly once, after deliver returned, and leave the loop clean. */
static void
fx_run(struct fixture *fx)
{
	uv_loop_t loop;
	sender_smtp *s;

	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(sender_smtp_deliver(&s, &loop, &fx->job, on_done, fx), 0);
	assert_non_null(s);
	assert_int_equal(fx->calls, 0);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(fx->calls, 1);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static void
assert_has(const char *hay, const char *needle)
{
	if (strstr(hay, needle) == NULL)
		fail_msg("\"%s\" does not contain \"%s\"", hay, needle);
}

/* ------------------------------------------------------------ client tests */

static const char stuffed_body[] =
    "Received: from x by y; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
    "Subject: dots\r\n"
    "\r\n"
    ".starts with a dot\r\n"
    "..two dots\r\n"
    ".\r\n"
    "middle . dot\r\n"
    "\r\n"
    ".\r\n"
    "last line\r\n";

static void
test_deliver_dot_stuffing_round_trip(void **state)
{
	struct fixture fx;
	json_t *rec;
	uint8_t *data;
	size_t len, mark;

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.ok.test", L_OK);
	fx_rcpt(&fx, "a@x.test");
	fx_rcpt(&fx, "b@x.test");
	fx_run(&fx);

	assert_int_equal(fx.rcpts[0].code, 250);
	assert_int_equal(fx.rcpts[1].code, 250);
	assert_string_equal(fx.rcpts[0].reply, "250 2.0.0 queued");
	assert_string_equal(fx.job.mx_host, "mx.ok.test");
	assert_string_equal(fx.job.mx_addr, L_OK);

	rec = rec_find(mark, "message", L_OK);
	assert_non_null(rec);
	data = rec_data(rec, &len);
	assert_int_equal(len, strlen(stuffed_body));
	assert_memory_equal(data, stuffed_body, len);
	assert_string_equal(json_string_value(json_object_get(rec, "helo")), "client.test");
	/* SIZE offered: the size goes along; no 8-bit data, so no BODY=. */
	{
		char want[128];
		snprintf(want, sizeof(want), "MAIL FROM:<sender@origin.test> SIZE=%zu",
		    strlen(stuffed_body));
		assert_string_equal(json_string_value(json_object_get(rec, "mail")), want);
	}
	assert_int_equal(json_array_size(json_object_get(rec, "rcpts")), 2);
	free(data);
	json_decref(rec);

	rec = rec_find(mark, "session", L_OK);
	assert_non_null(rec);
	{
		char cmds[256];
		rec_commands(rec, cmds, sizeof(cmds));
		assert_string_equal(cmds, "EHLO MAIL RCPT RCPT DATA QUIT");
	}
	json_decref(rec);
}

static void
test_deliver_body_without_final_crlf(void **state)
{
	static const char body[] = "Subject: x\r\n\r\n.no newline at the end";
	struct fixture fx;
	json_t *rec;
	uint8_t *data;
	size_t len, mark;

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	fx_init(&fx, body, strlen(body));
	fx.job.mail_from = "";          /* null sender */
	fx_addr(&fx, "mx.ok.test", L_OK);
	fx_rcpt(&fx, "a@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);

	rec = rec_find(mark, "message", L_OK);
	assert_non_null(rec);
	data = rec_data(rec, &len);
	/* A CRLF is added before the final dot, and only that. */
	assert_int_equal(len, strlen(body) + 2);
	assert_memory_equal(data, body, strlen(body));
	assert_memory_equal(data + strlen(body), "\r\n", 2);
	{
		char want[64];
		snprintf(want, sizeof(want), "MAIL FROM:<> SIZE=%zu", strlen(body));
		assert_string_equal(json_string_value(json_object_get(rec, "mail")), want);
	}
	free(data);
	json_decref(rec);
}

static void
test_deliver_large_body(void **state)
{
	const size_t target = 3 * 1024 * 1024 + 17;
	struct fixture fx;
	char *body;
	size_t len = 0, n = 0, got, mark;
	json_t *rec;
	uint8_t *data;

	(void)state;
	SKIP_WITHOUT_PEER();
	/* Lines of varying length; every 7th starts with a dot, some are "."
	 * alone, and 8-bit bytes are in there too (BODY=8BITMIME). */
	body = malloc(target + 200);
	while (len < target) {
		if (n % 7 == 0)
			body[len++] = '.';
		if (n % 49 == 0) {
			memcpy(body + len, "\r\n", 2);
			len += 2;
			n++;
			continue;
		}
		for (size_t k = 0; k < 20 + n % 80; k++)
			body[len++] = (char)(k == 3 && n % 11 == 0 ? 0xe9 : 'a' + (char)(k % 26));
		memcpy(body + len, "\r\n", 2);
		len += 2;
		n++;
	}
	mark = rec_mark();
	fx_init(&fx, body, len);
	fx_addr(&fx, "mx.ok.test", L_OK);
	fx_rcpt(&fx, "big@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);

	rec = rec_find(mark, "message", L_OK);
	assert_non_null(rec);
	data = rec_data(rec, &got);
	assert_int_equal(got, len);
	assert_memory_equal(data, body, len);
	assert_has(json_string_value(json_object_get(rec, "mail")), " BODY=8BITMIME");
	free(data);
	json_decref(rec);
	free(body);
}

static void
test_mixed_recipients_pipelined(void **state)
{
	struct fixture fx;
	json_t *rec;
	size_t mark;

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.mixed.test", L_MIXED);
	fx_rcpt(&fx, "ok1@x.test");
	fx_rcpt(&fx, "reject@x.test");
	fx_rcpt(&fx, "defer@x.test");
	fx_rcpt(&fx, "ok2@x.test");
	fx_run(&fx);

	assert_int_equal(fx.rcpts[0].code, 250);
	assert_string_equal(fx.rcpts[0].reply, "250 2.0.0 ok 2.0.0 queued as M1");
	assert_int_equal(fx.rcpts[1].code, 550);
	assert_string_equal(fx.rcpts[1].reply, "550 5.1.1 no such user");
	assert_int_equal(fx.rcpts[2].code, 450);
	assert_string_equal(fx.rcpts[2].reply, "450 4.2.1 try later");
	assert_int_equal(fx.rcpts[3].code, 250);

	rec = rec_find(mark, "message", L_MIXED);
	assert_non_null(rec);
	assert_int_equal(json_array_size(json_object_get(rec, "rcpts")), 2);
	json_decref(rec);
}

static void
test_mixed_recipients_without_pipelining(void **state)
{
	struct fixture fx;
	json_t *rec;
	size_t mark;
	char cmds[256];

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.nopipe.test", L_NOPIPE);
	fx_rcpt(&fx, "reject@x.test");
	fx_rcpt(&fx, "ok@x.test");
	fx_rcpt(&fx, "defer@x.test");
	fx_run(&fx);

	assert_int_equal(fx.rcpts[0].code, 550);
	assert_int_equal(fx.rcpts[1].code, 250);
	assert_int_equal(fx.rcpts[2].code, 450);
	rec = rec_find(mark, "message", L_NOPIPE);
	assert_non_null(rec);
	/* No SIZE offered: no SIZE parameter. */
	assert_string_equal(json_string_value(json_object_get(rec, "mail")),
	    "MAIL FROM:<sender@origin.test>");
	json_decref(rec);
	rec = rec_find(mark, "session", L_NOPIPE);
	assert_non_null(rec);
	assert_false(json_is_true(json_object_get(rec, "violation")));
	rec_commands(rec, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO MAIL RCPT RCPT RCPT DATA QUIT");
	json_decref(rec);
}

static void
test_all_recipients_rejected(void **state)
{
	struct fixture fx;
	json_t *rec;
	size_t mark;
	char cmds[256];

	(void)state;
	SKIP_WITHOUT_PEER();
	/* Without pipelining no DATA is sent at all. */
	mark = rec_mark();
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.nopipe.test", L_NOPIPE);
	fx_rcpt(&fx, "reject@x.test");
	fx_rcpt(&fx, "defer@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 550);
	assert_int_equal(fx.rcpts[1].code, 450);
	assert_null(rec_find(mark, "message", L_NOPIPE));
	rec = rec_find(mark, "session", L_NOPIPE);
	assert_non_null(rec);
	rec_commands(rec, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO MAIL RCPT RCPT QUIT");
	json_decref(rec);

	/* Pipelined: DATA went along and is refused; no message either. */
	mark = rec_mark();
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.ok.test", L_OK);
	fx_rcpt(&fx, "reject@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 550);
	assert_string_equal(fx.rcpts[0].reply, "550 5.1.1 no such user");
	assert_null(rec_find(mark, "message", L_OK));
	rec = rec_find(mark, "session", L_OK);
	assert_non_null(rec);
	rec_commands(rec, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO MAIL RCPT DATA QUIT");
	json_decref(rec);
}

static void
test_mail_rejected(void **state)
{
	struct fixture fx;
	json_t *rec;
	size_t mark;
	char cmds[256];

	(void)state;
	SKIP_WITHOUT_PEER();
	/* Pipelined: the RCPTs and DATA already sent get 503s, which are
	 * read and ignored; every recipient gets the MAIL reply. */
	mark = rec_mark();
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.test", L_MAILREJ);
	fx_rcpt(&fx, "a@x.test");
	fx_rcpt(&fx, "reject@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 553);
	assert_string_equal(fx.rcpts[0].reply, "553 5.7.1 sender rejected");
	assert_int_equal(fx.rcpts[1].code, 553);
	rec = rec_find(mark, "session", L_MAILREJ);
	assert_non_null(rec);
	rec_commands(rec, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO MAIL RCPT RCPT DATA QUIT");
	json_decref(rec);
}

static void
test_data_accepted_without_recipients(void **state)
{
	struct fixture fx;
	json_t *rec;
	size_t mark;

	(void)state;
	SKIP_WITHOUT_PEER();
	/* RFC 2920: a 354 after every RCPT failed is ended with a lone dot. */
	mark = rec_mark();
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.test", L_DATAALWAYS);
	fx_rcpt(&fx, "reject@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 550);
	assert_null(rec_find(mark, "message", L_DATAALWAYS));
	rec = rec_find(mark, "session", L_DATAALWAYS);
	assert_non_null(rec);
	json_decref(rec);
}

static void
test_greeting_421_then_next_address(void **state)
{
	struct fixture fx;
	size_t mark;
	json_t *rec;

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx1.test", L_GREET421);
	fx_addr(&fx, "mx2.test", L_OK);
	fx_rcpt(&fx, "a@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_string_equal(fx.job.mx_host, "mx2.test");
	assert_string_equal(fx.job.mx_addr, L_OK);
	rec = rec_find(mark, "message", L_OK);
	assert_non_null(rec);
	json_decref(rec);
}

static void
test_connection_refused_then_next_address(void **state)
{
	struct fixture fx;

	(void)state;
	SKIP_WITHOUT_PEER();
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx1.test", L_REFUSED1);
	fx_addr(&fx, "mx2.test", L_OK);
	fx_rcpt(&fx, "a@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_string_equal(fx.job.mx_addr, L_OK);
}

static void
test_all_addresses_fail(void **state)
{
	struct fixture fx;
	char want[128];

	(void)state;
	SKIP_WITHOUT_PEER();
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx1.test", L_GREET421);
	fx_addr(&fx, "mx2.test", L_REFUSED2);
	fx_rcpt(&fx, "a@x.test");
	fx_rcpt(&fx, "b@x.test");
	fx_run(&fx);
	snprintf(want, sizeof(want), "451 4.4.1 connect to " L_REFUSED2 ":%u failed: connection refused",
	    g_peer.port);
	assert_int_equal(fx.rcpts[0].code, 451);
	assert_string_equal(fx.rcpts[0].reply, want);
	assert_int_equal(fx.rcpts[1].code, 451);
	assert_string_equal(fx.rcpts[1].reply, want);
	assert_string_equal(fx.job.mx_host, "");
	assert_string_equal(fx.job.mx_addr, "");

	/* The greeting refusal is the reason when it came last. */
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx1.test", L_GREET421);
	fx_rcpt(&fx, "a@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 451);
	assert_has(fx.rcpts[0].reply, "refused to talk to me: 421 4.3.2 busy");

	/* No address at all. */
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_rcpt(&fx, "a@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 451);
}

static void
test_data_554(void **state)
{
	struct fixture fx;
	size_t mark;

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.test", L_DATA554);
	fx_rcpt(&fx, "a@x.test");
	fx_rcpt(&fx, "reject@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 554);
	assert_string_equal(fx.rcpts[0].reply, "554 5.6.0 no data today");
	assert_int_equal(fx.rcpts[1].code, 550);
	assert_null(rec_find(mark, "message", L_DATA554));
}

static void
test_ehlo_rejected_falls_back_to_helo(void **state)
{
	struct fixture fx;
	json_t *rec;
	size_t mark;
	char cmds[256];

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.test", L_NOEHLO);
	fx_rcpt(&fx, "a@x.test");
	fx_rcpt(&fx, "b@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_int_equal(fx.rcpts[1].code, 250);
	rec = rec_find(mark, "session", L_NOEHLO);
	assert_non_null(rec);
	rec_commands(rec, cmds, sizeof(cmds));
	/* HELO means no PIPELINING: one command at a time. */
	assert_string_equal(cmds, "EHLO HELO MAIL RCPT RCPT DATA QUIT");
	json_decref(rec);
}

static void
test_size_limit(void **state)
{
	struct fixture fx;
	json_t *rec;
	size_t mark;
	char cmds[256];

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.test", L_SIZE100);
	fx_rcpt(&fx, "a@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 552);
	assert_has(fx.rcpts[0].reply, "552 5.3.4 message size");
	rec = rec_find(mark, "session", L_SIZE100);
	assert_non_null(rec);
	rec_commands(rec, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO QUIT");
	json_decref(rec);
}

static void
test_stalled_server_times_out(void **state)
{
	struct fixture fx;
	uint64_t t0;

	(void)state;
	SKIP_WITHOUT_PEER();
	/* Silent after MAIL: the recipients fail with a 4xx naming the phase. */
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx.job.command_timeout_ms = 300;
	fx_addr(&fx, "mx.test", L_STALLMAIL);
	fx_rcpt(&fx, "a@x.test");
	fx_rcpt(&fx, "b@x.test");
	t0 = uv_hrtime();
	fx_run(&fx);
	assert_true((uv_hrtime() - t0) / 1000000 < 3000);
	assert_int_equal(fx.rcpts[0].code, 451);
	assert_has(fx.rcpts[0].reply, "451 4.4.2 timeout after MAIL FROM with " L_STALLMAIL);
	assert_int_equal(fx.rcpts[1].code, 451);
	assert_string_equal(fx.job.mx_addr, L_STALLMAIL);

	/* Silent greeting: that address is skipped, the next one delivers. */
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx.job.command_timeout_ms = 300;
	fx_addr(&fx, "mx1.test", L_STALLGREET);
	fx_addr(&fx, "mx2.test", L_OK);
	fx_rcpt(&fx, "a@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_string_equal(fx.job.mx_addr, L_OK);

	/* Silent after the final dot: the message may have been taken. */
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx.job.command_timeout_ms = 300;
	fx_addr(&fx, "mx.test", L_STALLEOD);
	fx_rcpt(&fx, "a@x.test");
	fx_rcpt(&fx, "reject@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 451);
	assert_has(fx.rcpts[0].reply, "451 4.4.2 timeout after end of data");
	assert_has(fx.rcpts[0].reply, "more than once");
	assert_int_equal(fx.rcpts[1].code, 550);
}

static void
test_connection_dropped_mid_data(void **state)
{
	const size_t len = 4 * 1024 * 1024;
	struct fixture fx;
	char *body;

	(void)state;
	SKIP_WITHOUT_PEER();
	body = malloc(len);
	for (size_t i = 0; i < len; i++)
		body[i] = (i % 64 == 62) ? '\r' : (i % 64 == 63) ? '\n' : 'x';
	fx_init(&fx, body, len);
	fx_addr(&fx, "mx.test", L_DROPDATA);
	fx_rcpt(&fx, "a@x.test");
	fx_rcpt(&fx, "reject@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 451);
	assert_has(fx.rcpts[0].reply, "451 4.4.2 connection lost");
	assert_has(fx.rcpts[0].reply, L_DROPDATA);
	assert_int_equal(fx.rcpts[1].code, 550);
	free(body);
}

static void
test_malformed_greeting_is_protocol_error(void **state)
{
	struct fixture fx;

	(void)state;
	SKIP_WITHOUT_PEER();
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.test", L_BADGREET);
	fx_rcpt(&fx, "a@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 451);
	assert_has(fx.rcpts[0].reply, "451 4.5.0 protocol error while receiving the initial greeting");
	assert_has(fx.rcpts[0].reply, "mixed codes");

	/* Then the next address is tried. */
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx1.test", L_BADGREET);
	fx_addr(&fx, "mx2.test", L_OK);
	fx_rcpt(&fx, "a@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);
}

static void
test_malformed_rcpt_reply(void **state)
{
	struct fixture fx;

	(void)state;
	SKIP_WITHOUT_PEER();
	/* Pipelined: the reply to the second RCPT is garbage: that recipient
	 * and the later ones get a 4xx, the first keeps its rejection. */
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.test", L_OK);
	fx_rcpt(&fx, "reject@x.test");
	fx_rcpt(&fx, "bad@x.test");
	fx_rcpt(&fx, "a@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 550);
	assert_int_equal(fx.rcpts[1].code, 451);
	assert_has(fx.rcpts[1].reply, "451 4.5.0 protocol error after RCPT TO");
	assert_int_equal(fx.rcpts[2].code, 451);
}

static void
test_bad_arguments(void **state)
{
	struct fixture fx;
	uv_loop_t loop;
	sender_smtp *s;

	(void)state;
	SKIP_WITHOUT_PEER();
	/* A recipient that would inject a command is refused locally. */
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.ok.test", L_OK);
	fx_rcpt(&fx, "a@x.test>\r\nRSET");
	fx_rcpt(&fx, "b@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 501);
	assert_int_equal(fx.rcpts[1].code, 250);

	/* Only bad recipients: no connection, still an async callback. */
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.ok.test", L_OK);
	fx_rcpt(&fx, "");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 501);

	/* A bad sender or HELO name is the caller's bug: refused, no callback. */
	uv_loop_init(&loop);
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.ok.test", L_OK);
	fx_rcpt(&fx, "a@x.test");
	fx.job.mail_from = "x@y\r\nDATA";
	assert_int_equal(sender_smtp_deliver(&s, &loop, &fx.job, on_done, &fx), -EINVAL);
	fx.job.mail_from = "x@y";
	fx.job.source_address = "not-an-ip";
	assert_int_equal(sender_smtp_deliver(&s, &loop, &fx.job, on_done, &fx), -EINVAL);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(fx.calls, 0);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static void
test_source_address(void **state)
{
	struct fixture fx;
	json_t *rec;
	size_t mark;

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx.job.source_address = "127.0.0.2";
	fx_addr(&fx, "mx.ok.test", L_OK);
	fx_rcpt(&fx, "a@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);
	rec = rec_find(mark, "message", L_OK);
	assert_non_null(rec);
	assert_string_equal(json_string_value(json_object_get(rec, "client")), "127.0.0.2");
	json_decref(rec);

	/* A source that cannot be bound fails the address with the reason. */
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx.job.source_address = "192.0.2.1";    /* TEST-NET-1: not ours */
	fx_addr(&fx, "mx.ok.test", L_OK);
	fx_rcpt(&fx, "a@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 451);
	assert_has(fx.rcpts[0].reply, "failed: ");
}

struct abort_ctx {
	sender_smtp *s;
	struct fixture *fx;
};

static void
abort_later(uv_timer_t *t)
{
	struct abort_ctx *a = t->data;

	sender_smtp_abort(a->s);
	assert_int_equal(a->fx->calls, 0);     /* never from inside abort */
	sender_smtp_abort(a->s);                /* idempotent until the callback */
	uv_close((uv_handle_t *)t, NULL);
}

static void
test_abort(void **state)
{
	struct fixture fx;
	struct abort_ctx a;
	uv_loop_t loop;
	uv_timer_t t;

	(void)state;
	SKIP_WITHOUT_PEER();
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.test", L_STALLMAIL);
	fx_rcpt(&fx, "a@x.test");
	fx_rcpt(&fx, "b@x.test");
	uv_loop_init(&loop);
	assert_int_equal(sender_smtp_deliver(&a.s, &loop, &fx.job, on_done, &fx), 0);
	a.fx = &fx;
	uv_timer_init(&loop, &t);
	t.data = &a;
	uv_timer_start(&t, abort_later, 200, 0);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(fx.calls, 1);
	assert_int_equal(fx.rcpts[0].code, 451);
	assert_string_equal(fx.rcpts[0].reply, "451 4.3.2 aborted");
	assert_int_equal(fx.rcpts[1].code, 451);
	assert_int_equal(uv_loop_close(&loop), 0);

	/* Abort right after deliver, before anything happened. */
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.test", L_OK);
	fx_rcpt(&fx, "a@x.test");
	uv_loop_init(&loop);
	assert_int_equal(sender_smtp_deliver(&a.s, &loop, &fx.job, on_done, &fx), 0);
	sender_smtp_abort(a.s);
	assert_int_equal(fx.calls, 0);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(fx.calls, 1);
	assert_string_equal(fx.rcpts[0].reply, "451 4.3.2 aborted");
	assert_int_equal(uv_loop_close(&loop), 0);
}

/* Several jobs on one loop at once, to different listeners. */
static void
test_concurrent_jobs(void **state)
{
	struct fixture fx[6];
	uv_loop_t loop;
	sender_smtp *s;
	const char *ls[] = { L_OK, L_NOPIPE, L_MIXED, L_OK, L_NOEHLO, L_OK };

	(void)state;
	SKIP_WITHOUT_PEER();
	uv_loop_init(&loop);
	for (int i = 0; i < 6; i++) {
		fx_init(&fx[i], stuffed_body, strlen(stuffed_body));
		fx_addr(&fx[i], "mx.test", ls[i]);
		fx_rcpt(&fx[i], "a@x.test");
		fx_rcpt(&fx[i], "reject@x.test");
		assert_int_equal(sender_smtp_deliver(&s, &loop, &fx[i].job, on_done, &fx[i]), 0);
	}
	uv_run(&loop, UV_RUN_DEFAULT);
	for (int i = 0; i < 6; i++) {
		assert_int_equal(fx[i].calls, 1);
		assert_int_equal(fx[i].rcpts[0].code, 250);
		assert_int_equal(fx[i].rcpts[1].code, 550);
	}
	assert_int_equal(uv_loop_close(&loop), 0);
}

/* ------------------------------------------------------------ connection reuse */

/* rec_count - records after line FROM with this event and listener. */
static size_t
rec_count(size_t from, const char *event, const char *listener)
{
	FILE *f = fopen(g_peer.record, "r");
	char *line = NULL;
	size_t cap = 0, n = 0, found = 0;

	if (f == NULL)
		return 0;
	while (getline(&line, &cap, f) > 0) {
		json_t *j;
		if (n++ < from)
			continue;
		j = json_loads(line, 0, NULL);
		if (j == NULL)
			continue;
		if (strcmp(json_string_value(json_object_get(j, "event")), event) == 0 &&
		    strcmp(json_string_value(json_object_get(j, "listener")), listener) == 0)
			found++;
		json_decref(j);
	}
	free(line);
	fclose(f);
	return found;
}

/* rec_nth - the Nth (0-based) record after line FROM with this event and
 * listener, or NULL. Caller json_decref()s it. */
static json_t *
rec_nth(size_t from, const char *event, const char *listener, size_t nth)
{
	FILE *f = fopen(g_peer.record, "r");
	char *line = NULL;
	size_t cap = 0, n = 0;
	json_t *found = NULL;

	if (f == NULL)
		return NULL;
	while (found == NULL && getline(&line, &cap, f) > 0) {
		json_t *j;
		if (n++ < from)
			continue;
		j = json_loads(line, 0, NULL);
		if (j == NULL)
			continue;
		if (strcmp(json_string_value(json_object_get(j, "event")), event) == 0 &&
		    strcmp(json_string_value(json_object_get(j, "listener")), listener) == 0 &&
		    nth-- == 0)
			found = j;
		else
			json_decref(j);
	}
	free(line);
	fclose(f);
	return found;
}

static json_int_t
rec_int(json_t *rec, const char *key)
{
	return json_integer_value(json_object_get(rec, key));
}

/* fx_start - start FX's job on LOOP through POOL; the callback must not
 * have run yet. */
static void
fx_start(struct fixture *fx, uv_loop_t *loop, sender_smtp_pool *pool, sender_smtp **out)
{
	sender_smtp *s;

	fx->job.pool = pool;
	assert_int_equal(sender_smtp_deliver(&s, loop, &fx->job, on_done, fx), 0);
	assert_non_null(s);
	assert_int_equal(fx->calls, 0);
	if (out != NULL)
		*out = s;
}

/* fx_wait - run LOOP until FX's callback ran (the pool keeps the loop
 * alive afterwards, so uv_run(DEFAULT) would not return). */
static void
fx_wait(struct fixture *fx, uv_loop_t *loop)
{
	while (fx->calls == 0)
		if (uv_run(loop, UV_RUN_ONCE) == 0 && fx->calls == 0)
			fail_msg("the loop ran dry before the callback");
	assert_int_equal(fx->calls, 1);
}

/* fx_deliver - one job through POOL, start to callback. */
static void
fx_deliver(struct fixture *fx, uv_loop_t *loop, sender_smtp_pool *pool, const char *ip,
    const char *rcpt)
{
	fx_init(fx, stuffed_body, strlen(stuffed_body));
	fx_addr(fx, "mx.test", ip);
	fx_rcpt(fx, rcpt);
	fx_start(fx, loop, pool, NULL);
	fx_wait(fx, loop);
}

static struct sender_smtp_pool_stats
pool_stats(sender_smtp_pool *p)
{
	struct sender_smtp_pool_stats st;
	sender_smtp_pool_stats(p, &st);
	return st;
}

/* pool_end - close POOL and run LOOP dry: it must close clean. */
static void
pool_end(sender_smtp_pool *p, uv_loop_t *loop)
{
	sender_smtp_pool_close(p);
	uv_run(loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(loop), 0);
}

/* Two jobs in sequence to one address: one TCP connection, two MAILs. */
static void
test_reuse_two_jobs_one_connection(void **state)
{
	struct fixture fx;
	sender_smtp_pool *pool;
	uv_loop_t loop;
	json_t *m1, *m2, *rec;
	size_t mark;
	char cmds[256];

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	uv_loop_init(&loop);
	pool = sender_smtp_pool_new(&loop, 10000, 100);

	fx_deliver(&fx, &loop, pool, L_OK, "a@x.test");
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_int_equal(pool_stats(pool).idle, 1);
	assert_int_equal(pool_stats(pool).parked, 1);

	fx_deliver(&fx, &loop, pool, L_OK, "b@x.test");
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_string_equal(fx.rcpts[0].reply, "250 2.0.0 queued");
	assert_string_equal(fx.job.mx_host, "mx.test");
	assert_string_equal(fx.job.mx_addr, L_OK);
	assert_int_equal(pool_stats(pool).connects, 1);
	assert_int_equal(pool_stats(pool).reused, 1);
	assert_int_equal(pool_stats(pool).stale, 0);
	assert_int_equal(pool_stats(pool).idle, 1);

	/* Another HELO name is another key: a connection of its own. */
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx.job.helo_name = "other.test";
	fx_addr(&fx, "mx.test", L_OK);
	fx_rcpt(&fx, "c@x.test");
	fx_start(&fx, &loop, pool, NULL);
	fx_wait(&fx, &loop);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_int_equal(pool_stats(pool).connects, 2);
	assert_int_equal(pool_stats(pool).reused, 1);
	assert_int_equal(pool_stats(pool).idle, 2);
	pool_end(pool, &loop);

	assert_int_equal(rec_count(mark, "connect", L_OK), 2);
	assert_int_equal(rec_count(mark, "message", L_OK), 3);
	m1 = rec_nth(mark, "message", L_OK, 0);
	m2 = rec_nth(mark, "message", L_OK, 1);
	assert_non_null(m1);
	assert_non_null(m2);
	assert_int_equal(rec_int(m1, "client_port"), rec_int(m2, "client_port"));
	assert_int_equal(rec_int(m1, "n"), 1);
	assert_int_equal(rec_int(m2, "n"), 2);
	assert_string_equal(json_string_value(json_array_get(json_object_get(m2, "rcpts"), 0)),
	    "b@x.test");
	/* The pool's close QUITs the connections, in no particular order. */
	assert_int_equal(rec_count(mark, "session", L_OK), 2);
	rec = rec_nth(mark, "session", L_OK, 0);
	assert_non_null(rec);
	if (rec_int(rec, "client_port") != rec_int(m1, "client_port")) {
		json_decref(rec);
		rec = rec_nth(mark, "session", L_OK, 1);
		assert_non_null(rec);
		assert_int_equal(rec_int(rec, "client_port"), rec_int(m1, "client_port"));
	}
	rec_commands(rec, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO MAIL RCPT DATA MAIL RCPT DATA QUIT");
	json_decref(rec);
	json_decref(m1);
	json_decref(m2);
}

/* A parked connection to a later address of the job beats a new one to the
 * first: they are MX hosts of the same domain. */
static void
test_reuse_any_address(void **state)
{
	struct fixture fx;
	sender_smtp_pool *pool;
	uv_loop_t loop;
	size_t mark;

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	uv_loop_init(&loop);
	pool = sender_smtp_pool_new(&loop, 10000, 100);
	fx_deliver(&fx, &loop, pool, L_OK, "a@x.test");
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx1.test", L_NOPIPE);
	fx_addr(&fx, "mx2.test", L_OK);
	fx_rcpt(&fx, "b@x.test");
	fx_start(&fx, &loop, pool, NULL);
	fx_wait(&fx, &loop);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_string_equal(fx.job.mx_host, "mx2.test");
	assert_string_equal(fx.job.mx_addr, L_OK);
	assert_int_equal(pool_stats(pool).connects, 1);
	assert_int_equal(pool_stats(pool).reused, 1);
	pool_end(pool, &loop);
	assert_int_equal(rec_count(mark, "connect", L_NOPIPE), 0);
	assert_int_equal(rec_count(mark, "message", L_OK), 2);
}

/* max_uses 2, three jobs: two connections; the first is QUIT after its
 * second transaction. Caching off (idle 0, or max_uses 1): one each. */
static void
test_reuse_limit(void **state)
{
	struct fixture fx;
	sender_smtp_pool *pool;
	uv_loop_t loop;
	json_t *rec;
	size_t mark;
	char cmds[256];

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	uv_loop_init(&loop);
	pool = sender_smtp_pool_new(&loop, 10000, 2);
	for (int i = 0; i < 3; i++) {
		fx_deliver(&fx, &loop, pool, L_OK, "a@x.test");
		assert_int_equal(fx.rcpts[0].code, 250);
	}
	assert_int_equal(pool_stats(pool).connects, 2);
	assert_int_equal(pool_stats(pool).reused, 1);
	pool_end(pool, &loop);
	assert_int_equal(rec_count(mark, "connect", L_OK), 2);
	assert_int_equal(rec_count(mark, "message", L_OK), 3);
	rec = rec_nth(mark, "session", L_OK, 0);
	assert_non_null(rec);
	rec_commands(rec, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO MAIL RCPT DATA MAIL RCPT DATA QUIT");
	json_decref(rec);
	rec = rec_nth(mark, "session", L_OK, 1);
	assert_non_null(rec);
	rec_commands(rec, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO MAIL RCPT DATA QUIT");
	json_decref(rec);

	for (int off = 0; off < 2; off++) {
		mark = rec_mark();
		uv_loop_init(&loop);
		pool = off == 0 ? sender_smtp_pool_new(&loop, 0, 100) :
		    sender_smtp_pool_new(&loop, 10000, 1);
		fx_deliver(&fx, &loop, pool, L_OK, "a@x.test");
		assert_int_equal(pool_stats(pool).idle, 0);
		fx_deliver(&fx, &loop, pool, L_OK, "a@x.test");
		assert_int_equal(fx.rcpts[0].code, 250);
		assert_int_equal(pool_stats(pool).connects, 2);
		assert_int_equal(pool_stats(pool).reused, 0);
		pool_end(pool, &loop);
		assert_int_equal(rec_count(mark, "connect", L_OK), 2);
		assert_int_equal(rec_count(mark, "session", L_OK), 2);
	}
}

/* The server closes a parked connection: it leaves the pool at once and
 * the next job connects afresh. */
static void
test_reuse_closed_while_idle(void **state)
{
	struct fixture fx;
	sender_smtp_pool *pool;
	uv_loop_t loop;
	size_t mark;

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	uv_loop_init(&loop);
	pool = sender_smtp_pool_new(&loop, 10000, 100);
	fx_deliver(&fx, &loop, pool, L_IDLECLOSE, "a@x.test");
	assert_int_equal(fx.rcpts[0].code, 250);
	/* Parked, then the EOF drops it (the idle timer is 10 s away). */
	while (pool_stats(pool).idle > 0)
		uv_run(&loop, UV_RUN_ONCE);
	assert_int_equal(pool_stats(pool).parked, 1);

	fx_deliver(&fx, &loop, pool, L_IDLECLOSE, "b@x.test");
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_int_equal(pool_stats(pool).connects, 2);
	assert_int_equal(pool_stats(pool).reused, 0);
	assert_int_equal(pool_stats(pool).stale, 0);
	pool_end(pool, &loop);
	assert_int_equal(rec_count(mark, "connect", L_IDLECLOSE), 2);
	assert_int_equal(rec_count(mark, "message", L_IDLECLOSE), 2);
}

/* The server dropped the parked connection just before it was reused: the
 * EOF, reset or 421 shows only after MAIL went out. The job goes on over a
 * new connection and the message arrives once. */
static void
test_reuse_stale(void **state)
{
	static const char *ls[] = { L_STALECLOSE, L_STALERESET, L_STALE421 };
	struct fixture fx;
	sender_smtp_pool *pool;
	sender_smtp *s;
	uv_loop_t loop;
	json_t *m1, *m2;
	size_t mark;

	(void)state;
	SKIP_WITHOUT_PEER();
	for (size_t k = 0; k < sizeof(ls) / sizeof(ls[0]); k++) {
		mark = rec_mark();
		uv_loop_init(&loop);
		pool = sender_smtp_pool_new(&loop, 10000, 100);
		fx_deliver(&fx, &loop, pool, ls[k], "a@x.test");
		assert_int_equal(fx.rcpts[0].code, 250);
		assert_int_equal(pool_stats(pool).idle, 1);

		fx_init(&fx, stuffed_body, strlen(stuffed_body));
		fx_addr(&fx, "mx.test", ls[k]);
		fx_rcpt(&fx, "b@x.test");
		fx_rcpt(&fx, "c@x.test");
		fx_start(&fx, &loop, pool, &s);
		assert_int_equal(pool_stats(pool).reused, 1);       /* MAIL is out */
		fx_wait(&fx, &loop);
		assert_int_equal(fx.rcpts[0].code, 250);
		assert_int_equal(fx.rcpts[1].code, 250);
		assert_string_equal(fx.rcpts[0].reply, "250 2.0.0 queued");
		assert_string_equal(fx.job.mx_host, "mx.test");
		assert_string_equal(fx.job.mx_addr, ls[k]);
		assert_int_equal(pool_stats(pool).stale, 1);
		assert_int_equal(pool_stats(pool).connects, 2);
		pool_end(pool, &loop);

		assert_int_equal(rec_count(mark, "connect", ls[k]), 2);
		assert_int_equal(rec_count(mark, "message", ls[k]), 2);
		m1 = rec_nth(mark, "message", ls[k], 0);
		m2 = rec_nth(mark, "message", ls[k], 1);
		assert_non_null(m1);
		assert_non_null(m2);
		assert_int_not_equal(rec_int(m1, "client_port"), rec_int(m2, "client_port"));
		assert_int_equal(rec_int(m2, "n"), 1);
		assert_int_equal(json_array_size(json_object_get(m2, "rcpts")), 2);
		json_decref(m1);
		json_decref(m2);
	}
}

/* The idle timer QUITs a parked connection; then nothing is left. */
static void
test_reuse_idle_timeout_quits(void **state)
{
	struct fixture fx;
	sender_smtp_pool *pool;
	uv_loop_t loop;
	json_t *rec;
	size_t mark;
	uint64_t t0;
	char cmds[256];

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	uv_loop_init(&loop);
	pool = sender_smtp_pool_new(&loop, 200, 100);
	t0 = uv_hrtime();
	fx_deliver(&fx, &loop, pool, L_OK, "a@x.test");
	assert_int_equal(pool_stats(pool).idle, 1);
	uv_run(&loop, UV_RUN_DEFAULT);  /* returns once the connection is gone */
	assert_true((uv_hrtime() - t0) / 1000000 >= 190);
	assert_int_equal(pool_stats(pool).idle, 0);
	rec = rec_find(mark, "session", L_OK);
	assert_non_null(rec);
	rec_commands(rec, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO MAIL RCPT DATA QUIT");
	json_decref(rec);
	pool_end(pool, &loop);
}

/* pool_close with parked connections (two keys): every one is QUIT and
 * the loop ends clean. */
static void
test_pool_close_with_idle(void **state)
{
	struct fixture fx[2];
	sender_smtp_pool *pool;
	uv_loop_t loop;
	json_t *rec;
	size_t mark;

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	uv_loop_init(&loop);
	pool = sender_smtp_pool_new(&loop, 10000, 100);
	fx_init(&fx[0], stuffed_body, strlen(stuffed_body));
	fx_addr(&fx[0], "mx.test", L_OK);
	fx_rcpt(&fx[0], "a@x.test");
	fx_init(&fx[1], stuffed_body, strlen(stuffed_body));
	fx_addr(&fx[1], "mx.test", L_NOPIPE);
	fx_rcpt(&fx[1], "a@x.test");
	fx_start(&fx[0], &loop, pool, NULL);
	fx_start(&fx[1], &loop, pool, NULL);
	fx_wait(&fx[0], &loop);
	fx_wait(&fx[1], &loop);
	assert_int_equal(pool_stats(pool).idle, 2);
	pool_end(pool, &loop);  /* asserts uv_loop_close() == 0 */
	rec = rec_find(mark, "session", L_OK);
	assert_non_null(rec);
	json_decref(rec);
	rec = rec_find(mark, "session", L_NOPIPE);
	assert_non_null(rec);
	json_decref(rec);

	/* Closing an unused pool, or none, is fine too. */
	uv_loop_init(&loop);
	pool_end(sender_smtp_pool_new(&loop, 10000, 100), &loop);
	sender_smtp_pool_close(NULL);
}

/* A transaction that did not end with a final reply to the data is reset
 * before its connection is parked; without PIPELINING too. */
static void
test_reuse_after_rset(void **state)
{
	static const char *ls[] = { L_OK, L_NOPIPE, L_MAILREJ };
	static const char *want[] = {
		"EHLO MAIL RCPT DATA RSET MAIL RCPT DATA QUIT",
		"EHLO MAIL RCPT RSET MAIL RCPT DATA QUIT",
		"EHLO MAIL RCPT DATA RSET MAIL RCPT DATA RSET QUIT",     /* every MAIL refused */
	};
	struct fixture fx;
	sender_smtp_pool *pool;
	uv_loop_t loop;
	json_t *rec;
	size_t mark;
	char cmds[256];

	(void)state;
	SKIP_WITHOUT_PEER();
	for (size_t k = 0; k < sizeof(ls) / sizeof(ls[0]); k++) {
		mark = rec_mark();
		uv_loop_init(&loop);
		pool = sender_smtp_pool_new(&loop, 10000, 100);
		fx_deliver(&fx, &loop, pool, ls[k], "reject@x.test");
		assert_true(fx.rcpts[0].code >= 500);
		/* The RSET's 250 parks it. */
		while (pool_stats(pool).idle == 0)
			if (uv_run(&loop, UV_RUN_ONCE) == 0)
				fail_msg("%s: the connection was not parked", ls[k]);
		fx_deliver(&fx, &loop, pool, ls[k], "a@x.test");
		assert_int_equal(fx.rcpts[0].code, k == 2 ? 553 : 250);
		assert_int_equal(pool_stats(pool).reused, 1);
		assert_int_equal(pool_stats(pool).connects, 1);
		pool_end(pool, &loop);
		rec = rec_find(mark, "session", ls[k]);
		assert_non_null(rec);
		rec_commands(rec, cmds, sizeof(cmds));
		assert_string_equal(cmds, want[k]);
		json_decref(rec);
	}
}

/* The size limit from EHLO holds for later jobs on the connection too. */
static void
test_reuse_size_limit(void **state)
{
	static const char small[] = "Subject: s\r\n\r\nhi\r\n";
	struct fixture fx;
	sender_smtp_pool *pool;
	uv_loop_t loop;
	json_t *rec;
	size_t mark;
	char cmds[256];

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	uv_loop_init(&loop);
	pool = sender_smtp_pool_new(&loop, 10000, 100);
	for (int i = 0; i < 3; i++) {
		bool big = i != 1;
		fx_init(&fx, big ? stuffed_body : small, big ? strlen(stuffed_body) : strlen(small));
		fx_addr(&fx, "mx.test", L_SIZE100);
		fx_rcpt(&fx, "a@x.test");
		fx_start(&fx, &loop, pool, NULL);
		fx_wait(&fx, &loop);
		assert_int_equal(fx.rcpts[0].code, big ? 552 : 250);
	}
	assert_int_equal(pool_stats(pool).connects, 1);
	assert_int_equal(pool_stats(pool).reused, 2);
	pool_end(pool, &loop);
	rec = rec_find(mark, "session", L_SIZE100);
	assert_non_null(rec);
	rec_commands(rec, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO MAIL RCPT DATA QUIT");
	json_decref(rec);
}

static void
abort_reused_later(uv_timer_t *t)
{
	struct abort_ctx *a = t->data;

	sender_smtp_abort(a->s);
	assert_int_equal(a->fx->calls, 0);
	uv_close((uv_handle_t *)t, NULL);
}

/* Abort works on a job running on a reused connection, at once or while
 * it waits for the server; the connection is closed, not parked. */
static void
test_reuse_abort(void **state)
{
	struct fixture fx;
	struct abort_ctx a;
	sender_smtp_pool *pool;
	uv_loop_t loop;
	uv_timer_t t;
	size_t mark;

	(void)state;
	SKIP_WITHOUT_PEER();
	mark = rec_mark();
	uv_loop_init(&loop);
	pool = sender_smtp_pool_new(&loop, 10000, 100);
	fx_deliver(&fx, &loop, pool, L_OK, "a@x.test");
	assert_int_equal(pool_stats(pool).idle, 1);

	/* At once: MAIL, RCPT and DATA are written already. */
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.test", L_OK);
	fx_rcpt(&fx, "b@x.test");
	fx_start(&fx, &loop, pool, &a.s);
	assert_int_equal(pool_stats(pool).reused, 1);
	sender_smtp_abort(a.s);
	assert_int_equal(fx.calls, 0);
	sender_smtp_abort(a.s);
	fx_wait(&fx, &loop);
	assert_string_equal(fx.rcpts[0].reply, "451 4.3.2 aborted");
	assert_int_equal(pool_stats(pool).idle, 0);

	/* The pool still works: a new connection for the next job. */
	fx_deliver(&fx, &loop, pool, L_OK, "c@x.test");
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_int_equal(pool_stats(pool).connects, 2);
	pool_end(pool, &loop);
	assert_int_equal(rec_count(mark, "message", L_OK), 2);

	/* While waiting for a server that went silent on the reused connection. */
	uv_loop_init(&loop);
	pool = sender_smtp_pool_new(&loop, 10000, 100);
	fx_deliver(&fx, &loop, pool, L_STALESTALL, "a@x.test");
	fx_init(&fx, stuffed_body, strlen(stuffed_body));
	fx_addr(&fx, "mx.test", L_STALESTALL);
	fx_rcpt(&fx, "b@x.test");
	fx_start(&fx, &loop, pool, &a.s);
	assert_int_equal(pool_stats(pool).reused, 1);
	a.fx = &fx;
	uv_timer_init(&loop, &t);
	t.data = &a;
	uv_timer_start(&t, abort_reused_later, 100, 0);
	fx_wait(&fx, &loop);
	assert_string_equal(fx.rcpts[0].reply, "451 4.3.2 aborted");
	assert_int_equal(pool_stats(pool).idle, 0);
	assert_int_equal(pool_stats(pool).stale, 0);
	pool_end(pool, &loop);
}

/* ------------------------------------------------------------ TLS */

/* tls_ctx - a client context that trusts the peer's self-signed
 * certificate (CA: true), or the default store (CA: false). */
static SSL_CTX *
tls_ctx(bool ca)
{
	char path[PATH_MAX], err[256];
	SSL_CTX *ctx;

	snprintf(path, sizeof(path), "%s/peer-cert.pem", g_peer.dir);
	ctx = hk_tls_client_ctx(ca ? path : NULL, err, sizeof(err));
	if (ctx == NULL)
		fail_msg("hk_tls_client_ctx: %s", err);
	return ctx;
}

/* session_commands - the command verbs of the Nth session record of
 * LISTENER after MARK, joined by spaces. */
static void
session_commands(size_t mark, const char *listener, int nth, char *out, size_t len)
{
	json_t *rec = rec_nth(mark, "session", listener, nth);

	if (rec == NULL)
		fail_msg("no session record %d for %s", nth, listener);
	rec_commands(rec, out, len);
	json_decref(rec);
}

/* fx_tls - FX for one recipient at one address, with CTX (may be NULL). */
static void
fx_tls(struct fixture *fx, SSL_CTX *ctx, bool required, const char *host, const char *ip,
    const char *rcpt)
{
	fx_init(fx, stuffed_body, strlen(stuffed_body));
	fx->job.tls_ctx = ctx;
	fx->job.tls_required = required;
	fx_addr(fx, host, ip);
	fx_rcpt(fx, rcpt);
}

/* STARTTLS offered: used, EHLO again, and the session recorded. */
static void
test_tls_starttls_used(void **state)
{
	struct fixture fx;
	SSL_CTX *ctx;
	json_t *rec;
	size_t mark, len;
	uint8_t *data;
	char cmds[256];

	(void)state;
	SKIP_WITHOUT_PEER();
	ctx = tls_ctx(true);
	mark = rec_mark();
	fx_tls(&fx, ctx, false, TLS_HOST, L_TLS, "a@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_true(strcmp(fx.job.tls_version, "TLSv1.2") == 0 ||
	    strcmp(fx.job.tls_version, "TLSv1.3") == 0);
	assert_true(fx.job.tls_cipher[0] != '\0');
	assert_true(fx.job.tls_verified);      /* trusted, and the name matches */

	rec = rec_find(mark, "message", L_TLS);
	assert_non_null(rec);
	assert_string_equal(json_string_value(json_object_get(rec, "tls")), fx.job.tls_version);
	assert_string_equal(json_string_value(json_object_get(rec, "sni")), TLS_HOST);
	data = rec_data(rec, &len);
	assert_int_equal(len, strlen(stuffed_body));
	assert_memory_equal(data, stuffed_body, len);
	free(data);
	json_decref(rec);
	session_commands(mark, L_TLS, 0, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO STARTTLS EHLO MAIL RCPT DATA QUIT");

	/* Another host name: still TLS, but not verified (name mismatch). */
	fx_tls(&fx, ctx, false, "mx.other.test", L_TLS, "b@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_true(fx.job.tls_version[0] != '\0');
	assert_false(fx.job.tls_verified);
	SSL_CTX_free(ctx);

	/* A CA it does not know: still TLS (opportunistic), not verified. */
	ctx = tls_ctx(false);
	fx_tls(&fx, ctx, false, TLS_HOST, L_TLS, "c@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_true(fx.job.tls_version[0] != '\0');
	assert_false(fx.job.tls_verified);
	SSL_CTX_free(ctx);

	/* Without a context: no STARTTLS at all. */
	mark = rec_mark();
	fx_tls(&fx, NULL, false, TLS_HOST, L_TLS, "d@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_string_equal(fx.job.tls_version, "");
	assert_string_equal(fx.job.tls_cipher, "");
	session_commands(mark, L_TLS, 0, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO MAIL RCPT DATA QUIT");
}

/* After STARTTLS only the second EHLO counts (RFC 3207 4.2): its SIZE
 * allows what the first refused, and it offers no PIPELINING. */
static void
test_tls_second_ehlo_counts(void **state)
{
	struct fixture fx;
	SSL_CTX *ctx;
	json_t *rec;
	size_t mark;
	char cmds[256], want[128];

	(void)state;
	SKIP_WITHOUT_PEER();
	ctx = tls_ctx(true);
	mark = rec_mark();
	fx_tls(&fx, ctx, false, TLS_HOST, L_TLSEHLO, "a@x.test");
	fx_rcpt(&fx, "b@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_int_equal(fx.rcpts[1].code, 250);
	rec = rec_find(mark, "message", L_TLSEHLO);
	assert_non_null(rec);
	snprintf(want, sizeof(want), "MAIL FROM:<sender@origin.test> SIZE=%zu", strlen(stuffed_body));
	assert_string_equal(json_string_value(json_object_get(rec, "mail")), want);
	json_decref(rec);
	rec = rec_find(mark, "session", L_TLSEHLO);
	assert_non_null(rec);
	assert_false(json_boolean_value(json_object_get(rec, "violation")));  /* not pipelined */
	rec_commands(rec, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO STARTTLS EHLO MAIL RCPT RCPT DATA QUIT");
	json_decref(rec);

	/* In clear the same server's SIZE 100 refuses the message. */
	fx_tls(&fx, NULL, false, TLS_HOST, L_TLSEHLO, "c@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 552);
	assert_has(fx.rcpts[0].reply, "552 5.3.4 message size");
	SSL_CTX_free(ctx);
}

/* TLS required: a server without STARTTLS is QUIT and the next address
 * tried; with none left, 451 4.7.4 and nothing was sent in clear. */
static void
test_tls_required_not_offered(void **state)
{
	struct fixture fx;
	SSL_CTX *ctx;
	size_t mark;
	char cmds[256];

	(void)state;
	SKIP_WITHOUT_PEER();
	ctx = tls_ctx(true);
	mark = rec_mark();
	fx_tls(&fx, ctx, true, "mx.ok.test", L_OK, "a@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 451);
	assert_has(fx.rcpts[0].reply, "451 4.7.4 TLS is required, but was not offered by "
	    "mx.ok.test (" L_OK ":");
	assert_string_equal(fx.job.tls_version, "");
	assert_null(rec_find(mark, "message", L_OK));
	session_commands(mark, L_OK, 0, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO QUIT");

	/* The next MX offers it: delivered there, over TLS. */
	mark = rec_mark();
	fx_tls(&fx, ctx, true, "mx.ok.test", L_OK, "b@x.test");
	fx_addr(&fx, TLS_HOST, L_TLS);
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_string_equal(fx.job.mx_addr, L_TLS);
	assert_string_equal(fx.job.mx_host, TLS_HOST);
	assert_true(fx.job.tls_version[0] != '\0');
	assert_null(rec_find(mark, "message", L_OK));

	/* A server that answers EHLO 5xx gets HELO: no extensions, no TLS. */
	fx_tls(&fx, ctx, true, "mx.test", L_NOEHLO, "c@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 451);
	assert_has(fx.rcpts[0].reply, "451 4.7.4 TLS is required");

	/* Required without a context is the caller's mistake. */
	{
		uv_loop_t loop;
		sender_smtp *s;
		fx_tls(&fx, NULL, true, TLS_HOST, L_TLS, "d@x.test");
		uv_loop_init(&loop);
		assert_int_equal(sender_smtp_deliver(&s, &loop, &fx.job, on_done, &fx), -EINVAL);
		assert_int_equal(uv_loop_close(&loop), 0);
	}
	SSL_CTX_free(ctx);
}

/* STARTTLS answered 454: opportunistic goes on in clear on the same
 * connection; required moves on (4.7.4), QUIT. */
static void
test_tls_starttls_refused(void **state)
{
	struct fixture fx;
	SSL_CTX *ctx;
	size_t mark;
	char cmds[256];

	(void)state;
	SKIP_WITHOUT_PEER();
	ctx = tls_ctx(true);
	mark = rec_mark();
	fx_tls(&fx, ctx, false, TLS_HOST, L_TLSREFUSE, "a@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_string_equal(fx.job.tls_version, "");
	session_commands(mark, L_TLSREFUSE, 0, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO STARTTLS MAIL RCPT DATA QUIT");

	mark = rec_mark();
	fx_tls(&fx, ctx, true, TLS_HOST, L_TLSREFUSE, "b@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 451);
	assert_has(fx.rcpts[0].reply, "451 4.7.4 TLS is required, but " TLS_HOST);
	assert_has(fx.rcpts[0].reply, "454 4.7.0 TLS not available");
	assert_null(rec_find(mark, "message", L_TLSREFUSE));
	session_commands(mark, L_TLSREFUSE, 0, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO STARTTLS QUIT");
	SSL_CTX_free(ctx);
}

/* The handshake fails: opportunistic retries the same address in clear on
 * a new connection (without STARTTLS there); required gets 451 4.7.5 and
 * never sends MAIL. */
static void
test_tls_handshake_failure(void **state)
{
	struct fixture fx;
	SSL_CTX *ctx;
	json_t *rec;
	size_t mark;
	char cmds[256];

	(void)state;
	SKIP_WITHOUT_PEER();
	ctx = tls_ctx(true);
	mark = rec_mark();
	fx_tls(&fx, ctx, false, TLS_HOST, L_TLSBROKEN, "a@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_string_equal(fx.job.tls_version, "");
	assert_string_equal(fx.job.mx_addr, L_TLSBROKEN);
	assert_string_equal(fx.job.mx_host, TLS_HOST);
	assert_int_equal(rec_count(mark, "connect", L_TLSBROKEN), 2);
	rec = rec_find(mark, "message", L_TLSBROKEN);
	assert_non_null(rec);
	assert_true(json_is_null(json_object_get(rec, "tls")));
	json_decref(rec);
	session_commands(mark, L_TLSBROKEN, 0, cmds, sizeof(cmds));
	assert_string_equal(cmds, "EHLO MAIL RCPT DATA QUIT");

	mark = rec_mark();
	fx_tls(&fx, ctx, true, TLS_HOST, L_TLSBROKEN, "b@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 451);
	assert_has(fx.rcpts[0].reply, "451 4.7.5 TLS is required, but the TLS handshake with "
	    L_TLSBROKEN);
	assert_string_equal(fx.job.mx_host, "");
	assert_int_equal(rec_count(mark, "connect", L_TLSBROKEN), 1);
	assert_null(rec_find(mark, "message", L_TLSBROKEN));
	SSL_CTX_free(ctx);
}

/* A reply injected in clear right behind STARTTLS's 220 is dropped, never
 * read as if it came under TLS. */
static void
test_tls_injection_dropped(void **state)
{
	struct fixture fx;
	SSL_CTX *ctx;
	json_t *rec;
	size_t mark;

	(void)state;
	SKIP_WITHOUT_PEER();
	ctx = tls_ctx(true);
	mark = rec_mark();
	fx_tls(&fx, ctx, false, TLS_HOST, L_TLSINJECT, "a@x.test");
	fx_rcpt(&fx, "b@x.test");
	fx_run(&fx);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_int_equal(fx.rcpts[1].code, 250);
	assert_string_equal(fx.rcpts[0].reply, "250 2.0.0 queued");
	assert_true(fx.job.tls_version[0] != '\0');
	assert_int_equal(rec_count(mark, "connect", L_TLSINJECT), 1);
	rec = rec_find(mark, "message", L_TLSINJECT);
	assert_non_null(rec);
	assert_int_equal(json_array_size(json_object_get(rec, "rcpts")), 2);
	json_decref(rec);
	SSL_CTX_free(ctx);
}

/* The pool keys TLS apart: a required job never takes a parked plaintext
 * connection; any job prefers a parked TLS one, which keeps its session
 * (version, cipher, verdict) across transactions. */
static void
test_tls_reuse(void **state)
{
	struct fixture fx;
	sender_smtp_pool *pool;
	uv_loop_t loop;
	SSL_CTX *ctx;
	json_t *m1, *m2;
	size_t mark;
	char version[16];

	(void)state;
	SKIP_WITHOUT_PEER();
	ctx = tls_ctx(true);
	mark = rec_mark();
	uv_loop_init(&loop);
	pool = sender_smtp_pool_new(&loop, 10000, 100);

	/* A plaintext connection (no context: no STARTTLS), parked. */
	fx_tls(&fx, NULL, false, TLS_HOST, L_TLS, "plain@x.test");
	fx_start(&fx, &loop, pool, NULL);
	fx_wait(&fx, &loop);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_string_equal(fx.job.tls_version, "");
	assert_int_equal(pool_stats(pool).idle, 1);

	/* Required: not that one; a new connection, in TLS. */
	fx_tls(&fx, ctx, true, TLS_HOST, L_TLS, "req@x.test");
	fx_start(&fx, &loop, pool, NULL);
	fx_wait(&fx, &loop);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_true(fx.job.tls_version[0] != '\0');
	snprintf(version, sizeof(version), "%s", fx.job.tls_version);
	assert_int_equal(pool_stats(pool).connects, 2);
	assert_int_equal(pool_stats(pool).reused, 0);
	assert_int_equal(pool_stats(pool).tls, 1);
	assert_int_equal(pool_stats(pool).idle, 2);

	/* Three more, required or not: all on the parked TLS connection. */
	for (int i = 0; i < 3; i++) {
		fx_tls(&fx, ctx, i % 2 == 0, TLS_HOST, L_TLS, "again@x.test");
		fx_start(&fx, &loop, pool, NULL);
		fx_wait(&fx, &loop);
		assert_int_equal(fx.rcpts[0].code, 250);
		assert_string_equal(fx.job.tls_version, version);
		assert_true(fx.job.tls_cipher[0] != '\0');
		assert_true(fx.job.tls_verified);
	}
	assert_int_equal(pool_stats(pool).connects, 2);
	assert_int_equal(pool_stats(pool).reused, 3);
	assert_int_equal(pool_stats(pool).tls, 1);
	pool_end(pool, &loop);

	/* At the server: one TLS session carried transactions 1 to 4. */
	assert_int_equal(rec_count(mark, "connect", L_TLS), 2);
	assert_int_equal(rec_count(mark, "message", L_TLS), 5);
	m1 = rec_nth(mark, "message", L_TLS, 1);
	m2 = rec_nth(mark, "message", L_TLS, 4);
	assert_non_null(m1);
	assert_non_null(m2);
	assert_int_equal(rec_int(m1, "client_port"), rec_int(m2, "client_port"));
	assert_int_equal(rec_int(m1, "n"), 1);
	assert_int_equal(rec_int(m2, "n"), 4);
	assert_string_equal(json_string_value(json_object_get(m2, "tls")), version);
	json_decref(m1);
	json_decref(m2);
	SSL_CTX_free(ctx);
}

/* A parked TLS connection that the server closed (close_notify and FIN at
 * the next MAIL) is stale: dropped, and the job goes on with a new TLS
 * connection, no attempt lost. */
static void
test_tls_reuse_stale(void **state)
{
	struct fixture fx;
	sender_smtp_pool *pool;
	uv_loop_t loop;
	SSL_CTX *ctx;
	size_t mark;

	(void)state;
	SKIP_WITHOUT_PEER();
	ctx = tls_ctx(true);
	mark = rec_mark();
	uv_loop_init(&loop);
	pool = sender_smtp_pool_new(&loop, 10000, 100);
	fx_tls(&fx, ctx, true, TLS_HOST, L_TLSSTALE, "a@x.test");
	fx_start(&fx, &loop, pool, NULL);
	fx_wait(&fx, &loop);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_int_equal(pool_stats(pool).idle, 1);

	fx_tls(&fx, ctx, true, TLS_HOST, L_TLSSTALE, "b@x.test");
	fx_start(&fx, &loop, pool, NULL);
	fx_wait(&fx, &loop);
	assert_int_equal(fx.rcpts[0].code, 250);
	assert_true(fx.job.tls_version[0] != '\0');
	assert_int_equal(pool_stats(pool).reused, 1);
	assert_int_equal(pool_stats(pool).stale, 1);
	assert_int_equal(pool_stats(pool).connects, 2);
	assert_int_equal(pool_stats(pool).tls, 2);
	pool_end(pool, &loop);
	assert_int_equal(rec_count(mark, "message", L_TLSSTALE), 2);
	SSL_CTX_free(ctx);
}

int
main(void)
{
	const struct CMUnitTest parser[] = {
		cmocka_unit_test(test_reply_multiline_any_split),
		cmocka_unit_test(test_reply_lines_kept),
		cmocka_unit_test(test_reply_malformed),
		cmocka_unit_test(test_reply_control_chars_cleaned),
	};
	const struct CMUnitTest client[] = {
		cmocka_unit_test(test_deliver_dot_stuffing_round_trip),
		cmocka_unit_test(test_deliver_body_without_final_crlf),
		cmocka_unit_test(test_deliver_large_body),
		cmocka_unit_test(test_mixed_recipients_pipelined),
		cmocka_unit_test(test_mixed_recipients_without_pipelining),
		cmocka_unit_test(test_all_recipients_rejected),
		cmocka_unit_test(test_mail_rejected),
		cmocka_unit_test(test_data_accepted_without_recipients),
		cmocka_unit_test(test_greeting_421_then_next_address),
		cmocka_unit_test(test_connection_refused_then_next_address),
		cmocka_unit_test(test_all_addresses_fail),
		cmocka_unit_test(test_data_554),
		cmocka_unit_test(test_ehlo_rejected_falls_back_to_helo),
		cmocka_unit_test(test_size_limit),
		cmocka_unit_test(test_stalled_server_times_out),
		cmocka_unit_test(test_connection_dropped_mid_data),
		cmocka_unit_test(test_malformed_greeting_is_protocol_error),
		cmocka_unit_test(test_malformed_rcpt_reply),
		cmocka_unit_test(test_bad_arguments),
		cmocka_unit_test(test_source_address),
		cmocka_unit_test(test_abort),
		cmocka_unit_test(test_concurrent_jobs),
		cmocka_unit_test(test_reuse_two_jobs_one_connection),
		cmocka_unit_test(test_reuse_any_address),
		cmocka_unit_test(test_reuse_limit),
		cmocka_unit_test(test_reuse_closed_while_idle),
		cmocka_unit_test(test_reuse_stale),
		cmocka_unit_test(test_reuse_idle_timeout_quits),
		cmocka_unit_test(test_pool_close_with_idle),
		cmocka_unit_test(test_reuse_after_rset),
		cmocka_unit_test(test_reuse_size_limit),
		cmocka_unit_test(test_reuse_abort),
		cmocka_unit_test(test_tls_starttls_used),
		cmocka_unit_test(test_tls_second_ehlo_counts),
		cmocka_unit_test(test_tls_required_not_offered),
		cmocka_unit_test(test_tls_starttls_refused),
		cmocka_unit_test(test_tls_handshake_failure),
		cmocka_unit_test(test_tls_injection_dropped),
		cmocka_unit_test(test_tls_reuse),
		cmocka_unit_test(test_tls_reuse_stale),
	};
	int failed;

	signal(SIGPIPE, SIG_IGN);
	failed = cmocka_run_group_tests_name("sender_reply", parser, NULL, NULL);
	failed += cmocka_run_group_tests_name("sender_smtp", client, peer_start, peer_stop);
	return failed;
}
