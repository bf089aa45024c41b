/*
 * ingress_session - the inbound ESMTP dialogue.
 *
 * States (ingress_enter_state() is the only place that changes s->state, and
 * it also arms the timer that belongs to the new state):
 *
 *   NEW --HELO/EHLO--> HELO --MAIL--> MAIL --RCPT--> RCPT --DATA--> DATA
 *   DATA --CRLF.CRLF--> SUBMIT (waiting for the router) --answer--> HELO
 *   RCPT --BDAT n--> BDAT (reading n octets) --chunk read--> RCPT, or
 *        SUBMIT after BDAT LAST (CHUNKING, RFC 3030)
 *   HELO --STARTTLS--> TLS (handshake) --done--> NEW (session state forgotten)
 *   HELO --AUTH--> AUTH (SASL exchange) --credentials--> AUTH_PENDING
 *        (password check on the thread pool) --235/535--> HELO
 *   start on an smtps listener: TLS --done--> NEW (then the greeting)
 *   AUTH/AUTH_PENDING --client IP over auth_failure_limit--> TARPIT (1 s,
 *        on the timer) --535, 421--> QUIT
 *   any --QUIT, timeout, too many errors--> QUIT (last replies drain) -> closed
 *
 * The order of NEW < HELO < MAIL < RCPT matters: the command table's
 * "needs" flags compare against it. TLS, SUBMIT and AUTH_PENDING execute no
 * command (input stays buffered); in AUTH a line is a SASL response.
 *
 * The byte stream is plain TCP until STARTTLS (or from the start on an
 * smtps listener), then TLS through hk_tls's memory-BIO engine: what is read
 * from the socket is pushed into the engine and the plaintext lands in the
 * same input buffer as before; replies are encrypted on their way out. After
 * the 220 to STARTTLS, plaintext the client sent behind the command is
 * dropped (RFC 3207 5, the command-injection attack).
 *
 * Input is read into a fixed buffer and executed in order (PIPELINING,
 * RFC 2920): replies are collected and written when no complete command is
 * left, after a command that must end a pipeline group, or when a command has
 * to wait. While a submission is pending nothing more is executed; reading
 * goes on only until the buffer is full, so that a client that hangs up is
 * noticed. Replies that the client does not read stop execution at
 * INGRESS_OUT_HIGH bytes, so a flood of commands cannot grow our memory.
 *
 * Limits (docs/ARCHITECTURE.md): each has its standard reply and one
 * "limit_exceeded" log line naming the limit (its config key) and the
 * client, and none of them blocks the loop: sessions per client IP and an
 * IP blocked for failed AUTH are refused at connect; the AUTH tarpit is a
 * timer.
 */
/* System */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Third-party */
#include <jansson.h>
#include <openssl/crypto.h>
#include <uv.h>

/* common/ */
#include "hk_log.h"
#include "hk_tls.h"
#include "hk_util.h"

/* This role */
#include "ingress_bdat.h"
#include "ingress_headers.h"
#include "ingress_limits.h"
#include "ingress_parse.h"
#include "ingress_session.h"

#define INGRESS_IN_CAP (16 * 1024)   /* read buffer; > INGRESS_LINE_MAX */
#define INGRESS_OUT_HIGH (64 * 1024) /* unsent replies that pause execution */
#define INGRESS_QUIT_LINGER_MS 10000 /* time for the last replies to drain */
#define INGRESS_HELO_MAX 255
#define INGRESS_RAW_CAP (17 * 1024)  /* ciphertext per read: a TLS record and some */
#define INGRESS_AUTH_FAILURES 3      /* failed AUTH before we hang up */
#define INGRESS_AUTH_TARPIT_MS 1000  /* AUTH answer delay for a blocked client IP */

enum auth_step { AUTH_PLAIN, AUTH_LOGIN_USER, AUTH_LOGIN_PASS };

#define INGRESS_STATES(X)                                               \
	X(NEW)    /* greeting sent, no HELO/EHLO yet */                 \
	X(HELO)   /* greeted, no transaction */                         \
	X(MAIL)   /* MAIL accepted */                                   \
	X(RCPT)   /* at least one RCPT accepted */                      \
	X(DATA)   /* reading the message */                             \
	X(BDAT)   /* reading a BDAT chunk */                            \
	X(SUBMIT) /* message handed to a router, waiting for its answer */ \
	X(QUIT)   /* last replies draining, then close */               \
	X(TLS)    /* TLS handshake in progress */                      \
	X(AUTH)   /* AUTH: waiting for the client's SASL response */  \
	X(AUTH_PENDING) /* AUTH: the password is being checked */ \
	X(TARPIT) /* AUTH from a blocked client IP: answer late, then 421 */

enum ingress_state {
#define X(name) ST_##name,
	INGRESS_STATES(X)
#undef X
};

/* Orthogonal session flags. */
enum {
	SF_ESMTP = 1 << 0,      /* EHLO rather than HELO */
	SF_RELAY = 1 << 1,      /* client address is in relay_networks */
	SF_READING = 1 << 2,    /* uv_read_start is in effect */
	SF_TLS = 1 << 3,        /* TLS is established */
	SF_AUTH = 1 << 4,       /* AUTH succeeded */
};

struct ingress_session {
	uv_tcp_t tcp;
	uv_timer_t timer;
	uv_shutdown_t shutdown;
	int open_handles;
	bool closing;
	const struct ingress_env *env;
	const struct hk_listener_conf *lconf;
	ingress_session_closed_cb closed_cb;
	void *closed_arg;

	enum ingress_state state;
	unsigned flags;
	unsigned errors;
	char client_ip[INET6_ADDRSTRLEN];
	char client_literal[INET6_ADDRSTRLEN + 8]; /* "[1.2.3.4]", "[IPv6:::1]" */
	char ip_key[INGRESS_IP_KEY_MAX]; /* what per-IP limits count ("" if unknown) */
	bool ip_counted;        /* holds one of env->ip_sessions[ip_key] */
	char helo[INGRESS_HELO_MAX + 1];

	/* TLS: the engine, and where ciphertext is read to before it goes in */
	hk_tls_conn *tls;
	char *raw;
	char tls_desc[160];     /* "TLSv1.3 with cipher ... (256/256 bits)" */

	/* AUTH */
	enum auth_step auth_step;
	const char *auth_mech;  /* "PLAIN" or "LOGIN" */
	char auth_user[INGRESS_AUTH_USER_MAX + 1]; /* logged, never put in a header */
	ingress_auth_job *auth_job;
	unsigned auth_failures;
	const struct hk_tenant_conf *tenant; /* with SF_AUTH */

	/* input: in[0..in_len), executed up to in_off while processing */
	char in[INGRESS_IN_CAP];
	size_t in_len;
	size_t in_off;
	struct ingress_linereader lines;
	/* replies not yet handed to uv_write */
	struct ingress_buf out;

	/* the transaction */
	char *mail_from;
	char **mail_params;
	size_t n_mail_params;
	struct ingress_rcpt *rcpts;
	size_t n_rcpts;
	char id[HK_ID_LEN + 1];
	int64_t received_at_ms;
	struct ingress_buf msg;  /* Received header + message */
	struct ingress_data data;
	size_t msg_start;        /* where the client's message starts in msg */
	bool smtputf8;           /* MAIL ... SMTPUTF8 (RFC 6531) */
	enum ingress_body body;  /* MAIL ... BODY= */
	bool bdat;               /* the message comes in BDAT chunks */
	bool bdat_last;          /* the chunk being read is the LAST */
	uint64_t bdat_chunk;     /* its size, for the reply */
	struct ingress_bdat bdat_rd;
	/* a BDAT refused before its chunk: the octets still to drop, then the reply */
	uint64_t discard;
	char discard_reply[INGRESS_REPLY_MAX];
	uint64_t req_id;         /* pending request, in state SUBMIT */
	size_t body_size;        /* what was submitted, for the log */
};

struct ingress_write {
	uv_write_t req;
	ingress_session *s;
	char data[];
};

static void session_process(ingress_session *s);
static void session_flush(ingress_session *s);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);
static void on_timer(uv_timer_t *t);
static void on_shutdown(uv_shutdown_t *req, int status);
static void txn_fail(ingress_session *s, const char *reply_text);
static void message_end(ingress_session *s);

/* --- states ------------------------------------------------------------- */

static const char *
ingress_strstate(enum ingress_state st)
{
	switch (st) {
#define X(name) case ST_##name: return #name;
	INGRESS_STATES(X)
#undef X
	}
	return "?";
}

static void
arm_timer(ingress_session *s)
{
	const struct hk_ingress_conf *c = s->env->conf;
	uint64_t ms;

	switch (s->state) {
	case ST_DATA:
	case ST_BDAT: ms = c->data_timeout_ms; break;
	case ST_SUBMIT: ms = c->submit_timeout_ms; break;
	case ST_QUIT: ms = INGRESS_QUIT_LINGER_MS; break;
	case ST_TARPIT: ms = INGRESS_AUTH_TARPIT_MS; break;
	default: ms = c->command_timeout_ms; break;
	}
	uv_timer_start(&s->timer, on_timer, ms, 0);
}

static void
txn_reset(ingress_session *s)
{
	free(s->mail_from);
	s->mail_from = NULL;
	for (size_t i = 0; i < s->n_mail_params; i++)
		free(s->mail_params[i]);
	free(s->mail_params);
	s->mail_params = NULL;
	s->n_mail_params = 0;
	for (size_t i = 0; i < s->n_rcpts; i++) {
		free(s->rcpts[i].addr);
		for (size_t j = 0; j < s->rcpts[i].n_params; j++)
			free(s->rcpts[i].params[j]);
		free(s->rcpts[i].params);
	}
	free(s->rcpts);
	s->rcpts = NULL;
	s->n_rcpts = 0;
	s->id[0] = '\0';
	s->req_id = 0;
	s->smtputf8 = false;
	s->body = INGRESS_BODY_NONE;
	s->bdat = s->bdat_last = false;
	ingress_buf_free(&s->msg);
}

static void
format_date(int64_t ms, char *out, size_t len)
{
	static const char *days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char *months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
		"Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	long off;

	localtime_r(&t, &tm);
	off = tm.tm_gmtoff / 60;
	snprintf(out, len, "%s, %d %s %d %02d:%02d:%02d %c%02ld%02ld", days[tm.tm_wday],
	    tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec,
	    off < 0 ? '-' : '+', labs(off) / 60, labs(off) % 60);
}

/* The "with" keyword of the Received header (RFC 3848): ESMTP plus S for
 * TLS and A for AUTH; SMTP (or SMTPS) after HELO. */
static const char *
protocol_name(const ingress_session *s)
{
	static const char *const esmtp[] = { "ESMTP", "ESMTPS", "ESMTPA", "ESMTPSA" };
	bool tls = (s->flags & SF_TLS) != 0, auth = (s->flags & SF_AUTH) != 0;

	if (!(s->flags & SF_ESMTP))
		return tls ? "SMTPS" : "SMTP";
	return esmtp[(tls ? 1 : 0) | (auth ? 2 : 0)];
}

/* Start a message: its id, its time and the Received header (RFC 5321 4.4).
 * The TLS comment is Postfix's; the authenticated user is logged, never
 * written into the message. */
static void
message_begin(ingress_session *s)
{
	char date[64], hdr[1024], tls[200] = "";
	int n;

	hk_id_next(s->env->idgen, s->id);
	s->received_at_ms = hk_now_ms();
	format_date(s->received_at_ms, date, sizeof(date));
	if (s->flags & SF_TLS)
		snprintf(tls, sizeof(tls), "\t(using %s)\r\n", s->tls_desc);
	if (s->n_rcpts == 1)
		n = snprintf(hdr, sizeof(hdr),
		    "Received: from %s (%s)\r\n%s\tby %s (Hikyaku) with %s id %s\r\n\tfor <%s>; %s\r\n",
		    s->helo, s->client_literal, tls, s->env->conf->hostname,
		    protocol_name(s), s->id, s->rcpts[0].addr, date);
	else
		n = snprintf(hdr, sizeof(hdr),
		    "Received: from %s (%s)\r\n%s\tby %s (Hikyaku) with %s id %s;\r\n\t%s\r\n",
		    s->helo, s->client_literal, tls, s->env->conf->hostname,
		    protocol_name(s), s->id, date);
	ingress_buf_free(&s->msg);
	ingress_buf_append(&s->msg, hdr, n < (int)sizeof(hdr) ? (size_t)n : sizeof(hdr) - 1);
	s->msg_start = s->msg.len;
}

/*
 * ingress_enter_state - the one place that changes state. Entering a state
 * arms its timer; entering DATA starts a message; entering QUIT stops input
 * and closes once the replies are written.
 */
static void
ingress_enter_state(ingress_session *s, enum ingress_state next)
{
	hk_log_debug("smtp_state", "{s:s, s:s, s:s}", "client", s->client_ip,
	    "from", ingress_strstate(s->state), "to", ingress_strstate(next));
	s->state = next;
	switch (next) {
	case ST_DATA:
		message_begin(s);
		ingress_data_init(&s->data, &s->msg, s->env->conf->max_message_size);
		break;
	case ST_BDAT:
		if (!s->bdat) { /* the first chunk */
			s->bdat = true;
			message_begin(s);
			ingress_bdat_init(&s->bdat_rd, &s->msg, s->env->conf->max_message_size,
			    s->body == INGRESS_BODY_BINARYMIME);
		}
		break;
	case ST_QUIT:
		session_flush(s);
		if (s->tls && (s->flags & SF_TLS) && !s->closing) {
			/* After the last reply: a clean TLS end, then the FIN. */
			hk_tls_conn_close_notify(s->tls);
			session_flush(s);
		}
		if (s->closing)
			return;
		if (uv_shutdown(&s->shutdown, (uv_stream_t *)&s->tcp, on_shutdown) != 0) {
			ingress_session_close(s, "shutdown failed", NULL);
			return;
		}
		break;
	default:
		break;
	}
	arm_timer(s);
}

/* --- output -------------------------------------------------------------- */

static void
reply(ingress_session *s, const char *fmt, ...)
{
	char line[INGRESS_LINE_MAX];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 3)
		n = (int)sizeof(line) - 3;
	memcpy(line + n, "\r\n", 2);
	ingress_buf_append(&s->out, line, (size_t)n + 2);
}

static bool
output_full(ingress_session *s)
{
	return s->out.len + uv_stream_get_write_queue_size((uv_stream_t *)&s->tcp) > INGRESS_OUT_HIGH;
}

static void
on_write(uv_write_t *req, int status)
{
	struct ingress_write *w = (struct ingress_write *)req;
	ingress_session *s = w->s;

	free(w);
	if (s->closing)
		return;
	if (status < 0) {
		ingress_session_close(s, uv_strerror(status), NULL);
		return;
	}
	/* Replies drained: execution or reading may have been waiting. */
	if (s->state != ST_QUIT)
		session_process(s);
}

/*
 * session_flush - hand the collected replies to the socket: as they are, or
 * encrypted once TLS is on (with whatever else the engine has to send:
 * handshake records, session tickets, alerts).
 */
static void
session_flush(ingress_session *s)
{
	struct ingress_write *w;
	uv_buf_t b;
	size_t n;
	int rc;

	if (s->closing)
		return;
	if (s->tls) {
		if (s->out.len > 0 && hk_tls_conn_write(s->tls, s->out.data, s->out.len) != 0) {
			ingress_session_close(s, "TLS write failed", NULL);
			return;
		}
		s->out.len = 0;
		if ((n = hk_tls_conn_pending(s->tls)) == 0)
			return;
		w = xmalloc(sizeof(*w) + n);
		n = hk_tls_conn_pull(s->tls, w->data, n);
	} else {
		if ((n = s->out.len) == 0)
			return;
		w = xmalloc(sizeof(*w) + n);
		memcpy(w->data, s->out.data, n);
		s->out.len = 0;
	}
	w->s = s;
	b = uv_buf_init(w->data, (unsigned)n);
	if ((rc = uv_write(&w->req, (uv_stream_t *)&s->tcp, &b, 1, on_write)) != 0) {
		free(w);
		ingress_session_close(s, uv_strerror(rc), NULL);
	}
}

/* log_limit - the one log line of a limit: which (its config key), who,
 * and the reply given. */
static void
log_limit(ingress_session *s, const char *limit, const char *reply_text)
{
	hk_log_info("limit_exceeded", "{s:s, s:s, s:s, s:s, s:s}", "limit", limit,
	    "client", s->client_ip, "key", s->ip_key, "state", ingress_strstate(s->state),
	    "reply", reply_text);
}

/* A rejected command: reply, and hang up on a client that keeps failing
 * (Postfix's smtpd_hard_error_limit). */
static void
cmd_error(ingress_session *s, const char *text)
{
	char bye[INGRESS_REPLY_MAX];

	reply(s, "%s", text);
	if (++s->errors >= s->env->conf->max_errors) {
		snprintf(bye, sizeof(bye), "421 4.7.0 %s Error: too many errors", s->env->conf->hostname);
		log_limit(s, "max_errors", bye);
		reply(s, "%s", bye);
		ingress_enter_state(s, ST_QUIT);
	}
}

/* --- TLS ------------------------------------------------------------------ */

static void
greeting(ingress_session *s)
{
	reply(s, "220 %s ESMTP Hikyaku", s->env->conf->hostname);
}

/* Move what the engine has to send to the socket now, best effort: for an
 * alert or a goodbye just before the handle is closed. */
static void
tls_try_send(ingress_session *s)
{
	size_t n;
	char *buf;

	if (s->tls == NULL || (n = hk_tls_conn_pending(s->tls)) == 0)
		return;
	buf = xmalloc(n);
	n = hk_tls_conn_pull(s->tls, buf, n);
	uv_buf_t b = uv_buf_init(buf, (unsigned)n);
	uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
	free(buf);
}

/* Put a server-side TLS engine on the connection, with the context of the
 * moment (a reload swaps it for new sessions only). */
static int
tls_begin(ingress_session *s)
{
	if (s->env->tls_ctx == NULL || (s->tls = hk_tls_conn_new(s->env->tls_ctx, true)) == NULL)
		return -1;
	s->raw = xmalloc(INGRESS_RAW_CAP);
	return 0;
}

static void
tls_established(ingress_session *s)
{
	s->flags |= SF_TLS;
	hk_tls_conn_describe(s->tls, s->tls_desc, sizeof(s->tls_desc));
	hk_log_info("tls_established", "{s:s, s:s, s:s}", "client", s->client_ip,
	    "version", hk_tls_conn_version(s->tls), "cipher", hk_tls_conn_cipher(s->tls));
	ingress_enter_state(s, ST_NEW);
	if (s->lconf->mode == HK_LISTEN_SMTPS)
		greeting(s); /* RFC 8314 3.3: the greeting comes after the handshake */
}

/*
 * tls_fill - advance the handshake, then move the plaintext the engine holds
 * into the input buffer, as much as fits. Returns false if the session was
 * closed (handshake failure, TLS error, close_notify).
 */
static bool
tls_fill(ingress_session *s)
{
	char err[256];
	int rc;

	if (s->tls == NULL || s->closing)
		return !s->closing;
	if (s->state == ST_TLS) {
		rc = hk_tls_conn_handshake(s->tls, err, sizeof(err));
		if (rc == HK_TLS_ERROR) {
			hk_log_info("tls_failed", "{s:s, s:s}", "client", s->client_ip, "error", err);
			tls_try_send(s); /* the alert tells the client why */
			ingress_session_close(s, "TLS handshake failed", NULL);
			return false;
		}
		if (rc == HK_TLS_AGAIN)
			return true;
		tls_established(s);
	}
	while (s->in_len < sizeof(s->in)) {
		rc = hk_tls_conn_read(s->tls, s->in + s->in_len, sizeof(s->in) - s->in_len);
		if (rc > 0) {
			s->in_len += (size_t)rc;
			continue;
		}
		if (rc == HK_TLS_AGAIN)
			break;
		ingress_session_close(s, rc == HK_TLS_CLOSED ? "client disconnected" : "TLS error", NULL);
		return false;
	}
	return true;
}

/* --- commands ------------------------------------------------------------ */

/* AUTH could be offered on this listener at some point of the session. */
static bool
auth_possible(const ingress_session *s)
{
	return s->env->auth != NULL && (s->env->tls_ctx != NULL || s->tls != NULL ||
	    s->lconf->allow_plaintext_auth);
}

/* AUTH is offered now: passwords never cross in clear unless allowed. */
static bool
auth_offered(const ingress_session *s)
{
	return s->env->auth != NULL && ((s->flags & SF_TLS) || s->lconf->allow_plaintext_auth);
}

/* Whose mail this is: the authenticated tenant, or network_tenant for a
 * client in relay_networks; NULL for anyone else (who may not relay). */
static const struct hk_tenant_conf *
session_tenant(const ingress_session *s)
{
	if (s->flags & SF_AUTH)
		return s->tenant;
	if (s->flags & SF_RELAY)
		return s->env->conf->tenant;
	return NULL;
}

static bool
starttls_offered(const ingress_session *s)
{
	return s->env->tls_ctx != NULL && s->tls == NULL;
}

static void
cmd_helo_common(ingress_session *s, const char *args, bool esmtp)
{
	const struct hk_ingress_conf *c = s->env->conf;
	size_t n = strcspn(args, " \t");

	if (n == 0) {
		cmd_error(s, esmtp ? "501 5.5.4 Syntax: EHLO hostname" : "501 5.5.4 Syntax: HELO hostname");
		return;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)args[i];
		if (ch < 33 || ch > 126 || ch == '(' || ch == ')') {
			cmd_error(s, "501 5.5.2 Invalid HELO/EHLO hostname");
			return;
		}
	}
	if (n > INGRESS_HELO_MAX) {
		cmd_error(s, "501 5.5.2 HELO/EHLO hostname too long");
		return;
	}
	memcpy(s->helo, args, n);
	s->helo[n] = '\0';
	txn_reset(s);
	if (esmtp) {
		s->flags |= SF_ESMTP;
		reply(s, "250-%s", c->hostname);
		reply(s, "250-PIPELINING");
		reply(s, "250-SIZE %zu", c->max_message_size);
		reply(s, "250-8BITMIME");
		if (starttls_offered(s))
			reply(s, "250-STARTTLS");
		if (auth_offered(s))
			reply(s, "250-AUTH PLAIN LOGIN");
		reply(s, "250-SMTPUTF8");
		reply(s, "250-DSN");
		reply(s, "250-CHUNKING");
		reply(s, "250-BINARYMIME");
		reply(s, "250 ENHANCEDSTATUSCODES");
	} else {
		s->flags &= ~(unsigned)SF_ESMTP;
		reply(s, "250 %s", c->hostname);
	}
	ingress_enter_state(s, ST_HELO);
}

static void
cmd_ehlo(ingress_session *s, const char *args)
{
	cmd_helo_common(s, args, true);
}

static void
cmd_helo(ingress_session *s, const char *args)
{
	cmd_helo_common(s, args, false);
}

/* copy_params - the parameters of P, verbatim, but for those named DROP
 * (NULL: none); their number in *n. */
static char **
copy_params(const struct ingress_path *p, const char *drop, size_t *n)
{
	char **v = xcalloc(p->n_params ? p->n_params : 1, sizeof(char *));
	size_t k = drop ? strlen(drop) : 0;

	*n = 0;
	for (size_t i = 0; i < p->n_params; i++) {
		const struct ingress_param *q = &p->params[i];
		if (drop && q->len >= k && strncasecmp(q->text, drop, k) == 0 &&
		    (q->len == k || q->text[k] == '='))
			continue;
		v[(*n)++] = xstrndup(q->text, q->len);
	}
	return v;
}

static void
cmd_mail(ingress_session *s, const char *args)
{
	const struct hk_tenant_conf *t;
	struct ingress_path p;
	char err[INGRESS_REPLY_MAX];
	uint64_t retry_ms = 0;

	/* SMTPUTF8 on the MAIL itself allows its UTF-8 local part. */
	if (ingress_parse_path2(args, INGRESS_PATH_MAIL, 0, &p, err) != 0) {
		cmd_error(s, err);
		return;
	}
	if (p.has_size && p.size > s->env->conf->max_message_size) {
		log_limit(s, "max_message_size", "552 5.3.4 Message size exceeds fixed limit");
		reply(s, "552 5.3.4 Message size exceeds fixed limit");
		return;
	}
	/* Submission and smtps: AUTH first, whatever the client's address. */
	if (s->lconf->mode != HK_LISTEN_RELAY && !(s->flags & SF_AUTH)) {
		cmd_error(s, "530 5.7.0 Authentication required");
		return;
	}
	if ((t = session_tenant(s)) != NULL && !hk_tenant_owns_sender(t, p.addr)) {
		snprintf(err, sizeof(err), "553 5.7.1 Sender address not owned by tenant %s", t->name);
		hk_log_info("sender_refused", "{s:s, s:s, s:s, s:s}", "client", s->client_ip,
		    "tenant", t->name, "user", s->auth_user, "from", p.addr);
		cmd_error(s, err);
		return;
	}
	if (t != NULL && s->env->admit && !s->env->admit(s->env->arg, t, &retry_ms)) {
		snprintf(err, sizeof(err), "451 4.7.1 Message rate limit exceeded for tenant %s, try again in %llu s",
		    t->name, (unsigned long long)(retry_ms + 999) / 1000);
		hk_log_info("limit_exceeded", "{s:s, s:s, s:s, s:s, s:I, s:s}", "limit", "rate_limit",
		    "client", s->client_ip, "tenant", t->name, "user", s->auth_user,
		    "retry_ms", (json_int_t)retry_ms, "reply", err);
		reply(s, "%s", err);
		return;
	}
	txn_reset(s);
	s->mail_from = xstrdup(p.addr);
	/* AUTH= (RFC 4954 5) is accepted and dropped: the Submission's tenant
	 * already says whose mail it is, and the sender does not relay it. */
	s->mail_params = copy_params(&p, "AUTH", &s->n_mail_params);
	s->smtputf8 = p.smtputf8;
	s->body = p.body;
	reply(s, "250 2.1.0 Ok");
	ingress_enter_state(s, ST_MAIL);
}

/* same_address - one mailbox? Local parts are case-sensitive (RFC 5321
 * 2.4), domains are not. */
static bool
same_address(const char *a, const char *b)
{
	const char *da = strrchr(a, '@'), *db = strrchr(b, '@');

	if (da == NULL || db == NULL || da - a != db - b)
		return false;
	return memcmp(a, b, (size_t)(da - a)) == 0 && strcasecmp(da, db) == 0;
}

static void
cmd_rcpt(ingress_session *s, const char *args)
{
	struct ingress_path p;
	char err[INGRESS_REPLY_MAX];
	struct ingress_rcpt *r;

	if (s->bdat) {
		cmd_error(s, "503 5.5.1 Error: RCPT after BDAT");
		return;
	}
	if (ingress_parse_path2(args, INGRESS_PATH_RCPT, s->smtputf8 ? INGRESS_PATH_UTF8_OK : 0,
	    &p, err) != 0) {
		cmd_error(s, err);
		return;
	}
	if (session_tenant(s) == NULL) {
		cmd_error(s, "554 5.7.1 Relay access denied");
		return;
	}
	for (size_t i = 0; i < s->n_rcpts; i++) {
		if (same_address(s->rcpts[i].addr, p.addr)) {
			reply(s, "250 2.1.5 Ok"); /* a duplicate: delivered once */
			return;
		}
	}
	if (s->n_rcpts >= s->env->conf->max_recipients) {
		log_limit(s, "max_recipients", "452 4.5.3 Too many recipients");
		reply(s, "452 4.5.3 Too many recipients");
		return;
	}
	s->rcpts = xrealloc(s->rcpts, (s->n_rcpts + 1) * sizeof(*s->rcpts));
	r = &s->rcpts[s->n_rcpts++];
	r->addr = xstrdup(p.addr);
	r->params = copy_params(&p, NULL, &r->n_params);
	reply(s, "250 2.1.5 Ok");
	ingress_enter_state(s, ST_RCPT);
}

static void
cmd_data(ingress_session *s, const char *args)
{
	(void)args;
	if (s->bdat) {
		cmd_error(s, "503 5.5.1 Error: DATA after BDAT");
		return;
	}
	if (s->body == INGRESS_BODY_BINARYMIME) {
		/* RFC 3030 3: a binary body cannot be dot-stuffed lines. */
		cmd_error(s, "503 5.6.1 Error: BODY=BINARYMIME requires BDAT");
		return;
	}
	reply(s, "354 End data with <CR><LF>.<CR><LF>");
	ingress_enter_state(s, ST_DATA);
}

static void
cmd_rset(ingress_session *s, const char *args)
{
	(void)args;
	txn_reset(s);
	reply(s, "250 2.0.0 Ok");
	ingress_enter_state(s, s->state >= ST_HELO ? ST_HELO : ST_NEW);
}

static void
cmd_noop(ingress_session *s, const char *args)
{
	(void)args;
	reply(s, "250 2.0.0 Ok");
}

static void
cmd_quit(ingress_session *s, const char *args)
{
	(void)args;
	reply(s, "221 2.0.0 Bye");
	ingress_enter_state(s, ST_QUIT);
}

static void
cmd_vrfy(ingress_session *s, const char *args)
{
	if (*args == '\0') {
		cmd_error(s, "501 5.5.4 Syntax: VRFY address");
		return;
	}
	reply(s, "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
}

/*
 * cmd_starttls - RFC 3207. The 220 goes out in plaintext; then whatever the
 * client sent behind the command is dropped unread (a man in the middle
 * could have put commands there to run under TLS), and everything learnt
 * before TLS is forgotten: the client must EHLO again.
 */
static void
cmd_starttls(ingress_session *s, const char *args)
{
	(void)args;
	if (s->tls != NULL) {
		cmd_error(s, "503 5.5.1 Error: TLS already active");
		return;
	}
	if (s->env->tls_ctx == NULL) {
		cmd_error(s, "502 5.5.1 Error: STARTTLS not available");
		return;
	}
	reply(s, "220 2.0.0 Ready to start TLS");
	session_flush(s);
	if (s->closing)
		return;
	if (s->in_len > s->in_off)
		hk_log_info("starttls_input_dropped", "{s:s, s:i}", "client", s->client_ip,
		    "bytes", (int)(s->in_len - s->in_off));
	s->in_len = s->in_off;
	memset(&s->lines, 0, sizeof(s->lines));
	if (tls_begin(s) != 0) {
		ingress_session_close(s, "TLS not available", NULL);
		return;
	}
	txn_reset(s);
	s->helo[0] = '\0';
	s->flags &= ~(unsigned)(SF_ESMTP | SF_AUTH);
	s->tenant = NULL;
	s->auth_user[0] = '\0';
	ingress_enter_state(s, ST_TLS);
}

/* --- AUTH (RFC 4954) --------------------------------------------------------- */

/* auth_ip_blocked - has this client IP used up its failed AUTH for now? */
static bool
auth_ip_blocked(const ingress_session *s)
{
	return s->env->auth_failures != NULL && s->ip_key[0] != '\0' &&
	    hk_rate_retry_ms(s->env->auth_failures, s->ip_key, 1, uv_now(s->tcp.loop)) > 0;
}

/* auth_tarpit - the client IP is over auth_failure_limit: answer this AUTH
 * only after a while (a timer, the loop goes on), then hang up. */
static void
auth_tarpit(ingress_session *s)
{
	log_limit(s, "auth_failure_limit", "421 4.7.0 too many failed authentications");
	s->auth_user[0] = '\0';
	ingress_enter_state(s, ST_TARPIT);
}

static void
auth_end(ingress_session *s)
{
	if (s->state == ST_AUTH || s->state == ST_AUTH_PENDING)
		ingress_enter_state(s, ST_HELO);
}

static void
auth_done(ingress_session *s, const struct hk_tenant_conf *t, bool cached)
{
	if (t != NULL) {
		s->flags |= SF_AUTH;
		s->tenant = t;
		hk_log_info("auth_success", "{s:s, s:s, s:s, s:s, s:b}", "client", s->client_ip,
		    "user", s->auth_user, "tenant", t->name, "mechanism", s->auth_mech, "cached", cached);
		reply(s, "235 2.7.0 Authentication successful");
		auth_end(s);
		return;
	}
	s->auth_failures++;
	hk_log_info("auth_failed", "{s:s, s:s, s:s, s:i}", "client", s->client_ip,
	    "user", s->auth_user, "mechanism", s->auth_mech, "failures", (int)s->auth_failures);
	s->auth_user[0] = '\0';
	/* Across sessions: the failure that empties the IP's bucket blocks it
	 * (a refused take, with every key slot busy, fails closed). */
	if (s->env->auth_failures != NULL && s->ip_key[0] != '\0' &&
	    (!hk_rate_take(s->env->auth_failures, s->ip_key, 1, uv_now(s->tcp.loop)) ||
	    auth_ip_blocked(s))) {
		auth_tarpit(s);
		return;
	}
	auth_end(s);
	cmd_error(s, "535 5.7.8 Error: authentication failed");
	if (s->auth_failures >= INGRESS_AUTH_FAILURES && s->state != ST_QUIT) {
		reply(s, "421 4.7.0 %s Error: too many failed authentications", s->env->conf->hostname);
		ingress_enter_state(s, ST_QUIT);
	}
}

/* The check came back from the thread pool. */
static void
on_auth_checked(void *arg, const struct hk_tenant_conf *t)
{
	ingress_session *s = arg;

	s->auth_job = NULL;
	if (s->closing || s->state != ST_AUTH_PENDING)
		return;
	auth_done(s, t, false);
	session_process(s); /* what the client pipelined behind AUTH */
}

/* Check USER's PASSWORD (wiped here): at once from the cache, or later. */
static void
auth_verify(ingress_session *s, const char *user, char *password)
{
	const struct hk_tenant_conf *t;
	int rc;

	if (user != s->auth_user)
		snprintf(s->auth_user, sizeof(s->auth_user), "%s", user);
	rc = ingress_auth_check(s->env->auth, s->auth_user, password, on_auth_checked, s, &s->auth_job, &t);
	OPENSSL_cleanse(password, strlen(password));
	if (rc == 1)
		auth_done(s, t, true);
	else
		ingress_enter_state(s, ST_AUTH_PENDING);
}

static void
auth_sasl_error(ingress_session *s, int rc)
{
	if (rc == INGRESS_SASL_AUTHZID) {
		auth_done(s, NULL, false); /* authorization identity other than the user's */
		return;
	}
	auth_end(s);
	cmd_error(s, rc == INGRESS_SASL_BAD_BASE64 ? "501 5.5.2 Invalid base64 data" :
	    "501 5.5.2 Malformed authentication data");
}

/* One SASL response (initial or after a 334), in state AUTH. */
static void
auth_response(ingress_session *s, const char *line)
{
	char user[INGRESS_AUTH_USER_MAX + 1], pass[INGRESS_AUTH_PASS_MAX + 1];
	int rc;

	if (strcmp(line, "*") == 0) {
		auth_end(s);
		cmd_error(s, "501 5.0.0 Authentication cancelled");
		return;
	}
	switch (s->auth_step) {
	case AUTH_PLAIN:
		if ((rc = ingress_sasl_plain(line, user, pass)) != INGRESS_SASL_OK)
			auth_sasl_error(s, rc);
		else
			auth_verify(s, user, pass);
		break;
	case AUTH_LOGIN_USER:
		if ((rc = ingress_sasl_field(line, s->auth_user, sizeof(s->auth_user))) != INGRESS_SASL_OK) {
			auth_sasl_error(s, rc);
			break;
		}
		s->auth_step = AUTH_LOGIN_PASS;
		reply(s, "334 UGFzc3dvcmQ6"); /* "Password:" */
		break;
	case AUTH_LOGIN_PASS:
		if ((rc = ingress_sasl_field(line, pass, sizeof(pass))) != INGRESS_SASL_OK)
			auth_sasl_error(s, rc);
		else
			auth_verify(s, s->auth_user, pass);
		break;
	}
	OPENSSL_cleanse(pass, sizeof(pass));
	OPENSSL_cleanse(user, sizeof(user));
}

/* A line in state AUTH: wipe it from the input buffer once read. */
static void
auth_line(ingress_session *s, enum ingress_line_result r, const char *line, size_t len)
{
	char buf[INGRESS_LINE_MAX + 1];

	if (r == INGRESS_LINE_TOO_LONG) {
		auth_end(s);
		cmd_error(s, "500 5.5.6 Authentication exchange line is too long");
		return;
	}
	memcpy(buf, line, len);
	buf[len] = '\0';
	OPENSSL_cleanse((char *)line, len);
	auth_response(s, buf);
	OPENSSL_cleanse(buf, sizeof(buf));
	session_flush(s);
}

static void
cmd_auth(ingress_session *s, const char *args)
{
	char mech[16];
	size_t n = strcspn(args, " ");
	const char *resp = args + n;

	if (s->flags & SF_AUTH) {
		cmd_error(s, "503 5.5.1 Error: already authenticated");
		return;
	}
	if (auth_possible(s) && auth_ip_blocked(s)) { /* blocked by another session's failures */
		auth_tarpit(s);
		return;
	}
	if (!auth_possible(s)) {
		cmd_error(s, "503 5.5.1 Error: authentication not enabled");
		return;
	}
	if (!auth_offered(s)) {
		cmd_error(s, "538 5.7.11 Encryption required for requested authentication mechanism");
		return;
	}
	if (s->state >= ST_MAIL) {
		cmd_error(s, "503 5.5.1 Error: MAIL transaction in progress");
		return;
	}
	if (n == 0 || n >= sizeof(mech)) {
		cmd_error(s, n == 0 ? "501 5.5.4 Syntax: AUTH mechanism [initial-response]" :
		    "504 5.5.4 Unrecognized authentication type");
		return;
	}
	for (size_t i = 0; i < n; i++)
		mech[i] = (char)toupper((unsigned char)args[i]);
	mech[n] = '\0';
	while (*resp == ' ')
		resp++;
	if (!strcmp(mech, "PLAIN")) {
		s->auth_mech = "PLAIN";
		s->auth_step = AUTH_PLAIN;
	} else if (!strcmp(mech, "LOGIN")) {
		s->auth_mech = "LOGIN";
		s->auth_step = AUTH_LOGIN_USER;
	} else {
		cmd_error(s, "504 5.5.4 Unrecognized authentication type");
		return;
	}
	s->auth_user[0] = '\0';
	ingress_enter_state(s, ST_AUTH);
	if (*resp != '\0')
		auth_response(s, resp); /* the initial response (RFC 4954 4) */
	else if (s->auth_step == AUTH_PLAIN)
		reply(s, "334 ");
	else
		reply(s, "334 VXNlcm5hbWU6"); /* "Username:" */
}

/* --- CHUNKING (RFC 3030) ------------------------------------------------------ */

/* A chunk was read whole: acknowledge it, or end the message after LAST. A
 * message already too big fails at once (RFC 3030 4.2: the client sends no
 * more chunks after a 5xx; pipelined ones find no transaction: 503). */
static void
bdat_chunk_end(ingress_session *s)
{
	char err[INGRESS_REPLY_MAX];

	if ((s->bdat_last || s->bdat_rd.too_big) && ingress_bdat_failed(&s->bdat_rd, err)) {
		txn_fail(s, err);
		return;
	}
	if (!s->bdat_last) {
		reply(s, "250 2.0.0 %llu octets received", (unsigned long long)s->bdat_chunk);
		ingress_enter_state(s, ST_RCPT);
		return;
	}
	/* Header lines as for DATA. Bare LF is no smuggling risk here: BDAT
	 * has no end-of-data line (the reader made it CRLF, or BINARYMIME
	 * keeps it as data). */
	const char *limit = NULL;
	if (ingress_limits_message(s->env->conf, false, s->msg.data + s->msg_start,
	    s->msg.len - s->msg_start, err, &limit)) {
		log_limit(s, limit, err);
		txn_fail(s, err);
		return;
	}
	message_end(s);
}

static void
cmd_bdat(ingress_session *s, const char *args)
{
	char err[INGRESS_REPLY_MAX];
	const char *why = NULL;
	uint64_t size;
	bool last;

	if (ingress_parse_bdat(args, &size, &last, err) != 0) {
		cmd_error(s, err); /* no size: there is no chunk to read */
		return;
	}
	if (s->state < ST_HELO)
		why = "503 5.5.1 Error: send HELO/EHLO first";
	else if (s->state < ST_MAIL)
		why = "503 5.5.1 Error: need MAIL command";
	else if (s->state < ST_RCPT)
		why = "503 5.5.1 Error: need RCPT command";
	if (why != NULL) {
		/* The octets follow the command whatever we answer: drop them
		 * before the reply, or they would be read as commands. */
		if (size == 0) {
			cmd_error(s, why);
		} else {
			s->discard = size;
			snprintf(s->discard_reply, sizeof(s->discard_reply), "%s", why);
		}
		return;
	}
	s->bdat_last = last;
	s->bdat_chunk = size;
	ingress_enter_state(s, ST_BDAT);
	ingress_bdat_chunk(&s->bdat_rd, size);
	if (ingress_bdat_chunk_done(&s->bdat_rd)) /* BDAT 0 [LAST] */
		bdat_chunk_end(s);
}

static void
cmd_help(ingress_session *s, const char *args)
{
	(void)args;
	reply(s, "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH");
}

/* Command table flags. */
enum {
	CMD_NEED_HELO = 1 << 0, /* 503 before HELO/EHLO */
	CMD_NEED_MAIL = 1 << 1, /* 503 before MAIL */
	CMD_NEED_RCPT = 1 << 2, /* 503 before a successful RCPT */
	CMD_NO_TXN = 1 << 3,    /* 503 inside a transaction (nested MAIL) */
	CMD_NO_ARGS = 1 << 4,   /* 501 if arguments are given */
	CMD_FLUSH = 1 << 5,     /* ends a pipeline group: reply at once (RFC 2920 3.1) */
	CMD_SECRET = 1 << 6,    /* the line may hold a password: wipe it after use */
};

static const struct ingress_cmd {
	const char *verb;
	unsigned flags;
	void (*handler)(ingress_session *s, const char *args);
} ingress_cmds[] = {
	{ "EHLO", CMD_FLUSH, cmd_ehlo },
	{ "HELO", CMD_FLUSH, cmd_helo },
	{ "MAIL", CMD_NEED_HELO | CMD_NO_TXN, cmd_mail },
	{ "RCPT", CMD_NEED_HELO | CMD_NEED_MAIL, cmd_rcpt },
	{ "DATA", CMD_NEED_HELO | CMD_NEED_MAIL | CMD_NEED_RCPT | CMD_NO_ARGS | CMD_FLUSH, cmd_data },
	{ "RSET", CMD_NO_ARGS, cmd_rset },
	{ "NOOP", CMD_FLUSH, cmd_noop },
	{ "QUIT", CMD_NO_ARGS | CMD_FLUSH, cmd_quit },
	{ "VRFY", CMD_FLUSH, cmd_vrfy },
	{ "HELP", CMD_FLUSH, cmd_help },
	{ "STARTTLS", CMD_NEED_HELO | CMD_NO_ARGS | CMD_FLUSH, cmd_starttls },
	{ "AUTH", CMD_NEED_HELO | CMD_FLUSH | CMD_SECRET, cmd_auth },
	/* BDAT checks its state itself: refused or not, its chunk is read. */
	{ "BDAT", 0, cmd_bdat },
};

static void
session_execute(ingress_session *s, const char *line, size_t len)
{
	char buf[INGRESS_LINE_MAX + 1], err[INGRESS_REPLY_MAX];
	struct ingress_cmdline cl;
	const struct ingress_cmd *cmd = NULL;

	memcpy(buf, line, len);
	buf[len] = '\0';
	if (ingress_cmd_split(buf, len, &cl, err) != 0) {
		cmd_error(s, err);
		return;
	}
	for (size_t i = 0; i < sizeof(ingress_cmds) / sizeof(ingress_cmds[0]); i++) {
		if (!strcmp(cl.verb, ingress_cmds[i].verb)) {
			cmd = &ingress_cmds[i];
			break;
		}
	}
	if (cmd == NULL)
		cmd_error(s, "500 5.5.1 Command unrecognized");
	else if ((cmd->flags & CMD_NEED_HELO) && s->state < ST_HELO)
		cmd_error(s, "503 5.5.1 Error: send HELO/EHLO first");
	else if ((cmd->flags & CMD_NEED_MAIL) && s->state < ST_MAIL)
		cmd_error(s, "503 5.5.1 Error: need MAIL command");
	else if ((cmd->flags & CMD_NEED_RCPT) && s->state < ST_RCPT)
		cmd_error(s, "503 5.5.1 Error: need RCPT command");
	else if ((cmd->flags & CMD_NO_TXN) && s->state >= ST_MAIL)
		cmd_error(s, "503 5.5.1 Error: nested MAIL command");
	else if ((cmd->flags & CMD_NO_ARGS) && *cl.args != '\0') {
		snprintf(err, sizeof(err), "501 5.5.4 Syntax: %s (no parameters allowed)", cmd->verb);
		cmd_error(s, err);
	} else
		cmd->handler(s, cl.args);
	if (cmd != NULL && (cmd->flags & CMD_SECRET)) {
		OPENSSL_cleanse(buf, sizeof(buf));
		OPENSSL_cleanse((char *)line, len);
	}
	if (cmd != NULL && (cmd->flags & CMD_FLUSH))
		session_flush(s);
}

/* --- the end of a message ------------------------------------------------ */

static void
log_rejected(ingress_session *s, const char *reply_text)
{
	hk_log_info("rejected", "{s:s, s:s, s:s, s:i, s:s}", "id", s->id, "client", s->client_ip,
	    "from", s->mail_from ? s->mail_from : "", "rcpts", (int)s->n_rcpts,
	    "reason", reply_text);
}

/* End a transaction with REPLY_TEXT (a 4xx/5xx), logged as "rejected". */
static void
txn_fail(ingress_session *s, const char *reply_text)
{
	reply(s, "%s", reply_text);
	log_rejected(s, reply_text);
	txn_reset(s);
	ingress_enter_state(s, ST_HELO);
}

/* The end-of-data checks: the DATA reader's (size, line length, NUL),
 * then bare LF and header lines (ingress_limits). */
static bool
data_limits_failed(ingress_session *s, char err[INGRESS_REPLY_MAX])
{
	const char *limit = NULL;

	if (ingress_data_failed(&s->data, err)) {
		if (s->data.too_big)
			limit = "max_message_size";
		else if (s->data.line_too_long)
			limit = "text_line_length";
	} else if (!ingress_limits_message(s->env->conf, s->data.bare_lf, s->msg.data + s->msg_start,
	    s->msg.len - s->msg_start, err, &limit))
		return false;
	if (limit != NULL)
		log_limit(s, limit, err);
	return true;
}

static void
data_end(ingress_session *s)
{
	char err[INGRESS_REPLY_MAX];

	if (data_limits_failed(s, err)) {
		txn_fail(s, err);
		return;
	}
	message_end(s);
}

/*
 * from_refused - may tenant T send a message whose header From: is as H
 * says? As for MAIL FROM, a tenant with sender_domains must use one of them
 * or a subdomain; the null sender's exemption has no header equivalent. A
 * From: that cannot be read one way only is refused too (a mail client could
 * show a domain we did not check). False, or true with the reply in err.
 */
static bool
from_refused(ingress_session *s, const struct hk_tenant_conf *t, const struct ingress_headers *h,
    char err[INGRESS_REPLY_MAX])
{
	char addr[HK_DOMAIN_MAX + 2];
	const char *why = NULL;

	if (t == NULL || t->n_sender_domains == 0)
		return false;
	if (h->from_fields == 0)
		why = "no From header";
	else if (h->from_fields > 1)
		why = "more than one From header";
	else if (h->from_domain[0] == '\0')
		why = "From header cannot be parsed unambiguously";
	else if (h->from_mailboxes > 1)
		why = "more than one mailbox in the From header";
	if (why != NULL) {
		snprintf(err, INGRESS_REPLY_MAX, "550 5.7.1 Message refused for tenant %s: %s",
		    t->name, why);
	} else {
		snprintf(addr, sizeof(addr), "@%s", h->from_domain);
		if (hk_tenant_owns_sender(t, addr))
			return false;
		snprintf(err, INGRESS_REPLY_MAX, "550 5.7.1 From header domain not owned by tenant %s",
		    t->name);
	}
	hk_log_info("from_refused", "{s:s, s:s, s:s, s:s, s:s}", "id", s->id, "client", s->client_ip,
	    "tenant", t->name, "user", s->auth_user, "from_domain", h->from_domain);
	return true;
}

/*
 * add_missing_headers - a Message-ID and a Date right after our Received
 * header when the message has none (RFC 5322 3.6 wants both; RFC 6409 8.3
 * lets a submission server add them). Every session that may send has a
 * tenant (authenticated, or a relay_networks client), so every message gets
 * them; the id is the message's own, so it is unique in the cluster.
 */
static void
add_missing_headers(ingress_session *s, const struct ingress_headers *h)
{
	char add[512], date[64];
	size_t n = 0, tail;

	if (!h->has_message_id)
		n += (size_t)snprintf(add + n, sizeof(add) - n, "Message-ID: <%s@%s>\r\n", s->id,
		    s->env->conf->hostname);
	if (!h->has_date && n < sizeof(add)) {
		format_date(s->received_at_ms, date, sizeof(date));
		n += (size_t)snprintf(add + n, sizeof(add) - n, "Date: %s\r\n", date);
	}
	if (n == 0 || n >= sizeof(add))
		return;
	tail = s->msg.len - s->msg_start;
	ingress_buf_append(&s->msg, add, n); /* grow; then move the message up */
	memmove(s->msg.data + s->msg_start + n, s->msg.data + s->msg_start, tail);
	memcpy(s->msg.data + s->msg_start, add, n);
}

/* message_end - the whole message is in (DATA or BDAT LAST) and sound:
 * header checks, missing headers, then hand it to a router. */
static void
message_end(ingress_session *s)
{
	char err[INGRESS_REPLY_MAX];
	struct ingress_headers h;
	struct ingress_txn t;
	uint64_t req_id = 0;
	int rc;

	ingress_headers_scan(s->msg.data + s->msg_start, s->msg.len - s->msg_start, &h);
	if (from_refused(s, session_tenant(s), &h, err)) {
		txn_fail(s, err);
		return;
	}
	add_missing_headers(s, &h);
	t = (struct ingress_txn){
		.id = s->id,
		.tenant = session_tenant(s)->name,
		.pool = session_tenant(s)->pool,
		.mail_from = s->mail_from,
		.mail_params = s->mail_params,
		.n_mail_params = s->n_mail_params,
		.rcpts = s->rcpts,
		.n_rcpts = s->n_rcpts,
		.body = s->msg.data,
		.body_len = s->msg.len,
		.received_at_ms = s->received_at_ms,
		.client_address = s->client_ip,
	};
	rc = s->env->submit(s->env->arg, s, &t, &req_id);
	if (rc != 0) {
		snprintf(err, sizeof(err), "451 4.3.0 Queueing failed: %s, try again later",
		    rc == -EAGAIN ? "no router available" : uv_strerror(rc));
		txn_fail(s, err);
		return;
	}
	/* The link copied the body: drop ours now rather than after the answer. */
	s->req_id = req_id;
	s->body_size = s->msg.len;
	ingress_buf_free(&s->msg);
	ingress_enter_state(s, ST_SUBMIT);
}

/* Keep only printable ASCII of a peer's text, for a reply line. */
static void
sanitize(char *out, size_t len, const char *in)
{
	size_t n = 0;

	for (; in && *in && n + 1 < len; in++)
		out[n++] = (*in >= 32 && *in <= 126) ? *in : ' ';
	out[n] = '\0';
}

void
ingress_session_submitted(ingress_session *s, bool ok, bool busy, const char *reason)
{
	char why[200], text[INGRESS_REPLY_MAX];

	if (s->closing || s->state != ST_SUBMIT) {
		hk_log_debug("late_reply", "{s:s, s:s}", "client", s->client_ip,
		    "state", ingress_strstate(s->state));
		return;
	}
	if (ok) {
		reply(s, "250 2.0.0 Ok: queued as %s", s->id);
		hk_log_info("accepted", "{s:s, s:s, s:s, s:s, s:s, s:i, s:I, s:s}", "id", s->id,
		    "client", s->client_ip, "tenant", session_tenant(s)->name, "user", s->auth_user,
		    "from", s->mail_from, "rcpts", (int)s->n_rcpts, "size", (json_int_t)s->body_size,
		    "tls", (s->flags & SF_TLS) ? hk_tls_conn_version(s->tls) : "");
		txn_reset(s);
		ingress_enter_state(s, ST_HELO);
	} else if (busy) {
		/* RFC 3463 4.3.2: system not accepting network messages. */
		txn_fail(s, "451 4.3.2 System busy, try again later");
	} else {
		sanitize(why, sizeof(why), reason);
		snprintf(text, sizeof(text), "451 4.3.0 %s", why[0] ? why : "Queueing failed, try again later");
		txn_fail(s, text);
	}
	session_process(s);
}

/* --- input ---------------------------------------------------------------- */

static void
update_reading(ingress_session *s)
{
	bool want = !s->closing && s->state != ST_QUIT && s->in_len < sizeof(s->in) && !output_full(s);

	if (want && !(s->flags & SF_READING)) {
		if (uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read) == 0)
			s->flags |= SF_READING;
	} else if (!want && (s->flags & SF_READING)) {
		uv_read_stop((uv_stream_t *)&s->tcp);
		s->flags &= ~(unsigned)SF_READING;
	}
}

/*
 * session_process - execute buffered input until it runs out or a command
 * must wait, then write the collected replies and decide whether to read.
 */
static bool
runnable(const ingress_session *s)
{
	return !s->closing && s->state != ST_QUIT && s->state != ST_SUBMIT && s->state != ST_TLS &&
	    s->state != ST_AUTH_PENDING && s->state != ST_TARPIT;
}

static void
session_process(ingress_session *s)
{
again:
	if (!tls_fill(s))
		return;
	while (runnable(s) && !output_full(s)) {
		const char *p = s->in + s->in_off, *line;
		size_t n = s->in_len - s->in_off, used, line_len;
		enum ingress_line_result r;

		if (n == 0)
			break;
		if (s->discard > 0) {
			size_t k = n < s->discard ? n : (size_t)s->discard;
			s->in_off += k;
			if ((s->discard -= k) == 0)
				cmd_error(s, s->discard_reply);
			continue;
		}
		if (s->state == ST_DATA) {
			s->in_off += ingress_data_feed(&s->data, p, n);
			if (ingress_data_done(&s->data))
				data_end(s);
			continue;
		}
		if (s->state == ST_BDAT) {
			s->in_off += ingress_bdat_feed(&s->bdat_rd, p, n);
			if (ingress_bdat_chunk_done(&s->bdat_rd))
				bdat_chunk_end(s);
			continue;
		}
		r = ingress_line_next(&s->lines, p, n, &used, &line, &line_len);
		s->in_off += used;
		if (r == INGRESS_LINE_MORE)
			break;
		if (s->state == ST_AUTH)
			auth_line(s, r, line, line_len);
		else if (r == INGRESS_LINE_TOO_LONG) {
			log_limit(s, "command_line_length", "500 5.5.2 Line too long");
			cmd_error(s, "500 5.5.2 Line too long");
		} else
			session_execute(s, line, line_len);
	}
	if (s->closing)
		return;
	if (s->in_off > 0) {
		memmove(s->in, s->in + s->in_off, s->in_len - s->in_off);
		s->in_len -= s->in_off;
		s->in_off = 0;
	}
	/* The engine may hold more plaintext than fitted; or the handshake just
	 * ended with the client's first command behind it. */
	if (s->tls && (runnable(s) || s->state == ST_TLS) && !output_full(s) &&
	    s->in_len < sizeof(s->in)) {
		size_t had = s->in_len;
		enum ingress_state st = s->state;
		if (!tls_fill(s))
			return;
		if (s->in_len > had || s->state != st)
			goto again;
	}
	session_flush(s);
	update_reading(s);
}

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	ingress_session *s = h->data;

	(void)suggested;
	if (s->tls)
		*buf = uv_buf_init(s->raw, INGRESS_RAW_CAP);
	else
		*buf = uv_buf_init(s->in + s->in_len, (unsigned)(sizeof(s->in) - s->in_len));
}

static void
on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
	ingress_session *s = st->data;

	(void)buf;
	if (nread == 0 || s->closing)
		return;
	if (nread == UV_ENOBUFS) {
		update_reading(s);
		return;
	}
	if (nread < 0) {
		ingress_session_close(s, nread == UV_EOF ? "client disconnected" : uv_strerror((int)nread), NULL);
		return;
	}
	if (s->tls)
		hk_tls_conn_push(s->tls, s->raw, (size_t)nread);
	else
		s->in_len += (size_t)nread;
	if (s->state != ST_SUBMIT && s->state != ST_QUIT && s->state != ST_TARPIT)
		arm_timer(s); /* idle timeouts count from the last input */
	session_process(s);
}

static void
on_timer(uv_timer_t *t)
{
	ingress_session *s = t->data;
	char bye[INGRESS_REPLY_MAX];

	if (s->closing)
		return;
	switch (s->state) {
	case ST_SUBMIT:
		s->env->cancel(s->env->arg, s->req_id);
		txn_fail(s, "451 4.3.0 Queueing timed out, try again later");
		session_process(s);
		break;
	case ST_QUIT:
		ingress_session_close(s, "replies not read in time", NULL);
		break;
	case ST_TARPIT:
		reply(s, "535 5.7.8 Error: authentication failed");
		reply(s, "421 4.7.0 %s Error: too many failed authentications from %s",
		    s->env->conf->hostname, s->client_ip);
		ingress_enter_state(s, ST_QUIT);
		break;
	default:
		snprintf(bye, sizeof(bye), "421 4.4.2 %s Error: timeout exceeded", s->env->conf->hostname);
		log_limit(s, s->state == ST_DATA ? "data_timeout" : "command_timeout", bye);
		reply(s, "%s", bye);
		ingress_enter_state(s, ST_QUIT);
		break;
	}
}

/* --- lifetime ---------------------------------------------------------------- */

static void
on_shutdown(uv_shutdown_t *req, int status)
{
	ingress_session *s = req->data;

	(void)status;
	ingress_session_close(s, "quit", NULL);
}

static void
on_closed(uv_handle_t *h)
{
	ingress_session *s = h->data;

	if (--s->open_handles > 0)
		return;
	if (s->closed_cb)
		s->closed_cb(s, s->closed_arg);
	txn_reset(s);
	ingress_buf_free(&s->out);
	hk_tls_conn_free(&s->tls);
	free(s->raw);
	free(s);
}

ingress_session *
ingress_session_new(uv_loop_t *loop, const struct ingress_env *env,
    const struct hk_listener_conf *lconf, ingress_session_closed_cb closed, void *arg)
{
	ingress_session *s = xcalloc(1, sizeof(*s));

	s->env = env;
	s->lconf = lconf;
	s->closed_cb = closed;
	s->closed_arg = arg;
	s->state = ST_NEW;
	uv_tcp_init(loop, &s->tcp);
	uv_timer_init(loop, &s->timer);
	s->tcp.data = s->timer.data = s->shutdown.data = s;
	s->open_handles = 2;
	strcpy(s->client_ip, "unknown");
	strcpy(s->client_literal, "unknown");
	return s;
}

uv_stream_t *
ingress_session_stream(ingress_session *s)
{
	return (uv_stream_t *)&s->tcp;
}

static void
peer_address(ingress_session *s)
{
	struct sockaddr_storage ss;
	int len = sizeof(ss);
	const struct hk_ingress_conf *c = s->env->conf;

	if (uv_tcp_getpeername(&s->tcp, (struct sockaddr *)&ss, &len) != 0)
		return;
	ingress_limits_ip_key((struct sockaddr *)&ss, s->ip_key);
	if (ss.ss_family == AF_INET) {
		inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, s->client_ip, sizeof(s->client_ip));
		snprintf(s->client_literal, sizeof(s->client_literal), "[%s]", s->client_ip);
	} else if (ss.ss_family == AF_INET6) {
		const struct in6_addr *a = &((struct sockaddr_in6 *)&ss)->sin6_addr;
		if (IN6_IS_ADDR_V4MAPPED(a)) {
			inet_ntop(AF_INET, a->s6_addr + 12, s->client_ip, sizeof(s->client_ip));
			snprintf(s->client_literal, sizeof(s->client_literal), "[%s]", s->client_ip);
		} else {
			inet_ntop(AF_INET6, a, s->client_ip, sizeof(s->client_ip));
			snprintf(s->client_literal, sizeof(s->client_literal), "[IPv6:%s]", s->client_ip);
		}
	}
	/* Only a relay listener lets an address stand in for AUTH. */
	for (size_t i = 0; s->lconf->mode == HK_LISTEN_RELAY && i < c->n_relay_networks; i++) {
		if (hk_cidr_match(&c->relay_networks[i], (struct sockaddr *)&ss)) {
			s->flags |= SF_RELAY;
			break;
		}
	}
}

/*
 * refused_at_connect - the limits on who may start a session: open sessions
 * per client IP, and an IP blocked for failed AUTH. A refused client gets
 * its 421 instead of the greeting (on smtps only the close: it expects a
 * TLS handshake, not text).
 */
static bool
refused_at_connect(ingress_session *s)
{
	const struct hk_ingress_conf *c = s->env->conf;
	char bye[INGRESS_REPLY_MAX];
	const char *limit;

	if (s->ip_key[0] == '\0')
		return false;
	if (s->env->ip_sessions != NULL) {
		s->ip_counted = true;
		if (hk_count_add(s->env->ip_sessions, s->ip_key, 1) > (long)c->max_sessions_per_ip) {
			limit = "max_sessions_per_ip";
			snprintf(bye, sizeof(bye), "421 4.7.0 %s Error: too many connections from %s",
			    c->hostname, s->client_ip);
			goto refuse;
		}
	}
	if (s->env->auth != NULL && auth_ip_blocked(s)) {
		limit = "auth_failure_limit";
		snprintf(bye, sizeof(bye), "421 4.7.0 %s Error: too many failed authentications from %s",
		    c->hostname, s->client_ip);
		goto refuse;
	}
	return false;
refuse:
	log_limit(s, limit, bye);
	if (s->lconf->mode == HK_LISTEN_SMTPS) {
		ingress_session_close(s, limit, NULL);
		return true;
	}
	reply(s, "%s", bye);
	ingress_enter_state(s, ST_QUIT);
	return true;
}

void
ingress_session_start(ingress_session *s)
{
	peer_address(s);
	hk_log_info("smtp_connect", "{s:s, s:s, s:b}", "client", s->client_ip,
	    "listener", hk_listen_mode_name(s->lconf->mode), "relay", (s->flags & SF_RELAY) != 0);
	if (refused_at_connect(s))
		return;
	if (s->lconf->mode == HK_LISTEN_SMTPS) {
		if (tls_begin(s) != 0) {
			ingress_session_close(s, "TLS not available", NULL);
			return;
		}
		ingress_enter_state(s, ST_TLS);
	} else {
		greeting(s);
		ingress_enter_state(s, ST_NEW);
	}
	session_process(s);
}

void
ingress_session_close(ingress_session *s, const char *reason, const char *goodbye)
{
	if (s->closing)
		return;
	if (goodbye != NULL && s->tls != NULL) {
		/* Best effort, as below; only once TLS is up can the client read it. */
		if ((s->flags & SF_TLS) && hk_tls_conn_write(s->tls, goodbye, strlen(goodbye)) == 0)
			tls_try_send(s);
	} else if (goodbye != NULL) {
		/* Best effort: the socket buffer takes it or it is lost. */
		uv_buf_t b = uv_buf_init((char *)goodbye, (unsigned)strlen(goodbye));
		uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
	}
	s->closing = true;
	if (s->ip_counted) {
		hk_count_add(s->env->ip_sessions, s->ip_key, -1);
		s->ip_counted = false;
	}
	ingress_auth_cancel(s->auth_job); /* a check in flight finds no one */
	s->auth_job = NULL;
	if (s->state == ST_SUBMIT) {
		/* The answer may still come; the node will find no one waiting. */
		s->env->cancel(s->env->arg, s->req_id);
		hk_log_info("abandoned", "{s:s, s:s, s:s, s:s}", "id", s->id, "client", s->client_ip,
		    "reason", reason, "note", "closed before the router answered; may still be delivered");
	}
	hk_log_info("smtp_disconnect", "{s:s, s:s, s:s}", "client", s->client_ip,
	    "state", ingress_strstate(s->state), "reason", reason);
	uv_close((uv_handle_t *)&s->tcp, on_closed);
	uv_close((uv_handle_t *)&s->timer, on_closed);
}
