/*
 * sender_class - what one remote SMTP reply means for a recipient.
 *
 * A pure module (no I/O, no allocation, no state): given a reply's basic
 * code, its text, the destination domain and the MX host that answered, it
 * gives
 *   - the class: delivered (2xx), deferred (4xx, and anything that is not
 *     2xx or 5xx), bounced (5xx); the basic code alone decides (RFC 5321);
 *   - the enhanced status code (RFC 3463 class.subject.detail) as the reply
 *     gave it right after the basic code, or derived (2.0.0, 4.0.0, 5.0.0)
 *     when it gave none; its class is always the basic code's;
 *   - the provider of the destination ("gmail", "yahoo", "outlook",
 *     "icloud", "docomo", "au", "softbank"), by the domain or the MX host
 *     name (the domain or a suffix of it after a dot), or "" for others;
 *   - a reason (enum sender_class_reason) and whether the destination asked
 *     us to slow down (throttled), from a static table of rules: the
 *     provider's own rules first, then precise enhanced codes, then phrases
 *     any server uses, then the enhanced code's subject, then the basic code.
 *     The first rule that matches decides; its name is kept for tests and
 *     debugging.
 *
 * Texts are matched case-insensitively on a normalized copy: every line's
 * "DDD-"/"DDD " prefix and every standalone enhanced status code are taken
 * out and white space is folded, so a phrase split over the lines of a
 * multi-line reply still matches (as long as the first 1 KiB holds it).
 */
#ifndef SENDER_CLASS_H
#define SENDER_CLASS_H

#include <stdbool.h>

enum sender_class_kind {
	SENDER_CLASS_DELIVERED = 1,     /* 2xx */
	SENDER_CLASS_DEFERRED,          /* 4xx: try again later */
	SENDER_CLASS_BOUNCED,           /* 5xx: give up */
};

/* Why a recipient was not delivered. Names (sender_class_reason_name) go
 * into log events: never rename one. */
enum sender_class_reason {
	SENDER_REASON_NONE = 0,         /* "none": delivered */
	SENDER_REASON_THROTTLE,         /* "throttle": too fast, too many connections, messages or recipients, server busy */
	SENDER_REASON_BLOCK,            /* "block": the sending IP or domain is refused: block list, reputation, complaints */
	SENDER_REASON_MAILBOX,          /* "mailbox": no such user, disabled mailbox, bad address */
	SENDER_REASON_QUOTA,            /* "quota": mailbox full, over quota */
	SENDER_REASON_POLICY,           /* "policy": content (spam, virus, size) or policy (authentication, TLS, relaying, greylisting) */
	SENDER_REASON_DNS,              /* "dns": the destination's DNS: lookup failed, no such domain, null MX, no address */
	SENDER_REASON_NETWORK,          /* "network": no connection, connection lost, timeout */
	SENDER_REASON_OTHER,            /* "other": a failure with no recognised cause */
};

#define SENDER_CLASS_STATUS_MAX 12      /* "5.999.999" and its NUL */

struct sender_class {
	enum sender_class_kind kind;
	enum sender_class_reason reason;
	/* The destination asked us to slow down: a deferral (never a bounce)
	 * whose reason is throttle, or block (a temporary refusal for
	 * reputation is a request to back off too). */
	bool throttled;
	char status[SENDER_CLASS_STATUS_MAX];   /* "5.1.1" */
	bool status_given;              /* the reply carried it (else derived) */
	const char *provider;           /* static: "gmail", ..., or "" */
	const char *rule;               /* static: the rule that decided, e.g. "gmail-rate" */
};

/*
 * sender_class_reply - classify the reply CODE (200..599) with TEXT (the
 * whole reply, with or without its leading code, one line or several joined
 * by spaces or CRLF; NULL is ""), from the destination DOMAIN through the
 * MX host MX_HOST (either may be NULL or ""). Fills *out; never fails,
 * never blocks, allocates nothing.
 */
void sender_class_reply(int code, const char *text, const char *domain, const char *mx_host,
    struct sender_class *out);

/* sender_class_provider - the provider of DOMAIN or MX_HOST, or "" (static). */
const char *sender_class_provider(const char *domain, const char *mx_host);

/* sender_class_reason_name - "none", "throttle", ... (static). */
const char *sender_class_reason_name(enum sender_class_reason r);

/* sender_class_kind_name - "delivered", "deferred", "bounced" (static). */
const char *sender_class_kind_name(enum sender_class_kind k);

#endif
