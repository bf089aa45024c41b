/*
 * sender_smtp - the outbound SMTP client: one mail transaction, on a new
 * connection or on one parked by an earlier transaction.
 *
 * DESCRIPTION
 *	Two objects. A job (sender_smtp) runs one transaction as a state table in
 *	the manner of OpenSMTPD's mta_session.c and Postfix's smtp_proto.c:
 *	sender_smtp_enter_state() sends the command that belongs to the new state
 *	and arms that state's timeout (smtp_states[]); sender_smtp_response() reads
 *	the reply and picks the next state. A connection (struct smtp_conn) holds
 *	the socket, the reply parser and what EHLO offered. Replies are counted on
 *	the connection: every command sent adds one to c->expect and every reply
 *	takes one off, so pipelined commands (MAIL, all RCPTs and DATA in one
 *	write when the server offers PIPELINING) are matched to their replies in
 *	order, even after the job that sent them has moved on.
 *
 *	Failures before MAIL FROM (connect, greeting, EHLO/HELO, a dropped or
 *	silent connection, a malformed reply) belong to that address: the next
 *	address is tried. From MAIL FROM on, a failure ends the job: undecided
 *	recipients get the MAIL/DATA reply, or a 4xx naming what broke.
 *
 *	Connection reuse (Postfix's scache, in process). When a job is done
 *	with a healthy connection it hands it on: with a pool, the connection
 *	is parked (CM_IDLE: still read, so that EOF or any word from the server
 *	drops it; an idle timer QUITs it), after an RSET when the transaction
 *	did not end with a final reply to the data (CM_RSET); without one, or
 *	when the pool is full or the connection has carried max_uses
 *	transactions, it is QUIT (CM_QUIT). Both run after the job, owned by the
 *	connection. A broken connection is closed at once. A job takes the most
 *	recently parked connection with its key (address and port, source
 *	address, HELO name) and starts at MAIL FROM (RFC 5321 §4.1.4: after a
 *	completed transaction or RSET the server is in the initial state). If
 *	that connection fails before its first reply (EOF, reset, 421), the
 *	server had dropped it while it was parked: it is "stale", and the job
 *	goes on with another parked connection or a new one to the same address;
 *	no recipient is affected, since nothing was decided yet.
 *
 *	STARTTLS (RFC 3207). EHLO offered STARTTLS and the job has a client
 *	context: STARTTLS, and on its 220 the connection gets an hk_tls engine
 *	(memory BIOs, so the libuv callbacks stay the only I/O): from then on
 *	what is read is pushed into it as ciphertext and the replies are parsed
 *	from the plaintext it gives back, and every write (commands, body) is
 *	encrypted through it. Bytes that came after the 220 in clear are
 *	dropped, and the parser and the extension list are reset: nothing the
 *	server said before the handshake is believed after it. When the
 *	handshake is done (state TLS), EHLO goes again. The policy when TLS
 *	cannot be had is in sender_smtp.h. A connection's TLS state stays with
 *	it while parked (CM_IDLE reads through the engine too, so a
 *	close_notify drops it like an EOF); a job finds its pool key and
 *	whether it is TLS (pool_take), the job's out fields are filled from the
 *	connection when it reaches MAIL (smtp_ready), and a TLS connection sends
 *	close_notify after its QUIT is answered.
 *
 *	The body is written from the caller's buffer without copying it: each
 *	write is a gather list of at most SMTP_BODY_BUFS slices of the body and
 *	of a static "." for dot-stuffing, at most SMTP_BODY_CHUNK bytes, and the
 *	next write is queued from the previous one's callback. Under TLS the
 *	slices are encrypted into one buffer per write instead (body_buf).
 *
 *	Lifetimes: a job's callback always runs from the close_cb of its timer,
 *	so it is asynchronous and nothing of the job is in use after it. A
 *	connection is freed from the close_cb of its last handle. The pool is
 *	freed once it is closed and no connection or job refers to it (refs).
 */

/* System */
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Third-party */
#include <uv.h>

/* common/ */
#include "hk_log.h"
#include "hk_tls.h"
#include "hk_util.h"

/* This role */
#include "sender_reply.h"
#include "sender_smtp.h"

#define SMTP_BODY_BUFS 32               /* slices per body write */
#define SMTP_BODY_CHUNK (256 * 1024)    /* bytes per body write */
#define SMTP_ASIDE_TIMEOUT_MS 5000      /* at most this long for an RSET or QUIT reply */
#define SMTP_READ_BUF 16384
#define SMTP_POOL_PER_KEY 64            /* parked connections per key... */
#define SMTP_POOL_MAX 256               /* ...and in all; beyond that, QUIT */
#define SMTP_KEY_MAX (80 + INET6_ADDRSTRLEN + 256 + 8)

/*
 * Job states, in protocol order. Ordering invariant: states before MAIL are
 * per connection (a failure there moves on to the next address); from MAIL
 * on a failure decides the recipients and ends the job. DONE comes after
 * every recipient is decided; the connection then goes its own way. TLS
 * (the handshake after STARTTLS's 220) goes back to EHLO: the only
 * transition to an earlier state.
 */
#define SMTP_STATES(X)          \
	X(CONNECT)              \
	X(GREETING)             \
	X(EHLO)                 \
	X(HELO)                 \
	X(STARTTLS)             \
	X(TLS)                  \
	X(MAIL)                 \
	X(RCPT)                 \
	X(DATA)                 \
	X(BODY)                 \
	X(EOD)                  \
	X(BDAT)                 \
	X(DOT)                  \
	X(DONE)

enum smtp_state {
#define X(name) ST_##name,
	SMTP_STATES(X)
#undef X
};

enum smtp_timeout { TO_CONNECT, TO_COMMAND };

/* Per-state constants: log name, which timeout applies, and the phase used
 * in failure texts ("connection lost <phase> with <peer><note>"). */
static const struct {
	const char *name;
	enum smtp_timeout timeout;
	const char *phase;
	const char *note;
} smtp_states[] = {
	[ST_CONNECT] = { "CONNECT", TO_CONNECT, "while connecting", "" },
	[ST_GREETING] = { "GREETING", TO_COMMAND, "while receiving the initial greeting", "" },
	[ST_EHLO] = { "EHLO", TO_COMMAND, "after EHLO", "" },
	[ST_HELO] = { "HELO", TO_COMMAND, "after HELO", "" },
	[ST_STARTTLS] = { "STARTTLS", TO_COMMAND, "after STARTTLS", "" },
	[ST_TLS] = { "TLS", TO_COMMAND, "during the TLS handshake", "" },
	[ST_MAIL] = { "MAIL", TO_COMMAND, "after MAIL FROM", "" },
	[ST_RCPT] = { "RCPT", TO_COMMAND, "after RCPT TO", "" },
	[ST_DATA] = { "DATA", TO_COMMAND, "after DATA", "" },
	[ST_BODY] = { "BODY", TO_COMMAND, "while sending message body", "" },
	[ST_EOD] = { "EOD", TO_COMMAND, "after end of data",
	    " -- message may be delivered more than once" },
	[ST_BDAT] = { "BDAT", TO_COMMAND, "after BDAT LAST",
	    " -- message may be delivered more than once" },
	[ST_DOT] = { "DOT", TO_COMMAND, "after empty end of data", "" },
	[ST_DONE] = { "DONE", TO_COMMAND, "after the session", "" },
};

/*
 * Connection modes. A connection is created for a job (JOB); when the job is
 * done with it, it goes to RSET -> IDLE, straight to IDLE, or to QUIT; IDLE
 * goes back to JOB when a job takes it, or to QUIT on the idle timer. Every
 * mode can go to CLOSED (broken, timed out, finished), which is final.
 */
#define CONN_MODES(X)           \
	X(JOB)                  \
	X(RSET)                 \
	X(IDLE)                 \
	X(QUIT)                 \
	X(CLOSED)

enum conn_mode {
#define X(name) CM_##name,
	CONN_MODES(X)
#undef X
};

static const char *const conn_mode_names[] = {
#define X(name) #name,
	CONN_MODES(X)
#undef X
};

struct smtp_conn {
	enum conn_mode mode;
	sender_smtp *s;                 /* CM_JOB: the job it serves */
	sender_smtp_pool *pool;         /* referenced for the connection's life, or NULL */
	struct smtp_conn *prev, *next;  /* CM_IDLE: the pool's list */
	char key[SMTP_KEY_MAX];         /* what a job must match to reuse it */
	char peer[80];                  /* "addr:port" */
	char local[64];                 /* our address on it (getsockname) */
	uint32_t job_max_uses;          /* the last job's transactions-per-connection limit (0: pool's) */

	uv_tcp_t tcp;
	uv_connect_t connect_req;
	uv_timer_t timer;               /* idle time; RSET and QUIT replies */
	int handles;                    /* initialised, not yet closed */
	bool connected;                 /* connect succeeded */

	unsigned expect;                /* replies outstanding */
	struct sender_reply_parser parser;
	char *obuf;                     /* commands queued for one write */
	size_t olen, ocap;

	bool pipelining, size_ext, eightbit_ext;
	bool smtputf8_ext, dsn_ext, chunking_ext, binarymime_ext, starttls_ext;
	unsigned long size_limit;

	hk_tls_conn *tls;               /* from STARTTLS's 220 on, or NULL */
	bool tls_on;                    /* handshake done: all I/O goes through tls */
	bool tls_failed;                /* the engine reported an error: no close_notify */
	char tls_version[16], tls_cipher[64];
	bool tls_verified;
	char *pbuf;                     /* TLS: plaintext out of the engine */
	char *body_buf;                 /* TLS: the ciphertext body_req writes */
	bool no_reuse;                  /* a 421 was seen: the server is leaving */
	uint32_t uses;                  /* transactions started on it */
	uint32_t aside_ms;              /* timeout of an RSET or QUIT reply */

	uv_write_t body_req;
	bool body_writing;              /* body_req in flight */
	char rbuf[SMTP_READ_BUF];
};

struct sender_smtp_pool {
	uv_loop_t *loop;
	uint32_t idle_ms, max_uses;
	size_t per_key;                 /* parked connections per key, at most */
	size_t max_idle;                /* parked in all, at most */
	struct smtp_conn *idle;         /* parked, most recently parked first */
	size_t n_idle;
	size_t refs;                    /* connections and jobs that point here */
	bool closing;
	struct sender_smtp_pool_stats st;
};

/* A command write: the bytes live with the request. */
struct smtp_wreq {
	uv_write_t req;
	struct smtp_conn *c;
	char data[];
};

struct sender_smtp {
	uv_loop_t *loop;
	struct sender_smtp_job *job;
	sender_smtp_cb cb;
	void *arg;
	sender_smtp_pool *pool;         /* job->pool, referenced until cb */

	struct sender_mx_addr *addrs;   /* copy of job->addrs */
	size_t n_addrs, next_addr, cur_addr;
	struct sockaddr_storage src;    /* job->source_address, parsed */
	int have_src;
	char src_text[INET6_ADDRSTRLEN];
	char peer[80];                  /* "addr:port" of the current attempt */

	struct smtp_conn *conn;         /* the connection in use, or NULL */
	uv_timer_t timer;               /* state timeouts; its close_cb runs cb */
	bool finishing;                 /* outcome decided; closing down */
	bool unconfirmed;               /* on a parked connection, no reply yet */
	bool txn_open;                  /* MAIL sent, no final reply to the data yet */
	bool utf8;                      /* the client's MAIL had SMTPUTF8 */
	bool binary;                    /* ... BODY=BINARYMIME: send with BDAT */
	const char *ret, *envid;        /* ... RET=, ENVID= (verbatim), or NULL */
	bool tried_helo;
	bool no_tls;                    /* this address again in plaintext: TLS failed */

	enum smtp_state state;
	size_t *order;                  /* indexes of rcpts to send */
	size_t n_order, rcpt_send, rcpt_recv;
	bool *accepted;                 /* RCPT got 2xx; fate awaits end of data */
	size_t n_accepted;

	/* Body writer state. */
	size_t body_off;
	bool body_bol;                  /* next body byte starts a line */
	bool body_done;                 /* final dot queued */

	int last_code;                  /* reason applied if no address works */
	char last_reply[512];
};

static void sender_smtp_enter_state(sender_smtp *s, enum smtp_state st);
static void sender_smtp_response(sender_smtp *s, const struct sender_reply *r);
static void smtp_conn_fail(sender_smtp *s, const char *what, const char *detail);
static void smtp_arm_timer(sender_smtp *s);
static void smtp_try_next(sender_smtp *s);
static void conn_quit(struct smtp_conn *c);
static void conn_on_timer(uv_timer_t *t);

/* ---- the pool ---- */

static void
pool_ref(sender_smtp_pool *p)
{
	if (p != NULL)
		p->refs++;
}

static void
pool_unref(sender_smtp_pool *p)
{
	if (p != NULL && --p->refs == 0 && p->closing)
		free(p);
}

/* pool_unlink - take C (CM_IDLE) off its pool's list. */
static void
pool_unlink(struct smtp_conn *c)
{
	sender_smtp_pool *p = c->pool;

	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		p->idle = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
	p->n_idle--;
}

/* pool_wants - whether C may carry another transaction later. */
static bool
pool_wants(const struct smtp_conn *c)
{
	const sender_smtp_pool *p = c->pool;

	/* A body write still in flight would hold c->body_req: not parked. */
	return p != NULL && !p->closing && p->idle_ms > 0 && c->uses < p->max_uses &&
	    (c->job_max_uses == 0 || c->uses < c->job_max_uses) &&
	    !c->no_reuse && c->connected && !c->body_writing;
}

/* pool_park - keep C (its transaction over, nothing outstanding) for a
 * later job, or QUIT it when the pool does not want it or is full. */
static void
pool_park(struct smtp_conn *c)
{
	sender_smtp_pool *p = c->pool;
	size_t same = 0;

	if (!pool_wants(c) || c->expect > 0 || p->n_idle >= p->max_idle) {
		conn_quit(c);
		return;
	}
	for (struct smtp_conn *x = p->idle; x != NULL; x = x->next) {
		if (x->tls_on == c->tls_on && strcmp(x->key, c->key) == 0 &&
		    ++same >= p->per_key) {
			conn_quit(c);
			return;
		}
	}
	c->mode = CM_IDLE;
	c->s = NULL;
	c->prev = NULL;
	c->next = p->idle;
	if (p->idle != NULL)
		p->idle->prev = c;
	p->idle = c;
	p->n_idle++;
	p->st.parked++;
	uv_timer_start(&c->timer, conn_on_timer, p->idle_ms, 0);
	hk_log_debug("smtp_conn_parked", "{s:s, s:i, s:s}", "peer", c->peer, "uses", (int)c->uses,
	    "tls", c->tls_on ? c->tls_version : "");
}

/* pool_take - the most recently parked connection with KEY that is in TLS
 * (or in plaintext, !TLS), now CM_JOB, or NULL. TLS is part of the key:
 * a plaintext connection must never serve a job that requires TLS. */
static struct smtp_conn *
pool_take(sender_smtp_pool *p, const char *key, bool tls)
{
	for (struct smtp_conn *c = p->idle; c != NULL; c = c->next) {
		if (c->tls_on != tls || strcmp(c->key, key) != 0)
			continue;
		pool_unlink(c);
		uv_timer_stop(&c->timer);
		c->mode = CM_JOB;
		p->st.reused++;
		return c;
	}
	return NULL;
}

/* ---- connections ---- */

/* conn_closed - close_cb of the TCP handle and the timer. */
static void
conn_closed(uv_handle_t *h)
{
	struct smtp_conn *c = h->data;

	if (--c->handles > 0)
		return;
	pool_unref(c->pool);    /* from conn_new() */
	hk_tls_conn_free(&c->tls);
	free(c->pbuf);
	free(c->body_buf);
	free(c->obuf);
	free(c);
}

static struct smtp_conn *
conn_new(uv_loop_t *loop, sender_smtp_pool *pool, const char *key, const char *peer)
{
	struct smtp_conn *c = xcalloc(1, sizeof(*c));

	c->mode = CM_JOB;
	c->pool = pool;
	pool_ref(pool);
	snprintf(c->key, sizeof(c->key), "%s", key);
	snprintf(c->peer, sizeof(c->peer), "%s", peer);
	uv_tcp_init(loop, &c->tcp);
	uv_timer_init(loop, &c->timer);
	c->tcp.data = c;
	c->timer.data = c;
	c->handles = 2;
	sender_reply_init(&c->parser);
	c->ocap = 512;
	c->obuf = xmalloc(c->ocap);
	return c;
}

/* conn_close - close C now, whatever it was doing; freed later. */
static void
conn_close(struct smtp_conn *c)
{
	if (c->mode == CM_CLOSED)
		return;
	if (c->mode == CM_IDLE)
		pool_unlink(c);
	hk_log_debug("smtp_conn_closed", "{s:s, s:s}", "peer", c->peer,
	    "mode", conn_mode_names[c->mode]);
	c->mode = CM_CLOSED;
	c->s = NULL;
	c->connected = false;
	c->olen = 0;
	uv_close((uv_handle_t *)&c->tcp, conn_closed);
	uv_close((uv_handle_t *)&c->timer, conn_closed);
}

/* conn_io_error - the connection broke (WHAT: "connection lost" or
 * "protocol error", DETAIL why or NULL): its job decides what that means;
 * without one, it is closed. */
static void
conn_io_error(struct smtp_conn *c, const char *what, const char *detail)
{
	switch (c->mode) {
	case CM_JOB:
		smtp_conn_fail(c->s, what, detail);
		break;
	case CM_CLOSED:
		break;  /* our own close cancelled a request */
	default:
		hk_log_debug("smtp_conn_lost", "{s:s, s:s, s:s}", "peer", c->peer,
		    "mode", conn_mode_names[c->mode], "reason", detail ? detail : what);
		conn_close(c);
		break;
	}
}

/* conn_on_written - a command write finished. */
static void
conn_on_written(uv_write_t *req, int status)
{
	struct smtp_wreq *w = (struct smtp_wreq *)req;
	struct smtp_conn *c = w->c;

	free(w);
	if (status < 0)
		conn_io_error(c, "connection lost", uv_strerror(status));
}

/* conn_cmd - queue one command line (CRLF added); one reply expected. */
static void __attribute__((format(printf, 2, 3)))
conn_cmd(struct smtp_conn *c, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(c->obuf + c->olen, c->ocap - c->olen, fmt, ap);
		va_end(ap);
		if (n >= 0 && (size_t)n + 3 <= c->ocap - c->olen)
			break;
		c->ocap = (c->ocap + (size_t)(n > 0 ? n : 0) + 3) * 2;
		c->obuf = xrealloc(c->obuf, c->ocap);
	}
	c->olen += (size_t)n;
	memcpy(c->obuf + c->olen, "\r\n", 2);
	c->olen += 2;
	c->expect++;
}

/* conn_tls_send - write the ciphertext the engine has for the server
 * (records of the commands, handshake messages, alerts). Returns 0, or -1
 * when the write failed (conn_io_error has run). */
static int
conn_tls_send(struct smtp_conn *c)
{
	struct smtp_wreq *w;
	uv_buf_t buf;
	size_t n;
	int rc;

	if ((n = hk_tls_conn_pending(c->tls)) == 0)
		return 0;
	w = xmalloc(sizeof(*w) + n);
	w->c = c;
	n = hk_tls_conn_pull(c->tls, w->data, n);
	buf = uv_buf_init(w->data, (unsigned)n);
	if ((rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, conn_on_written)) < 0) {
		free(w);
		conn_io_error(c, "connection lost", uv_strerror(rc));
		return -1;
	}
	return 0;
}

/* conn_tls_try_send - best effort, for a close_notify or an alert just
 * before the handle is closed. */
static void
conn_tls_try_send(struct smtp_conn *c)
{
	char buf[512];
	size_t n;

	if (c->tls == NULL || hk_tls_conn_pending(c->tls) == 0)
		return;
	n = hk_tls_conn_pull(c->tls, buf, sizeof(buf));
	uv_buf_t b = uv_buf_init(buf, (unsigned)n);
	uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
}

/* conn_flush - write the queued commands (encrypted under TLS). Returns 0,
 * or -1 when the write failed (conn_io_error has run: the connection or its
 * job moved on). */
static int
conn_flush(struct smtp_conn *c)
{
	struct smtp_wreq *w;
	uv_buf_t buf;
	int rc;

	if (c->olen == 0)
		return 0;
	if (c->tls != NULL) {
		/* Nothing goes out in clear once STARTTLS was answered, and
		 * nothing is queued during the handshake. */
		rc = c->tls_on ? hk_tls_conn_write(c->tls, c->obuf, c->olen) : HK_TLS_ERROR;
		c->olen = 0;
		if (rc != 0) {
			c->tls_failed = true;
			conn_io_error(c, "protocol error", "TLS write failed");
			return -1;
		}
		return conn_tls_send(c);
	}
	w = xmalloc(sizeof(*w) + c->olen);
	w->c = c;
	memcpy(w->data, c->obuf, c->olen);
	buf = uv_buf_init(w->data, (unsigned)c->olen);
	c->olen = 0;
	if ((rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, conn_on_written)) < 0) {
		free(w);
		conn_io_error(c, "connection lost", uv_strerror(rc));
		return -1;
	}
	return 0;
}

/* conn_aside - send CMD (RSET or QUIT) in MODE, after whatever replies are
 * still due; the last reply decides (conn_aside_reply). */
static void
conn_aside(struct smtp_conn *c, enum conn_mode mode, const char *cmd)
{
	if (c->mode == CM_IDLE)
		pool_unlink(c);
	c->mode = mode;
	c->s = NULL;
	conn_cmd(c, "%s", cmd);
	uv_timer_start(&c->timer, conn_on_timer, c->aside_ms, 0);
	conn_flush(c);
}

static void
conn_quit(struct smtp_conn *c)
{
	conn_aside(c, CM_QUIT, "QUIT");
}

/* conn_aside_reply - a reply in CM_RSET or CM_QUIT. */
static void
conn_aside_reply(struct smtp_conn *c, const struct sender_reply *r)
{
	if (c->expect == 0 || r->code / 100 == 3) {
		/* Unasked for, or a 354 to a pipelined DATA of a failed
		 * transaction: whatever we send next would be message text. */
		conn_close(c);
		return;
	}
	if (--c->expect > 0)
		return;         /* replies to the pipelined commands of the transaction */
	if (c->mode == CM_QUIT) {
		if (c->tls_on && !c->tls_failed) {
			hk_tls_conn_close_notify(c->tls);
			conn_tls_try_send(c);
		}
		conn_close(c);
	}
	else if (r->code / 100 == 2)
		pool_park(c);
	else
		conn_quit(c);
}

/* conn_set_aside_ms - how long an RSET or QUIT reply may take. */
static void
conn_set_aside_ms(struct smtp_conn *c, uint32_t command_timeout_ms)
{
	c->aside_ms = command_timeout_ms < SMTP_ASIDE_TIMEOUT_MS ?
	    command_timeout_ms : SMTP_ASIDE_TIMEOUT_MS;
}

/* conn_release - the job is done with C and its last transaction left the
 * server in the initial state unless TXN_OPEN: park it (after an RSET if
 * needed) or QUIT it. */
static void
conn_release(struct smtp_conn *c, uint32_t command_timeout_ms, bool txn_open)
{
	c->s = NULL;
	conn_set_aside_ms(c, command_timeout_ms);
	if (!pool_wants(c))
		conn_quit(c);
	else if (txn_open || c->expect > 0)
		conn_aside(c, CM_RSET, "RSET");
	else
		pool_park(c);
}

/* conn_on_timer - parked long enough (QUIT it), or no RSET/QUIT reply in
 * time (close it). */
static void
conn_on_timer(uv_timer_t *t)
{
	struct smtp_conn *c = t->data;

	switch (c->mode) {
	case CM_IDLE:
		hk_log_debug("smtp_conn_idle_timeout", "{s:s}", "peer", c->peer);
		conn_quit(c);
		break;
	case CM_RSET:
	case CM_QUIT:
		conn_close(c);
		break;
	default:
		break;
	}
}

/* conn_alloc - libuv read buffer: one read at a time, so one buffer. */
static void
conn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct smtp_conn *c = h->data;

	(void)hint;
	*buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

/* conn_input - plaintext from the server (P, N bytes): split into replies,
 * each for the job or for the connection's own RSET/QUIT. */
static void
conn_input(struct smtp_conn *c, const char *p, size_t n)
{
	const struct sender_reply *r;
	bool clear = c->tls == NULL;
	size_t off = 0, used;
	int rc;

	while (off < n && c->mode != CM_CLOSED) {
		if (c->mode == CM_IDLE) {
			/* A parked connection has nothing coming; a server that
			 * speaks now (421 at its own timeout) is leaving. */
			hk_log_debug("smtp_conn_lost", "{s:s, s:s, s:s}", "peer", c->peer,
			    "mode", "IDLE", "reason", "the server spoke");
			conn_close(c);
			return;
		}
		rc = sender_reply_feed(&c->parser, p + off, n - off, &used, &r);
		off += used;
		if (rc < 0) {
			conn_io_error(c, "protocol error", c->parser.error);
			return;
		}
		if (rc == 0)
			break;
		if (r->code == 421)
			c->no_reuse = true;     /* RFC 5321 §3.8: it is closing */
		if (c->mode == CM_JOB)
			sender_smtp_response(c->s, r);
		else
			conn_aside_reply(c, r);
		if (clear && c->tls != NULL) {
			/* That was STARTTLS's 220. Whatever came with it in clear
			 * is no TLS record (the server speaks only after our
			 * ClientHello) but injected replies, to be read as if
			 * they came under TLS (CVE-2011-0411 seen from the
			 * client): drop it. */
			if (off < n)
				hk_log_info("smtp_starttls_input_dropped", "{s:s, s:i}", "peer", c->peer,
				    "bytes", (int)(n - off));
			return;
		}
	}
}

static void smtp_tls_done(sender_smtp *s);

/* conn_tls_input - ciphertext was pushed into the engine: advance the
 * handshake, then hand the plaintext on. */
static void
conn_tls_input(struct smtp_conn *c)
{
	char err[256];
	int rc;

	if (!c->tls_on) {
		/* Only a job in state TLS has a handshake going. */
		rc = hk_tls_conn_handshake(c->tls, err, sizeof(err));
		if (rc == HK_TLS_ERROR) {
			c->tls_failed = true;
			conn_tls_try_send(c);   /* the alert tells the server why */
			conn_io_error(c, "protocol error", err);
			return;
		}
		if (conn_tls_send(c) != 0 || rc == HK_TLS_AGAIN)
			return;
		if (c->mode != CM_JOB) {
			conn_close(c);
			return;
		}
		smtp_tls_done(c->s);
		if (c->mode == CM_CLOSED)
			return;
	}
	for (;;) {
		rc = hk_tls_conn_read(c->tls, c->pbuf, SMTP_READ_BUF);
		if (rc > 0) {
			conn_input(c, c->pbuf, (size_t)rc);
			if (c->mode == CM_CLOSED)
				return;
			continue;
		}
		if (rc == HK_TLS_AGAIN)
			break;
		if (rc == HK_TLS_CLOSED) {
			conn_io_error(c, "connection lost", "TLS close_notify from the server");
		} else {
			c->tls_failed = true;
			conn_io_error(c, "protocol error", "TLS error");
		}
		return;
	}
	conn_tls_send(c);       /* what reading produced (a KeyUpdate answer) */
}

/* conn_on_read - bytes from the server: replies in clear, or ciphertext
 * for the TLS engine. */
static void
conn_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
	struct smtp_conn *c = st->data;

	if (nread == 0 || c->mode == CM_CLOSED)
		return;
	if (nread < 0) {
		conn_io_error(c, "connection lost", nread == UV_EOF ? NULL : uv_strerror((int)nread));
		return;
	}
	if (c->mode == CM_JOB)
		smtp_arm_timer(c->s);   /* progress */
	if (c->tls == NULL) {
		conn_input(c, buf->base, (size_t)nread);
		return;
	}
	hk_tls_conn_push(c->tls, buf->base, (size_t)nread);
	conn_tls_input(c);
}

/* ---- jobs ---- */

/* smtp_timer_closed - close_cb of the job's timer: the job is over. */
static void
smtp_timer_closed(uv_handle_t *h)
{
	sender_smtp *s = h->data;
	sender_smtp_pool *pool = s->pool;

	s->cb(s->job, s->arg);
	free(s->addrs);
	free(s->order);
	free(s->accepted);
	free(s);
	pool_unref(pool);       /* from sender_smtp_deliver() */
}

/* smtp_drop_conn - close the job's connection (if any) at once. */
static void
smtp_drop_conn(sender_smtp *s)
{
	if (s->conn != NULL) {
		conn_close(s->conn);
		s->conn = NULL;
	}
}

/* smtp_set_last - remember why the current address failed. */
static void __attribute__((format(printf, 3, 4)))
smtp_set_last(sender_smtp *s, int code, const char *fmt, ...)
{
	va_list ap;

	s->last_code = code;
	va_start(ap, fmt);
	vsnprintf(s->last_reply, sizeof(s->last_reply), fmt, ap);
	va_end(ap);
	hk_log_debug("smtp_attempt_failed", "{s:s, s:s}", "peer", s->peer, "reason", s->last_reply);
}

/* smtp_clear_session - the job's out fields that describe the session:
 * empty again, no session took the job (yet). */
static void
smtp_clear_session(sender_smtp *s)
{
	s->job->mx_host[0] = '\0';
	s->job->tls_version[0] = '\0';
	s->job->tls_cipher[0] = '\0';
	s->job->tls_verified = false;
}

/* smtp_next_addr - give up on this connection, try the next address. */
static void
smtp_next_addr(sender_smtp *s)
{
	uv_timer_stop(&s->timer);
	smtp_clear_session(s);
	s->job->mx_addr[0] = '\0';
	smtp_drop_conn(s);
	smtp_try_next(s);
}

/* smtp_next_addr_quit - as smtp_next_addr, for a healthy connection that
 * the job cannot use (TLS required, not to be had there): QUIT it first. */
static void
smtp_next_addr_quit(sender_smtp *s)
{
	struct smtp_conn *c = s->conn;

	if (c != NULL && c->expect == 0) {
		s->conn = NULL;
		conn_set_aside_ms(c, s->job->command_timeout_ms);
		conn_quit(c);   /* the connection's own now */
	}
	smtp_next_addr(s);
}

/* smtp_decide - set the fate of recipient I. */
static void
smtp_decide(sender_smtp *s, size_t i, int code, const char *reply)
{
	struct sender_smtp_rcpt *r = &s->job->rcpts[i];

	r->code = code;
	snprintf(r->reply, sizeof(r->reply), "%s", reply);
}

/* smtp_fail_undecided - every recipient without a final code gets this one. */
static void
smtp_fail_undecided(sender_smtp *s, int code, const char *reply)
{
	size_t i;

	for (i = 0; i < s->job->n_rcpts; i++)
		if (s->job->rcpts[i].code == 0)
			smtp_decide(s, i, code, reply);
}

/* smtp_finish - all recipients are decided: hand the connection on (KEEP:
 * it is healthy; park or QUIT it) or close it, and close the timer; the
 * callback runs from its close_cb. */
static void
smtp_finish(sender_smtp *s, bool keep)
{
	struct smtp_conn *c = s->conn;

	if (s->finishing)
		return;
	/* Defensive: a recipient left undecided is a bug here, not a success. */
	smtp_fail_undecided(s, 451, "451 4.3.0 internal error: recipient left undecided");
	s->finishing = true;
	s->state = ST_DONE;
	if (c != NULL) {
		s->conn = NULL;
		if (keep)
			conn_release(c, s->job->command_timeout_ms, s->txn_open);
		else
			conn_close(c);
	}
	uv_close((uv_handle_t *)&s->timer, smtp_timer_closed);
}

/* smtp_fail - end the job: undecided recipients get CODE and the text. */
static void __attribute__((format(printf, 3, 4)))
smtp_fail(sender_smtp *s, int code, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	smtp_fail_undecided(s, code, buf);
	smtp_finish(s, false);
}

static bool smtp_try_addr(sender_smtp *s);

/* smtp_stale - the parked connection was dead (WHY) before anything of the
 * transaction was answered: drop it and try the same address again, not a
 * failed attempt. */
static void
smtp_stale(sender_smtp *s, const char *why)
{
	hk_log_debug("smtp_conn_stale", "{s:s, s:s}", "peer", s->peer, "reason", why);
	if (s->pool != NULL)
		s->pool->st.stale++;
	smtp_drop_conn(s);
	s->unconfirmed = false;
	s->txn_open = false;
	s->rcpt_send = s->rcpt_recv = 0;
	smtp_clear_session(s);
	if (!smtp_try_addr(s))
		smtp_try_next(s);
}

/* smtp_tls_failed - no TLS session with the current address (WHY): the
 * handshake failed, or the connection broke during it or before MAIL right
 * after it. Opportunistic: the same address again in plaintext, once, as
 * Postfix's RETRY_AS_PLAINTEXT. Required: 4.7.5 and the next address. */
static void
smtp_tls_failed(sender_smtp *s, const char *why)
{
	bool plain = !s->job->tls_required;

	hk_log_info("smtp_tls_failed", "{s:s, s:s, s:s, s:s}", "peer", s->peer,
	    "mx", s->addrs[s->cur_addr].host, "error", why,
	    "then", plain ? "plaintext retry" : "next address");
	if (!plain) {
		smtp_set_last(s, 451, "451 4.7.5 TLS is required, but the TLS handshake with %s failed: %s",
		    s->peer, why);
		smtp_next_addr(s);
		return;
	}
	uv_timer_stop(&s->timer);
	smtp_drop_conn(s);
	smtp_clear_session(s);
	s->no_tls = true;
	if (!smtp_try_addr(s))
		smtp_try_next(s);
}

/* smtp_conn_fail - the connection broke in the current state: WHAT is
 * "connection lost", "timeout" or "protocol error", DETAIL why (or NULL). */
static void
smtp_conn_fail(sender_smtp *s, const char *what, const char *detail)
{
	const char *phase = smtp_states[s->state].phase;
	const char *note = smtp_states[s->state].note;
	/* RFC 3463: 4.5.0 other protocol status, 4.4.2 bad connection. */
	const char *dsn = strcmp(what, "protocol error") == 0 ? "4.5.0" : "4.4.2";

	if (s->unconfirmed && strcmp(what, "connection lost") == 0) {
		smtp_stale(s, detail ? detail : "connection closed");
	} else if (s->state == ST_TLS || (s->state < ST_MAIL && s->conn != NULL &&
	    s->conn->tls_on && !s->job->tls_required)) {
		/* A server may reject us at its TLS layer only after our side of
		 * the handshake is done (TLS 1.3): that counts as a failed
		 * handshake too. */
		char why[300];
		snprintf(why, sizeof(why), "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
		smtp_tls_failed(s, why);
	} else if (s->state < ST_MAIL) {
		smtp_set_last(s, 451, "451 %s %s %s with %s%s%s", dsn, what, phase, s->peer,
		    detail ? ": " : "", detail ? detail : "");
		smtp_next_addr(s);
	} else {
		smtp_fail(s, 451, "451 %s %s %s with %s%s%s%s", dsn, what, phase, s->peer,
		    detail ? ": " : "", detail ? detail : "", note);
	}
}

/* smtp_on_timer - the current state's timeout expired. */
static void
smtp_on_timer(uv_timer_t *t)
{
	sender_smtp *s = t->data;

	if (s->state == ST_CONNECT) {
		smtp_set_last(s, 451, "451 4.4.1 connect to %s failed: timed out", s->peer);
		smtp_next_addr(s);
		return;
	}
	smtp_conn_fail(s, "timeout", NULL);
}

/* smtp_arm_timer - (re)start the current state's timeout. */
static void
smtp_arm_timer(sender_smtp *s)
{
	uint64_t ms;

	if (smtp_states[s->state].timeout == TO_CONNECT)
		ms = s->job->connect_timeout_ms;
	else
		ms = s->job->command_timeout_ms;
	uv_timer_start(&s->timer, smtp_on_timer, ms, 0);
}

/* smtp_body_fill - the next slices of the stuffed body, at most MAXB
 * bufs and about SMTP_BODY_CHUNK bytes. Sets body_done once the final
 * ".\r\n" is among them. */
static size_t
smtp_body_fill(sender_smtp *s, uv_buf_t *bufs, size_t maxb)
{
	static char dot[] = ".";
	static char crlf_dot[] = "\r\n.\r\n";
	const char *body = (const char *)s->job->body;
	size_t len = s->job->body_len, n = 0, bytes = 0;

	while (n < maxb && bytes < SMTP_BODY_CHUNK && !s->body_done) {
		size_t off = s->body_off, limit, end;
		const char *nl;

		if (off == len) {
			/* The final dot must follow a CRLF: add one unless the body
			 * already ends with it (DATA's 354 counts as a line end for an
			 * empty body). */
			if (len == 0 || (len >= 2 && body[len - 2] == '\r' && body[len - 1] == '\n'))
				bufs[n++] = uv_buf_init(crlf_dot + 2, 3);
			else
				bufs[n++] = uv_buf_init(crlf_dot, 5);
			s->body_done = true;
			break;
		}
		if (s->body_bol && body[off] == '.') {
			/* Dot-stuffing (RFC 5321 §4.5.2). Any LF counts as a line end,
			 * so a bare LF can never smuggle an end of data. */
			bufs[n++] = uv_buf_init(dot, 1);
			bytes++;
			s->body_bol = false;
			continue;
		}
		limit = len - off;
		if (limit > SMTP_BODY_CHUNK - bytes)
			limit = SMTP_BODY_CHUNK - bytes;
		limit += off;
		/* Extend the slice up to the next line that starts with a dot. */
		end = limit;
		for (size_t p = off; p < limit; p = (size_t)(nl - body) + 1) {
			nl = memchr(body + p, '\n', limit - p);
			if (nl == NULL)
				break;
			if ((size_t)(nl - body) + 1 < len && nl[1] == '.') {
				end = (size_t)(nl - body) + 1;
				break;
			}
		}
		bufs[n++] = uv_buf_init((char *)body + off, (unsigned)(end - off));
		bytes += end - off;
		s->body_off = end;
		s->body_bol = body[end - 1] == '\n';
	}
	return n;
}

static void smtp_body_write(sender_smtp *s);

/* smtp_on_body_written - a body write finished: queue the next. */
static void
smtp_on_body_written(uv_write_t *req, int status)
{
	struct smtp_conn *c = req->data;
	sender_smtp *s;

	c->body_writing = false;
	free(c->body_buf);
	c->body_buf = NULL;
	if (status < 0) {
		conn_io_error(c, "connection lost", uv_strerror(status));
		return;
	}
	/* Only the job that wrote the body is still interested. */
	if (c->mode != CM_JOB || ((s = c->s)->state != ST_BODY && s->state != ST_EOD &&
	    s->state != ST_BDAT))
		return;
	smtp_arm_timer(s);      /* progress */
	if (s->state == ST_BODY)
		smtp_body_write(s);
}

/* conn_write_body - write N slices of the body (or BDAT's chunk) with
 * body_req: as they are, or encrypted into body_buf under TLS. Returns 0
 * or a libuv error (nothing in flight then). XXX BDAT's one chunk is the
 * whole message: under TLS its ciphertext is one buffer of that size. */
static int
conn_write_body(struct smtp_conn *c, uv_buf_t *bufs, unsigned n)
{
	uv_buf_t cipher;
	size_t len;
	int rc;

	c->body_req.data = c;
	if (c->tls != NULL) {
		for (unsigned i = 0; i < n; i++) {
			if (!c->tls_on || hk_tls_conn_write(c->tls, bufs[i].base, bufs[i].len) != 0) {
				c->tls_failed = true;
				return UV_EPROTO;
			}
		}
		len = hk_tls_conn_pending(c->tls);
		c->body_buf = xmalloc(len > 0 ? len : 1);
		len = hk_tls_conn_pull(c->tls, c->body_buf, len);
		cipher = uv_buf_init(c->body_buf, (unsigned)len);
		bufs = &cipher;
		n = 1;
	}
	c->body_writing = true;
	rc = uv_write(&c->body_req, (uv_stream_t *)&c->tcp, bufs, n, smtp_on_body_written);
	if (rc < 0) {
		c->body_writing = false;
		free(c->body_buf);
		c->body_buf = NULL;
	}
	return rc;
}

/* smtp_body_write - queue the next body write; after the last one the
 * end-of-data reply is awaited (state EOD). */
static void
smtp_body_write(sender_smtp *s)
{
	struct smtp_conn *c = s->conn;
	uv_buf_t bufs[SMTP_BODY_BUFS];
	size_t n;
	int rc;

	n = smtp_body_fill(s, bufs, SMTP_BODY_BUFS);
	if ((rc = conn_write_body(c, bufs, (unsigned)n)) < 0) {
		smtp_conn_fail(s, "connection lost", uv_strerror(rc));
		return;
	}
	if (s->body_done) {
		c->expect++;
		sender_smtp_enter_state(s, ST_EOD);
	}
}

/* smtp_has_8bit - whether the body needs BODY=8BITMIME. */
static bool
smtp_has_8bit(const uint8_t *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (p[i] & 0x80)
			return true;
	return false;
}

/* smtp_param_ok - fit to be put on a command line as it is: printable
 * ASCII or UTF-8 (SMTPUTF8), no blank, no control. The ingress checked it;
 * the queue is not trusted to have kept it so. */
static bool
smtp_param_ok(const char *p)
{
	for (; *p != '\0'; p++)
		if ((unsigned char)*p <= 0x20 || *p == 0x7f)
			return false;
	return true;
}

/* smtp_param - the KEY=... parameter among LEN bytes of NUL-terminated
 * strings at P, or NULL. */
static const char *
smtp_param(const char *p, size_t len, const char *key)
{
	size_t k = strlen(key);

	for (const char *end = p + len; p != NULL && p < end; p += strlen(p) + 1)
		if (strncasecmp(p, key, k) == 0 && p[k] == '=' && smtp_param_ok(p))
			return p;
	return NULL;
}

/* smtp_send_rcpt - queue RCPT TO for the next recipient, with its DSN
 * parameters when the server offers DSN. */
static void
smtp_send_rcpt(sender_smtp *s)
{
	const struct sender_smtp_rcpt *r = &s->job->rcpts[s->order[s->rcpt_send++]];
	const char *notify = NULL, *orcpt = NULL;

	if (s->conn->dsn_ext) {
		notify = smtp_param(r->params, r->params_len, "NOTIFY");
		orcpt = smtp_param(r->params, r->params_len, "ORCPT");
	}
	conn_cmd(s->conn, "RCPT TO:<%s>%s%s%s%s", r->address, notify ? " " : "", notify ? notify : "",
	    orcpt ? " " : "", orcpt ? orcpt : "");
}

/* smtp_ready - the connection is greeted and EHLOed (or parked): MAIL, or
 * DONE when the message exceeds the size the server announced. */
static enum smtp_state
smtp_ready(sender_smtp *s)
{
	const struct smtp_conn *c = s->conn;
	struct sender_smtp_job *job = s->job;
	char buf[256];

	/* The session the transaction goes over, new or parked. */
	snprintf(job->tls_version, sizeof(job->tls_version), "%s", c->tls_on ? c->tls_version : "");
	snprintf(job->tls_cipher, sizeof(job->tls_cipher), "%s", c->tls_on ? c->tls_cipher : "");
	job->tls_verified = c->tls_on && c->tls_verified;
	if (c->size_ext && c->size_limit > 0 && s->job->body_len > c->size_limit) {
		snprintf(buf, sizeof(buf), "552 5.3.4 message size %zu exceeds size limit %lu "
		    "of server %s", s->job->body_len, c->size_limit, s->peer);
		smtp_fail_undecided(s, 552, buf);
		return ST_DONE;
	}
	/* RFC 6531 3.5 and RFC 3030 3: no downgrade; the message is bounced. */
	if (s->utf8 && !c->smtputf8_ext) {
		snprintf(buf, sizeof(buf), "550 5.6.7 server %s does not support SMTPUTF8, "
		    "which the message requires", s->peer);
		smtp_fail_undecided(s, 550, buf);
		return ST_DONE;
	}
	if (s->binary && !(c->chunking_ext && c->binarymime_ext)) {
		snprintf(buf, sizeof(buf), "554 5.6.3 server %s does not support BINARYMIME "
		    "and CHUNKING, which the message requires", s->peer);
		smtp_fail_undecided(s, 554, buf);
		return ST_DONE;
	}
	return ST_MAIL;
}

/* smtp_tls_start - STARTTLS was answered 220: put a client engine on the
 * connection and send the ClientHello. */
static void
smtp_tls_start(sender_smtp *s)
{
	struct smtp_conn *c = s->conn;
	char err[256];

	/* RFC 3207 4.2: forget what the server said in clear. */
	c->pipelining = c->size_ext = c->eightbit_ext = c->starttls_ext = false;
	c->smtputf8_ext = c->dsn_ext = c->chunking_ext = c->binarymime_ext = false;
	c->size_limit = 0;
	sender_reply_init(&c->parser);
	if ((c->tls = hk_tls_conn_new(s->job->tls_ctx, false)) == NULL) {
		smtp_tls_failed(s, "out of memory");
		return;
	}
	c->pbuf = xmalloc(SMTP_READ_BUF);
	/* SNI and the name the certificate is checked against: the MX host. */
	if (hk_tls_conn_set_peer_name(c->tls, s->addrs[s->cur_addr].host) != 0)
		hk_log_debug("smtp_tls_name_refused", "{s:s, s:s}", "peer", s->peer,
		    "mx", s->addrs[s->cur_addr].host);
	if (hk_tls_conn_handshake(c->tls, err, sizeof(err)) == HK_TLS_ERROR) {
		c->tls_failed = true;
		smtp_tls_failed(s, err);
		return;
	}
	conn_tls_send(c);       /* on failure the job has moved on */
}

/* smtp_tls_done - the handshake is done: note the session, EHLO again. */
static void
smtp_tls_done(sender_smtp *s)
{
	struct smtp_conn *c = s->conn;
	char why[160];

	c->tls_on = true;
	snprintf(c->tls_version, sizeof(c->tls_version), "%s", hk_tls_conn_version(c->tls));
	snprintf(c->tls_cipher, sizeof(c->tls_cipher), "%s", hk_tls_conn_cipher(c->tls));
	c->tls_verified = hk_tls_conn_verified(c->tls, why, sizeof(why));
	if (c->pool != NULL)
		c->pool->st.tls++;
	hk_log_info("smtp_tls_established", "{s:s, s:s, s:s, s:s, s:b, s:s}", "peer", s->peer,
	    "mx", s->addrs[s->cur_addr].host, "version", c->tls_version, "cipher", c->tls_cipher,
	    "verified", c->tls_verified, "verify", why);
	s->tried_helo = false;
	sender_smtp_enter_state(s, ST_EHLO);
}

/* sender_smtp_enter_state - switch to ST and send what that state sends. */
static void
sender_smtp_enter_state(sender_smtp *s, enum smtp_state st)
{
	struct sender_smtp_job *job = s->job;
	struct smtp_conn *c = s->conn;

	hk_log_debug("smtp_state", "{s:s, s:s, s:s}", "peer", s->peer,
	    "from", smtp_states[s->state].name, "to", smtp_states[st].name);
	s->state = st;
	if (st != ST_DONE)
		smtp_arm_timer(s);
	switch (st) {
	case ST_CONNECT:
		/* Not entered: smtp_try_addr() starts connections. */
		return;
	case ST_GREETING:
		c->expect = 1;
		break;
	case ST_EHLO:
		conn_cmd(c, "EHLO %s", job->helo_name);
		break;
	case ST_HELO:
		s->tried_helo = true;
		conn_cmd(c, "HELO %s", job->helo_name);
		break;
	case ST_STARTTLS:
		conn_cmd(c, "STARTTLS");
		break;
	case ST_TLS:
		smtp_tls_start(s);
		return;
	case ST_MAIL: {
		char size[40] = "";
		const char *body = "";
		bool dsn = c->dsn_ext;
		if (c->size_ext)
			snprintf(size, sizeof(size), " SIZE=%zu", job->body_len);
		if (s->binary)
			body = " BODY=BINARYMIME";
		else if (c->eightbit_ext && smtp_has_8bit(job->body, job->body_len))
			body = " BODY=8BITMIME";
		c->uses++;
		c->job_max_uses = job->max_uses;       /* the destination's limit, if any */
		s->txn_open = true;
		conn_cmd(c, "MAIL FROM:<%s>%s%s%s%s%s%s%s", job->mail_from, size, body,
		    s->utf8 ? " SMTPUTF8" : "", dsn && s->ret ? " " : "", dsn && s->ret ? s->ret : "",
		    dsn && s->envid ? " " : "", dsn && s->envid ? s->envid : "");
		if (c->pipelining) {
			/* RFC 2920: the whole envelope and DATA in one go. BDAT
			 * waits for the RCPT replies: no chunk for nobody. */
			while (s->rcpt_send < s->n_order)
				smtp_send_rcpt(s);
			if (!s->binary)
				conn_cmd(c, "DATA");
		}
		break;
	}
	case ST_RCPT:
		if (!c->pipelining)
			smtp_send_rcpt(s);
		break;
	case ST_DATA:
		if (!c->pipelining)
			conn_cmd(c, "DATA");
		break;
	case ST_BODY:
		s->body_off = 0;
		s->body_bol = true;
		s->body_done = false;
		smtp_body_write(s);
		return;
	case ST_EOD:
		break;
	case ST_BDAT:
		/* RFC 3030: the body as one chunk, octets as they are. */
		conn_cmd(c, "BDAT %zu LAST", job->body_len);
		if (conn_flush(c) != 0 || job->body_len == 0)
			return;
		{
			uv_buf_t b = uv_buf_init((char *)job->body, (unsigned)job->body_len);
			int rc;
			if ((rc = conn_write_body(c, &b, 1)) < 0)
				smtp_conn_fail(s, "connection lost", uv_strerror(rc));
		}
		return;
	case ST_DOT:
		/* RFC 2920 §3.1: DATA accepted with no valid recipient: end it. */
		conn_cmd(c, ".");
		break;
	case ST_DONE:
		smtp_finish(s, true);
		return;
	}
	/* Last: a failed write may have moved the job on already. */
	conn_flush(c);
}

/* smtp_ehlo_ext - note the extensions of an EHLO reply we use. */
static void
smtp_ehlo_ext(struct smtp_conn *c, const struct sender_reply *r)
{
	const char *line;
	size_t i;

	c->pipelining = c->size_ext = c->eightbit_ext = c->starttls_ext = false;
	c->smtputf8_ext = c->dsn_ext = c->chunking_ext = c->binarymime_ext = false;
	c->size_limit = 0;
	/* Line 0 is the greeting text; extensions follow, one per line. */
	for (i = 1; (line = sender_reply_line(r, i)) != NULL; i++) {
		size_t kw = strcspn(line, " ");
		if (kw == 10 && strncasecmp(line, "PIPELINING", 10) == 0) {
			c->pipelining = true;
		} else if (kw == 8 && strncasecmp(line, "8BITMIME", 8) == 0) {
			c->eightbit_ext = true;
		} else if (kw == 8 && strncasecmp(line, "SMTPUTF8", 8) == 0) {
			c->smtputf8_ext = true;
		} else if (kw == 3 && strncasecmp(line, "DSN", 3) == 0) {
			c->dsn_ext = true;
		} else if (kw == 8 && strncasecmp(line, "CHUNKING", 8) == 0) {
			c->chunking_ext = true;
		} else if (kw == 10 && strncasecmp(line, "BINARYMIME", 10) == 0) {
			c->binarymime_ext = true;
		} else if (kw == 8 && strncasecmp(line, "STARTTLS", 8) == 0) {
			c->starttls_ext = true;
		} else if (kw == 4 && strncasecmp(line, "SIZE", 4) == 0) {
			c->size_ext = true;
			c->size_limit = line[4] == ' ' ? strtoul(line + 5, NULL, 10) : 0;
		}
	}
}

/* sender_smtp_response - one complete reply arrived: decide the next state. */
static void
sender_smtp_response(sender_smtp *s, const struct sender_reply *r)
{
	struct smtp_conn *c = s->conn;
	int cls = r->code / 100;
	enum smtp_state next = s->state;
	bool first = s->unconfirmed;    /* first reply on a parked connection */
	size_t i;

	s->unconfirmed = false;
	if (c->expect == 0) {
		if (s->state == ST_BODY && cls >= 4) {
			/* The server gave up on the message mid-body. */
			for (i = 0; i < s->job->n_rcpts; i++)
				if (s->accepted[i] && s->job->rcpts[i].code == 0)
					smtp_decide(s, i, r->code, r->text);
			smtp_finish(s, false);
			return;
		}
		smtp_conn_fail(s, "protocol error", "unexpected reply");
		return;
	}
	c->expect--;
	if (cls == 3 && s->state != ST_DATA) {
		smtp_conn_fail(s, "protocol error", "unexpected 3xx reply");
		return;
	}

	switch (s->state) {
	case ST_GREETING:
		if (cls != 2) {
			smtp_set_last(s, 451, "451 4.4.0 %s refused to talk to me: %s", s->peer, r->text);
			smtp_next_addr(s);
			return;
		}
		snprintf(s->job->mx_host, sizeof(s->job->mx_host), "%s", s->addrs[s->cur_addr].host);
		next = ST_EHLO;
		break;
	case ST_EHLO:
	case ST_HELO:
		if (cls == 5 && s->state == ST_EHLO && !s->tried_helo) {
			next = ST_HELO;
			break;
		}
		if (cls != 2) {
			smtp_set_last(s, 451, "451 4.4.0 %s rejected %s: %s", s->peer,
			    smtp_states[s->state].name, r->text);
			smtp_next_addr(s);
			return;
		}
		if (s->state == ST_EHLO)
			smtp_ehlo_ext(c, r);
		if (!c->tls_on && c->starttls_ext && s->job->tls_ctx != NULL && !s->no_tls) {
			next = ST_STARTTLS;
			break;
		}
		if (!c->tls_on && s->job->tls_required) {
			smtp_set_last(s, 451, "451 4.7.4 TLS is required, but was not offered by %s (%s)",
			    s->addrs[s->cur_addr].host, s->peer);
			smtp_next_addr_quit(s);
			return;
		}
		next = smtp_ready(s);
		break;
	case ST_STARTTLS:
		if (cls == 2) {
			next = ST_TLS;
			break;
		}
		if (r->code == 421) {
			smtp_set_last(s, 451, "451 4.4.0 %s refused to talk to me: %s", s->peer, r->text);
			smtp_next_addr(s);
			return;
		}
		if (s->job->tls_required) {
			smtp_set_last(s, 451, "451 4.7.4 TLS is required, but %s (%s) refused to start "
			    "TLS: %s", s->addrs[s->cur_addr].host, s->peer, r->text);
			smtp_next_addr_quit(s);
			return;
		}
		/* RFC 3207 4: the session may go on in plaintext, as it would
		 * with a server that offers no STARTTLS. */
		hk_log_info("smtp_starttls_refused", "{s:s, s:s, s:s}", "peer", s->peer,
		    "mx", s->addrs[s->cur_addr].host, "reply", r->text);
		next = smtp_ready(s);
		break;
	case ST_TLS:
		/* Not reached: nothing is expected during the handshake. */
		break;
	case ST_MAIL:
		if (first && r->code == 421) {
			/* The server timed the parked connection out just now. */
			smtp_stale(s, r->text);
			return;
		}
		if (cls != 2) {
			smtp_fail_undecided(s, r->code, r->text);
			next = ST_DONE;
			break;
		}
		next = ST_RCPT;
		break;
	case ST_RCPT:
		i = s->order[s->rcpt_recv++];
		if (cls == 2) {
			s->accepted[i] = true;
			s->n_accepted++;
		} else {
			smtp_decide(s, i, r->code, r->text);
		}
		if (s->rcpt_recv < s->n_order)
			next = ST_RCPT;
		else if (s->binary)
			next = s->n_accepted > 0 ? ST_BDAT : ST_DONE;
		else if (c->pipelining || s->n_accepted > 0)
			next = ST_DATA;     /* pipelined: DATA is on its way already */
		else
			next = ST_DONE;
		break;
	case ST_DATA:
		if (cls == 3) {
			next = s->n_accepted > 0 ? ST_BODY : ST_DOT;
			break;
		}
		if (cls == 2) {
			smtp_conn_fail(s, "protocol error", "2xx reply to DATA");
			return;
		}
		for (i = 0; i < s->job->n_rcpts; i++)
			if (s->accepted[i])
				smtp_decide(s, i, r->code, r->text);
		next = ST_DONE;
		break;
	case ST_BODY:
		/* Not reached: no reply is expected before the final dot. */
		break;
	case ST_EOD:
	case ST_BDAT:
		for (i = 0; i < s->job->n_rcpts; i++)
			if (s->accepted[i])
				smtp_decide(s, i, r->code, r->text);
		s->txn_open = false;    /* a final reply to the data ends it */
		next = ST_DONE;
		break;
	case ST_DOT:
		s->txn_open = false;
		next = ST_DONE;
		break;
	case ST_CONNECT:
	case ST_DONE:
		return;
	}
	sender_smtp_enter_state(s, next);
}

/* smtp_on_connect - TCP connect finished. */
static void
smtp_on_connect(uv_connect_t *req, int status)
{
	struct smtp_conn *c = req->data;
	sender_smtp *s = c->s;
	int rc;

	if (status == UV_ECANCELED || c->mode != CM_JOB)
		return;         /* we closed it: timeout or abort */
	if (status < 0) {
		smtp_set_last(s, 451, "451 4.4.1 connect to %s failed: %s", s->peer, uv_strerror(status));
		smtp_next_addr(s);
		return;
	}
	c->connected = true;
	uv_tcp_nodelay(&c->tcp, 1);
	struct sockaddr_storage me;
	int melen = sizeof(me);
	c->local[0] = '\0';
	if (uv_tcp_getsockname(&c->tcp, (struct sockaddr *)&me, &melen) == 0)
		uv_ip_name((struct sockaddr *)&me, c->local, sizeof(c->local));
	snprintf(s->job->source_addr, sizeof(s->job->source_addr), "%s", c->local);
	if ((rc = uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_on_read)) < 0) {
		smtp_set_last(s, 451, "451 4.4.1 connect to %s failed: %s", s->peer, uv_strerror(rc));
		smtp_next_addr(s);
		return;
	}
	if (c->pool != NULL)
		c->pool->st.connects++;
	sender_smtp_enter_state(s, ST_GREETING);
}

/* smtp_addr - the destination (with port), its text (IP) and the pool key
 * of address I; sets s->peer. Returns NULL, or why it cannot be used. */
static const char *
smtp_addr(sender_smtp *s, size_t i, struct sockaddr_storage *dst, char ip[INET6_ADDRSTRLEN],
    char key[SMTP_KEY_MAX])
{
	const struct sender_mx_addr *a = &s->addrs[i];

	memset(dst, 0, sizeof(*dst));
	memcpy(dst, &a->addr, a->addrlen <= sizeof(*dst) ? a->addrlen : sizeof(*dst));
	if (dst->ss_family == AF_INET) {
		((struct sockaddr_in *)dst)->sin_port = htons(s->job->port);
		uv_ip4_name((struct sockaddr_in *)dst, ip, INET6_ADDRSTRLEN);
		snprintf(s->peer, sizeof(s->peer), "%s:%u", ip, s->job->port);
	} else if (dst->ss_family == AF_INET6) {
		((struct sockaddr_in6 *)dst)->sin6_port = htons(s->job->port);
		uv_ip6_name((struct sockaddr_in6 *)dst, ip, INET6_ADDRSTRLEN);
		snprintf(s->peer, sizeof(s->peer), "[%s]:%u", ip, s->job->port);
	} else {
		snprintf(s->peer, sizeof(s->peer), "(address family %d)", dst->ss_family);
		return "unsupported address";
	}
	if (s->have_src && s->src.ss_family != dst->ss_family)
		return "no source address of that family";
	/* What makes one connection as good as another for this job; whether
	 * it is in TLS is matched apart (pool_take). XXX once a policy asks for
	 * a verified certificate (MTA-STS, DANE), the verdict joins the match. */
	snprintf(key, SMTP_KEY_MAX, "%s %s %s", s->peer, s->have_src ? s->src_text : "*",
	    s->job->helo_name);
	return NULL;
}

/* smtp_take_parked - go on at address I on a parked connection with KEY,
 * if the pool has one. */
static bool
smtp_take_parked(sender_smtp *s, size_t i, const char *key, const char *ip)
{
	struct smtp_conn *c;

	if (s->pool == NULL)
		return false;
	/* A TLS connection is as good as a new one; a plaintext one only if
	 * plaintext is allowed. */
	if ((c = pool_take(s->pool, key, true)) == NULL &&
	    (s->job->tls_required || (c = pool_take(s->pool, key, false)) == NULL))
		return false;
	s->cur_addr = i;
	s->conn = c;
	c->s = s;
	s->unconfirmed = true;
	snprintf(s->job->mx_addr, sizeof(s->job->mx_addr), "%s", ip);
	snprintf(s->job->source_addr, sizeof(s->job->source_addr), "%s", c->local);
	snprintf(s->job->mx_host, sizeof(s->job->mx_host), "%s", s->addrs[i].host);
	hk_log_debug("smtp_conn_reused", "{s:s, s:i, s:s}", "peer", s->peer, "uses", (int)c->uses,
	    "tls", c->tls_on ? c->tls_version : "");
	sender_smtp_enter_state(s, smtp_ready(s));
	return true;
}

/* smtp_try_addr - start on address cur_addr: on a parked connection if the
 * pool has one, else on a new one. Returns false if it could not even
 * start (last_reply says why). */
static bool
smtp_try_addr(sender_smtp *s)
{
	struct sockaddr_storage dst;
	char ip[INET6_ADDRSTRLEN], key[SMTP_KEY_MAX];
	const char *why;
	struct smtp_conn *c;
	int rc;

	s->state = ST_CONNECT;
	if ((why = smtp_addr(s, s->cur_addr, &dst, ip, key)) != NULL) {
		smtp_set_last(s, 451, "451 4.4.1 connect to %s failed: %s", s->peer, why);
		return false;
	}
	if (smtp_take_parked(s, s->cur_addr, key, ip))
		return true;

	snprintf(s->job->mx_addr, sizeof(s->job->mx_addr), "%s", ip);
	c = conn_new(s->loop, s->pool, key, s->peer);
	s->conn = c;
	c->s = s;
	s->unconfirmed = false;
	s->tried_helo = false;
	rc = 0;
	if (s->have_src)
		rc = uv_tcp_bind(&c->tcp, (struct sockaddr *)&s->src, 0);
	if (rc == 0) {
		c->connect_req.data = c;
		rc = uv_tcp_connect(&c->connect_req, &c->tcp, (struct sockaddr *)&dst, smtp_on_connect);
	}
	if (rc < 0) {
		smtp_set_last(s, 451, "451 4.4.1 connect to %s failed: %s", s->peer, uv_strerror(rc));
		smtp_drop_conn(s);
		return false;
	}
	smtp_arm_timer(s);
	return true;
}

/* smtp_try_next - start on the next usable address, or end the job with
 * the last failure when none is left. */
static void
smtp_try_next(sender_smtp *s)
{
	while (s->next_addr < s->n_addrs) {
		s->cur_addr = s->next_addr++;
		s->no_tls = false;
		if (smtp_try_addr(s))
			return;
	}
	s->job->mx_addr[0] = '\0';
	smtp_fail(s, s->last_code, "%s", s->last_reply);
}

/* smtp_start - a parked connection to any of the addresses, in order, beats
 * a new one to the first: they all serve the domain (Postfix, too, looks its
 * cache up by destination before it connects). Else connect in order. */
static void
smtp_start(sender_smtp *s)
{
	struct sockaddr_storage dst;
	char ip[INET6_ADDRSTRLEN], key[SMTP_KEY_MAX];

	for (size_t i = 0; s->pool != NULL && s->pool->n_idle > 0 && i < s->n_addrs; i++)
		if (smtp_addr(s, i, &dst, ip, key) == NULL && smtp_take_parked(s, i, key, ip))
			return;
	smtp_try_next(s);
}

/* smtp_bad_arg - text unfit for a command line (CR, LF, controls, <>). */
static bool
smtp_bad_arg(const char *p, size_t max)
{
	size_t n = 0;

	for (; *p != '\0'; p++, n++) {
		unsigned char c = (unsigned char)*p;
		if (c < 0x20 || c == 0x7f || c == '<' || c == '>' || n >= max)
			return true;
	}
	return false;
}

int
sender_smtp_deliver(sender_smtp **out, uv_loop_t *loop, struct sender_smtp_job *job,
    sender_smtp_cb cb, void *arg)
{
	sender_smtp *s;
	size_t i;

	*out = NULL;
	if (job == NULL || cb == NULL || job->helo_name == NULL || job->mail_from == NULL ||
	    job->n_rcpts == 0 || job->rcpts == NULL || (job->body == NULL && job->body_len > 0))
		return -EINVAL;
	if (job->helo_name[0] == '\0' || smtp_bad_arg(job->helo_name, 255) ||
	    smtp_bad_arg(job->mail_from, 256))
		return -EINVAL;
	if (job->pool != NULL && (job->pool->closing || job->pool->loop != loop))
		return -EINVAL;
	if (job->tls_required && job->tls_ctx == NULL)
		return -EINVAL;

	s = xcalloc(1, sizeof(*s));
	if (job->source_address != NULL && job->source_address[0] != '\0') {
		if (uv_ip4_addr(job->source_address, 0, (struct sockaddr_in *)&s->src) == 0) {
			uv_ip4_name((struct sockaddr_in *)&s->src, s->src_text, sizeof(s->src_text));
		} else if (uv_ip6_addr(job->source_address, 0, (struct sockaddr_in6 *)&s->src) == 0) {
			uv_ip6_name((struct sockaddr_in6 *)&s->src, s->src_text, sizeof(s->src_text));
		} else {
			free(s);
			return -EINVAL;
		}
		s->have_src = 1;
	}
	s->loop = loop;
	s->job = job;
	s->cb = cb;
	s->arg = arg;
	s->pool = job->pool;
	pool_ref(s->pool);
	s->n_addrs = job->n_addrs;
	if (s->n_addrs > 0) {
		s->addrs = xcalloc(s->n_addrs, sizeof(*s->addrs));
		memcpy(s->addrs, job->addrs, s->n_addrs * sizeof(*s->addrs));
	}
	for (i = 0; i < job->n_mail_params; i++) {
		const char *p = job->mail_params[i];
		if (strcasecmp(p, "SMTPUTF8") == 0)
			s->utf8 = true;
		else if (strcasecmp(p, "BODY=BINARYMIME") == 0)
			s->binary = true;
		else if (strncasecmp(p, "RET=", 4) == 0 && smtp_param_ok(p))
			s->ret = p;
		else if (strncasecmp(p, "ENVID=", 6) == 0 && smtp_param_ok(p))
			s->envid = p;
	}
	s->order = xcalloc(job->n_rcpts, sizeof(*s->order));
	s->accepted = xcalloc(job->n_rcpts, sizeof(*s->accepted));
	job->mx_host[0] = job->mx_addr[0] = job->source_addr[0] = '\0';
	job->tls_version[0] = job->tls_cipher[0] = '\0';
	job->tls_verified = false;
	for (i = 0; i < job->n_rcpts; i++) {
		struct sender_smtp_rcpt *r = &job->rcpts[i];
		r->code = 0;
		r->reply[0] = '\0';
		if (r->address == NULL || r->address[0] == '\0' || smtp_bad_arg(r->address, 256))
			smtp_decide(s, i, 501, "501 5.1.3 bad recipient address syntax");
		else
			s->order[s->n_order++] = i;
	}
	s->last_code = 451;
	snprintf(s->last_reply, sizeof(s->last_reply), "451 4.4.3 no address to deliver to");

	uv_timer_init(loop, &s->timer);
	s->timer.data = s;
	s->state = ST_CONNECT;
	if (s->n_order == 0)
		smtp_finish(s, false);  /* nothing to send; cb from the close_cb */
	else
		smtp_start(s);
	*out = s;
	return 0;
}

void
sender_smtp_abort(sender_smtp *s)
{
	if (s == NULL || s->finishing)
		return;
	smtp_fail(s, 451, "451 4.3.2 aborted");
}

/* ---- the pool's interface ---- */

sender_smtp_pool *
sender_smtp_pool_new(uv_loop_t *loop, uint32_t idle_ms, uint32_t max_uses)
{
	sender_smtp_pool *p = xcalloc(1, sizeof(*p));

	p->loop = loop;
	p->idle_ms = idle_ms;
	p->max_uses = max_uses;
	p->per_key = SMTP_POOL_PER_KEY;
	p->max_idle = SMTP_POOL_MAX;
	return p;
}

void
sender_smtp_pool_set_per_key(sender_smtp_pool *p, size_t n)
{
	p->per_key = n > SMTP_POOL_PER_KEY ? n : SMTP_POOL_PER_KEY;
	p->max_idle = 2 * n > SMTP_POOL_MAX ? 2 * n : SMTP_POOL_MAX;
}

void
sender_smtp_pool_close(sender_smtp_pool *p)
{
	if (p == NULL || p->closing)
		return;
	hk_log_info("smtp_pool_closed", "{s:i, s:I, s:I, s:I, s:I}", "idle", (int)p->n_idle,
	    "connects", (json_int_t)p->st.connects, "reused", (json_int_t)p->st.reused,
	    "stale", (json_int_t)p->st.stale, "parked", (json_int_t)p->st.parked);
	p->closing = true;
	while (p->idle != NULL)
		conn_quit(p->idle);
	if (p->refs == 0)
		free(p);
}

void
sender_smtp_pool_stats(const sender_smtp_pool *p, struct sender_smtp_pool_stats *out)
{
	*out = p->st;
	out->idle = p->n_idle;
}
