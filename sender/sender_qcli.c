/*
 * sender_qcli - `hikyaku queue` (see sender_qcli.h): list, show, counts,
 * retry, delete and bounce over a sender's LMDB queue.
 *
 * Every command walks the recipients in key order in pieces of WALK_CHUNK
 * (one read transaction each, sender_queue_scan_all going on after the last
 * key seen), copying the ones that match the selectors. Write commands
 * collect their matches first, then write them with sender_queue_delete,
 * sender_queue_reschedule or, per message, sender_queue_commit_all (bounce).
 */

/* System */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Third-party */
#include <jansson.h>

/* common/ */
#include "hk_config.h"
#include "hk_domain.h"
#include "hk_id.h"
#include "hk_log.h"
#include "hk_util.h"

/* This role */
#include "sender_bounce.h"
#include "sender_dsn.h"
#include "sender_qcli.h"
#include "sender_queue.h"

#define WALK_CHUNK 1000         /* recipients visited per read transaction */
#define BOUNCE_TRIES 3          /* a message whose recipients moved meanwhile */

enum cmd { CMD_LIST, CMD_SHOW, CMD_COUNTS, CMD_RETRY, CMD_DELETE, CMD_BOUNCE };

static const char *const cmd_names[] = {
	[CMD_LIST] = "list", [CMD_SHOW] = "show", [CMD_COUNTS] = "counts",
	[CMD_RETRY] = "retry", [CMD_DELETE] = "delete", [CMD_BOUNCE] = "bounce",
};

struct opts {
	enum cmd cmd;
	const char *config, *node, *queue, *hostname;
	const char *id, *rcpt;
	char domain[HK_DOMAIN_MAX];     /* canonical, "" for none */
	bool json, all;
	size_t limit;                   /* 0: none */
};

/* A recipient copied out of the queue. */
struct item {
	char *id;
	uint32_t idx;
	char *address, *domain, *reply;
	char *params;                   /* NUL-separated, params_len bytes */
	size_t params_len;
	uint32_t attempts;
	int64_t queued_at_ms, first_attempt_ms, last_attempt_ms, next_attempt_ms;
};

struct items {
	struct item *v;
	size_t n, cap;
};

struct ctx {
	const struct opts *o;
	FILE *out;
	sender_queue *q;
	int64_t now;
};

/* ---- small things ---- */

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: hikyaku queue (--config FILE [--node SENDER] | --queue PATH) [--json] COMMAND\n"
	    "  list   [--domain D] [--rcpt R] [--id ID] [--limit N]  one line per recipient\n"
	    "  show   ID                                             a message and its recipients\n"
	    "  counts                                                recipients by domain: due now, waiting\n"
	    "  retry  (--id ID | --domain D | --rcpt R | --all)      make them due now\n"
	    "  delete (--id ID | --domain D | --rcpt R | --all)      remove them (no DSN)\n"
	    "  bounce (--id ID | --domain D | --rcpt R | --all)      remove them and queue a DSN\n"
	    "                                                        to each message's sender\n"
	    "  --node     the sender's section (default $HIKYAKU_NODE, or the only sender)\n"
	    "  --queue    the queue directory itself (instead of --config)\n"
	    "  --hostname the name in the DSNs of bounce (default the sender's hostname)\n"
	    "  --json     list, show, counts (and the write commands) as JSON\n"
	    "  Selectors combine (all must match); --rcpt compares whole addresses, any case.\n");
}

static void
iso_time(int64_t ms, char out[32])
{
	time_t t;
	struct tm tm;

	if (ms <= 0) {
		snprintf(out, 32, "-");
		return;
	}
	t = (time_t)(ms / 1000);
	gmtime_r(&t, &tm);
	strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static json_t *
json_time(int64_t ms)
{
	char s[32];

	if (ms <= 0)
		return json_null();
	iso_time(ms, s);
	return json_string(s);
}

/* jstr - a JSON string of S, which may hold bytes that are not UTF-8 (a
 * remote reply): those become '?'. */
static json_t *
jstr(const char *s)
{
	json_t *j = json_string(s ? s : "");
	if (j == NULL) {
		char *c = xstrdup(s);
		for (unsigned char *p = (unsigned char *)c; *p; p++)
			if (*p >= 0x80 || *p < 0x20)
				*p = '?';
		j = json_string(c);
		free(c);
	}
	return j;
}

static void
item_free(struct item *it)
{
	free(it->id);
	free(it->address);
	free(it->domain);
	free(it->reply);
	free(it->params);
}

static void
items_clear(struct items *v)
{
	for (size_t i = 0; i < v->n; i++)
		item_free(&v->v[i]);
	v->n = 0;
}

static void
items_free(struct items *v)
{
	items_clear(v);
	free(v->v);
	memset(v, 0, sizeof(*v));
}

static void
items_push(struct items *v, const struct sender_qrcpt *r)
{
	if (v->n == v->cap) {
		v->cap = v->cap ? v->cap * 2 : 64;
		v->v = xrealloc(v->v, v->cap * sizeof(*v->v));
	}
	v->v[v->n++] = (struct item){
		.id = xstrdup(r->id), .idx = r->idx, .address = xstrdup(r->address),
		.domain = xstrdup(r->domain), .reply = xstrdup(r->reply),
		.params = r->params_len ? memcpy(xmalloc(r->params_len), r->params, r->params_len) : NULL,
		.params_len = r->params_len, .attempts = r->attempts,
		.queued_at_ms = r->queued_at_ms, .first_attempt_ms = r->first_attempt_ms,
		.last_attempt_ms = r->last_attempt_ms, .next_attempt_ms = r->next_attempt_ms,
	};
}

/* ---- walking the queue ---- */

struct walk {
	const struct opts *o;
	const char *id;                 /* only this message (NULL: the selector's) */
	struct items *got;              /* matches of this piece */
	size_t visited;
	char last_id[SENDER_QUEUE_ID_MAX + 1];
	uint32_t last_idx;
	bool have_last, more;
};

static bool
matches(const struct opts *o, const struct sender_qrcpt *r)
{
	if (o->domain[0] && strcmp(o->domain, r->domain) != 0)
		return false;
	if (o->rcpt && strcasecmp(o->rcpt, r->address) != 0)
		return false;
	return true;
}

static int
walk_cb(const struct sender_qrcpt *r, void *arg)
{
	struct walk *w = arg;

	snprintf(w->last_id, sizeof(w->last_id), "%s", r->id);
	w->last_idx = r->idx;
	w->have_last = true;
	if (matches(w->o, r))
		items_push(w->got, r);
	if (++w->visited == WALK_CHUNK) {
		w->more = true;
		return 1;
	}
	return 0;
}

/*
 * walk - call PIECE with the matching recipients, a piece at a time, in key
 * order; PIECE returns nonzero to stop. ID (or the --id selector) limits the
 * walk to one message. 0, or -1 if the queue could not be read.
 */
static int
walk(struct ctx *c, const char *id, int (*piece)(struct ctx *, struct items *, void *),
    void *arg)
{
	struct items got = { 0 };
	struct walk w = { .o = c->o, .id = id ? id : c->o->id, .got = &got };
	int rc = 0;

	do {
		struct sender_qref after = { w.last_id, w.last_idx };
		w.visited = 0;
		w.more = false;
		if (sender_queue_scan_all(c->q, w.id, w.have_last ? &after : NULL, walk_cb, &w) != 0) {
			rc = -1;
			break;
		}
		if (got.n > 0 && piece(c, &got, arg) != 0)
			break;
		items_clear(&got);
	} while (w.more);
	items_free(&got);
	return rc;
}

/* ---- list ---- */

struct list_state {
	size_t shown;
	bool truncated;
};

static json_t *
item_json(const struct ctx *c, const struct item *it, bool with_params)
{
	json_t *j = json_pack("{s:o, s:I, s:o, s:o, s:I, s:s, s:o, s:I, s:o, s:o, s:o, s:o}",
	    "id", jstr(it->id), "idx", (json_int_t)it->idx, "rcpt", jstr(it->address),
	    "domain", jstr(it->domain), "attempts", (json_int_t)it->attempts,
	    "state", it->next_attempt_ms <= c->now ? "due" : "waiting",
	    "next_attempt", json_time(it->next_attempt_ms),
	    "next_attempt_ms", (json_int_t)it->next_attempt_ms,
	    "queued_at", json_time(it->queued_at_ms),
	    "first_attempt", json_time(it->first_attempt_ms),
	    "last_attempt", json_time(it->last_attempt_ms),
	    "last_reply", jstr(it->reply));
	if (with_params) {
		json_t *a = json_array();
		for (size_t off = 0; off < it->params_len; off += strlen(it->params + off) + 1)
			json_array_append_new(a, jstr(it->params + off));
		json_object_set_new(j, "params", a);
	}
	return j;
}

static void
print_json(FILE *out, json_t *j, size_t flags)
{
	char *s = json_dumps(j, flags | JSON_ENSURE_ASCII);
	if (s)
		fputs(s, out);
	free(s);
}

static int
list_piece(struct ctx *c, struct items *v, void *arg)
{
	struct list_state *ls = arg;
	char next[32];

	for (size_t i = 0; i < v->n; i++) {
		const struct item *it = &v->v[i];
		if (c->o->limit && ls->shown == c->o->limit) {
			ls->truncated = true;
			return 1;
		}
		if (c->o->json) {
			json_t *j = item_json(c, it, false);
			fputs(ls->shown ? ",\n  " : "\n  ", c->out);
			print_json(c->out, j, JSON_COMPACT);
			json_decref(j);
		} else {
			iso_time(it->next_attempt_ms, next);
			fprintf(c->out, "%-26s %4u  %-32s %-20s %8u  %-7s  %-20s  %s\n", it->id, it->idx,
			    it->address, it->domain, it->attempts,
			    it->next_attempt_ms <= c->now ? "due" : "waiting", next,
			    it->reply[0] ? it->reply : "-");
		}
		ls->shown++;
	}
	return 0;
}

static int
cmd_list(struct ctx *c)
{
	struct list_state ls = { 0 };
	int rc;

	if (c->o->json)
		fputs("{\"recipients\": [", c->out);
	else
		fprintf(c->out, "%-26s %4s  %-32s %-20s %8s  %-7s  %-20s  %s\n", "ID", "IDX",
		    "RECIPIENT", "DOMAIN", "ATTEMPTS", "STATE", "NEXT_ATTEMPT", "LAST_REPLY");
	rc = walk(c, NULL, list_piece, &ls);
	if (c->o->json)
		fprintf(c->out, "%s], \"count\": %zu, \"truncated\": %s}\n", ls.shown ? "\n" : "",
		    ls.shown, ls.truncated ? "true" : "false");
	else if (ls.truncated)
		fprintf(c->out, "(first %zu recipients shown: --limit)\n", ls.shown);
	return rc == 0 ? 0 : 1;
}

/* ---- show ---- */

static int
collect_piece(struct ctx *c, struct items *v, void *arg)
{
	struct items *all = arg;
	(void)c;

	/* Move the items over (the walk clears its own list after this). */
	for (size_t i = 0; i < v->n; i++) {
		if (all->n == all->cap) {
			all->cap = all->cap ? all->cap * 2 : 64;
			all->v = xrealloc(all->v, all->cap * sizeof(*all->v));
		}
		all->v[all->n++] = v->v[i];
	}
	v->n = 0;
	return 0;
}

static int
cmd_show(struct ctx *c, const char *id)
{
	Hk__Submission *m = NULL;
	struct items all = { 0 };
	size_t body_len = 0;
	char t[32];
	int rc;

	rc = sender_queue_msg_load(c->q, id, &m, NULL, &body_len);
	if (rc == -ENOENT) {
		fprintf(stderr, "hikyaku queue: no message %s in the queue\n", id);
		return 1;
	}
	if (rc != 0) {
		fprintf(stderr, "hikyaku queue: cannot read message %s\n", id);
		return 1;
	}
	/* Every recipient of the message, whatever the other selectors say. */
	struct opts o = *c->o;
	struct ctx cc = *c;
	o.domain[0] = '\0';
	o.rcpt = NULL;
	cc.o = &o;
	if (walk(&cc, id, collect_piece, &all) != 0) {
		hk__submission__free_unpacked(m, NULL);
		items_free(&all);
		return 1;
	}
	const Hk__Envelope *env = m->envelope;
	const char *from = env && env->mail_from ? env->mail_from : "";
	if (c->o->json) {
		json_t *params = json_array(), *rcpts = json_array();
		for (size_t i = 0; env && i < env->n_mail_params; i++)
			json_array_append_new(params, jstr(env->mail_params[i]));
		for (size_t i = 0; i < all.n; i++)
			json_array_append_new(rcpts, item_json(c, &all.v[i], true));
		json_t *j = json_pack("{s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:o, s:I, s:o, s:o, s:o}",
		    "id", jstr(id), "tenant", jstr(m->tenant), "pool", jstr(m->pool),
		    "mail_from", jstr(from), "mail_params", params,
		    "size", (json_int_t)body_len, "body_size", (json_int_t)m->body_size,
		    "received_at", json_time(m->received_at_ms),
		    "received_at_ms", (json_int_t)m->received_at_ms,
		    "ingress_node", jstr(m->ingress_node), "client_address", jstr(m->client_address),
		    "recipients", rcpts);
		print_json(c->out, j, JSON_INDENT(2));
		fputs("\n", c->out);
		json_decref(j);
	} else {
		iso_time(m->received_at_ms, t);
		fprintf(c->out, "id:          %s\n", id);
		fprintf(c->out, "tenant:      %s\n", m->tenant && *m->tenant ? m->tenant : "-");
		fprintf(c->out, "pool:        %s\n", m->pool && *m->pool ? m->pool : "-");
		fprintf(c->out, "mail from:   <%s>", from);
		for (size_t i = 0; env && i < env->n_mail_params; i++)
			fprintf(c->out, " %s", env->mail_params[i]);
		fprintf(c->out, "\nsize:        %zu bytes\n", body_len);
		fprintf(c->out, "received:    %s from %s (ingress %s)\n", t,
		    m->client_address && *m->client_address ? m->client_address : "-",
		    m->ingress_node && *m->ingress_node ? m->ingress_node : "-");
		fprintf(c->out, "recipients:  %zu in the queue\n", all.n);
		for (size_t i = 0; i < all.n; i++) {
			const struct item *it = &all.v[i];
			char q[32], f[32], l[32], n[32];
			iso_time(it->queued_at_ms, q);
			iso_time(it->first_attempt_ms, f);
			iso_time(it->last_attempt_ms, l);
			iso_time(it->next_attempt_ms, n);
			fprintf(c->out, "  %u  %s  (%s)  %s\n", it->idx, it->address, it->domain,
			    it->next_attempt_ms <= c->now ? "due now" : "waiting for retry");
			if (it->params_len) {
				fputs("     params:", c->out);
				for (size_t off = 0; off < it->params_len; off += strlen(it->params + off) + 1)
					fprintf(c->out, " %s", it->params + off);
				fputs("\n", c->out);
			}
			fprintf(c->out, "     attempts %u, queued %s, first %s, last %s, next %s\n",
			    it->attempts, q, f, l, n);
			if (it->reply[0])
				fprintf(c->out, "     last reply: %s\n", it->reply);
		}
	}
	hk__submission__free_unpacked(m, NULL);
	items_free(&all);
	return 0;
}

/* ---- counts ---- */

struct dcount {
	char *domain;
	uint64_t due, waiting;
};

/* A string-keyed table of domain counts (open addressing, power of 2). */
struct dtable {
	struct dcount *v;
	size_t cap, n;
	uint64_t due, waiting, messages;
	char last_id[SENDER_QUEUE_ID_MAX + 1];
};

static uint64_t
fnv(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static struct dcount *
dtable_get(struct dtable *t, const char *domain)
{
	if ((t->n + 1) * 2 > t->cap) {
		struct dtable old = *t;
		t->cap = old.cap ? old.cap * 2 : 64;
		t->v = xcalloc(t->cap, sizeof(*t->v));
		for (size_t i = 0; i < old.cap; i++) {
			if (old.v[i].domain == NULL)
				continue;
			size_t j = fnv(old.v[i].domain) & (t->cap - 1);
			while (t->v[j].domain)
				j = (j + 1) & (t->cap - 1);
			t->v[j] = old.v[i];
		}
		free(old.v);
	}
	size_t j = fnv(domain) & (t->cap - 1);
	while (t->v[j].domain && strcmp(t->v[j].domain, domain) != 0)
		j = (j + 1) & (t->cap - 1);
	if (t->v[j].domain == NULL) {
		t->v[j].domain = xstrdup(domain);
		t->n++;
	}
	return &t->v[j];
}

static int
counts_piece(struct ctx *c, struct items *v, void *arg)
{
	struct dtable *t = arg;

	for (size_t i = 0; i < v->n; i++) {
		const struct item *it = &v->v[i];
		struct dcount *d = dtable_get(t, it->domain);
		bool due = it->next_attempt_ms <= c->now;
		if (due) {
			d->due++;
			t->due++;
		} else {
			d->waiting++;
			t->waiting++;
		}
		/* Recipients come in key order: a new id is a new message. */
		if (strcmp(t->last_id, it->id) != 0) {
			t->messages++;
			snprintf(t->last_id, sizeof(t->last_id), "%s", it->id);
		}
	}
	return 0;
}

static int
dcount_cmp(const void *a, const void *b)
{
	const struct dcount *x = a, *y = b;
	uint64_t tx = x->due + x->waiting, ty = y->due + y->waiting;
	if (tx != ty)
		return tx > ty ? -1 : 1;
	return strcmp(x->domain, y->domain);
}

static int
cmd_counts(struct ctx *c)
{
	struct dtable t = { 0 };
	size_t n = 0;
	int w = 6;

	if (walk(c, NULL, counts_piece, &t) != 0) {
		free(t.v);
		return 1;
	}
	/* Compact the table, most recipients first. */
	for (size_t i = 0; i < t.cap; i++)
		if (t.v[i].domain)
			t.v[n++] = t.v[i];
	if (n > 0)
		qsort(t.v, n, sizeof(*t.v), dcount_cmp);
	if (c->o->json) {
		json_t *a = json_array();
		for (size_t i = 0; i < n; i++)
			json_array_append_new(a, json_pack("{s:o, s:I, s:I, s:I}", "domain",
			    jstr(t.v[i].domain), "due", (json_int_t)t.v[i].due,
			    "waiting", (json_int_t)t.v[i].waiting,
			    "total", (json_int_t)(t.v[i].due + t.v[i].waiting)));
		json_t *j = json_pack("{s:o, s:I, s:I, s:I, s:I}", "domains", a,
		    "due", (json_int_t)t.due, "waiting", (json_int_t)t.waiting,
		    "total", (json_int_t)(t.due + t.waiting), "messages", (json_int_t)t.messages);
		print_json(c->out, j, JSON_INDENT(2));
		fputs("\n", c->out);
		json_decref(j);
	} else {
		for (size_t i = 0; i < n; i++)
			if ((int)strlen(t.v[i].domain) > w)
				w = (int)strlen(t.v[i].domain);
		fprintf(c->out, "%-*s  %10s  %10s  %10s\n", w, "DOMAIN", "DUE", "WAITING", "TOTAL");
		for (size_t i = 0; i < n; i++)
			fprintf(c->out, "%-*s  %10llu  %10llu  %10llu\n", w, t.v[i].domain,
			    (unsigned long long)t.v[i].due, (unsigned long long)t.v[i].waiting,
			    (unsigned long long)(t.v[i].due + t.v[i].waiting));
		fprintf(c->out, "%-*s  %10llu  %10llu  %10llu  (%llu messages)\n", w, "total",
		    (unsigned long long)t.due, (unsigned long long)t.waiting,
		    (unsigned long long)(t.due + t.waiting), (unsigned long long)t.messages);
	}
	for (size_t i = 0; i < n; i++)
		free(t.v[i].domain);
	free(t.v);
	return 0;
}

/* ---- retry, delete ---- */

static struct sender_qref *
refs_of(const struct items *v)
{
	struct sender_qref *r = xcalloc(v->n ? v->n : 1, sizeof(*r));
	for (size_t i = 0; i < v->n; i++)
		r[i] = (struct sender_qref){ v->v[i].id, v->v[i].idx };
	return r;
}

static int
cmd_write(struct ctx *c)
{
	struct items all = { 0 };
	struct sender_qref *refs;
	size_t done = 0;
	char err[256] = "";
	int rc;

	if (walk(c, NULL, collect_piece, &all) != 0) {
		items_free(&all);
		return 1;
	}
	refs = refs_of(&all);
	if (c->o->cmd == CMD_RETRY)
		rc = sender_queue_reschedule(c->q, refs, all.n, c->now, &done, err, sizeof(err));
	else
		rc = sender_queue_delete(c->q, refs, all.n, &done, err, sizeof(err));
	if (rc != 0)
		fprintf(stderr, "hikyaku queue: %s\n", err);
	if (c->o->json) {
		json_t *j = json_pack("{s:s, s:I, s:I}", "command", cmd_names[c->o->cmd],
		    "matched", (json_int_t)all.n, "touched", (json_int_t)done);
		print_json(c->out, j, 0);
		fputs("\n", c->out);
		json_decref(j);
	} else if (c->o->cmd == CMD_RETRY) {
		fprintf(c->out, "retry: %zu recipient%s made due now (%zu matched", done,
		    done == 1 ? "" : "s", all.n);
		if (all.n > done)
			fprintf(c->out, "; %zu due already or gone", all.n - done);
		fputs(")\n", c->out);
	} else {
		fprintf(c->out, "delete: %zu recipient%s deleted (%zu matched)\n", done,
		    done == 1 ? "" : "s", all.n);
	}
	free(refs);
	items_free(&all);
	return rc == 0 ? 0 : 1;
}

/* ---- bounce ---- */

struct bounce_state {
	hk_idgen *ids;
	json_t *dsns;                   /* the DSNs queued, for --json */
	size_t bounced, dsn_count, failed;
};

/* bounce_message - remove v[0..n) (all of message ID) and queue one DSN
 * for those that want it, in one transaction. 0 done, 1 not done: the
 * recipients changed meanwhile (read them again), -1 failed. */
static int
bounce_message(struct ctx *c, struct bounce_state *bs, const struct item *v, size_t n)
{
	const char *id = v[0].id, *from;
	Hk__Submission *m = NULL;
	uint8_t *body = NULL;
	size_t body_len = 0, nd = 0, nops = 0;
	struct sender_dsn_rcpt *drc = xcalloc(n, sizeof(*drc));
	char (*diag)[SENDER_QUEUE_REPLY_MAX + 96] = xcalloc(n, sizeof(*diag));
	struct sender_qop *ops = xcalloc(n + 1, sizeof(*ops));
	struct sender_qop **opp = xcalloc(n + 1, sizeof(*opp));
	struct sender_bounce b;
	char err[512] = "", why_none[160] = "", dsn_id[HK_ID_LEN + 1] = "";
	bool have_dsn = false;
	int rc = -1;

	memset(&b, 0, sizeof(b));
	int lrc = sender_queue_msg_load(c->q, id, &m, &body, &body_len);
	if (lrc == -ENOENT) {
		rc = 1;
		goto out;
	}
	if (lrc != 0) {
		fprintf(stderr, "hikyaku queue: bounce %s: cannot read the message\n", id);
		goto out;
	}
	from = m->envelope && m->envelope->mail_from ? m->envelope->mail_from : "";
	for (size_t i = 0; i < n; i++) {
		if (!sender_dsn_wanted(SENDER_DSN_FAILED, v[i].params, v[i].params_len, from))
			continue;
		snprintf(diag[nd], sizeof(diag[nd]), "returned to the sender by the mail system "
		    "administrator%s%s", v[i].reply[0] ? "; last attempt: " : "", v[i].reply);
		drc[nd] = (struct sender_dsn_rcpt){
			.address = v[i].address, .params = v[i].params, .params_len = v[i].params_len,
			.action = SENDER_DSN_FAILED, .status = "5.0.0", .diagnostic = diag[nd],
			.last_attempt_ms = v[i].last_attempt_ms,
		};
		nd++;
	}
	hk_id_next(bs->ids, dsn_id);
	int brc = sender_bounce_make(&b, m, body, body_len, drc, nd, c->o->hostname, dsn_id, c->now,
	    "hikyaku-queue", why_none, sizeof(why_none));
	if (brc < 0) {
		fprintf(stderr, "hikyaku queue: bounce %s: %s\n", id, why_none);
		goto out;
	}
	if (brc == 0) {
		have_dsn = true;
		ops[nops++] = (struct sender_qop){ .kind = SENDER_QOP_ENQUEUE, .msg = &b.sub,
		    .body = b.dsn.data, .body_len = b.dsn.len, .now_ms = c->now };
	}
	for (size_t i = 0; i < n; i++)
		ops[nops++] = (struct sender_qop){ .kind = SENDER_QOP_BOUNCED, .id = v[i].id,
		    .idx = v[i].idx };
	for (size_t i = 0; i < nops; i++)
		opp[i] = &ops[i];
	if (sender_queue_commit_all(c->q, opp, nops, err, sizeof(err)) != 0) {
		/* A recipient gone meanwhile (delivered, say): read again. */
		for (size_t i = 0; i < nops; i++)
			if (ops[i].result == SENDER_QR_NOTFOUND)
				rc = 1;
		if (rc != 1)
			fprintf(stderr, "hikyaku queue: bounce %s: %s\n", id, err);
		goto out;
	}
	bs->bounced += n;
	if (have_dsn) {
		bs->dsn_count++;
		if (c->o->json)
			json_array_append_new(bs->dsns, json_pack("{s:s, s:o, s:o, s:I, s:b}", "id",
			    dsn_id, "to", jstr(from), "about", jstr(id), "recipients", (json_int_t)nd,
			    "full", b.dsn.returned == SENDER_DSN_RETURNED_FULL));
		else
			fprintf(c->out, "%s: %zu recipient%s bounced; DSN %s queued to <%s> "
			    "(%zu recipient%s)\n", id, n, n == 1 ? "" : "s", dsn_id, from, nd,
			    nd == 1 ? "" : "s");
	} else if (!c->o->json) {
		fprintf(c->out, "%s: %zu recipient%s bounced; no DSN (%s)\n", id, n,
		    n == 1 ? "" : "s", why_none);
	}
	rc = 0;
out:
	sender_bounce_free(&b);
	if (m)
		hk__submission__free_unpacked(m, NULL);
	free(body);
	free(drc);
	free(diag);
	free(ops);
	free(opp);
	return rc;
}

static int
cmd_bounce(struct ctx *c)
{
	struct items all = { 0 };
	struct bounce_state bs = { .ids = hk_idgen_new(), .dsns = json_array() };
	int rc = 0;

	if (bs.ids == NULL) {
		fprintf(stderr, "hikyaku queue: cannot seed the id generator\n");
		json_decref(bs.dsns);
		return 1;
	}
	if (walk(c, NULL, collect_piece, &all) != 0) {
		rc = 1;
		goto out;
	}
	/* Recipients come in key order: one message's are together. */
	for (size_t i = 0, j; i < all.n; i = j) {
		for (j = i + 1; j < all.n && strcmp(all.v[j].id, all.v[i].id) == 0; j++)
			;
		int r = bounce_message(c, &bs, &all.v[i], j - i);
		for (int tries = 1; r == 1 && tries < BOUNCE_TRIES; tries++) {
			/* Read this message's matching recipients again. */
			struct items again = { 0 };
			if (walk(c, all.v[i].id, collect_piece, &again) != 0) {
				r = -1;
			} else {
				r = again.n ? bounce_message(c, &bs, again.v, again.n) : 0;
			}
			items_free(&again);
		}
		if (r != 0) {
			bs.failed += j - i;
			if (r == 1)
				fprintf(stderr, "hikyaku queue: bounce %s: its recipients keep "
				    "changing; left in the queue\n", all.v[i].id);
			rc = 1;
		}
	}
out:
	if (c->o->json) {
		json_t *j = json_pack("{s:s, s:I, s:I, s:I, s:O}", "command", "bounce",
		    "matched", (json_int_t)all.n, "touched", (json_int_t)bs.bounced,
		    "failed", (json_int_t)bs.failed, "dsns", bs.dsns);
		print_json(c->out, j, 0);
		fputs("\n", c->out);
		json_decref(j);
	} else {
		fprintf(c->out, "bounce: %zu recipient%s bounced (%zu matched), %zu DSN%s queued\n",
		    bs.bounced, bs.bounced == 1 ? "" : "s", all.n, bs.dsn_count,
		    bs.dsn_count == 1 ? "" : "s");
	}
	json_decref(bs.dsns);
	hk_idgen_destroy(&bs.ids);
	items_free(&all);
	return rc;
}

/* ---- options, opening ---- */

static int
parse(int argc, char **argv, struct opts *o, const char **show_id)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "node", required_argument, NULL, 'n' },
		{ "queue", required_argument, NULL, 'q' },
		{ "hostname", required_argument, NULL, 'H' },
		{ "json", no_argument, NULL, 'j' },
		{ "domain", required_argument, NULL, 'd' },
		{ "rcpt", required_argument, NULL, 'r' },
		{ "id", required_argument, NULL, 'i' },
		{ "limit", required_argument, NULL, 'l' },
		{ "all", no_argument, NULL, 'a' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *domain = NULL, *cmd;
	char *end;
	int ch;

	memset(o, 0, sizeof(*o));
	*show_id = NULL;
	optind = 2;
	while ((ch = getopt_long(argc, argv, "c:n:q:H:jd:r:i:l:ah", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': o->config = optarg; break;
		case 'n': o->node = optarg; break;
		case 'q': o->queue = optarg; break;
		case 'H': o->hostname = optarg; break;
		case 'j': o->json = true; break;
		case 'd': domain = optarg; break;
		case 'r': o->rcpt = optarg; break;
		case 'i': o->id = optarg; break;
		case 'a': o->all = true; break;
		case 'l':
			errno = 0;
			o->limit = strtoul(optarg, &end, 10);
			if (errno || *end || optarg[0] < '1' || optarg[0] > '9') {
				fprintf(stderr, "hikyaku queue: --limit must be a number >= 1\n");
				return 2;
			}
			break;
		case 'h': return -1;
		default: return 2;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "hikyaku queue: no command\n");
		return 2;
	}
	cmd = argv[optind++];
	for (o->cmd = 0; o->cmd <= CMD_BOUNCE && strcmp(cmd_names[o->cmd], cmd) != 0; o->cmd++)
		;
	if (o->cmd > CMD_BOUNCE) {
		fprintf(stderr, "hikyaku queue: unknown command '%s'\n", cmd);
		return 2;
	}
	if (o->cmd == CMD_SHOW && optind < argc)
		*show_id = argv[optind++];
	if (optind != argc) {
		fprintf(stderr, "hikyaku queue: unexpected '%s'\n", argv[optind]);
		return 2;
	}
	if ((o->config != NULL) == (o->queue != NULL)) {
		fprintf(stderr, "hikyaku queue: give --config (and --node) or --queue\n");
		return 2;
	}
	if (o->node && !o->config) {
		fprintf(stderr, "hikyaku queue: --node goes with --config\n");
		return 2;
	}
	if (domain && hk_domain_canon(domain, o->domain) != 0) {
		fprintf(stderr, "hikyaku queue: --domain '%s' is not a domain\n", domain);
		return 2;
	}
	bool selector = domain || o->rcpt || o->id;
	switch (o->cmd) {
	case CMD_LIST:
		if (o->all) {
			fprintf(stderr, "hikyaku queue: list takes no --all (it lists everything by default)\n");
			return 2;
		}
		break;
	case CMD_SHOW:
		if (*show_id && o->id && strcmp(*show_id, o->id) != 0) {
			fprintf(stderr, "hikyaku queue: show takes one message id\n");
			return 2;
		}
		if (*show_id == NULL)
			*show_id = o->id;
		if (*show_id == NULL || domain || o->rcpt || o->all || o->limit) {
			fprintf(stderr, "hikyaku queue: show takes one message id, and no selector\n");
			return 2;
		}
		break;
	case CMD_COUNTS:
		if (selector || o->all || o->limit) {
			fprintf(stderr, "hikyaku queue: counts takes no selector\n");
			return 2;
		}
		break;
	case CMD_RETRY:
	case CMD_DELETE:
	case CMD_BOUNCE:
		if (selector == o->all) {
			fprintf(stderr, "hikyaku queue: %s needs --id, --domain or --rcpt, or --all "
			    "(and not both)\n", cmd_names[o->cmd]);
			return 2;
		}
		if (o->limit) {
			fprintf(stderr, "hikyaku queue: --limit is for list only\n");
			return 2;
		}
		break;
	}
	return 0;
}

/* from_config - the queue of the configuration's sender node (and its
 * hostname, for DSNs). 0, or 1 with the reason on stderr. */
static int
from_config(struct opts *o, struct hk_config **cfg)
{
	char err[512];
	const struct hk_node_conf *nc = NULL;
	const char *name = o->node ? o->node : getenv("HIKYAKU_NODE");

	if (hk_config_load(o->config, cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "hikyaku queue: %s\n", err);
		return 1;
	}
	if (name && *name) {
		nc = hk_config_node(*cfg, name);
		if (nc == NULL) {
			fprintf(stderr, "hikyaku queue: no node '%s' in %s\n", name, o->config);
			return 1;
		}
	} else {
		for (size_t i = 0; i < (*cfg)->n_nodes; i++) {
			if ((*cfg)->nodes[i].role != HK_ROLE_SENDER)
				continue;
			if (nc) {
				fprintf(stderr, "hikyaku queue: %s has several senders: say which with "
				    "--node\n", o->config);
				return 1;
			}
			nc = &(*cfg)->nodes[i];
		}
		if (nc == NULL) {
			fprintf(stderr, "hikyaku queue: no sender in %s\n", o->config);
			return 1;
		}
	}
	if (nc->role != HK_ROLE_SENDER) {
		fprintf(stderr, "hikyaku queue: node '%s' is a %s, not a sender\n", nc->name,
		    hk_role_name(nc->role));
		return 1;
	}
	o->queue = nc->u.sender.queue_path;
	if (o->hostname == NULL)
		o->hostname = nc->u.sender.hostname;
	return 0;
}

int
sender_qcli_main(int argc, char **argv)
{
	struct opts o;
	struct hk_config *cfg = NULL;
	struct ctx c = { .o = &o };
	const char *show_id;
	char err[512], path[4096], host[256];
	struct stat st;
	int rc, fd;

	/* Our output is stdout; the queue code logs JSON lines to fd 1 too:
	 * give those stderr, and our output a stream of its own. */
	fflush(stdout);
	if ((fd = dup(STDOUT_FILENO)) < 0 || (c.out = fdopen(fd, "w")) == NULL ||
	    dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
		perror("hikyaku queue: stdout");
		return 1;
	}
	rc = parse(argc, argv, &o, &show_id);
	if (rc != 0) {
		usage(rc < 0 ? c.out : stderr);
		fclose(c.out);
		return rc < 0 ? 0 : rc;
	}
	if (o.config && (rc = from_config(&o, &cfg)) != 0)
		goto out;
	/* Never create a queue: it must be there, written by a sender. */
	snprintf(path, sizeof(path), "%s/data.mdb", o.queue);
	if (stat(path, &st) != 0) {
		fprintf(stderr, "hikyaku queue: no queue at %s: %s\n", o.queue, strerror(errno));
		rc = 1;
		goto out;
	}
	/* Map size 0: the environment's own (as the sender set it), so that we
	 * neither shrink nor grow it behind the sender's back. */
	if (sender_queue_open(&c.q, o.queue, 0, true, err, sizeof(err)) != 0) {
		fprintf(stderr, "hikyaku queue: %s\n", err);
		rc = 1;
		goto out;
	}
	if (o.hostname == NULL || *o.hostname == '\0') {
		if (gethostname(host, sizeof(host)) != 0)
			snprintf(host, sizeof(host), "localhost");
		host[sizeof(host) - 1] = '\0';
		o.hostname = host;
	}
	c.now = hk_now_ms();
	switch (o.cmd) {
	case CMD_LIST: rc = cmd_list(&c); break;
	case CMD_SHOW: rc = cmd_show(&c, show_id); break;
	case CMD_COUNTS: rc = cmd_counts(&c); break;
	case CMD_RETRY:
	case CMD_DELETE: rc = cmd_write(&c); break;
	case CMD_BOUNCE: rc = cmd_bounce(&c); break;
	}
	sender_queue_close(&c.q);
out:
	hk_config_free(&cfg);
	if (fclose(c.out) != 0 && rc == 0) {
		perror("hikyaku queue: writing the output");
		rc = 1;
	}
	return rc;
}
