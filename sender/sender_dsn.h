/*
 * sender_dsn - delivery status notifications (RFC 3464, RFC 3461, RFC 6522,
 * RFC 6533), built as complete RFC 5322 messages.
 *
 * Pure: no I/O, no clock, no randomness; every input (times included) comes
 * from the caller, so the same report always gives the same bytes. The
 * module does not queue anything: its caller sends the result as a new
 * message with
 *
 *     MAIL FROM:<>                          (never anything else: RFC 3461 6.2,
 *                                           and it stops DSNs about DSNs)
 *     RCPT TO:<the original envelope sender>
 *     SMTPUTF8 on MAIL    if dsn.smtputf8    (the To: header holds UTF-8)
 *     BODY=8BITMIME       if dsn.eightbit    (some part holds 8-bit octets)
 *
 * and asks sender_dsn_wanted() first, for each recipient, whether a DSN is
 * due at all.
 *
 * The message: From: the reporting MTA's postmaster address, To: the
 * envelope sender, Subject, Date, Message-ID, Auto-Submitted: auto-replied,
 * MIME-Version, and a multipart/report; report-type=delivery-status of
 *   1. text/plain: what happened to which recipient, with the remote reply;
 *   2. message/delivery-status: Reporting-MTA, X-Hikyaku-Queue-ID,
 *      Original-Envelope-Id (ENVID, xtext-decoded), Arrival-Date; then per
 *      recipient Original-Recipient (ORCPT, an rfc822 address xtext-decoded),
 *      Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code,
 *      Last-Attempt-Date and, for delayed, Will-Retry-Until;
 *   3. the original message: message/rfc822 (whole) when RET=FULL was asked
 *      for, the report has a failed recipient and the message is at most
 *      max_return octets, 7bit or 8bit (not BINARYMIME) and of lines of at
 *      most 998 octets without NUL; text/rfc822-headers (its header block)
 *      otherwise: RET=HDRS, no RET (RFC 3461 4.3 leaves the choice to us: we
 *      return headers only), delay and success reports (RET is about failed
 *      DSNs), and originals too large or not fit to be returned. The part is
 *      left out when even the header block is not fit (or is empty). The
 *      text part says which was done and why.
 *
 * Internationalized mail (RFC 6533): when an address of the report (the
 * envelope sender, a recipient, an ORCPT) holds UTF-8, or the original was
 * sent with SMTPUTF8 and its header block holds 8-bit octets, the parts are
 * message/global-delivery-status, message/global or message/global-headers
 * (with Content-Transfer-Encoding: 8bit) under
 * report-type=global-delivery-status, the text is charset=utf-8, and
 * non-ASCII addresses are given with the utf-8 address type. Otherwise the
 * report is plain RFC 3464, and 8-bit octets can appear only in a returned
 * 8BITMIME original (its part is then marked 8bit). Either way dsn.smtputf8
 * and dsn.eightbit say what the transport must offer; remote replies are
 * reduced to printable ASCII.
 */
#ifndef SENDER_DSN_H
#define SENDER_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* RET=FULL returns the whole original up to this size, else its headers. */
#define SENDER_DSN_RETURN_MAX_DEFAULT ((size_t)1 << 20)

/* What happened to a recipient (RFC 3464 2.3.3). The values are the
 * module's own; the sender maps its outcomes onto them (bounced, expired:
 * FAILED; deferred: DELAYED; relayed to a server without DSN: RELAYED). */
enum sender_dsn_action {
	SENDER_DSN_FAILED = 1,
	SENDER_DSN_DELAYED,
	SENDER_DSN_DELIVERED,
	SENDER_DSN_RELAYED,
	SENDER_DSN_EXPANDED,
};

/* One recipient of the report. Only address and action are required. */
struct sender_dsn_rcpt {
	const char *address;            /* the envelope recipient: Final-Recipient */
	const char *params;             /* its RCPT parameters verbatim ("NOTIFY=...",
	                                 * "ORCPT=rfc822;..."): NUL-terminated strings
	                                 * back to back, as in the queue */
	size_t params_len;              /* bytes of params (0: none) */
	enum sender_dsn_action action;
	const char *status;             /* "5.1.1"; NULL: sender_dsn_status() */
	const char *remote_mta;         /* the MX host that answered, NULL or "": none */
	const char *diagnostic;         /* the reply that decided it ("550 5.1.1 ...");
	                                 * with a remote_mta it is the server's
	                                 * (Diagnostic-Code: smtp), without one our
	                                 * own reason (X-Hikyaku); NULL or "": none */
	int64_t last_attempt_ms;        /* Last-Attempt-Date; 0: omitted */
	int64_t will_retry_until_ms;    /* Will-Retry-Until (DELAYED only); 0: omitted */
};

/* The report: one DSN about one message, for one or more of its recipients. */
struct sender_dsn_report {
	const char *reporting_mta;      /* our host name (Reporting-MTA: dns; H); required */
	const char *from;               /* From: address; NULL: MAILER-DAEMON@reporting_mta */
	const char *mail_from;          /* the original envelope sender, To: of the DSN;
	                                 * required, not "" (see sender_dsn_wanted) */
	const char *const *mail_params; /* the original MAIL parameters verbatim
	                                 * (Submission.envelope.mail_params) */
	size_t n_mail_params;
	const char *id;                 /* the original's queue id (X-Hikyaku-Queue-ID,
	                                 * and the generated Message-ID); may be NULL
	                                 * if message_id is given */
	const char *message_id;         /* the DSN's Message-ID, without <>; NULL:
	                                 * "<id.ACTION.now_ms@reporting_mta>" */
	int64_t arrival_ms;             /* Arrival-Date; 0: omitted */
	int64_t now_ms;                 /* Date: of the DSN */
	const struct sender_dsn_rcpt *rcpts;
	size_t n_rcpts;                 /* >= 1 */
	const uint8_t *body;            /* the original message as queued (headers
	                                 * and body); may be NULL if body_len is 0 */
	size_t body_len;
	size_t max_return;              /* 0: SENDER_DSN_RETURN_MAX_DEFAULT */
};

/* The DSN built. */
struct sender_dsn {
	uint8_t *data;                  /* the message, CRLF lines; caller frees
	                                 * with sender_dsn_free() */
	size_t len;
	bool smtputf8;                  /* send with SMTPUTF8 (UTF-8 in the header) */
	bool eightbit;                  /* send with BODY=8BITMIME (8-bit octets) */
	bool global;                    /* RFC 6533 types were used */
	enum {
		SENDER_DSN_RETURNED_NONE = 0,   /* no third part */
		SENDER_DSN_RETURNED_HEADERS,    /* text/rfc822-headers (or global-headers) */
		SENDER_DSN_RETURNED_FULL,       /* message/rfc822 (or message/global) */
	} returned;
};

/*
 * sender_dsn_build - the DSN of REPORT into *out (zeroed first). Returns 0,
 * or -1 with the reason in err (a required input missing, no recipient, an
 * address with a control character); then *out holds nothing. Caller owns
 * out->data. Never blocks.
 */
int sender_dsn_build(const struct sender_dsn_report *report, struct sender_dsn *out,
    char *err, size_t errlen);

/* sender_dsn_free - free what sender_dsn_build() put in D; D is zeroed. */
void sender_dsn_free(struct sender_dsn *d);

/*
 * sender_dsn_wanted - is a DSN of ACTION due for a recipient with these RCPT
 * PARAMS (NUL-separated, as above) of a message from MAIL_FROM? Never to the
 * null sender (NULL or ""). NOTIFY=NEVER: never. With NOTIFY: FAILED needs
 * FAILURE, DELAYED needs DELAY, DELIVERED/RELAYED/EXPANDED need SUCCESS.
 * Without NOTIFY: failures only (RFC 3461 4.1 lets us also send delays; we
 * do not).
 */
bool sender_dsn_wanted(enum sender_dsn_action action, const char *params, size_t params_len,
    const char *mail_from);

/* sender_dsn_param - the value of KEY= (case-insensitive) in the
 * NUL-separated PARAMS, pointing into PARAMS; NULL if absent. */
const char *sender_dsn_param(const char *params, size_t params_len, const char *key);

/* sender_dsn_mail_param - the same over an array of N strings. */
const char *sender_dsn_mail_param(const char *const *params, size_t n, const char *key);

/*
 * sender_dsn_status - the Status of a recipient of ACTION whose deciding
 * reply was REPLY (may be NULL): the reply's enhanced code (RFC 3463,
 * "550 5.1.1 ...") when its class fits the action (5 for failed, 4 for
 * delayed, 2 otherwise), else "5.0.0", "4.0.0" or "2.0.0". Written into out
 * (NUL-terminated, at most 15 characters).
 */
void sender_dsn_status(const char *reply, enum sender_dsn_action action, char out[16]);

/*
 * sender_dsn_xtext_decode - decode xtext (RFC 3461 4: "+XX" is one octet)
 * IN into OUT (NUL-terminated). 0, or -1 if malformed, if it decodes to a
 * control character (NUL included) or if it does not fit.
 */
int sender_dsn_xtext_decode(const char *in, char *out, size_t out_size);

/* sender_dsn_action_name - "failed", "delayed", ... (RFC 3464 action-value). */
const char *sender_dsn_action_name(enum sender_dsn_action action);

#endif
