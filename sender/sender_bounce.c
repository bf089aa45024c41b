/*
 * sender_bounce - a DSN about a queued message as a Submission (see
 * sender_bounce.h).
 */
#include <stdio.h>
#include <string.h>

#include "hk_domain.h"
#include "sender_bounce.h"

int
sender_bounce_make(struct sender_bounce *b, const Hk__Submission *meta, const uint8_t *body,
    size_t body_len, const struct sender_dsn_rcpt *rcpts, size_t n, const char *reporting_mta,
    const char *id, int64_t now, const char *ingress_node, char *why, size_t whylen)
{
	const Hk__Envelope *env = meta->envelope;
	const char *from = env && env->mail_from ? env->mail_from : "";
	char dom[HK_DOMAIN_MAX];

	memset(b, 0, sizeof(*b));
	if (*from == '\0')
		return snprintf(why, whylen, "null sender"), 1;
	if (n == 0)
		return snprintf(why, whylen, "no recipient asked for one (NOTIFY)"), 1;
	if (hk_domain_of(from, dom) != 0)
		return snprintf(why, whylen, "the sender address has no valid domain"), 1;

	struct sender_dsn_report rep = {
		.reporting_mta = reporting_mta, .mail_from = from,
		.mail_params = env ? (const char *const *)env->mail_params : NULL,
		.n_mail_params = env ? env->n_mail_params : 0,
		.id = meta->id, .arrival_ms = meta->received_at_ms, .now_ms = now,
		.rcpts = rcpts, .n_rcpts = n, .body = body, .body_len = body_len,
	};
	if (sender_dsn_build(&rep, &b->dsn, why, whylen) != 0)
		return -1;
	snprintf(b->id, sizeof(b->id), "%s", id);
	hk__submission__init(&b->sub);
	hk__envelope__init(&b->env);
	hk__recipient__init(&b->rcpt);
	b->sub.id = b->id;
	b->sub.tenant = meta->tenant;
	b->sub.pool = meta->pool;
	b->sub.envelope = &b->env;
	b->sub.body_size = b->dsn.len;
	b->sub.received_at_ms = now;
	b->sub.ingress_node = (char *)ingress_node;
	b->sub.client_address = "";
	b->env.mail_from = "";          /* a DSN never causes another */
	if (b->dsn.smtputf8)
		b->params[b->env.n_mail_params++] = "SMTPUTF8";
	if (b->dsn.eightbit)
		b->params[b->env.n_mail_params++] = "BODY=8BITMIME";
	b->env.mail_params = b->params;
	b->rcpt.address = (char *)from;
	b->rcpt_p = &b->rcpt;
	b->env.rcpts = &b->rcpt_p;
	b->env.n_rcpts = 1;
	return 0;
}

void
sender_bounce_free(struct sender_bounce *b)
{
	sender_dsn_free(&b->dsn);
	memset(b, 0, sizeof(*b));
}
