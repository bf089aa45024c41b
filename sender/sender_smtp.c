/*
 * sender_smtp - the outbound SMTP client: one mail transaction.
 *
 * DESCRIPTION
 *	A state table in the manner of OpenSMTPD's mta_session.c and Postfix's
 *	smtp_proto.c: sender_smtp_enter_state() sends the command that belongs to the
 *	new state and arms that state's timeout (smtp_states[]); sender_smtp_response()
 *	reads the reply and picks the next state. Replies are counted: every
 *	command sent adds one to s->expect and every reply takes one off, so
 *	pipelined commands (MAIL, all RCPTs and DATA in one write when the
 *	server offers PIPELINING) are matched to their replies in order.
 *
 *	Failures before MAIL FROM (connect, greeting, EHLO/HELO, a dropped or
 *	silent connection, a malformed reply) belong to that address: the next
 *	address is tried. From MAIL FROM on, a failure ends the job: undecided
 *	recipients get the MAIL/DATA reply, or a 4xx naming what broke.
 *
 *	The body is written from the caller's buffer without copying it: each
 *	write is a gather list of at most SMTP_BODY_BUFS slices of the body and
 *	of a static "." for dot-stuffing, at most SMTP_BODY_CHUNK bytes, and the
 *	next write is queued from the previous one's callback.
 *
 *	The callback always runs from the close_cb of the job's last handle, so
 *	it is asynchronous and nothing of the job is in use after it.
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
#include "hk_util.h"

/* This role */
#include "sender_reply.h"
#include "sender_smtp.h"

#define SMTP_BODY_BUFS 32               /* slices per body write */
#define SMTP_BODY_CHUNK (256 * 1024)    /* bytes per body write */
#define SMTP_QUIT_TIMEOUT_MS 5000       /* at most this long for the QUIT reply */
#define SMTP_READ_BUF 16384

/*
 * States, in protocol order. Ordering invariant: states before MAIL are per
 * connection (a failure there moves on to the next address); from MAIL on a
 * failure decides the recipients and ends the job. QUIT and DONE come after
 * every recipient is decided.
 */
#define SMTP_STATES(X)          \
	X(CONNECT)              \
	X(GREETING)             \
	X(EHLO)                 \
	X(HELO)                 \
	X(MAIL)                 \
	X(RCPT)                 \
	X(DATA)                 \
	X(BODY)                 \
	X(EOD)                  \
	X(DOT)                  \
	X(QUIT)                 \
	X(DONE)

enum smtp_state {
#define X(name) ST_##name,
	SMTP_STATES(X)
#undef X
};

enum smtp_timeout { TO_CONNECT, TO_COMMAND, TO_QUIT };

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
	[ST_MAIL] = { "MAIL", TO_COMMAND, "after MAIL FROM", "" },
	[ST_RCPT] = { "RCPT", TO_COMMAND, "after RCPT TO", "" },
	[ST_DATA] = { "DATA", TO_COMMAND, "after DATA", "" },
	[ST_BODY] = { "BODY", TO_COMMAND, "while sending message body", "" },
	[ST_EOD] = { "EOD", TO_COMMAND, "after end of data",
	    " -- message may be delivered more than once" },
	[ST_DOT] = { "DOT", TO_COMMAND, "after empty end of data", "" },
	[ST_QUIT] = { "QUIT", TO_QUIT, "after QUIT", "" },
	[ST_DONE] = { "DONE", TO_COMMAND, "after the session", "" },
};

/* A command write: the bytes live with the request. */
struct smtp_wreq {
	uv_write_t req;
	sender_smtp *s;
	char data[];
};

struct sender_smtp {
	uv_loop_t *loop;
	struct sender_smtp_job *job;
	sender_smtp_cb cb;
	void *arg;

	struct sender_mx_addr *addrs;   /* copy of job->addrs */
	size_t n_addrs, next_addr, cur_addr;
	struct sockaddr_storage src;    /* job->source_address, parsed */
	int have_src;

	uv_tcp_t tcp;
	uv_connect_t connect_req;
	uv_timer_t timer;
	int handles;                    /* initialised, not yet closed */
	bool tcp_open;                  /* tcp initialised and not closing */
	bool connected;                 /* connect succeeded; I/O callbacks count */
	bool finishing;                 /* outcome decided; closing down */
	char peer[80];                  /* "addr:port" of the current attempt */

	enum smtp_state state;
	unsigned expect;                /* replies outstanding */
	struct sender_reply_parser parser;
	char rbuf[SMTP_READ_BUF];

	char *obuf;                     /* commands queued for one write */
	size_t olen, ocap;

	bool pipelining, size_ext, eightbit_ext, tried_helo;
	unsigned long size_limit;

	size_t *order;                  /* indexes of rcpts to send */
	size_t n_order, rcpt_send, rcpt_recv;
	bool *accepted;                 /* RCPT got 2xx; fate awaits end of data */
	size_t n_accepted;

	/* Body writer state. */
	uv_write_t body_req;
	size_t body_off;
	bool body_bol;                  /* next body byte starts a line */
	bool body_done;                 /* final dot queued */

	int last_code;                  /* reason applied if no address works */
	char last_reply[512];
};

static void sender_smtp_enter_state(sender_smtp *s, enum smtp_state st);
static void smtp_connect_next(sender_smtp *s);
static void smtp_finish(sender_smtp *s);

/* smtp_handle_closed - close_cb of the timer and of each TCP handle. */
static void
smtp_handle_closed(uv_handle_t *h)
{
	sender_smtp *s = h->data;

	s->handles--;
	if (s->finishing) {
		if (s->handles == 0) {
			s->cb(s->job, s->arg);
			free(s->addrs);
			free(s->order);
			free(s->accepted);
			free(s->obuf);
			free(s);
		}
		return;
	}
	/* Only the TCP handle closes before the end: try the next address. */
	smtp_connect_next(s);
}

/* smtp_drop - close the current connection (if any). */
static void
smtp_drop(sender_smtp *s)
{
	s->connected = false;
	s->olen = 0;
	if (s->tcp_open) {
		s->tcp_open = false;
		uv_close((uv_handle_t *)&s->tcp, smtp_handle_closed);
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

/* smtp_next_addr - give up on this connection, try the next address. */
static void
smtp_next_addr(sender_smtp *s)
{
	uv_timer_stop(&s->timer);
	s->job->mx_host[0] = '\0';
	s->job->mx_addr[0] = '\0';
	if (s->tcp_open)
		smtp_drop(s);   /* smtp_handle_closed() continues */
	else
		smtp_connect_next(s);
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
	smtp_finish(s);
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

	if (s->state >= ST_QUIT) {
		/* Every recipient is decided; only the goodbye was lost. */
		smtp_finish(s);
	} else if (s->state < ST_MAIL) {
		smtp_set_last(s, 451, "451 %s %s %s with %s%s%s", dsn, what, phase, s->peer,
		    detail ? ": " : "", detail ? detail : "");
		smtp_next_addr(s);
	} else {
		smtp_fail(s, 451, "451 %s %s %s with %s%s%s%s", dsn, what, phase, s->peer,
		    detail ? ": " : "", detail ? detail : "", note);
	}
}

/* smtp_finish - all recipients are decided: close everything; the
 * callback runs from the last close_cb. */
static void
smtp_finish(sender_smtp *s)
{
	if (s->finishing)
		return;
	/* Defensive: a recipient left undecided is a bug here, not a success. */
	smtp_fail_undecided(s, 451, "451 4.3.0 internal error: recipient left undecided");
	s->finishing = true;
	s->state = ST_DONE;
	smtp_drop(s);
	uv_close((uv_handle_t *)&s->timer, smtp_handle_closed);
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

	switch (smtp_states[s->state].timeout) {
	case TO_CONNECT:
		ms = s->job->connect_timeout_ms;
		break;
	case TO_QUIT:
		ms = s->job->command_timeout_ms < SMTP_QUIT_TIMEOUT_MS ?
		    s->job->command_timeout_ms : SMTP_QUIT_TIMEOUT_MS;
		break;
	default:
		ms = s->job->command_timeout_ms;
		break;
	}
	uv_timer_start(&s->timer, smtp_on_timer, ms, 0);
}

/* smtp_on_cmd_written - a command write finished. */
static void
smtp_on_cmd_written(uv_write_t *req, int status)
{
	struct smtp_wreq *w = (struct smtp_wreq *)req;
	sender_smtp *s = w->s;

	free(w);
	if (status < 0 && s->connected)
		smtp_conn_fail(s, "connection lost", uv_strerror(status));
}

/* smtp_cmd - queue one command line (CRLF added); one reply expected. */
static void __attribute__((format(printf, 2, 3)))
smtp_cmd(sender_smtp *s, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(s->obuf + s->olen, s->ocap - s->olen, fmt, ap);
		va_end(ap);
		if (n >= 0 && (size_t)n + 3 <= s->ocap - s->olen)
			break;
		s->ocap = (s->ocap + (size_t)(n > 0 ? n : 0) + 3) * 2;
		s->obuf = xrealloc(s->obuf, s->ocap);
	}
	s->olen += (size_t)n;
	memcpy(s->obuf + s->olen, "\r\n", 2);
	s->olen += 2;
	s->expect++;
}

/* smtp_flush - write the queued commands. Returns 0 or -1 (the job has
 * moved on: connection failed). */
static int
smtp_flush(sender_smtp *s)
{
	struct smtp_wreq *w;
	uv_buf_t buf;
	int rc;

	if (s->olen == 0)
		return 0;
	w = xmalloc(sizeof(*w) + s->olen);
	w->s = s;
	memcpy(w->data, s->obuf, s->olen);
	buf = uv_buf_init(w->data, (unsigned)s->olen);
	s->olen = 0;
	if ((rc = uv_write(&w->req, (uv_stream_t *)&s->tcp, &buf, 1, smtp_on_cmd_written)) < 0) {
		free(w);
		smtp_conn_fail(s, "connection lost", uv_strerror(rc));
		return -1;
	}
	return 0;
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
	sender_smtp *s = req->data;

	if (!s->connected)
		return;
	if (status < 0) {
		smtp_conn_fail(s, "connection lost", uv_strerror(status));
		return;
	}
	smtp_arm_timer(s);      /* progress */
	if (!s->body_done)
		smtp_body_write(s);
}

/* smtp_body_write - queue the next body write; after the last one the
 * end-of-data reply is awaited (state EOD). */
static void
smtp_body_write(sender_smtp *s)
{
	uv_buf_t bufs[SMTP_BODY_BUFS];
	size_t n;
	int rc;

	n = smtp_body_fill(s, bufs, SMTP_BODY_BUFS);
	s->body_req.data = s;
	rc = uv_write(&s->body_req, (uv_stream_t *)&s->tcp, bufs, (unsigned)n, smtp_on_body_written);
	if (rc < 0) {
		smtp_conn_fail(s, "connection lost", uv_strerror(rc));
		return;
	}
	if (s->body_done) {
		s->expect++;
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

/* smtp_send_rcpt - queue RCPT TO for the next recipient. */
static void
smtp_send_rcpt(sender_smtp *s)
{
	smtp_cmd(s, "RCPT TO:<%s>", s->job->rcpts[s->order[s->rcpt_send++]].address);
}

/* sender_smtp_enter_state - switch to ST and send what that state sends. */
static void
sender_smtp_enter_state(sender_smtp *s, enum smtp_state st)
{
	struct sender_smtp_job *job = s->job;

	hk_log_debug("smtp_state", "{s:s, s:s, s:s}", "peer", s->peer,
	    "from", smtp_states[s->state].name, "to", smtp_states[st].name);
	s->state = st;
	if (st != ST_DONE)
		smtp_arm_timer(s);
	switch (st) {
	case ST_CONNECT:
		smtp_connect_next(s);
		return;
	case ST_GREETING:
		s->expect = 1;
		break;
	case ST_EHLO:
		smtp_cmd(s, "EHLO %s", job->helo_name);
		break;
	case ST_HELO:
		s->tried_helo = true;
		smtp_cmd(s, "HELO %s", job->helo_name);
		break;
	case ST_MAIL: {
		char size[40] = "";
		if (s->size_ext)
			snprintf(size, sizeof(size), " SIZE=%zu", job->body_len);
		smtp_cmd(s, "MAIL FROM:<%s>%s%s", job->mail_from, size,
		    s->eightbit_ext && smtp_has_8bit(job->body, job->body_len) ? " BODY=8BITMIME" : "");
		if (s->pipelining) {
			/* RFC 2920: the whole envelope and DATA in one go. */
			while (s->rcpt_send < s->n_order)
				smtp_send_rcpt(s);
			smtp_cmd(s, "DATA");
		}
		break;
	}
	case ST_RCPT:
		if (!s->pipelining)
			smtp_send_rcpt(s);
		break;
	case ST_DATA:
		if (!s->pipelining)
			smtp_cmd(s, "DATA");
		break;
	case ST_BODY:
		s->body_off = 0;
		s->body_bol = true;
		s->body_done = false;
		smtp_body_write(s);
		return;
	case ST_EOD:
		break;
	case ST_DOT:
		/* RFC 2920 §3.1: DATA accepted with no valid recipient: end it. */
		smtp_cmd(s, ".");
		break;
	case ST_QUIT:
		smtp_cmd(s, "QUIT");
		break;
	case ST_DONE:
		smtp_finish(s);
		return;
	}
	smtp_flush(s);
}

/* smtp_ehlo_ext - note the extensions of an EHLO reply we use. */
static void
smtp_ehlo_ext(sender_smtp *s, const struct sender_reply *r)
{
	const char *line;
	size_t i;

	s->pipelining = s->size_ext = s->eightbit_ext = false;
	s->size_limit = 0;
	/* Line 0 is the greeting text; extensions follow, one per line. */
	for (i = 1; (line = sender_reply_line(r, i)) != NULL; i++) {
		size_t kw = strcspn(line, " ");
		if (kw == 10 && strncasecmp(line, "PIPELINING", 10) == 0) {
			s->pipelining = true;
		} else if (kw == 8 && strncasecmp(line, "8BITMIME", 8) == 0) {
			s->eightbit_ext = true;
		} else if (kw == 4 && strncasecmp(line, "SIZE", 4) == 0) {
			s->size_ext = true;
			s->size_limit = line[4] == ' ' ? strtoul(line + 5, NULL, 10) : 0;
		}
	}
}

/* sender_smtp_response - one complete reply arrived: decide the next state. */
static void
sender_smtp_response(sender_smtp *s, const struct sender_reply *r)
{
	int cls = r->code / 100;
	enum smtp_state next = s->state;
	size_t i;

	if (s->expect == 0) {
		if (s->state == ST_BODY && cls >= 4) {
			/* The server gave up on the message mid-body. */
			for (i = 0; i < s->job->n_rcpts; i++)
				if (s->accepted[i] && s->job->rcpts[i].code == 0)
					smtp_decide(s, i, r->code, r->text);
			smtp_finish(s);
			return;
		}
		smtp_conn_fail(s, "protocol error", "unexpected reply");
		return;
	}
	s->expect--;
	if (cls == 3 && s->state != ST_DATA && s->state != ST_QUIT) {
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
			smtp_ehlo_ext(s, r);
		if (s->size_ext && s->size_limit > 0 && s->job->body_len > s->size_limit) {
			char buf[256];
			snprintf(buf, sizeof(buf), "552 5.3.4 message size %zu exceeds size limit %lu "
			    "of server %s", s->job->body_len, s->size_limit, s->peer);
			smtp_fail_undecided(s, 552, buf);
			next = ST_QUIT;
			break;
		}
		next = ST_MAIL;
		break;
	case ST_MAIL:
		if (cls != 2) {
			smtp_fail_undecided(s, r->code, r->text);
			next = ST_QUIT;
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
		else if (s->pipelining || s->n_accepted > 0)
			next = ST_DATA;     /* pipelined: DATA is on its way already */
		else
			next = ST_QUIT;
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
		next = ST_QUIT;
		break;
	case ST_BODY:
		/* Not reached: no reply is expected before the final dot. */
		break;
	case ST_EOD:
		for (i = 0; i < s->job->n_rcpts; i++)
			if (s->accepted[i])
				smtp_decide(s, i, r->code, r->text);
		next = ST_QUIT;
		break;
	case ST_DOT:
		next = ST_QUIT;
		break;
	case ST_QUIT:
		/* Replies to pipelined commands after a failure, then QUIT's. */
		if (s->expect > 0)
			return;
		next = ST_DONE;
		break;
	case ST_CONNECT:
	case ST_DONE:
		return;
	}
	sender_smtp_enter_state(s, next);
}

/* smtp_alloc - libuv read buffer: one read at a time, so one buffer. */
static void
smtp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	sender_smtp *s = h->data;

	(void)hint;
	*buf = uv_buf_init(s->rbuf, sizeof(s->rbuf));
}

/* smtp_on_read - bytes from the server: split into replies. */
static void
smtp_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
	sender_smtp *s = st->data;
	const struct sender_reply *r;
	size_t off = 0, used;
	int rc;

	if (!s->connected || nread == 0)
		return;
	if (nread < 0) {
		smtp_conn_fail(s, "connection lost", nread == UV_EOF ? NULL : uv_strerror((int)nread));
		return;
	}
	smtp_arm_timer(s);      /* progress */
	while (off < (size_t)nread && s->connected) {
		rc = sender_reply_feed(&s->parser, buf->base + off, (size_t)nread - off, &used, &r);
		off += used;
		if (rc < 0) {
			smtp_conn_fail(s, "protocol error", s->parser.error);
			return;
		}
		if (rc == 0)
			break;
		sender_smtp_response(s, r);
	}
}

/* smtp_on_connect - TCP connect finished. */
static void
smtp_on_connect(uv_connect_t *req, int status)
{
	sender_smtp *s = req->data;
	int rc;

	if (status == UV_ECANCELED || !s->tcp_open)
		return;         /* we closed it: timeout or abort */
	if (status < 0) {
		smtp_set_last(s, 451, "451 4.4.1 connect to %s failed: %s", s->peer, uv_strerror(status));
		smtp_next_addr(s);
		return;
	}
	s->connected = true;
	uv_tcp_nodelay(&s->tcp, 1);
	if ((rc = uv_read_start((uv_stream_t *)&s->tcp, smtp_alloc, smtp_on_read)) < 0) {
		smtp_set_last(s, 451, "451 4.4.1 connect to %s failed: %s", s->peer, uv_strerror(rc));
		smtp_next_addr(s);
		return;
	}
	sender_smtp_enter_state(s, ST_GREETING);
}

/* smtp_connect_next - start connecting to the next usable address, or end
 * the job with the last failure when none is left. */
static void
smtp_connect_next(sender_smtp *s)
{
	struct sockaddr_storage dst;
	char ip[INET6_ADDRSTRLEN];
	int rc;

	s->state = ST_CONNECT;
	while (s->next_addr < s->n_addrs) {
		const struct sender_mx_addr *a = &s->addrs[s->next_addr];
		s->cur_addr = s->next_addr++;

		memset(&dst, 0, sizeof(dst));
		memcpy(&dst, &a->addr, a->addrlen <= sizeof(dst) ? a->addrlen : sizeof(dst));
		if (dst.ss_family == AF_INET) {
			((struct sockaddr_in *)&dst)->sin_port = htons(s->job->port);
			uv_ip4_name((struct sockaddr_in *)&dst, ip, sizeof(ip));
			snprintf(s->peer, sizeof(s->peer), "%s:%u", ip, s->job->port);
		} else if (dst.ss_family == AF_INET6) {
			((struct sockaddr_in6 *)&dst)->sin6_port = htons(s->job->port);
			uv_ip6_name((struct sockaddr_in6 *)&dst, ip, sizeof(ip));
			snprintf(s->peer, sizeof(s->peer), "[%s]:%u", ip, s->job->port);
		} else {
			snprintf(s->peer, sizeof(s->peer), "(address family %d)", dst.ss_family);
			smtp_set_last(s, 451, "451 4.4.1 connect to %s failed: unsupported address",
			    s->peer);
			continue;
		}
		if (s->have_src && s->src.ss_family != dst.ss_family) {
			smtp_set_last(s, 451, "451 4.4.1 connect to %s failed: no source address of "
			    "that family", s->peer);
			continue;
		}

		/* Fresh per-connection state. */
		sender_reply_init(&s->parser);
		s->expect = 0;
		s->olen = 0;
		s->pipelining = s->size_ext = s->eightbit_ext = s->tried_helo = false;
		s->size_limit = 0;
		snprintf(s->job->mx_addr, sizeof(s->job->mx_addr), "%s", ip);

		uv_tcp_init(s->loop, &s->tcp);
		s->tcp.data = s;
		s->tcp_open = true;
		s->handles++;
		rc = 0;
		if (s->have_src)
			rc = uv_tcp_bind(&s->tcp, (struct sockaddr *)&s->src, 0);
		if (rc == 0) {
			s->connect_req.data = s;
			rc = uv_tcp_connect(&s->connect_req, &s->tcp, (struct sockaddr *)&dst,
			    smtp_on_connect);
		}
		if (rc < 0) {
			smtp_set_last(s, 451, "451 4.4.1 connect to %s failed: %s", s->peer,
			    uv_strerror(rc));
			smtp_drop(s);   /* the close_cb moves on */
			return;
		}
		smtp_arm_timer(s);
		return;
	}
	s->job->mx_addr[0] = '\0';
	smtp_fail(s, s->last_code, "%s", s->last_reply);
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

	s = xcalloc(1, sizeof(*s));
	if (job->source_address != NULL && job->source_address[0] != '\0') {
		if (uv_ip4_addr(job->source_address, 0, (struct sockaddr_in *)&s->src) != 0 &&
		    uv_ip6_addr(job->source_address, 0, (struct sockaddr_in6 *)&s->src) != 0) {
			free(s);
			return -EINVAL;
		}
		s->have_src = 1;
	}
	s->loop = loop;
	s->job = job;
	s->cb = cb;
	s->arg = arg;
	s->n_addrs = job->n_addrs;
	if (s->n_addrs > 0) {
		s->addrs = xcalloc(s->n_addrs, sizeof(*s->addrs));
		memcpy(s->addrs, job->addrs, s->n_addrs * sizeof(*s->addrs));
	}
	s->ocap = 512;
	s->obuf = xmalloc(s->ocap);
	s->order = xcalloc(job->n_rcpts, sizeof(*s->order));
	s->accepted = xcalloc(job->n_rcpts, sizeof(*s->accepted));
	job->mx_host[0] = job->mx_addr[0] = '\0';
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
	s->handles = 1;
	s->state = ST_CONNECT;
	if (s->n_order == 0)
		smtp_finish(s);         /* nothing to send; cb from the close_cb */
	else
		smtp_connect_next(s);
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
