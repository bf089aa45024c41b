/*++
 * NAME
 *	hk-blast - SMTP load generator for benchmarks
 * SYNOPSIS
 *	hk-blast --server HOST:PORT [--sessions S] [--messages N] [--per-session K]
 *		[--size BYTES] [--domains D] [--domain-fmt FMT] [--skew F] [--rcpts R]
 *		[--from ADDR] [--helo NAME] [--pipelining] [--max-seconds T]
 *		[--timeout T] [--seed N] [--json]
 *		[--starttls | --tls] [--cafile FILE | --insecure] [--auth USER:PASS]
 * DESCRIPTION
 *	Drives an SMTP server as fast as it accepts mail, the way an ESP's
 *	bulk senders do: S concurrent sessions, each sending up to K messages
 *	per connection before QUIT and reconnect, until N messages have been
 *	started (or T seconds have passed). Reports how many got 2xx, 4xx, 5xx
 *	or were lost to connection errors, the rate, and the latency of the
 *	final reply (from writing "\r\n.\r\n" to reading the reply).
 *
 *	One thread, one libuv loop. The body is built once; per message only
 *	the headers (Message-ID, Subject, To) are written into a per-session
 *	buffer, and headers + shared body + terminator go out in one uv_write
 *	of three buffers. No allocation happens per message.
 *
 *	Each session is a state machine driven by blast_rows[]: entering a
 *	state writes its command, a final reply picks the next state from the
 *	row (success or failure column), with RCPT looping over recipients.
 *	With --pipelining (and PIPELINING advertised) MAIL, every RCPT and DATA
 *	go out in one write; the replies are then consumed in order by the
 *	same states without writing.
 *
 *	TLS: --starttls sends EHLO, STARTTLS, does the handshake and EHLO
 *	again; --tls (smtps listeners) does the handshake on connect, before
 *	the greeting. --auth USER:PASS then sends AUTH PLAIN with the initial
 *	response before the first MAIL. OpenSSL runs over memory BIOs (the
 *	hk_tls engine of common/, as the ingress uses it): ciphertext read from
 *	the socket is pushed in and plaintext read out into the same reply
 *	buffer; what a state writes is copied into a per-session 16 KB staging
 *	buffer, so a 4 KB message (headers, body, terminator) is one TLS record,
 *	and the ciphertext is pulled into a per-session output buffer and
 *	written with uv_try_write as in clear. Those buffers exist once per
 *	session; the SSL object is made per connection (each connection is a
 *	full handshake: no session resumption). --cafile verifies the chain and
 *	that the certificate names the --server host (DNS name or IP address).
 *
 *	Exit status: 0 if every message got a 2xx final reply and no recipient
 *	was rejected, 1 otherwise, 2 on usage errors.
 *--*/

/* System */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* Third-party */
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <uv.h>

/* Hikyaku */
#include "hk_tls.h"

#define BLAST_RBUF 4096		/* per-session reply buffer; RFC 5321 lines are <= 512 */
#define BLAST_LINE 72		/* body line content; + CRLF = 74 bytes, <= 76 */
#define BLAST_MAX_RETRIES 5	/* consecutive connection failures before a session gives up */
#define BLAST_TICK_MS 100	/* timeout scan period */
#define BLAST_MAX_WARN 10	/* connection errors printed to stderr; the rest only counted */
#define BLAST_ID_DOMAIN "client.bench"
#define BLAST_TLS_REC 16384	/* plaintext staging: one full TLS record */
#define BLAST_TLS_OUT 32768	/* ciphertext pulled per write: two records and their overhead */
#define BLAST_TLS_IN 17408	/* ciphertext read at once: one record with its overhead */

/*
 * Latency histogram, in microseconds: exact below 1024 us, then 512
 * sub-buckets per power of two (< 0.2% error) up to 2^42 us.
 */
#define HIST_SUB_BITS 9
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_LINEAR (2 * HIST_SUB)
#define HIST_OCTAVES 32
#define HIST_BUCKETS (HIST_LINEAR + HIST_OCTAVES * HIST_SUB)

/*
 * Session states. The real states (CONNECT..QUIT) are in the order an
 * SMTP dialogue visits them (TLS is the handshake: on connect with --tls,
 * after STARTTLS's 220 otherwise); READY (after EHLO/HELO: STARTTLS, AUTH
 * or the first MAIL), NEXT, CLOSE and ABORT are pseudo-states that only
 * appear as transition targets in blast_rows[], and IDLE means "no
 * connection" (waiting to reconnect, or finished).
 */
#define BLAST_STATE_MAP(X) \
	X(CONNECT) X(TLS) X(GREETING) X(EHLO) X(HELO) X(STARTTLS) X(AUTH) \
	X(MAIL) X(RCPT) X(DATA) X(BODY) X(RSET) X(QUIT) \
	X(IDLE) X(READY) X(NEXT) X(CLOSE) X(ABORT)

enum blast_state {
#define X(name) ST_##name,
	BLAST_STATE_MAP(X)
#undef X
	ST_COUNT
};

static const char *const blast_state_names[ST_COUNT] = {
#define X(name) #name,
	BLAST_STATE_MAP(X)
#undef X
};

/* Session flags. */
#define SF_CLOSING	(1u << 0)	/* uv_close() called on tcp */
#define SF_WRITING	(1u << 1)	/* wreq in flight */
#define SF_SEND_PENDING	(1u << 2)	/* state's command waits for wreq */
#define SF_PIPELINING	(1u << 3)	/* server advertised it and --pipelining */
#define SF_DOT_PENDING	(1u << 4)	/* body write not flushed: stamp t_dot in on_write */
#define SF_DONE		(1u << 5)	/* session finished for good */
#define SF_TLS_UP	(1u << 6)	/* handshake done: all I/O goes through s->tls */

struct blast_opts {
	const char *server;
	unsigned sessions;
	uint64_t messages;
	uint64_t per_session;
	size_t size;
	unsigned domains;
	const char *domain_fmt;
	double skew;
	unsigned rcpts;
	const char *from;
	const char *helo;
	int pipelining;
	double max_seconds;
	double timeout;
	uint64_t seed;
	int json;
	int starttls;
	int tls;		/* implicit TLS (smtps) */
	int insecure;
	const char *cafile;
	const char *auth;	/* USER:PASS */
};

struct blast_stats {
	uint64_t claimed;	/* messages started (MAIL written or batched) */
	uint64_t sent;		/* final reply 2xx */
	uint64_t temp_failed;	/* 4xx anywhere in the transaction */
	uint64_t perm_failed;	/* 5xx anywhere in the transaction */
	uint64_t conn_errors;	/* messages in flight when their connection failed */
	uint64_t rcpt_rejected;	/* single recipients refused in otherwise live transactions */
	uint64_t connects;	/* TCP connections established */
	uint64_t pipelined;	/* connections that used PIPELINING */
	uint64_t conn_failures;	/* connection-level errors (refused, reset, timeout, protocol) */
	uint64_t sessions;	/* connections whose QUIT was answered 2xx */
	uint64_t handshakes;	/* TLS handshakes completed */
	uint64_t t_sess_last;	/* uv_hrtime() of the last session completed */
	const char *tls_version;	/* of the first handshake; "mixed" if another differed */
	const char *cipher;
	uint64_t t_first;	/* uv_hrtime() of the first connect */
	uint64_t t_last;	/* uv_hrtime() of the last message outcome */
	uint64_t lat_count;
	uint64_t lat_max_us;
	uint64_t hist[HIST_BUCKETS];
};

struct blast;

struct blast_session {
	uv_tcp_t tcp;
	uv_connect_t creq;
	uv_write_t wreq;
	uv_timer_t retry;
	struct blast *b;
	unsigned idx;
	enum blast_state state;
	unsigned flags;
	unsigned expect;	/* final replies the server still owes us */
	unsigned fails;		/* consecutive connection failures */
	uint64_t on_conn;	/* messages started on this connection */
	uint64_t last_ms;	/* loop time of the last read or write, for timeouts */
	const char *why;	/* reason for ST_ABORT */
	int last_code;		/* last final reply, for error messages */
	/* Current message; msg == 0 when none. */
	uint64_t msg;
	unsigned rcpt_sent;
	unsigned rcpt_done;
	unsigned rcpt_ok;
	unsigned rcpt_temp;
	int fail_class;		/* 4 or 5 once the transaction is doomed */
	uint64_t t_dot;		/* uv_hrtime() when the terminator was written */
	uint32_t *rdom;		/* domain index per recipient */
	char *cmd;		/* RCPT (and DATA) commands */
	char *hdr;		/* per-message headers */
	/* TLS: the engine per connection, the buffers per session (NULL without TLS). */
	hk_tls_conn *tls;
	char *tls_rec;		/* plaintext staged into records */
	char *tls_out;		/* ciphertext for the socket (uv_write reads it while SF_WRITING) */
	char *tls_in;		/* ciphertext from the socket */
	size_t rlen;
	char rbuf[BLAST_RBUF];	/* reply text (plaintext from the engine under TLS) */
};

struct blast {
	struct blast_opts o;
	uv_loop_t loop;
	uv_timer_t tick;
	uv_signal_t sigint;
	struct sockaddr_storage addr;
	struct blast_session *sessions;
	unsigned nsessions;
	unsigned active;	/* sessions not yet SF_DONE */
	int stopping;		/* SIGINT: start no new message */
	uint64_t start_ms;	/* loop time of the first connect */
	uint64_t max_ms;
	uint64_t timeout_ms;
	uint64_t rng;
	unsigned warned;
	/* Built once. */
	char *body;
	size_t blen;
	char *dom;		/* D domain names, back to back */
	uint32_t *dom_off;	/* D + 1 offsets into dom */
	size_t dom_max;
	char *ehlo_line, *helo_line, *mail_line, *hdr_fixed, *auth_line;
	size_t ehlo_len, helo_len, mail_len, hdr_fixed_len, auth_len;
	SSL_CTX *ssl_ctx;	/* client context, when TLS is asked for */
	char pid[24];
	size_t pid_len;
	size_t cmd_cap, hdr_cap;
	struct blast_stats st;
};

static void session_enter(struct blast_session *, enum blast_state);
static void session_send(struct blast_session *);
static void session_fail(struct blast_session *, const char *, int);
static void session_connect(struct blast_session *);
static void send_ehlo(struct blast_session *);
static void send_helo(struct blast_session *);
static void send_mail(struct blast_session *);
static void send_rcpt(struct blast_session *);
static void send_data(struct blast_session *);
static void send_body(struct blast_session *);
static void send_rset(struct blast_session *);
static void send_quit(struct blast_session *);
static void send_starttls(struct blast_session *);
static void send_auth(struct blast_session *);
static void tls_start(struct blast_session *);
static int tls_flush(struct blast_session *);

/*
 * The state table. A final reply of class `ok` moves to on_ok, anything
 * else to on_fail. RCPT's row is refined in session_reply() (more
 * recipients to go, then DATA, or RSET if none was accepted), and with
 * pipelining MAIL/RCPT failures keep consuming the batch's replies.
 */
struct blast_row {
	int ok;
	enum blast_state on_ok;
	enum blast_state on_fail;
	void (*send)(struct blast_session *);	/* NULL: the server speaks first */
};

static const struct blast_row blast_rows[ST_IDLE] = {
	/*		ok  on ok      on failure  entering writes */
	[ST_CONNECT] =	{0, ST_ABORT,  ST_ABORT,   NULL},
	[ST_TLS] =	{0, ST_ABORT,  ST_ABORT,   tls_start},
	[ST_GREETING] =	{2, ST_EHLO,   ST_ABORT,   NULL},
	[ST_EHLO] =	{2, ST_READY,  ST_HELO,    send_ehlo},
	[ST_HELO] =	{2, ST_READY,  ST_ABORT,   send_helo},
	[ST_STARTTLS] =	{2, ST_TLS,    ST_ABORT,   send_starttls},
	[ST_AUTH] =	{2, ST_NEXT,   ST_ABORT,   send_auth},
	[ST_MAIL] =	{2, ST_RCPT,   ST_RSET,    send_mail},
	[ST_RCPT] =	{2, ST_RCPT,   ST_RCPT,    send_rcpt},
	[ST_DATA] =	{3, ST_BODY,   ST_RSET,    send_data},
	[ST_BODY] =	{2, ST_NEXT,   ST_NEXT,    send_body},
	[ST_RSET] =	{2, ST_NEXT,   ST_ABORT,   send_rset},
	[ST_QUIT] =	{2, ST_CLOSE,  ST_CLOSE,   send_quit},
};

/* Utilities. */

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL) {
		fprintf(stderr, "hk-blast: out of memory (%zu bytes)\n", n);
		abort();
	}
	return p;
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (p == NULL) {
		fprintf(stderr, "hk-blast: out of memory (%zu x %zu bytes)\n", n, size);
		abort();
	}
	return p;
}

static char *xasprintf(size_t *len, const char *fmt, ...)
{
	va_list ap;
	int n;
	char *p;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	p = xmalloc((size_t)n + 1);
	va_start(ap, fmt);
	vsnprintf(p, (size_t)n + 1, fmt, ap);
	va_end(ap);
	if (len)
		*len = (size_t)n;
	return p;
}

static char *put_mem(char *p, const void *s, size_t n)
{
	memcpy(p, s, n);
	return p + n;
}

#define PUT_LIT(p, lit) put_mem((p), (lit), sizeof(lit) - 1)

/* put_u64 - decimal without snprintf: this runs several times per message */
static char *put_u64(char *p, uint64_t v)
{
	char tmp[20];
	int n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*p++ = tmp[--n];
	return p;
}

/* rng_next - splitmix64: fast, seedable, good enough for picking domains */
static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint32_t blast_pick_domain(struct blast *b)
{
	uint64_t r = rng_next(&b->rng);

	if (b->o.skew > 0 && (double)(r >> 11) * 0x1.0p-53 < b->o.skew)
		return 0;
	r = rng_next(&b->rng) >> 32;
	return (uint32_t)((r * b->o.domains) >> 32);
}

static void blast_warn(struct blast *b, const char *fmt, ...)
{
	va_list ap;

	if (b->warned >= BLAST_MAX_WARN)
		return;
	fprintf(stderr, "hk-blast: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (++b->warned == BLAST_MAX_WARN)
		fprintf(stderr, "hk-blast: further connection errors are only counted\n");
}

/* Histogram. */

static unsigned hist_index(uint64_t us)
{
	unsigned msb, shift, idx;

	if (us < HIST_LINEAR)
		return (unsigned)us;
	msb = 63u - (unsigned)__builtin_clzll(us);
	shift = msb - HIST_SUB_BITS;
	idx = HIST_LINEAR + (shift - 1) * HIST_SUB + (unsigned)((us >> shift) - HIST_SUB);
	return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

/* hist_mid - the middle of a bucket, in microseconds */
static double hist_mid(unsigned idx)
{
	unsigned k, shift;

	if (idx < HIST_LINEAR)
		return idx;
	k = idx - HIST_LINEAR;
	shift = k / HIST_SUB + 1;
	return (double)((uint64_t)(k % HIST_SUB + HIST_SUB) << shift) + (double)(1ull << shift) / 2;
}

static double hist_pct_ms(const struct blast_stats *st, double p)
{
	uint64_t rank, seen = 0;
	unsigned i;

	if (st->lat_count == 0)
		return 0;
	rank = (uint64_t)(p * (double)st->lat_count + 0.999999);
	if (rank < 1)
		rank = 1;
	for (i = 0; i < HIST_BUCKETS; i++) {
		seen += st->hist[i];
		if (seen >= rank) {
			double us = hist_mid(i);

			if (us > (double)st->lat_max_us)
				us = (double)st->lat_max_us;
			return us / 1000.0;
		}
	}
	return (double)st->lat_max_us / 1000.0;
}

/* Message accounting. */

/* blast_claim - take the next message number, if any may still start */
static uint64_t blast_claim(struct blast *b)
{
	if (b->stopping || b->st.claimed >= b->o.messages)
		return 0;
	if (uv_now(&b->loop) - b->start_ms >= b->max_ms)
		return 0;
	return ++b->st.claimed;
}

static int blast_more(struct blast *b)
{
	return !b->stopping && b->st.claimed < b->o.messages
	    && uv_now(&b->loop) - b->start_ms < b->max_ms;
}

/* message_done - count the current message's outcome: reply class 2/4/5, or 0 for a lost connection */
static void message_done(struct blast_session *s, int cls)
{
	struct blast_stats *st = &s->b->st;

	switch (cls) {
	case 2:
		st->sent++;
		break;
	case 4:
		st->temp_failed++;
		break;
	case 0:
		st->conn_errors++;
		break;
	default:
		st->perm_failed++;
		break;
	}
	if (cls != 0)
		s->fails = 0;
	s->msg = 0;
	st->t_last = uv_hrtime();
}

static void message_start(struct blast_session *s, uint64_t id)
{
	struct blast *b = s->b;
	unsigned i;

	s->msg = id;
	s->rcpt_sent = s->rcpt_done = s->rcpt_ok = s->rcpt_temp = 0;
	s->fail_class = 0;
	s->on_conn++;
	for (i = 0; i < b->o.rcpts; i++)
		s->rdom[i] = blast_pick_domain(b);
}

/* put_rcpt - "u<k>@<domain>" for recipient i of the current message; k is unique in the run */
static char *put_rcpt(struct blast_session *s, char *p, unsigned i)
{
	struct blast *b = s->b;
	uint32_t d = s->rdom[i];

	*p++ = 'u';
	p = put_u64(p, (s->msg - 1) * b->o.rcpts + i + 1);
	*p++ = '@';
	return put_mem(p, b->dom + b->dom_off[d], b->dom_off[d + 1] - b->dom_off[d]);
}

/* Writing. */

static void on_write(uv_write_t *req, int status)
{
	struct blast_session *s = req->data;

	s->flags &= ~SF_WRITING;
	if (s->flags & SF_CLOSING)
		return;
	if (status < 0) {
		session_fail(s, "write", status);
		return;
	}
	/* Under TLS the write is done when the engine has nothing more to send. */
	if (s->tls != NULL && tls_flush(s) != 0)
		return;
	if (s->flags & SF_DOT_PENDING) {
		s->flags &= ~SF_DOT_PENDING;
		s->t_dot = uv_hrtime();
	}
	if (s->flags & SF_SEND_PENDING) {
		s->flags &= ~SF_SEND_PENDING;
		session_send(s);
	}
}

/*
 * tls_flush - pull the engine's ciphertext and write it: 0 if it all went
 * out now, 1 if a write is in flight (on_write calls again), < 0 after
 * failing the session. tls_out is only refilled once the socket took it.
 */
static int tls_flush(struct blast_session *s)
{
	uv_buf_t buf;
	size_t n;
	int rc;

	while (!(s->flags & SF_WRITING)) {
		n = hk_tls_conn_pull(s->tls, s->tls_out, BLAST_TLS_OUT);
		if (n == 0)
			return 0;
		buf = uv_buf_init(s->tls_out, (unsigned)n);
		rc = uv_try_write((uv_stream_t *)&s->tcp, &buf, 1);
		if (rc < 0 && rc != UV_EAGAIN) {
			session_fail(s, "write", rc);
			return rc;
		}
		if (rc > 0 && (size_t)rc == n)
			continue;
		if (rc > 0) {
			buf.base += rc;
			buf.len -= (size_t)rc;
		}
		s->wreq.data = s;
		rc = uv_write(&s->wreq, (uv_stream_t *)&s->tcp, &buf, 1, on_write);
		if (rc < 0) {
			session_fail(s, "write", rc);
			return rc;
		}
		s->flags |= SF_WRITING;
	}
	return 1;
}

/*
 * tls_write - copy the buffers into BLAST_TLS_REC-byte records, encrypt,
 * flush: session_write's contract. One copy of the plaintext (cheaper than
 * the cipher) buys one record per 16 KB instead of one per buffer.
 */
static int tls_write(struct blast_session *s, const uv_buf_t *bufs, unsigned n)
{
	size_t used = 0, off, take;
	unsigned i;

	for (i = 0; i < n; i++) {
		for (off = 0; off < bufs[i].len; off += take) {
			take = bufs[i].len - off;
			if (take > BLAST_TLS_REC - used)
				take = BLAST_TLS_REC - used;
			memcpy(s->tls_rec + used, bufs[i].base + off, take);
			used += take;
			if (used == BLAST_TLS_REC) {
				if (hk_tls_conn_write(s->tls, s->tls_rec, used) != 0)
					goto fail;
				used = 0;
			}
		}
	}
	if (used > 0 && hk_tls_conn_write(s->tls, s->tls_rec, used) != 0)
		goto fail;
	return tls_flush(s);
fail:
	session_fail(s, "TLS write", 0);
	return -1;
}

/*
 * session_write - write up to 4 buffers: 0 if all went out now, 1 if the
 * rest is queued (on_write follows), < 0 after failing the session.
 * uv_try_write first because every uv_write that completes at once still
 * costs an epoll_ctl on the next loop turn (a quarter of all syscalls).
 * uv_write copies at most 4 buffer descriptors without malloc.
 */
static int session_write(struct blast_session *s, uv_buf_t *bufs, unsigned n, unsigned ncmds)
{
	size_t done;
	unsigned i = 0;
	int rc;

	if (s->flags & SF_TLS_UP) {
		s->expect += ncmds;
		s->last_ms = uv_now(&s->b->loop);
		return tls_write(s, bufs, n);
	}
	rc = uv_try_write((uv_stream_t *)&s->tcp, bufs, n);
	if (rc < 0 && rc != UV_EAGAIN) {
		session_fail(s, "write", rc);
		return rc;
	}
	s->expect += ncmds;
	s->last_ms = uv_now(&s->b->loop);
	done = rc > 0 ? (size_t)rc : 0;
	while (i < n && done >= bufs[i].len)
		done -= bufs[i++].len;
	if (i == n)
		return 0;
	bufs[i].base += done;
	bufs[i].len -= done;
	s->wreq.data = s;
	rc = uv_write(&s->wreq, (uv_stream_t *)&s->tcp, bufs + i, n - i, on_write);
	if (rc < 0) {
		session_fail(s, "write", rc);
		return rc;
	}
	s->flags |= SF_WRITING;
	return 1;
}

static void send_line(struct blast_session *s, const char *line, size_t len)
{
	uv_buf_t buf = uv_buf_init((char *)line, (unsigned)len);

	session_write(s, &buf, 1, 1);
}

static void send_ehlo(struct blast_session *s)
{
	send_line(s, s->b->ehlo_line, s->b->ehlo_len);
}

static void send_helo(struct blast_session *s)
{
	send_line(s, s->b->helo_line, s->b->helo_len);
}

static char *put_rcpt_cmd(struct blast_session *s, char *p, unsigned i)
{
	p = PUT_LIT(p, "RCPT TO:<");
	p = put_rcpt(s, p, i);
	return PUT_LIT(p, ">\r\n");
}

static void send_mail(struct blast_session *s)
{
	struct blast *b = s->b;
	uv_buf_t bufs[2];
	char *p = s->cmd;
	unsigned i;

	bufs[0] = uv_buf_init(b->mail_line, (unsigned)b->mail_len);
	if (!(s->flags & SF_PIPELINING)) {
		session_write(s, bufs, 1, 1);
		return;
	}
	for (i = 0; i < b->o.rcpts; i++)
		p = put_rcpt_cmd(s, p, i);
	p = PUT_LIT(p, "DATA\r\n");
	s->rcpt_sent = b->o.rcpts;
	bufs[1] = uv_buf_init(s->cmd, (unsigned)(p - s->cmd));
	session_write(s, bufs, 2, 2 + b->o.rcpts);
}

static void send_rcpt(struct blast_session *s)
{
	uv_buf_t buf;
	char *p = put_rcpt_cmd(s, s->cmd, s->rcpt_sent++);

	buf = uv_buf_init(s->cmd, (unsigned)(p - s->cmd));
	session_write(s, &buf, 1, 1);
}

static void send_data(struct blast_session *s)
{
	send_line(s, "DATA\r\n", 6);
}

static void send_rset(struct blast_session *s)
{
	send_line(s, "RSET\r\n", 6);
}

static void send_quit(struct blast_session *s)
{
	send_line(s, "QUIT\r\n", 6);
}

static void send_starttls(struct blast_session *s)
{
	send_line(s, "STARTTLS\r\n", 10);
}

static void send_auth(struct blast_session *s)
{
	send_line(s, s->b->auth_line, s->b->auth_len);
}

/*
 * send_body - headers + the shared body + ".\r\n" in one write. The
 * shared body is `size` bytes of 74-byte CRLF lines counted from its end,
 * and the message uses its suffix of (size - header length) bytes so the
 * total is exactly `size`. A suffix starting on the LF of a CRLF would
 * leave a bare LF: we skip the LF and put an 'x' after the blank line
 * instead (the first body line is then 73 bytes).
 */
static void send_body(struct blast_session *s)
{
	struct blast *b = s->b;
	uv_buf_t bufs[3];
	char *p = s->hdr;
	size_t hlen, off;
	uint64_t t;

	p = PUT_LIT(p, "Message-ID: <blast.");
	p = put_u64(p, s->msg);
	*p++ = '.';
	p = put_mem(p, b->pid, b->pid_len);
	p = PUT_LIT(p, "@" BLAST_ID_DOMAIN ">\r\nSubject: blast ");
	p = put_u64(p, s->msg);
	p = PUT_LIT(p, "\r\nTo: <");
	p = put_rcpt(s, p, 0);
	p = PUT_LIT(p, ">\r\n");
	p = put_mem(p, b->hdr_fixed, b->hdr_fixed_len);
	hlen = (size_t)(p - s->hdr);
	off = hlen < b->blen ? hlen : b->blen;
	if (off < b->blen && b->body[off] == '\n') {
		if (off + 1 < b->blen) {
			*p++ = 'x';
			off++;
		} else {
			off--;	/* the final LF: send "\r\n", one byte over */
		}
	}
	bufs[0] = uv_buf_init(s->hdr, (unsigned)(p - s->hdr));
	bufs[1] = uv_buf_init(b->body + off, (unsigned)(b->blen - off));
	bufs[2] = uv_buf_init(".\r\n", 3);
	t = uv_hrtime();
	/* Latency runs from the terminator leaving us: now if it all went out, else in on_write. */
	switch (session_write(s, bufs, 3, 1)) {
	case 0:
		s->t_dot = t;
		break;
	case 1:
		s->flags |= SF_DOT_PENDING;
		break;
	default:
		break;
	}
}

/* session_send - write the current state's command, or defer it until the previous write completes */
static void session_send(struct blast_session *s)
{
	void (*fn)(struct blast_session *) = blast_rows[s->state].send;

	if (fn == NULL)
		return;
	if (s->flags & SF_WRITING) {
		s->flags |= SF_SEND_PENDING;
		return;
	}
	fn(s);
}

/* Connection lifecycle. */

static void blast_stop(struct blast *b)
{
	unsigned i;

	uv_timer_stop(&b->tick);
	uv_close((uv_handle_t *)&b->tick, NULL);
	uv_close((uv_handle_t *)&b->sigint, NULL);
	for (i = 0; i < b->nsessions; i++)
		uv_close((uv_handle_t *)&b->sessions[i].retry, NULL);
}

static void session_done(struct blast_session *s)
{
	s->flags |= SF_DONE;
	s->state = ST_IDLE;
	if (--s->b->active == 0)
		blast_stop(s->b);
}

static void on_retry(uv_timer_t *t)
{
	struct blast_session *s = t->data;

	if (blast_more(s->b))
		session_connect(s);
	else
		session_done(s);
}

static void on_close(uv_handle_t *h)
{
	struct blast_session *s = h->data;
	struct blast *b = s->b;
	uint64_t delay;

	s->flags &= ~(SF_CLOSING | SF_WRITING | SF_SEND_PENDING | SF_PIPELINING | SF_DOT_PENDING | SF_TLS_UP);
	s->state = ST_IDLE;
	hk_tls_conn_free(&s->tls);
	if (s->fails > BLAST_MAX_RETRIES) {
		fprintf(stderr, "hk-blast: session %u: giving up after %u consecutive connection failures\n",
		    s->idx, s->fails);
		session_done(s);
	} else if (!blast_more(b)) {
		session_done(s);
	} else if (s->fails == 0) {
		session_connect(s);
	} else {
		delay = 50ull << (s->fails - 1);	/* 50 ms, doubling */
		uv_timer_start(&s->retry, on_retry, delay, 0);
	}
}

static void session_close(struct blast_session *s)
{
	if (s->flags & SF_CLOSING)
		return;
	s->flags |= SF_CLOSING;
	uv_close((uv_handle_t *)&s->tcp, on_close);
}

/* session_fail - a connection-level error: the message in flight is lost, the session reconnects (bounded) */
static void session_fail(struct blast_session *s, const char *what, int err)
{
	struct blast *b = s->b;

	if (s->flags & SF_CLOSING)
		return;
	b->st.conn_failures++;
	if (err)
		blast_warn(b, "session %u: %s in state %s: %s", s->idx, what,
		    blast_state_names[s->state], uv_strerror(err));
	else if (s->last_code)
		blast_warn(b, "session %u: %s in state %s (last reply %d)", s->idx, what,
		    blast_state_names[s->state], s->last_code);
	else
		blast_warn(b, "session %u: %s in state %s", s->idx, what, blast_state_names[s->state]);
	if (s->msg)
		message_done(s, 0);
	s->fails++;
	session_close(s);
}

static void on_alloc(uv_handle_t *, size_t, uv_buf_t *);
static void on_read(uv_stream_t *, ssize_t, const uv_buf_t *);
static void tls_input(struct blast_session *);

static void on_connect(uv_connect_t *req, int status)
{
	struct blast_session *s = req->data;

	if (status == UV_ECANCELED || (s->flags & SF_CLOSING))
		return;
	if (status < 0) {
		session_fail(s, "connect", status);
		return;
	}
	s->b->st.connects++;
	uv_tcp_nodelay(&s->tcp, 1);	/* small pipelined commands must not wait for ACKs */
	s->last_ms = uv_now(&s->b->loop);
	if ((status = uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read)) != 0) {
		session_fail(s, "read start", status);
		return;
	}
	if (s->b->o.tls) {
		session_enter(s, ST_TLS);	/* smtps: the greeting comes inside TLS */
		return;
	}
	s->state = ST_GREETING;
	s->expect = 1;
}

/* TLS. */

/* tls_start - entering ST_TLS: a new engine, and the ClientHello out */
static void tls_start(struct blast_session *s)
{
	s->tls = hk_tls_conn_new(s->b->ssl_ctx, false);
	if (s->tls == NULL) {
		session_fail(s, "TLS: out of memory", 0);
		return;
	}
	s->last_ms = uv_now(&s->b->loop);
	tls_input(s);
}

/* tls_up - the handshake is done: note what was negotiated, then the greeting (smtps) or EHLO again */
static void tls_up(struct blast_session *s)
{
	struct blast *b = s->b;
	const char *v = hk_tls_conn_version(s->tls), *c = hk_tls_conn_cipher(s->tls);

	s->flags |= SF_TLS_UP;
	s->flags &= ~SF_PIPELINING;	/* RFC 3207: forget what EHLO said before TLS */
	b->st.handshakes++;
	if (b->st.tls_version == NULL) {
		b->st.tls_version = v;	/* OpenSSL's static strings */
		b->st.cipher = c;
	} else {
		if (strcmp(b->st.tls_version, v) != 0)
			b->st.tls_version = "mixed";
		if (strcmp(b->st.cipher, c) != 0)
			b->st.cipher = "mixed";
	}
	if (b->o.tls) {
		s->state = ST_GREETING;
		s->expect = 1;
	} else {
		session_enter(s, ST_EHLO);
	}
}

static void session_parse(struct blast_session *, size_t);

/* tls_input - after ciphertext was pushed: advance the handshake, then parse the plaintext replies */
static void tls_input(struct blast_session *s)
{
	char err[256];
	int n;

	if (!(s->flags & SF_TLS_UP)) {
		n = hk_tls_conn_handshake(s->tls, err, sizeof(err));
		if (tls_flush(s) < 0)
			return;
		if (n == HK_TLS_ERROR) {
			session_fail(s, err, 0);
			return;
		}
		if (n != 1)
			return;
		tls_up(s);
	}
	while (!(s->flags & SF_CLOSING)) {
		n = hk_tls_conn_read(s->tls, s->rbuf + s->rlen, sizeof(s->rbuf) - s->rlen);
		if (n > 0) {
			session_parse(s, (size_t)n);
			continue;
		}
		if (n == HK_TLS_AGAIN)
			break;
		if (n == HK_TLS_CLOSED && s->state == ST_QUIT)
			session_close(s);
		else
			session_fail(s, n == HK_TLS_CLOSED ? "server closed TLS" : "TLS read", 0);
		return;
	}
	if (!(s->flags & SF_CLOSING))
		tls_flush(s);
}

static void session_connect(struct blast_session *s)
{
	struct blast *b = s->b;
	int rc;

	s->state = ST_CONNECT;
	s->expect = 0;
	s->on_conn = 0;
	s->rlen = 0;
	s->msg = 0;
	s->last_code = 0;
	s->last_ms = uv_now(&b->loop);
	uv_tcp_init(&b->loop, &s->tcp);
	s->tcp.data = s;
	s->creq.data = s;
	rc = uv_tcp_connect(&s->creq, &s->tcp, (struct sockaddr *)&b->addr, on_connect);
	if (rc < 0)
		session_fail(s, "connect", rc);
}

/* Replies. */

/* session_ready - after EHLO (or HELO): STARTTLS, AUTH, or the first message */
static enum blast_state session_ready(struct blast_session *s)
{
	struct blast *b = s->b;

	if (b->o.starttls && !(s->flags & SF_TLS_UP))
		return ST_STARTTLS;
	if (b->auth_line != NULL)
		return ST_AUTH;
	return ST_NEXT;
}

/* session_next - start the next message on this connection, or say goodbye */
static enum blast_state session_next(struct blast_session *s)
{
	uint64_t id;

	if (s->on_conn >= s->b->o.per_session || (id = blast_claim(s->b)) == 0)
		return ST_QUIT;
	message_start(s, id);
	return ST_MAIL;
}

static void session_enter(struct blast_session *s, enum blast_state next)
{
	if (next == ST_READY)
		next = session_ready(s);
	switch (next) {
	case ST_NEXT:
		next = session_next(s);
		break;
	case ST_CLOSE:
		session_close(s);
		return;
	case ST_ABORT:
		session_fail(s, s->why ? s->why : "unexpected reply", 0);
		return;
	default:
		break;
	}
	s->state = next;
	/* A pipelined batch already carries the RCPTs and DATA: their states only read replies. */
	if ((s->flags & SF_PIPELINING) && (next == ST_RCPT || next == ST_DATA))
		return;
	session_send(s);
}

/* session_reply - one final reply line: account for it and pick the next state */
static void session_reply(struct blast_session *s, int code)
{
	struct blast *b = s->b;
	const struct blast_row *row = &blast_rows[s->state];
	int cls = code / 100, ok = cls == row->ok;
	int piped = (s->flags & SF_PIPELINING) != 0;
	enum blast_state next = ok ? row->on_ok : row->on_fail;
	uint64_t us;

	s->why = NULL;
	s->last_code = code;
	if (code == 421 && s->state != ST_QUIT) {
		/* The server is closing the connection: no RSET, just reconnect. */
		if (s->msg) {
			message_done(s, 4);
			session_close(s);
		} else {
			s->why = "421 reply";
			session_enter(s, ST_ABORT);
		}
		return;
	}
	switch (s->state) {
	case ST_GREETING:
	case ST_HELO:
	case ST_RSET:
		if (!ok)
			s->why = "server refused the session";
		break;
	case ST_EHLO:
		if (!ok)
			s->flags &= ~SF_PIPELINING;	/* falling back to HELO */
		else if ((s->flags & SF_PIPELINING) && (!b->o.starttls || (s->flags & SF_TLS_UP)))
			b->st.pipelined++;	/* counted once, for the EHLO that governs the transactions */
		break;
	case ST_STARTTLS:
		if (!ok)
			s->why = "STARTTLS refused";
		break;
	case ST_AUTH:
		if (!ok)
			s->why = "AUTH refused";
		break;
	case ST_QUIT:
		if (ok) {
			b->st.sessions++;
			b->st.t_sess_last = uv_hrtime();
		}
		break;
	case ST_MAIL:
		if (!ok) {
			s->fail_class = cls;
			if (piped)
				next = ST_RCPT;
		}
		break;
	case ST_RCPT:
		s->rcpt_done++;
		if (ok) {
			s->rcpt_ok++;
		} else if (s->fail_class == 0) {
			b->st.rcpt_rejected++;
			s->rcpt_temp += cls == 4;
		}
		if (s->rcpt_done < b->o.rcpts)
			break;
		if (s->rcpt_ok > 0) {
			next = ST_DATA;
		} else {
			if (s->fail_class == 0)
				s->fail_class = s->rcpt_temp ? 4 : 5;
			next = piped ? ST_DATA : ST_RSET;
		}
		break;
	case ST_DATA:
		if (!ok && s->fail_class == 0)
			s->fail_class = cls;
		break;
	case ST_BODY:
		us = (uv_hrtime() - s->t_dot) / 1000;
		b->st.hist[hist_index(us)]++;
		b->st.lat_count++;
		if (us > b->st.lat_max_us)
			b->st.lat_max_us = us;
		message_done(s, cls == 2 ? 2 : cls);
		break;
	default:
		break;
	}
	/* The transaction failed: count the message now, then RSET. */
	if (next == ST_RSET && s->msg)
		message_done(s, s->fail_class ? s->fail_class : cls);
	session_enter(s, next);
}

static int ehlo_has_pipelining(const char *text, size_t len)
{
	static const char kw[] = "PIPELINING";

	return len >= sizeof(kw) - 1 && strncasecmp(text, kw, sizeof(kw) - 1) == 0
	    && (len == sizeof(kw) - 1 || text[sizeof(kw) - 1] == ' ');
}

/* session_line - one reply line without its line ending */
static void session_line(struct blast_session *s, const char *line, size_t len)
{
	int code;

	if (len < 3 || line[0] < '2' || line[0] > '5' || !isdigit((unsigned char)line[1])
	    || !isdigit((unsigned char)line[2]) || (len > 3 && line[3] != ' ' && line[3] != '-')) {
		session_fail(s, "malformed reply line", 0);
		return;
	}
	if (s->expect == 0) {
		session_fail(s, "reply to no command", 0);
		return;
	}
	if (s->state == ST_EHLO && s->b->o.pipelining && len > 4
	    && ehlo_has_pipelining(line + 4, len - 4))
		s->flags |= SF_PIPELINING;
	if (len > 3 && line[3] == '-')
		return;
	code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	s->expect--;
	session_reply(s, code);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct blast_session *s = h->data;

	(void)hint;
	if (s->tls != NULL) {
		buf->base = s->tls_in;
		buf->len = BLAST_TLS_IN;
		return;
	}
	buf->base = s->rbuf + s->rlen;
	buf->len = sizeof(s->rbuf) - s->rlen;
}

/* session_parse - NREAD more bytes of reply text at rbuf + rlen: handle each complete line */
static void session_parse(struct blast_session *s, size_t nread)
{
	char *p, *end, *nl;
	size_t len;

	s->rlen += nread;
	p = s->rbuf;
	end = s->rbuf + s->rlen;
	while ((nl = memchr(p, '\n', (size_t)(end - p))) != NULL) {
		len = (size_t)(nl - p);
		if (len > 0 && p[len - 1] == '\r')
			len--;
		session_line(s, p, len);
		p = nl + 1;
		if (s->flags & SF_CLOSING)
			return;
		if (s->state == ST_TLS && !(s->flags & SF_TLS_UP)) {
			/* STARTTLS's 220 ends the clear text: anything after it would be injected. */
			if (p != end)
				session_fail(s, "clear text after the 220 to STARTTLS", 0);
			s->rlen = 0;
			return;
		}
	}
	s->rlen = (size_t)(end - p);
	if (s->rlen == sizeof(s->rbuf)) {
		session_fail(s, "reply line too long", 0);
		return;
	}
	if (s->rlen > 0 && p != s->rbuf)
		memmove(s->rbuf, p, s->rlen);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct blast_session *s = stream->data;

	(void)buf;
	if (s->flags & SF_CLOSING)
		return;
	if (nread < 0) {
		if (nread == UV_EOF && s->state == ST_QUIT)
			session_close(s);
		else
			session_fail(s, nread == UV_EOF ? "server closed the connection" : "read",
			    nread == UV_EOF ? 0 : (int)nread);
		return;
	}
	if (nread == 0)
		return;
	s->last_ms = uv_now(&s->b->loop);
	if (s->tls != NULL) {
		hk_tls_conn_push(s->tls, s->tls_in, (size_t)nread);
		tls_input(s);
		return;
	}
	session_parse(s, (size_t)nread);
}

/* Timers and signals. */

static void on_tick(uv_timer_t *t)
{
	struct blast *b = t->data;
	uint64_t now = uv_now(&b->loop);
	unsigned i;

	for (i = 0; i < b->nsessions; i++) {
		struct blast_session *s = &b->sessions[i];

		if (s->state == ST_IDLE || (s->flags & (SF_CLOSING | SF_DONE)))
			continue;
		if ((s->state == ST_CONNECT || s->state == ST_TLS || s->expect > 0 || (s->flags & SF_WRITING))
		    && now - s->last_ms > b->timeout_ms)
			session_fail(s, "timeout", UV_ETIMEDOUT);
	}
}

static void on_sigint(uv_signal_t *sig, int signum)
{
	struct blast *b = sig->data;

	(void)signum;
	fprintf(stderr, "hk-blast: interrupted: finishing messages in flight (again to abort)\n");
	b->stopping = 1;
	uv_signal_stop(sig);	/* the default action is back for a second SIGINT */
}

/* Setup. */

/* domain_fmt_valid - exactly one integer conversion, so snprintf(fmt, int) is safe */
static int domain_fmt_valid(const char *f)
{
	int convs = 0;
	const char *p;

	for (p = f; *p; p++) {
		if (*p != '%')
			continue;
		if (*++p == '%')
			continue;
		while (*p && strchr("-+ #0", *p))
			p++;
		while (isdigit((unsigned char)*p))
			p++;
		if (*p == '.')
			for (p++; isdigit((unsigned char)*p); p++)
				;
		if (*p == '\0' || !strchr("diouxX", *p))
			return 0;
		convs++;
	}
	return convs == 1;
}

static int blast_build_domains(struct blast *b)
{
	size_t cap = (size_t)b->o.domains * 16 + 256, used = 0;
	char tmp[300];
	unsigned i;
	int n;

	b->dom = xmalloc(cap);
	b->dom_off = xmalloc(((size_t)b->o.domains + 1) * sizeof(*b->dom_off));
	for (i = 0; i < b->o.domains; i++) {
		n = snprintf(tmp, sizeof(tmp), b->o.domain_fmt, (int)i);
		if (n <= 0 || n > 253) {
			fprintf(stderr, "hk-blast: --domain-fmt gives a %d-byte domain for index %u (1..253 allowed)\n", n, i);
			return -1;
		}
		if (used + (size_t)n > cap) {
			cap = cap * 2 + (size_t)n;
			b->dom = realloc(b->dom, cap);
			if (b->dom == NULL) {
				fprintf(stderr, "hk-blast: out of memory for domains\n");
				abort();
			}
		}
		b->dom_off[i] = (uint32_t)used;
		memcpy(b->dom + used, tmp, (size_t)n);
		used += (size_t)n;
		if ((size_t)n > b->dom_max)
			b->dom_max = (size_t)n;
	}
	b->dom_off[b->o.domains] = (uint32_t)used;
	return 0;
}

/* blast_build_body - `size` bytes of CRLF lines counted from the end (see send_body) */
static void blast_build_body(struct blast *b)
{
	static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
	size_t i, back;

	b->blen = b->o.size;
	b->body = xmalloc(b->blen);
	for (i = 0; i < b->blen; i++) {
		back = (b->blen - i) % (BLAST_LINE + 2);
		if (back == 2)
			b->body[i] = '\r';
		else if (back == 1)
			b->body[i] = '\n';
		else
			b->body[i] = alpha[(i + i / (BLAST_LINE + 2)) % (sizeof(alpha) - 1)];
	}
}

static int blast_resolve(struct blast *b)
{
	const char *spec = b->o.server, *colon;
	char host[256], port[16];
	struct addrinfo hints, *ai;
	uv_getaddrinfo_t req;
	size_t hlen;
	int rc;

	if (spec[0] == '[') {
		const char *close = strchr(spec, ']');

		if (close == NULL || close[1] != ':')
			goto bad;
		hlen = (size_t)(close - spec - 1);
		spec++;
		colon = close + 1;
	} else {
		colon = strrchr(spec, ':');
		if (colon == NULL)
			goto bad;
		hlen = (size_t)(colon - spec);
	}
	if (hlen == 0 || hlen >= sizeof(host) || strlen(colon + 1) == 0
	    || strlen(colon + 1) >= sizeof(port) || strspn(colon + 1, "0123456789") != strlen(colon + 1))
		goto bad;
	memcpy(host, spec, hlen);
	host[hlen] = '\0';
	strcpy(port, colon + 1);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	/* No callback: libuv resolves synchronously, which is what we want before the clock starts. */
	rc = uv_getaddrinfo(&b->loop, &req, NULL, host, port, &hints);
	if (rc < 0) {
		fprintf(stderr, "hk-blast: cannot resolve %s: %s\n", b->o.server, uv_strerror(rc));
		return -1;
	}
	ai = req.addrinfo;
	memcpy(&b->addr, ai->ai_addr, ai->ai_addrlen);
	uv_freeaddrinfo(ai);
	return 0;
bad:
	fprintf(stderr, "hk-blast: --server wants HOST:PORT or [IPV6]:PORT, got \"%s\"\n", b->o.server);
	return -1;
}

static void blast_build_lines(struct blast *b)
{
	char date[64];
	time_t now = time(NULL);
	struct tm tm;

	localtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
	b->ehlo_line = xasprintf(&b->ehlo_len, "EHLO %s\r\n", b->o.helo);
	b->helo_line = xasprintf(&b->helo_len, "HELO %s\r\n", b->o.helo);
	b->mail_line = xasprintf(&b->mail_len, "MAIL FROM:<%s>\r\n", b->o.from);
	b->hdr_fixed = xasprintf(&b->hdr_fixed_len, "From: <%s>\r\nDate: %s\r\n\r\n", b->o.from, date);
	b->pid_len = (size_t)snprintf(b->pid, sizeof(b->pid), "%ld", (long)getpid());
	/* "RCPT TO:<u" + 20 digits + "@" + domain + ">\r\n" per recipient, then "DATA\r\n". */
	b->cmd_cap = (size_t)b->o.rcpts * (34 + b->dom_max) + 16;
	/* Message-ID, Subject and To with 20-digit numbers, the fixed part, the pad byte. */
	b->hdr_cap = 160 + b->pid_len + b->dom_max + b->hdr_fixed_len;
}

/* blast_build_auth - "AUTH PLAIN base64(\\0user\\0pass)\r\n" once (RFC 4616, initial response) */
static void blast_build_auth(struct blast *b)
{
	const char *colon = strchr(b->o.auth, ':');
	size_t ulen = (size_t)(colon - b->o.auth), plen = strlen(colon + 1), rawlen = ulen + plen + 2;
	unsigned char *raw = xmalloc(rawlen);
	char *line = xmalloc(11 + 4 * ((rawlen + 2) / 3) + 3);
	int n;

	raw[0] = '\0';
	memcpy(raw + 1, b->o.auth, ulen);
	raw[1 + ulen] = '\0';
	memcpy(raw + 2 + ulen, colon + 1, plen);
	memcpy(line, "AUTH PLAIN ", 11);
	n = EVP_EncodeBlock((unsigned char *)line + 11, raw, (int)rawlen);
	memcpy(line + 11 + n, "\r\n", 3);
	b->auth_line = line;
	b->auth_len = 11 + (size_t)n + 2;
	OPENSSL_cleanse(raw, rawlen);
	free(raw);
}

/*
 * blast_ssl_ctx - the client context: TLS 1.2 or 1.3, OpenSSL's defaults
 * otherwise (what a stock client offers). With --cafile the chain must
 * verify and the certificate name the --server host (or its IP address).
 */
static int blast_ssl_ctx(struct blast *b)
{
	const char *spec = b->o.server, *end;
	char host[256];
	size_t hlen;
	X509_VERIFY_PARAM *vp;
	unsigned long e;

	b->ssl_ctx = SSL_CTX_new(TLS_client_method());
	if (b->ssl_ctx == NULL)
		goto ssl_fail;
	SSL_CTX_set_min_proto_version(b->ssl_ctx, TLS1_2_VERSION);
	if (b->o.insecure) {
		SSL_CTX_set_verify(b->ssl_ctx, SSL_VERIFY_NONE, NULL);
		return 0;
	}
	if (SSL_CTX_load_verify_locations(b->ssl_ctx, b->o.cafile, NULL) != 1) {
		fprintf(stderr, "hk-blast: cannot load --cafile %s\n", b->o.cafile);
		goto ssl_fail;
	}
	SSL_CTX_set_verify(b->ssl_ctx, SSL_VERIFY_PEER, NULL);
	/* The host part of --server, already checked by blast_resolve. */
	if (spec[0] == '[') {
		spec++;
		end = strchr(spec, ']');
	} else {
		end = strrchr(spec, ':');
	}
	hlen = (size_t)(end - spec);
	memcpy(host, spec, hlen);
	host[hlen] = '\0';
	vp = SSL_CTX_get0_param(b->ssl_ctx);
	if (X509_VERIFY_PARAM_set1_ip_asc(vp, host) != 1) {
		ERR_clear_error();
		if (X509_VERIFY_PARAM_set1_host(vp, host, 0) != 1)
			goto ssl_fail;
	}
	return 0;
ssl_fail:
	e = ERR_get_error();
	fprintf(stderr, "hk-blast: TLS setup: %s\n", e ? ERR_error_string(e, NULL) : "failed");
	return -1;
}

static void blast_raise_nofile(unsigned want)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)want + 64) {
		rl.rlim_cur = rl.rlim_max < (rlim_t)want + 64 ? rl.rlim_max : (rlim_t)want + 64;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* Options. */

static void usage(FILE *f)
{
	fprintf(f,
	    "usage: hk-blast --server HOST:PORT [options]\n"
	    "  --sessions S        concurrent SMTP sessions (20)\n"
	    "  --messages N        total messages (10000)\n"
	    "  --per-session K     messages per connection before QUIT and reconnect (100)\n"
	    "  --size BYTES        message size including headers (4096)\n"
	    "  --domains D         recipient domains (1000)\n"
	    "  --domain-fmt FMT    printf format of a domain from its index (d%%04d.bench)\n"
	    "  --skew F            fraction of recipients at domain 0, rest uniform (0)\n"
	    "  --rcpts R           recipients per message (1)\n"
	    "  --from ADDR         envelope sender (bench@client.bench)\n"
	    "  --helo NAME         EHLO name (client.bench)\n"
	    "  --pipelining        MAIL+RCPT+DATA in one write if the server allows\n"
	    "  --max-seconds T     start no message after T seconds (600)\n"
	    "  --timeout T         seconds to wait for a reply or a connect (60)\n"
	    "  --seed N            domain picking seed (1)\n"
	    "  --json              one JSON object on stdout\n"
	    "  --starttls          EHLO, STARTTLS, handshake, EHLO again, then the transactions\n"
	    "  --tls               implicit TLS from connect (smtps listeners)\n"
	    "  --cafile FILE       with TLS: trust these CAs; the certificate must name the --server host\n"
	    "  --insecure          with TLS: verify nothing\n"
	    "  --auth USER:PASS    AUTH PLAIN once per connection (after TLS, if any), before MAIL\n"
	    "exit: 0 all messages got 2xx, 1 otherwise, 2 usage error\n");
}

static int parse_u64(const char *opt, const char *arg, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(arg, &end, 10);
	if (errno || end == arg || *end != '\0' || arg[0] == '-' || v < min || v > max) {
		fprintf(stderr, "hk-blast: --%s wants an integer in %" PRIu64 "..%" PRIu64 ", got \"%s\"\n",
		    opt, min, max, arg);
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_double(const char *opt, const char *arg, double min, double max, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(arg, &end);
	if (errno || end == arg || *end != '\0' || !(v >= min && v <= max)) {
		fprintf(stderr, "hk-blast: --%s wants a number in %g..%g, got \"%s\"\n", opt, min, max, arg);
		return -1;
	}
	*out = v;
	return 0;
}

/* blast_parse - fill opts from argv: 0 to run, 1 for --help, -1 on a usage error */
static int blast_parse(struct blast_opts *o, int argc, char **argv)
{
	enum { O_SERVER = 256, O_SESSIONS, O_MESSAGES, O_PER_SESSION, O_SIZE, O_DOMAINS,
		O_DOMAIN_FMT, O_SKEW, O_RCPTS, O_FROM, O_HELO, O_PIPELINING, O_MAX_SECONDS,
		O_TIMEOUT, O_SEED, O_JSON, O_STARTTLS, O_TLS, O_CAFILE, O_INSECURE, O_AUTH };
	static const struct option longopts[] = {
		{"server", required_argument, NULL, O_SERVER},
		{"sessions", required_argument, NULL, O_SESSIONS},
		{"messages", required_argument, NULL, O_MESSAGES},
		{"per-session", required_argument, NULL, O_PER_SESSION},
		{"size", required_argument, NULL, O_SIZE},
		{"domains", required_argument, NULL, O_DOMAINS},
		{"domain-fmt", required_argument, NULL, O_DOMAIN_FMT},
		{"skew", required_argument, NULL, O_SKEW},
		{"rcpts", required_argument, NULL, O_RCPTS},
		{"from", required_argument, NULL, O_FROM},
		{"helo", required_argument, NULL, O_HELO},
		{"pipelining", no_argument, NULL, O_PIPELINING},
		{"max-seconds", required_argument, NULL, O_MAX_SECONDS},
		{"timeout", required_argument, NULL, O_TIMEOUT},
		{"seed", required_argument, NULL, O_SEED},
		{"json", no_argument, NULL, O_JSON},
		{"starttls", no_argument, NULL, O_STARTTLS},
		{"tls", no_argument, NULL, O_TLS},
		{"cafile", required_argument, NULL, O_CAFILE},
		{"insecure", no_argument, NULL, O_INSECURE},
		{"auth", required_argument, NULL, O_AUTH},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	uint64_t v;
	int c, rc = 0;

	o->sessions = 20;
	o->messages = 10000;
	o->per_session = 100;
	o->size = 4096;
	o->domains = 1000;
	o->domain_fmt = "d%04d.bench";
	o->from = "bench@client.bench";
	o->helo = "client.bench";
	o->max_seconds = 600;
	o->timeout = 60;
	o->seed = 1;
	while (rc == 0 && (c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case O_SERVER:
			o->server = optarg;
			break;
		case O_SESSIONS:
			rc = parse_u64("sessions", optarg, 1, 100000, &v);
			o->sessions = (unsigned)v;
			break;
		case O_MESSAGES:
			rc = parse_u64("messages", optarg, 1, UINT64_C(1) << 40, &o->messages);
			break;
		case O_PER_SESSION:
			rc = parse_u64("per-session", optarg, 1, UINT64_MAX, &o->per_session);
			break;
		case O_SIZE:
			rc = parse_u64("size", optarg, 1, UINT64_C(1) << 30, &v);
			o->size = (size_t)v;
			break;
		case O_DOMAINS:
			rc = parse_u64("domains", optarg, 1, 10000000, &v);
			o->domains = (unsigned)v;
			break;
		case O_DOMAIN_FMT:
			o->domain_fmt = optarg;
			break;
		case O_SKEW:
			rc = parse_double("skew", optarg, 0, 1, &o->skew);
			break;
		case O_RCPTS:
			rc = parse_u64("rcpts", optarg, 1, 10000, &v);
			o->rcpts = (unsigned)v;
			break;
		case O_FROM:
			o->from = optarg;
			break;
		case O_HELO:
			o->helo = optarg;
			break;
		case O_PIPELINING:
			o->pipelining = 1;
			break;
		case O_MAX_SECONDS:
			rc = parse_double("max-seconds", optarg, 0.001, 1e9, &o->max_seconds);
			break;
		case O_TIMEOUT:
			rc = parse_double("timeout", optarg, 0.001, 1e6, &o->timeout);
			break;
		case O_SEED:
			rc = parse_u64("seed", optarg, 0, UINT64_MAX, &o->seed);
			break;
		case O_JSON:
			o->json = 1;
			break;
		case O_STARTTLS:
			o->starttls = 1;
			break;
		case O_TLS:
			o->tls = 1;
			break;
		case O_CAFILE:
			o->cafile = optarg;
			break;
		case O_INSECURE:
			o->insecure = 1;
			break;
		case O_AUTH:
			o->auth = optarg;
			break;
		case 'h':
			usage(stdout);
			return 1;
		default:
			usage(stderr);
			return -1;
		}
	}
	if (rc < 0)
		return -1;
	if (o->rcpts == 0)
		o->rcpts = 1;
	if (optind < argc) {
		fprintf(stderr, "hk-blast: unexpected argument \"%s\"\n", argv[optind]);
		return -1;
	}
	if (o->server == NULL) {
		fprintf(stderr, "hk-blast: --server HOST:PORT is required\n");
		return -1;
	}
	if (!domain_fmt_valid(o->domain_fmt)) {
		fprintf(stderr, "hk-blast: --domain-fmt \"%s\" must hold exactly one integer conversion (%%d, %%x, ...)\n",
		    o->domain_fmt);
		return -1;
	}
	if (strpbrk(o->from, "<>\r\n \t") != NULL) {
		fprintf(stderr, "hk-blast: --from \"%s\" must be a bare address (no <>, spaces or line breaks)\n", o->from);
		return -1;
	}
	if (o->helo[0] == '\0' || strpbrk(o->helo, "\r\n \t") != NULL) {
		fprintf(stderr, "hk-blast: --helo \"%s\" must be one non-empty word\n", o->helo);
		return -1;
	}
	if (o->starttls && o->tls) {
		fprintf(stderr, "hk-blast: --starttls and --tls exclude each other\n");
		return -1;
	}
	if ((o->starttls || o->tls) && !o->cafile == !o->insecure) {
		fprintf(stderr, "hk-blast: TLS needs exactly one of --cafile FILE and --insecure\n");
		return -1;
	}
	if (!(o->starttls || o->tls) && (o->cafile || o->insecure)) {
		fprintf(stderr, "hk-blast: --cafile and --insecure only go with --starttls or --tls\n");
		return -1;
	}
	if (o->auth && (strchr(o->auth, ':') == NULL || o->auth[0] == ':' || strlen(o->auth) > 1000)) {
		fprintf(stderr, "hk-blast: --auth wants USER:PASS (the user non-empty; the password may hold ':')\n");
		return -1;
	}
	return 0;
}

/* Report. */

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void json_or_null(FILE *f, const char *s)
{
	if (s == NULL)
		fputs("null", f);
	else
		json_string(f, s);
}

static void blast_report(const struct blast *b)
{
	const struct blast_stats *st = &b->st;
	double elapsed = st->t_last > st->t_first ? (double)(st->t_last - st->t_first) / 1e9 : 0;
	double rate = elapsed > 0 ? (double)st->sent / elapsed : 0;
	uint64_t unsent = b->o.messages - st->claimed;
	double p50 = hist_pct_ms(st, 0.50), p90 = hist_pct_ms(st, 0.90), p99 = hist_pct_ms(st, 0.99);
	double max = (double)st->lat_max_us / 1000.0;
	double sess_elapsed = st->t_sess_last > st->t_first ? (double)(st->t_sess_last - st->t_first) / 1e9 : 0;
	double sess_rate = sess_elapsed > 0 ? (double)st->sessions / sess_elapsed : 0;
	const char *tls_mode = b->o.tls ? "smtps" : b->o.starttls ? "starttls" : "none";

	if (b->o.json) {
		printf("{\"server\":");
		json_string(stdout, b->o.server);
		printf(",\"messages\":%" PRIu64 ",\"sent\":%" PRIu64 ",\"temp_failed\":%" PRIu64
		    ",\"perm_failed\":%" PRIu64 ",\"conn_errors\":%" PRIu64 ",\"unsent\":%" PRIu64
		    ",\"rcpt_rejected\":%" PRIu64 ",\"elapsed_s\":%.3f,\"rate\":%.1f"
		    ",\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f"
		    ",\"sessions\":%u,\"size\":%zu,\"rcpts\":%u,\"per_session\":%" PRIu64
		    ",\"pipelining\":%s,\"connects\":%" PRIu64 ",\"pipelined_connects\":%" PRIu64
		    ",\"conn_failures\":%" PRIu64,
		    b->o.messages, st->sent, st->temp_failed, st->perm_failed, st->conn_errors, unsent,
		    st->rcpt_rejected, elapsed, rate, p50, p90, p99, max, b->o.sessions, b->o.size,
		    b->o.rcpts, b->o.per_session, b->o.pipelining ? "true" : "false",
		    st->connects, st->pipelined, st->conn_failures);
		printf(",\"tls\":\"%s\",\"auth\":%s,\"tls_version\":", tls_mode,
		    b->o.auth ? "true" : "false");
		json_or_null(stdout, st->tls_version);
		printf(",\"cipher\":");
		json_or_null(stdout, st->cipher);
		printf(",\"handshakes\":%" PRIu64 ",\"sessions_completed\":%" PRIu64
		    ",\"sessions_elapsed_s\":%.3f,\"sessions_per_s\":%.1f}\n",
		    st->handshakes, st->sessions, sess_elapsed, sess_rate);
		return;
	}
	printf("hk-blast: %s, %u sessions, %zu bytes, %u rcpt/msg, %" PRIu64 " msg/connection, pipelining %s\n",
	    b->o.server, b->o.sessions, b->o.size, b->o.rcpts, b->o.per_session,
	    b->o.pipelining ? "requested" : "off");
	printf("  sent %" PRIu64 "  temp_failed %" PRIu64 "  perm_failed %" PRIu64 "  conn_errors %" PRIu64
	    "  unsent %" PRIu64 "  rcpt_rejected %" PRIu64 "\n",
	    st->sent, st->temp_failed, st->perm_failed, st->conn_errors, unsent, st->rcpt_rejected);
	printf("  elapsed %.3f s  rate %.1f msg/s  connects %" PRIu64 " (%" PRIu64 " pipelined)  conn_failures %"
	    PRIu64 "\n", elapsed, rate, st->connects, st->pipelined, st->conn_failures);
	printf("  latency ms: p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n", p50, p90, p99, max);
	printf("  sessions completed %" PRIu64 " in %.3f s: %.1f sessions/s\n", st->sessions, sess_elapsed, sess_rate);
	if (b->ssl_ctx != NULL)
		printf("  TLS %s: %" PRIu64 " handshakes, %s, %s%s\n", tls_mode, st->handshakes,
		    st->tls_version ? st->tls_version : "-", st->cipher ? st->cipher : "-",
		    b->o.auth ? ", AUTH PLAIN" : "");
}

static void blast_free(struct blast *b)
{
	unsigned i;

	for (i = 0; b->sessions && i < b->nsessions; i++) {
		free(b->sessions[i].rdom);
		free(b->sessions[i].cmd);
		free(b->sessions[i].hdr);
		free(b->sessions[i].tls_rec);
		free(b->sessions[i].tls_out);
		free(b->sessions[i].tls_in);
	}
	free(b->sessions);
	free(b->body);
	free(b->dom);
	free(b->dom_off);
	free(b->ehlo_line);
	free(b->helo_line);
	free(b->mail_line);
	free(b->hdr_fixed);
	free(b->auth_line);
	SSL_CTX_free(b->ssl_ctx);
}

int main(int argc, char **argv)
{
	struct blast *b = xcalloc(1, sizeof(*b));	/* the histogram is ~100 KB: not on the stack */
	unsigned i;
	int rc;

	rc = blast_parse(&b->o, argc, argv);
	if (rc != 0) {
		free(b);
		return rc > 0 ? 0 : 2;
	}
	signal(SIGPIPE, SIG_IGN);	/* a peer reset must be a write error, not our death */
	uv_loop_init(&b->loop);
	if (blast_resolve(b) < 0 || blast_build_domains(b) < 0
	    || ((b->o.starttls || b->o.tls) && blast_ssl_ctx(b) < 0)) {
		uv_loop_close(&b->loop);
		blast_free(b);
		free(b);
		return 2;
	}
	blast_build_body(b);
	blast_build_lines(b);
	if (b->o.auth)
		blast_build_auth(b);
	b->rng = b->o.seed;
	b->max_ms = (uint64_t)(b->o.max_seconds * 1000);
	b->timeout_ms = (uint64_t)(b->o.timeout * 1000);
	b->nsessions = b->o.messages < b->o.sessions ? (unsigned)b->o.messages : b->o.sessions;
	blast_raise_nofile(b->nsessions);
	b->sessions = xcalloc(b->nsessions, sizeof(*b->sessions));

	uv_timer_init(&b->loop, &b->tick);
	b->tick.data = b;
	uv_timer_start(&b->tick, on_tick, BLAST_TICK_MS, BLAST_TICK_MS);
	uv_signal_init(&b->loop, &b->sigint);
	b->sigint.data = b;
	uv_signal_start(&b->sigint, on_sigint, SIGINT);

	uv_update_time(&b->loop);
	b->start_ms = uv_now(&b->loop);
	b->st.t_first = uv_hrtime();
	b->active = b->nsessions;
	for (i = 0; i < b->nsessions; i++) {
		struct blast_session *s = &b->sessions[i];

		s->b = b;
		s->idx = i;
		s->rdom = xcalloc(b->o.rcpts, sizeof(*s->rdom));
		s->cmd = xmalloc(b->cmd_cap);
		s->hdr = xmalloc(b->hdr_cap);
		if (b->ssl_ctx != NULL) {
			s->tls_rec = xmalloc(BLAST_TLS_REC);
			s->tls_out = xmalloc(BLAST_TLS_OUT);
			s->tls_in = xmalloc(BLAST_TLS_IN);
		}
		uv_timer_init(&b->loop, &s->retry);
		s->retry.data = s;
	}
	for (i = 0; i < b->nsessions; i++)
		session_connect(&b->sessions[i]);
	uv_run(&b->loop, UV_RUN_DEFAULT);
	rc = uv_loop_close(&b->loop);
	if (rc != 0)
		fprintf(stderr, "hk-blast: loop closed with handles open: %s\n", uv_strerror(rc));

	blast_report(b);
	rc = b->st.sent == b->o.messages && b->st.rcpt_rejected == 0 ? 0 : 1;
	blast_free(b);
	free(b);
	return rc;
}
