/*
 * test_sender_queue - the LMDB queue: enqueue, dedup of (id, shard), due
 * order, deferral, removal with the last recipient, reopen, refusals and a
 * failing commit. Times are injected; nothing sleeps.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <lmdb.h>

#include "sender_queue.h"
#include "sender_sched.h"

struct fixture {
	char dir[64];
	sender_queue *q;
};

static void
open_q(struct fixture *f, size_t map_size)
{
	char err[256] = "";
	int rc = sender_queue_open(&f->q, f->dir, map_size, true, err, sizeof(err));
	if (rc != 0)
		print_error("open: %s\n", err);
	assert_int_equal(rc, 0);
	assert_non_null(f->q);
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/hk_test_queue_XXXXXX");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	/* A directory below the temporary one: open must create it. */
	strcat(f->dir, "/q");
	open_q(f, 64 << 20);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	char p[128];

	sender_queue_close(&f->q);
	snprintf(p, sizeof(p), "%s/data.mdb", f->dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/lock.mdb", f->dir);
	unlink(p);
	rmdir(f->dir);
	*strrchr(f->dir, '/') = '\0';
	rmdir(f->dir);
	free(f);
	return 0;
}

/* A submission with up to 4 recipients, built on the stack. */
struct msg {
	Hk__Submission sub;
	Hk__Envelope env;
	Hk__Recipient r[4];
	Hk__Recipient *rp[4];
	char *params[2];
};

static void
msg_init(struct msg *m, const char *id, const char **rcpts, size_t n)
{
	memset(m, 0, sizeof(*m));
	hk__submission__init(&m->sub);
	hk__envelope__init(&m->env);
	m->sub.id = (char *)id;
	m->sub.tenant = "acme";
	m->sub.pool = "acme-dedicated";
	m->sub.envelope = &m->env;
	m->env.mail_from = "bounce@sender.test";
	m->params[0] = "NOTIFY=FAILURE";
	m->params[1] = "ORCPT=rfc822;x@y.test";
	for (size_t i = 0; i < n; i++) {
		hk__recipient__init(&m->r[i]);
		m->r[i].address = (char *)rcpts[i];
		if (i == 0) {
			m->r[i].params = m->params;
			m->r[i].n_params = 2;
		}
		m->rp[i] = &m->r[i];
	}
	m->env.rcpts = m->rp;
	m->env.n_rcpts = n;
}

static const char BODY[] = "Subject: hi\r\n\r\nhello\r\n";

static struct sender_qop
enq_op(struct msg *m, uint32_t shard, int64_t now)
{
	struct sender_qop op = {
		.kind = SENDER_QOP_ENQUEUE, .msg = &m->sub, .shard = shard,
		.body = (const uint8_t *)BODY, .body_len = sizeof(BODY) - 1, .now_ms = now,
	};
	m->sub.body_size = sizeof(BODY) - 1;
	return op;
}

/* commit - commit the ops given as pointers; asserts success. */
static void
commit(struct fixture *f, struct sender_qop **ops, size_t n)
{
	char err[256] = "";
	int rc = sender_queue_commit(f->q, ops, n, err, sizeof(err));
	if (rc != 0)
		print_error("commit: %s\n", err);
	assert_int_equal(rc, 0);
}

static void
commit1(struct fixture *f, struct sender_qop *op)
{
	commit(f, &op, 1);
}

static void
enqueue(struct fixture *f, const char *id, const char **rcpts, size_t n, uint32_t shard,
    int64_t now)
{
	struct msg m;
	msg_init(&m, id, rcpts, n);
	struct sender_qop op = enq_op(&m, shard, now);
	commit1(f, &op);
	assert_int_equal(op.result, SENDER_QR_DONE);
}

static struct sender_qop
state_op(enum sender_qop_kind kind, const char *id, uint32_t idx)
{
	struct sender_qop op = { .kind = kind, .id = id, .idx = idx };
	return op;
}

static void
assert_stats(struct fixture *f, uint64_t msgs, uint64_t bodies, uint64_t rcpts,
    uint64_t sched, uint64_t shards)
{
	struct sender_queue_stats st;
	assert_int_equal(sender_queue_stats(f->q, &st), 0);
	assert_int_equal(st.msgs, msgs);
	assert_int_equal(st.bodies, bodies);
	assert_int_equal(st.rcpts, rcpts);
	assert_int_equal(st.sched, sched);
	assert_int_equal(st.shards, shards);
	assert_int_equal(sender_queue_depth(f->q), rcpts);
}

/* Scanning collects "id/idx" strings. */
struct seen {
	char items[16][64];
	size_t n;
	size_t stop_after;      /* 0: never */
	const char *skip_id;
};

static int
seen_cb(const struct sender_qrcpt *r, void *arg)
{
	struct seen *s = arg;
	assert_true(s->n < 16);
	snprintf(s->items[s->n++], 64, "%s/%u", r->id, r->idx);
	return s->stop_after && s->n == s->stop_after;
}

static bool
seen_skip(const char *id, uint32_t idx, void *arg)
{
	struct seen *s = arg;
	(void)idx;
	return s->skip_id && strcmp(id, s->skip_id) == 0;
}

static void
scan(struct fixture *f, int64_t now, struct seen *s)
{
	s->n = 0;
	assert_int_equal(sender_queue_scan_due(f->q, now, seen_skip, seen_cb, s), 0);
}

/* ---- tests ---- */

static void
test_enqueue_and_load(void **state)
{
	struct fixture *f = *state;
	const char *rcpts[] = { "a@X.Test", "b@y.test" };
	struct sender_qrcpt *r;
	Hk__Submission *meta;
	uint8_t *body;
	size_t len;

	enqueue(f, "01HAAA", rcpts, 2, 7, 1000);
	assert_stats(f, 1, 1, 2, 2, 1);

	assert_int_equal(sender_queue_msg_load(f->q, "01HAAA", &meta, &body, &len), 0);
	assert_string_equal(meta->id, "01HAAA");
	assert_string_equal(meta->tenant, "acme");
	assert_string_equal(meta->pool, "acme-dedicated"); /* Submission field 8 */
	assert_string_equal(meta->envelope->mail_from, "bounce@sender.test");
	assert_int_equal(meta->envelope->n_rcpts, 0);   /* recipients live in rcpt */
	assert_int_equal(len, sizeof(BODY) - 1);
	assert_memory_equal(body, BODY, len);
	hk__submission__free_unpacked(meta, NULL);
	free(body);

	assert_int_equal(sender_queue_rcpt_load(f->q, "01HAAA", 0, &r), 0);
	assert_string_equal(r->id, "01HAAA");
	assert_int_equal(r->idx, 0);
	assert_int_equal(r->shard, 7);
	assert_string_equal(r->address, "a@X.Test");
	assert_string_equal(r->domain, "x.test");       /* canonical */
	assert_int_equal(r->n_params, 2);
	assert_string_equal(r->params, "NOTIFY=FAILURE");
	assert_string_equal(r->params + strlen(r->params) + 1, "ORCPT=rfc822;x@y.test");
	assert_int_equal(r->attempts, 0);
	assert_int_equal(r->queued_at_ms, 1000);
	assert_int_equal(r->next_attempt_ms, 1000);
	assert_int_equal(r->first_attempt_ms, 0);
	assert_string_equal(r->reply, "");
	free(r);

	assert_int_equal(sender_queue_rcpt_load(f->q, "01HAAA", 1, &r), 0);
	assert_string_equal(r->domain, "y.test");
	assert_int_equal(r->n_params, 0);
	free(r);

	assert_int_equal(sender_queue_rcpt_load(f->q, "01HAAA", 2, &r), -ENOENT);
	assert_null(r);
	assert_int_equal(sender_queue_msg_load(f->q, "nope", &meta, NULL, NULL), -ENOENT);
	assert_null(meta);
}

static void
test_dedup(void **state)
{
	struct fixture *f = *state;
	const char *rcpts[] = { "a@x.test", "b@x.test" };
	const char *other[] = { "c@z.test" };
	struct msg m, m2, m3;
	struct sender_qrcpt *r;

	enqueue(f, "01HDUP", rcpts, 2, 1, 1000);

	/* The same (id, shard) again: acked as duplicate, nothing stored. */
	msg_init(&m, "01HDUP", rcpts, 2);
	struct sender_qop op = enq_op(&m, 1, 2000);
	commit1(f, &op);
	assert_int_equal(op.result, SENDER_QR_DUPLICATE);
	assert_int_equal(op.first_idx, 0);
	assert_int_equal(op.n_rcpts, 2);
	assert_stats(f, 1, 1, 2, 2, 1);

	/* Another shard of the same message: new recipients, one body. */
	msg_init(&m2, "01HDUP", other, 1);
	struct sender_qop op2 = enq_op(&m2, 2, 3000);
	/* ...and its retry inside the same batch is a duplicate already. */
	msg_init(&m3, "01HDUP", other, 1);
	struct sender_qop op3 = enq_op(&m3, 2, 3000);
	struct sender_qop *ops[] = { &op2, &op3 };
	commit(f, ops, 2);
	assert_int_equal(op2.result, SENDER_QR_DONE);
	assert_int_equal(op2.first_idx, 2);
	assert_int_equal(op2.n_rcpts, 1);
	assert_int_equal(op3.result, SENDER_QR_DUPLICATE);
	assert_stats(f, 1, 1, 3, 3, 2);
	assert_int_equal(sender_queue_rcpt_load(f->q, "01HDUP", 2, &r), 0);
	assert_string_equal(r->address, "c@z.test");
	assert_int_equal(r->shard, 2);
	free(r);
}

/* Due order: domain by domain, domains by their earliest due recipient,
 * and within a domain by next attempt. */
static void
test_due_order(void **state)
{
	struct fixture *f = *state;
	const char *one[] = { "a@x.test" };
	const char *two[] = { "a@x.test", "b@y.test" };
	const char *y[] = { "c@y.test" };
	struct seen s = { 0 };

	enqueue(f, "01HM1", one, 1, 0, 3000);
	enqueue(f, "01HM2", two, 2, 0, 1000);
	enqueue(f, "01HM3", one, 1, 0, 2000);
	enqueue(f, "01HM4", y, 1, 0, 500);

	scan(f, 499, &s);
	assert_int_equal(s.n, 0);

	scan(f, 2500, &s);
	assert_int_equal(s.n, 4);
	assert_string_equal(s.items[0], "01HM4/0");     /* y.test: due since 500 */
	assert_string_equal(s.items[1], "01HM2/1");
	assert_string_equal(s.items[2], "01HM2/0");     /* x.test: due since 1000 */
	assert_string_equal(s.items[3], "01HM3/0");

	scan(f, 3000, &s);      /* due "at or before now" */
	assert_int_equal(s.n, 5);
	assert_string_equal(s.items[4], "01HM1/0");

	s.skip_id = "01HM2";
	scan(f, 3000, &s);
	assert_int_equal(s.n, 3);
	assert_string_equal(s.items[0], "01HM4/0");
	assert_string_equal(s.items[1], "01HM3/0");
	assert_string_equal(s.items[2], "01HM1/0");

	s.skip_id = NULL;
	s.stop_after = 1;
	scan(f, 3000, &s);
	assert_int_equal(s.n, 1);
	assert_string_equal(s.items[0], "01HM4/0");
}

/* A domain callback may pass a domain by; a recipient callback may end its
 * domain early. */
struct dseen {
	struct seen s;
	const char *pass_domain;        /* dom: NEXT_DOMAIN for this one */
	char domains[8][32];
	size_t n_domains;
};

static int
dseen_dom(const char *domain, int64_t next, void *arg)
{
	struct dseen *d = arg;
	(void)next;
	snprintf(d->domains[d->n_domains++], 32, "%s", domain);
	return d->pass_domain && strcmp(domain, d->pass_domain) == 0
	    ? SENDER_SCAN_NEXT_DOMAIN : SENDER_SCAN_CONTINUE;
}

static int
dseen_one(const struct sender_qrcpt *r, void *arg)
{
	struct dseen *d = arg;
	snprintf(d->s.items[d->s.n++], 64, "%s/%u", r->id, r->idx);
	return SENDER_SCAN_NEXT_DOMAIN;         /* one per domain */
}

static void
test_scan_by_domain(void **state)
{
	struct fixture *f = *state;
	const char *xy[] = { "a@x.test", "b@y.test" };
	struct dseen d = { 0 };

	enqueue(f, "01HA", xy, 2, 0, 1000);
	enqueue(f, "01HB", xy, 2, 0, 2000);
	assert_int_equal(sender_queue_scan_due_domains(f->q, 5000, dseen_dom, NULL, dseen_one, &d), 0);
	assert_int_equal(d.n_domains, 2);
	assert_int_equal(d.s.n, 2);
	assert_string_equal(d.s.items[0], "01HA/0");
	assert_string_equal(d.s.items[1], "01HA/1");

	memset(&d, 0, sizeof(d));
	d.pass_domain = "x.test";
	assert_int_equal(sender_queue_scan_due_domains(f->q, 5000, dseen_dom, NULL, dseen_one, &d), 0);
	assert_int_equal(d.n_domains, 2);
	assert_int_equal(d.s.n, 1);
	assert_string_equal(d.s.items[0], "01HA/1");

	/* Deferring x.test's first recipient moves the domain behind y.test. */
	struct sender_qop op = state_op(SENDER_QOP_DEFERRED, "01HA", 0);
	op.attempt_ms = 2500;
	op.next_attempt_ms = 3000;
	commit1(f, &op);
	struct sender_qop op2 = state_op(SENDER_QOP_DEFERRED, "01HB", 0);
	op2.attempt_ms = 2500;
	op2.next_attempt_ms = 4000;
	commit1(f, &op2);
	memset(&d, 0, sizeof(d));
	assert_int_equal(sender_queue_scan_due_domains(f->q, 5000, dseen_dom, NULL, dseen_one, &d), 0);
	assert_string_equal(d.domains[0], "y.test");
	assert_string_equal(d.domains[1], "x.test");
	memset(&d, 0, sizeof(d));
	assert_int_equal(sender_queue_scan_due_domains(f->q, 2999, dseen_dom, NULL, dseen_one, &d), 0);
	assert_int_equal(d.n_domains, 1);       /* x.test is not due before 3000 */
	struct sender_queue_stats st;
	assert_int_equal(sender_queue_stats(f->q, &st), 0);
	assert_int_equal(st.domains, 2);
}

static void
test_deferred_moves_schedule(void **state)
{
	struct fixture *f = *state;
	const char *two[] = { "a@x.test", "b@x.test" };
	struct sender_qrcpt *r;
	struct seen s = { 0 };

	enqueue(f, "01HDEF", two, 2, 0, 1000);

	struct sender_qop op = state_op(SENDER_QOP_DEFERRED, "01HDEF", 0);
	op.attempt_ms = 1500;
	op.next_attempt_ms = 10000;
	op.reply = "451 4.7.1 try later";
	commit1(f, &op);
	assert_int_equal(op.result, SENDER_QR_DONE);
	assert_stats(f, 1, 1, 2, 2, 1);

	scan(f, 5000, &s);
	assert_int_equal(s.n, 1);
	assert_string_equal(s.items[0], "01HDEF/1");
	scan(f, 10000, &s);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.items[0], "01HDEF/1");
	assert_string_equal(s.items[1], "01HDEF/0");

	assert_int_equal(sender_queue_rcpt_load(f->q, "01HDEF", 0, &r), 0);
	assert_int_equal(r->attempts, 1);
	assert_int_equal(r->first_attempt_ms, 1500);
	assert_int_equal(r->last_attempt_ms, 1500);
	assert_int_equal(r->next_attempt_ms, 10000);
	assert_string_equal(r->reply, "451 4.7.1 try later");
	assert_string_equal(r->address, "a@x.test");
	free(r);

	/* A second deferral keeps the first attempt and moves the key again,
	 * earlier this time. */
	op = state_op(SENDER_QOP_DEFERRED, "01HDEF", 0);
	op.attempt_ms = 11000;
	op.next_attempt_ms = 4000;
	op.reply = "421 4.4.2 gone";
	commit1(f, &op);
	assert_int_equal(sender_queue_rcpt_load(f->q, "01HDEF", 0, &r), 0);
	assert_int_equal(r->attempts, 2);
	assert_int_equal(r->first_attempt_ms, 1500);
	assert_int_equal(r->last_attempt_ms, 11000);
	assert_string_equal(r->reply, "421 4.4.2 gone");
	free(r);
	assert_stats(f, 1, 1, 2, 2, 1);
	scan(f, 4000, &s);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.items[0], "01HDEF/1");
	assert_string_equal(s.items[1], "01HDEF/0");

	/* Deferring an unknown recipient changes nothing. */
	op = state_op(SENDER_QOP_DEFERRED, "01HDEF", 9);
	op.next_attempt_ms = 1;
	commit1(f, &op);
	assert_int_equal(op.result, SENDER_QR_NOTFOUND);
	assert_stats(f, 1, 1, 2, 2, 1);
}

static void
test_last_rcpt_removes_message(void **state)
{
	struct fixture *f = *state;
	const char *two[] = { "a@x.test", "b@y.test" };
	const char *one[] = { "c@z.test" };
	struct sender_qrcpt *r;
	Hk__Submission *meta;

	enqueue(f, "01HDEL", two, 2, 1, 1000);
	enqueue(f, "01HDEL", one, 1, 2, 1000);
	enqueue(f, "01HKEEP", one, 1, 1, 1000);
	assert_stats(f, 2, 2, 4, 4, 3);

	struct sender_qop d0 = state_op(SENDER_QOP_DELIVERED, "01HDEL", 0);
	struct sender_qop d1 = state_op(SENDER_QOP_DEFERRED, "01HDEL", 1);
	d1.next_attempt_ms = 50000;
	struct sender_qop *ops[] = { &d0, &d1 };
	commit(f, ops, 2);
	assert_int_equal(d0.result, SENDER_QR_DONE);
	assert_int_equal(sender_queue_rcpt_load(f->q, "01HDEL", 0, &r), -ENOENT);
	assert_int_equal(sender_queue_msg_load(f->q, "01HDEL", &meta, NULL, NULL), 0);
	hk__submission__free_unpacked(meta, NULL);
	assert_stats(f, 2, 2, 3, 3, 3);

	struct sender_qop b1 = state_op(SENDER_QOP_BOUNCED, "01HDEL", 1);
	b1.reply = "550 5.1.1 no such user";
	commit1(f, &b1);
	assert_int_equal(b1.result, SENDER_QR_DONE);
	assert_stats(f, 2, 2, 2, 2, 3);

	/* The last one: message, body and shard markers go with it. */
	struct sender_qop d2 = state_op(SENDER_QOP_DELIVERED, "01HDEL", 2);
	commit1(f, &d2);
	assert_int_equal(d2.result, SENDER_QR_DONE);
	assert_stats(f, 1, 1, 1, 1, 1);
	assert_int_equal(sender_queue_msg_load(f->q, "01HDEL", &meta, NULL, NULL), -ENOENT);
	assert_int_equal(sender_queue_msg_load(f->q, "01HKEEP", &meta, NULL, NULL), 0);
	hk__submission__free_unpacked(meta, NULL);

	/* A late repeat finds nothing and stores nothing. */
	d2.result = SENDER_QR_NONE;
	commit1(f, &d2);
	assert_int_equal(d2.result, SENDER_QR_NOTFOUND);
	assert_stats(f, 1, 1, 1, 1, 1);
}

/* A handoff: recipients with their state from another sender, deduplicated
 * by origin (not shard), kept going where they stopped. */
static void
test_handoff_enqueue(void **state)
{
	struct fixture *f = *state;
	const char *two[] = { "a@x.test", "b@y.test" };
	const char *one[] = { "c@z.test" };
	Hk__Handoff h[2];
	struct sender_qrcpt *r;
	struct msg m;

	/* We already hold another part of the message (shard 0, idx 0). */
	enqueue(f, "01HHAND", one, 1, 0, 1000);
	msg_init(&m, "01HHAND", two, 2);
	for (int i = 0; i < 2; i++) {
		hk__handoff__init(&h[i]);
		h[i].from_node = "sender-9";
		h[i].from_idx = 7 + (uint32_t)i;
		h[i].attempts = 3;
		h[i].queued_at_ms = 500;
		h[i].first_attempt_ms = 600;
		h[i].last_attempt_ms = 900;
		h[i].next_attempt_ms = 40000;
		h[i].last_reply = "451 4.7.1 try later";
		m.r[i].handoff = &h[i];
	}
	/* Shard 0 again: a handoff is not deduplicated by shard. */
	struct sender_qop op = enq_op(&m, 0, 2000);
	commit1(f, &op);
	assert_int_equal(op.result, SENDER_QR_DONE);
	assert_int_equal(op.first_idx, 1);
	assert_int_equal(op.n_rcpts, 2);
	assert_stats(f, 1, 1, 3, 3, 1);
	assert_int_equal(sender_queue_rcpt_load(f->q, "01HHAND", 2, &r), 0);
	assert_string_equal(r->address, "b@y.test");
	assert_int_equal(r->attempts, 3);
	assert_int_equal(r->queued_at_ms, 500);
	assert_int_equal(r->first_attempt_ms, 600);
	assert_int_equal(r->last_attempt_ms, 900);
	assert_int_equal(r->next_attempt_ms, 40000);
	assert_string_equal(r->reply, "451 4.7.1 try later");
	free(r);
	/* Not due before its next attempt. */
	struct seen seen = { 0 };
	scan(f, 39999, &seen);
	assert_int_equal(seen.n, 1);
	assert_string_equal(seen.items[0], "01HHAND/0");

	/* The same handoff again (its ack was lost): nothing stored. */
	op = enq_op(&m, 0, 3000);
	commit1(f, &op);
	assert_int_equal(op.result, SENDER_QR_DUPLICATE);
	assert_stats(f, 1, 1, 3, 3, 1);
	/* One new recipient with one already held: only the new one. */
	h[0].from_idx = 8;      /* held */
	h[1].from_idx = 11;     /* new */
	op = enq_op(&m, 5, 3000);
	commit1(f, &op);
	assert_int_equal(op.result, SENDER_QR_DONE);
	assert_int_equal(op.n_rcpts, 1);
	assert_int_equal(op.first_idx, 3);
	assert_stats(f, 1, 1, 4, 4, 1);

	/* Handed-on and new recipients never mix in one enqueue. */
	m.r[1].handoff = NULL;
	op = enq_op(&m, 9, 3000);
	commit1(f, &op);
	assert_int_equal(op.result, SENDER_QR_INVALID);
	assert_non_null(strstr(op.why, "mixed"));

	/* Handed on from here: the recipients leave like delivered ones, and
	 * the message's origin entries go with the last one. */
	for (uint32_t i = 0; i < 4; i++) {
		struct sender_qop d = state_op(SENDER_QOP_HANDED_OFF, "01HHAND", i);
		commit1(f, &d);
		assert_int_equal(d.result, SENDER_QR_DONE);
	}
	assert_stats(f, 0, 0, 0, 0, 0);
	m.r[1].handoff = &h[1];
	op = enq_op(&m, 0, 4000);
	commit1(f, &op);
	assert_int_equal(op.result, SENDER_QR_DONE);
	assert_int_equal(op.n_rcpts, 2);
}

/* A postponed recipient (no budget) waits: no attempt counted. */
static void
test_postpone(void **state)
{
	struct fixture *f = *state;
	const char *one[] = { "a@x.test" };
	struct sender_qrcpt *r;
	struct seen s = { 0 };

	enqueue(f, "01HPP", one, 1, 0, 1000);
	struct sender_qop op = state_op(SENDER_QOP_POSTPONED, "01HPP", 0);
	op.next_attempt_ms = 9000;
	commit1(f, &op);
	assert_int_equal(op.result, SENDER_QR_DONE);
	assert_int_equal(sender_queue_rcpt_load(f->q, "01HPP", 0, &r), 0);
	assert_int_equal(r->attempts, 0);
	assert_int_equal(r->first_attempt_ms, 0);
	assert_int_equal(r->next_attempt_ms, 9000);
	free(r);
	scan(f, 8999, &s);
	assert_int_equal(s.n, 0);
	scan(f, 9000, &s);
	assert_int_equal(s.n, 1);
	assert_stats(f, 1, 1, 1, 1, 1);
	struct sender_qop gone = state_op(SENDER_QOP_POSTPONED, "01HNONE", 0);
	gone.next_attempt_ms = 9000;
	commit1(f, &gone);
	assert_int_equal(gone.result, SENDER_QR_NOTFOUND);
}

/* A queue of format 1 (one time-ordered "sched" database) is rebuilt into
 * domain queues when opened: made here by turning a new queue back. */
static void
test_upgrade_from_format_1(void **state)
{
	struct fixture *f = *state;
	const char *xy[] = { "a@x.test", "b@y.test" };
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi info, dbi, sched;
	MDB_val k, v;
	struct seen s = { 0 };

	enqueue(f, "01HUP", xy, 2, 0, 1000);
	sender_queue_close(&f->q);
	assert_int_equal(mdb_env_create(&env), 0);
	mdb_env_set_maxdbs(env, 16);
	assert_int_equal(mdb_env_open(env, f->dir, 0, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "info", 0, &info), 0);
	uint8_t one = 1;
	k = (MDB_val){ 6, "format" };
	v = (MDB_val){ 1, &one };
	assert_int_equal(mdb_put(txn, info, &k, &v, 0), 0);
	const char *names[] = { "dq", "dnext", "dom" };
	for (int i = 0; i < 3; i++) {
		assert_int_equal(mdb_dbi_open(txn, names[i], 0, &dbi), 0);
		assert_int_equal(mdb_drop(txn, dbi, 0), 0);
	}
	assert_int_equal(mdb_dbi_open(txn, "sched", MDB_CREATE, &sched), 0);
	k = (MDB_val){ 3, "old" };
	assert_int_equal(mdb_put(txn, sched, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);

	open_q(f, 64 << 20);
	scan(f, 1000, &s);
	assert_int_equal(s.n, 2);
	assert_stats(f, 1, 1, 2, 2, 1);
	struct sender_queue_stats st;
	assert_int_equal(sender_queue_stats(f->q, &st), 0);
	assert_int_equal(st.domains, 2);
	/* And it works as any queue of the current format. */
	struct sender_qop d = state_op(SENDER_QOP_DELIVERED, "01HUP", 0);
	commit1(f, &d);
	assert_int_equal(d.result, SENDER_QR_DONE);
	assert_stats(f, 1, 1, 1, 1, 1);
}

static void
test_reopen_keeps_everything(void **state)
{
	struct fixture *f = *state;
	const char *two[] = { "a@x.test", "b@y.test" };
	struct sender_qrcpt *r;
	Hk__Submission *meta;
	uint8_t *body;
	size_t len;
	struct seen s = { 0 };

	enqueue(f, "01HRE", two, 2, 3, 1000);
	struct sender_qop op = state_op(SENDER_QOP_DEFERRED, "01HRE", 1);
	op.attempt_ms = 1100;
	op.next_attempt_ms = 900;
	op.reply = "452 full";
	commit1(f, &op);

	sender_queue_close(&f->q);
	assert_null(f->q);
	open_q(f, 64 << 20);

	assert_stats(f, 1, 1, 2, 2, 1);
	scan(f, 1000, &s);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.items[0], "01HRE/1");
	assert_string_equal(s.items[1], "01HRE/0");
	assert_int_equal(sender_queue_rcpt_load(f->q, "01HRE", 1, &r), 0);
	assert_int_equal(r->attempts, 1);
	assert_string_equal(r->reply, "452 full");
	free(r);
	assert_int_equal(sender_queue_msg_load(f->q, "01HRE", &meta, &body, &len), 0);
	assert_memory_equal(body, BODY, len);
	hk__submission__free_unpacked(meta, NULL);
	free(body);

	/* Dedup survives the restart too. */
	struct msg m;
	msg_init(&m, "01HRE", two, 2);
	struct sender_qop again = enq_op(&m, 3, 5000);
	commit1(f, &again);
	assert_int_equal(again.result, SENDER_QR_DUPLICATE);
}

static void
test_refusals_do_not_fail_the_batch(void **state)
{
	struct fixture *f = *state;
	const char *bad[] = { "a@x.test", "nodomain" };
	const char *good[] = { "a@x.test" };
	struct msg m1, m2, m3;

	msg_init(&m1, "01HBAD", bad, 2);
	struct sender_qop op1 = enq_op(&m1, 0, 1000);
	msg_init(&m2, "", good, 1);
	struct sender_qop op2 = enq_op(&m2, 0, 1000);
	msg_init(&m3, "01HGOOD", good, 1);
	struct sender_qop op3 = enq_op(&m3, 0, 1000);
	struct sender_qop *ops[] = { &op1, &op2, &op3 };
	commit(f, ops, 3);
	assert_int_equal(op1.result, SENDER_QR_INVALID);
	assert_non_null(strstr(op1.why, "recipient 1"));
	assert_int_equal(op2.result, SENDER_QR_INVALID);
	assert_non_null(strstr(op2.why, "message id"));
	assert_int_equal(op3.result, SENDER_QR_DONE);
	assert_stats(f, 1, 1, 1, 1, 1);
}

static void
test_failing_op_fails_alone(void **state)
{
	struct fixture *f = *state;
	const char *one[] = { "a@x.test" };
	struct msg m1, m2, m3;

	/* Reopen with a map too small for the second body. */
	sender_queue_close(&f->q);
	open_q(f, 1 << 20);
	size_t big_len = 2 << 20;
	uint8_t *big = calloc(1, big_len);

	enqueue(f, "01HOLD", one, 1, 0, 500);
	msg_init(&m1, "01HSMALL", one, 1);
	struct sender_qop op1 = enq_op(&m1, 0, 1000);
	msg_init(&m2, "01HBIG", one, 1);
	struct sender_qop op2 = enq_op(&m2, 0, 1000);
	op2.body = big;
	op2.body_len = big_len;
	struct sender_qop op3 = state_op(SENDER_QOP_DELIVERED, "01HOLD", 0);
	msg_init(&m3, "01HAFTER", one, 1);
	struct sender_qop op4 = enq_op(&m3, 0, 1000);
	struct sender_qop *ops[] = { &op1, &op2, &op3, &op4 };
	commit(f, ops, 4);
	assert_int_equal(op1.result, SENDER_QR_DONE);
	assert_int_equal(op2.result, SENDER_QR_FAILED);
	assert_non_null(strstr(op2.why, "MDB_MAP_FULL"));
	assert_int_equal(op3.result, SENDER_QR_DONE);
	assert_int_equal(op4.result, SENDER_QR_DONE);
	assert_stats(f, 2, 2, 2, 2, 2);
	assert_int_equal(sender_queue_msg_load(f->q, "01HBIG", NULL, NULL, NULL), -ENOENT);
	assert_int_equal(sender_queue_msg_load(f->q, "01HOLD", NULL, NULL, NULL), -ENOENT);
	free(big);
}

/* The retry delay the scheduler puts on a deferred recipient. */
static void
test_retry_delay(void **state)
{
	(void)state;
	assert_int_equal(sender_retry_delay(1000, 60000, 1, 0.5), 1000);
	assert_int_equal(sender_retry_delay(1000, 60000, 2, 0.5), 2000);
	assert_int_equal(sender_retry_delay(1000, 60000, 4, 0.5), 8000);
	assert_int_equal(sender_retry_delay(1000, 60000, 7, 0.5), 60000);     /* capped */
	assert_int_equal(sender_retry_delay(1000, 60000, 4000000000u, 0.5), 60000);
	assert_int_equal(sender_retry_delay(300000, 3600000, 0, 0.5), 300000);
	/* +/-10% jitter around the nominal delay. */
	assert_int_equal(sender_retry_delay(1000, 60000, 1, 0.0), 900);
	assert_in_range(sender_retry_delay(1000, 60000, 1, 0.999999), 1099, 1100);
	assert_in_range(sender_retry_delay(1000, 60000, 1, 7.0), 1099, 1100);
}

static void
test_open_errors(void **state)
{
	struct fixture *f = *state;
	sender_queue *q = (sender_queue *)1;
	char err[256] = "";

	/* A path under a regular file cannot be created. */
	assert_int_equal(sender_queue_open(&q, "/dev/null/q", 1 << 20, true, err, sizeof(err)), -1);
	assert_null(q);
	assert_non_null(strstr(err, "/dev/null"));
	(void)f;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_enqueue_and_load, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dedup, setup, teardown),
		cmocka_unit_test_setup_teardown(test_due_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_scan_by_domain, setup, teardown),
		cmocka_unit_test_setup_teardown(test_deferred_moves_schedule, setup, teardown),
		cmocka_unit_test_setup_teardown(test_last_rcpt_removes_message, setup, teardown),
		cmocka_unit_test_setup_teardown(test_handoff_enqueue, setup, teardown),
		cmocka_unit_test_setup_teardown(test_upgrade_from_format_1, setup, teardown),
		cmocka_unit_test_setup_teardown(test_postpone, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen_keeps_everything, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refusals_do_not_fail_the_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failing_op_fails_alone, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
		cmocka_unit_test(test_retry_delay),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
