/*
 * sender_notify - the DSNs the sender owes for its own outcomes (see
 * sender_notify.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "hk_id.h"
#include "hk_log.h"
#include "hk_util.h"
#include "sender_bounce.h"
#include "sender_dsn.h"
#include "sender_notify.h"

struct note {
	uint32_t idx;
	enum sender_dsn_action action;
	bool expired;
	char *reply, *mx;
	int64_t attempt_ms;
};

/* The notes about one message. */
struct group {
	char *id;
	struct note *v;
	size_t n, cap;
};

struct sender_notify {
	struct sender_notify_conf c;
	hk_idgen *ids;
	struct group *g;
	size_t n, cap;
};

sender_notify *
sender_notify_new(const struct sender_notify_conf *conf)
{
	sender_notify *n = xcalloc(1, sizeof(*n));

	n->c = *conf;
	n->ids = hk_idgen_new();
	return n;
}

static void
groups_clear(sender_notify *n)
{
	for (size_t i = 0; i < n->n; i++) {
		for (size_t k = 0; k < n->g[i].n; k++) {
			free(n->g[i].v[k].reply);
			free(n->g[i].v[k].mx);
		}
		free(n->g[i].v);
		free(n->g[i].id);
	}
	n->n = 0;
}

void
sender_notify_free(sender_notify **np)
{
	sender_notify *n = *np;

	if (n == NULL)
		return;
	groups_clear(n);
	free(n->g);
	hk_idgen_destroy(&n->ids);
	free(n);
	*np = NULL;
}

void
sender_notify_outcome(sender_notify *n, const struct sender_outcome *o)
{
	struct group *g = NULL;

	if (o->kind == SENDER_OUT_DELIVERED || o->kind == SENDER_OUT_POSTPONED)
		return;
	for (size_t i = n->n; i-- > 0; )
		if (strcmp(n->g[i].id, o->id) == 0) {
			g = &n->g[i];
			break;
		}
	if (g == NULL) {
		if (n->n == n->cap) {
			n->cap = n->cap ? n->cap * 2 : 16;
			n->g = xrealloc(n->g, n->cap * sizeof(*n->g));
		}
		g = &n->g[n->n++];
		memset(g, 0, sizeof(*g));
		g->id = xstrdup(o->id);
	}
	if (g->n == g->cap) {
		g->cap = g->cap ? g->cap * 2 : 4;
		g->v = xrealloc(g->v, g->cap * sizeof(*g->v));
	}
	g->v[g->n++] = (struct note){
		.idx = o->idx,
		.action = o->kind == SENDER_OUT_DEFERRED ? SENDER_DSN_DELAYED : SENDER_DSN_FAILED,
		.expired = o->kind == SENDER_OUT_EXPIRED,
		.reply = xstrdup(o->reply ? o->reply : ""), .mx = xstrdup(o->mx ? o->mx : ""),
		.attempt_ms = o->attempt_ms,
	};
}

/* due - is a DSN due for note T of recipient R (as it stands before this
 * outcome is committed)? */
static bool
due(const sender_notify *n, const struct note *t, const struct sender_qrcpt *r,
    const char *mail_from)
{
	if (!sender_dsn_wanted(t->action, r->params, r->params_len, mail_from))
		return false;
	if (t->action != SENDER_DSN_DELAYED)
		return true;
	/* Once: the attempt that carries it past delay_warning_time. */
	int64_t warn_at = r->queued_at_ms + (int64_t)n->c.delay_warning_ms;
	return r->last_attempt_ms < warn_at && warn_at <= t->attempt_ms;
}

/* flush_group - the DSN of G, if one is due. 1 if emitted. */
static int
flush_group(sender_notify *n, struct group *g, int64_t now, sender_notify_emit_fn emit, void *arg)
{
	struct sender_qrcpt **rs = xcalloc(g->n, sizeof(*rs));
	struct sender_dsn_rcpt *dr = xcalloc(g->n, sizeof(*dr));
	Hk__Submission *meta = NULL;
	uint8_t *body = NULL;
	size_t body_len = 0, nd = 0;
	struct sender_bounce b;
	char why[256], id[HK_ID_LEN + 1];
	int rc, out = 0;

	memset(&b, 0, sizeof(b));
	/* The envelope sender first: nothing is due to <>. */
	if ((rc = sender_queue_msg_load(n->c.q, g->id, &meta, NULL, NULL)) != 0)
		goto done;
	const char *from = meta->envelope && meta->envelope->mail_from ? meta->envelope->mail_from : "";
	if (*from == '\0')
		goto done;
	for (size_t i = 0; i < g->n; i++) {
		struct note *t = &g->v[i];
		if (sender_queue_rcpt_load(n->c.q, g->id, t->idx, &rs[i]) != 0)
			continue;       /* gone meanwhile */
		if (!due(n, t, rs[i], from))
			continue;
		dr[nd++] = (struct sender_dsn_rcpt){
			.address = rs[i]->address, .params = rs[i]->params,
			.params_len = rs[i]->params_len, .action = t->action,
			.status = t->expired ? "5.4.7" : NULL,
			.remote_mta = t->mx, .diagnostic = t->reply, .last_attempt_ms = t->attempt_ms,
			.will_retry_until_ms = t->action == SENDER_DSN_DELAYED
			    ? rs[i]->queued_at_ms + (int64_t)n->c.max_lifetime_ms : 0,
		};
	}
	if (nd == 0)
		goto done;
	hk__submission__free_unpacked(meta, NULL);
	meta = NULL;
	if (sender_queue_msg_load(n->c.q, g->id, &meta, &body, &body_len) != 0)
		goto done;
	hk_id_next(n->ids, id);
	rc = sender_bounce_make(&b, meta, body, body_len, dr, nd, n->c.reporting_mta, id, now,
	    n->c.node, why, sizeof(why));
	if (rc != 0) {
		hk_log_warn("dsn_not_sent", "{s:s, s:s}", "about", g->id, "reason", why);
		goto done;
	}
	/* A heap copy the commit can own (and op_free can free). */
	size_t len = hk__submission__get_packed_size(&b.sub);
	uint8_t *buf = xmalloc(len ? len : 1);
	hk__submission__pack(&b.sub, buf);
	Hk__Submission *msg = hk__submission__unpack(NULL, len, buf);
	free(buf);
	if (msg == NULL)
		goto done;
	uint8_t *data = b.dsn.data;
	size_t data_len = b.dsn.len;
	b.dsn.data = NULL;
	emit(msg, data, data_len, g->id, nd, arg);
	out = 1;
done:
	sender_bounce_free(&b);
	if (meta)
		hk__submission__free_unpacked(meta, NULL);
	free(body);
	for (size_t i = 0; i < g->n; i++)
		free(rs[i]);
	free(rs);
	free(dr);
	return out;
}

size_t
sender_notify_flush(sender_notify *n, int64_t now, sender_notify_emit_fn emit, void *arg)
{
	size_t sent = 0;

	for (size_t i = 0; i < n->n; i++)
		sent += (size_t)flush_group(n, &n->g[i], now, emit, arg);
	groups_clear(n);
	return sent;
}
