/*
 * sender_smtp - the outbound SMTP client: one mail transaction, to the first
 * of a list of MX addresses that will talk.
 *
 * Written as a state table (enter-state sends the command, the reply chooses
 * the next state). Tries the addresses in order until one answers the greeting
 * with 2xx; then EHLO (falling back to HELO), MAIL FROM, one RCPT per
 * recipient (pipelined when PIPELINING is offered), DATA with dot-stuffing,
 * QUIT. Every recipient ends with a final code and the reply that decided it:
 * its RCPT reply if that was not 2xx, else the reply to the end of data.
 * Any failure before a recipient's fate is known (connect, timeout, dropped
 * connection, 4xx/5xx on MAIL or DATA) is applied to every undecided
 * recipient; connection-level failures are reported as 4xx (retry later).
 */
#ifndef SENDER_SMTP_H
#define SENDER_SMTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "sender_dns.h"

struct sender_smtp_rcpt {
	const char *address;            /* in */
	int code;                       /* out: 250, 450, 550, ... */
	char reply[512];                /* out: the remote reply (or our reason) */
};

struct sender_smtp_job {
	/* in */
	const char *helo_name;
	const char *source_address;     /* bind here before connect, or NULL */
	const struct sender_mx_addr *addrs; /* in order; copied at start */
	size_t n_addrs;
	uint16_t port;                  /* destination TCP port */
	uint32_t connect_timeout_ms;
	uint32_t command_timeout_ms;
	const char *mail_from;          /* "" for the null sender */
	const uint8_t *body;            /* CRLF lines, not dot-stuffed */
	size_t body_len;
	struct sender_smtp_rcpt *rcpts;
	size_t n_rcpts;
	/* out */
	char mx_host[256];              /* the host that took the session, or "" */
	char mx_addr[64];               /* its address as text */
};

/* Called exactly once per job, asynchronously, on the loop's thread. */
typedef void (*sender_smtp_cb)(struct sender_smtp_job *job, void *arg);

typedef struct sender_smtp sender_smtp;

/* sender_smtp_deliver - start a transaction. The job and everything it points
 * to must stay valid until cb runs. Returns 0 and a handle in *out (valid
 * until cb runs), or negative (cb not called). */
int sender_smtp_deliver(sender_smtp **out, uv_loop_t *loop,
    struct sender_smtp_job *job, sender_smtp_cb cb, void *arg);

/* sender_smtp_abort - end the transaction now (shutdown): undecided
 * recipients get 451 "aborted", cb runs (asynchronously), the connection is
 * closed. */
void sender_smtp_abort(sender_smtp *s);

#endif
