/*
 * test_sender_queue_admin - the queue's administration functions (what
 * `hikyaku queue` uses): scan_all (every recipient, or one message's), delete
 * (the message goes with its last recipient; absent ones skipped; more than
 * one batch; from another process while the first keeps the queue open),
 * reschedule (only later ones move; the schedule follows) and commit_all
 * (all or nothing). Times are injected; nothing sleeps.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "sender_queue.h"

struct fixture {
	char dir[64];
	sender_queue *q;
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	char err[256] = "";

	snprintf(f->dir, sizeof(f->dir), "/tmp/hk_test_qadmin_XXXXXX");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	if (sender_queue_open(&f->q, f->dir, 64 << 20, true, err, sizeof(err)) != 0) {
		print_error("open: %s\n", err);
		return -1;
	}
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
	free(f);
	return 0;
}

static const char BODY[] = "Subject: hi\r\n\r\nhello\r\n";

/* enqueue - message ID with the N recipients RCPTS, due at NOW. */
static void
enqueue(sender_queue *q, const char *id, const char *const *rcpts, size_t n, int64_t now)
{
	Hk__Submission sub;
	Hk__Envelope env;
	Hk__Recipient r[8], *rp[8];
	char err[256] = "";

	assert_true(n <= 8);
	hk__submission__init(&sub);
	hk__envelope__init(&env);
	sub.id = (char *)id;
	sub.tenant = "acme";
	sub.envelope = &env;
	env.mail_from = "from@client.test";
	for (size_t i = 0; i < n; i++) {
		hk__recipient__init(&r[i]);
		r[i].address = (char *)rcpts[i];
		rp[i] = &r[i];
	}
	env.rcpts = rp;
	env.n_rcpts = n;
	struct sender_qop op = {
		.kind = SENDER_QOP_ENQUEUE, .msg = &sub, .body = (const uint8_t *)BODY,
		.body_len = sizeof(BODY) - 1, .now_ms = now,
	};
	struct sender_qop *ops[] = { &op };
	assert_int_equal(sender_queue_commit(q, ops, 1, err, sizeof(err)), 0);
	assert_int_equal(op.result, SENDER_QR_DONE);
}

/* defer - one failed attempt of (id, idx) at AT, next at NEXT. */
static void
defer(sender_queue *q, const char *id, uint32_t idx, int64_t at, int64_t next)
{
	char err[256] = "";
	struct sender_qop op = { .kind = SENDER_QOP_DEFERRED, .id = id, .idx = idx,
	    .attempt_ms = at, .next_attempt_ms = next, .reply = "451 4.7.1 later" };
	struct sender_qop *ops[] = { &op };
	assert_int_equal(sender_queue_commit(q, ops, 1, err, sizeof(err)), 0);
	assert_int_equal(op.result, SENDER_QR_DONE);
}

struct seen {
	char items[32][80];
	size_t n, stop_after;
};

static int
seen_cb(const struct sender_qrcpt *r, void *arg)
{
	struct seen *s = arg;
	assert_true(s->n < 32);
	snprintf(s->items[s->n++], 80, "%s/%u %s %u %lld", r->id, r->idx, r->address,
	    r->attempts, (long long)r->next_attempt_ms);
	return s->stop_after && s->n == s->stop_after;
}

static int
due_cb(const struct sender_qrcpt *r, void *arg)
{
	struct seen *s = arg;
	assert_true(s->n < 32);
	snprintf(s->items[s->n++], 80, "%s/%u", r->id, r->idx);
	return 0;
}

static void
test_scan_all(void **state)
{
	struct fixture *f = *state;
	struct seen s = { 0 };

	enqueue(f->q, "M2", (const char *[]){ "c@b.test" }, 1, 2000);
	enqueue(f->q, "M1", (const char *[]){ "a@a.test", "b@a.test" }, 2, 1000);
	enqueue(f->q, "M10", (const char *[]){ "d@c.test" }, 1, 3000);
	defer(f->q, "M1", 1, 1500, 9000);

	/* Everything, in key order (id, then idx), whatever is due. */
	assert_int_equal(sender_queue_scan_all(f->q, NULL, NULL, seen_cb, &s), 0);
	assert_int_equal(s.n, 4);
	assert_string_equal(s.items[0], "M1/0 a@a.test 0 1000");
	assert_string_equal(s.items[1], "M1/1 b@a.test 1 9000");
	assert_string_equal(s.items[2], "M10/0 d@c.test 0 3000");
	assert_string_equal(s.items[3], "M2/0 c@b.test 0 2000");

	/* One message: "M1" is not a prefix match of "M10". */
	s.n = 0;
	assert_int_equal(sender_queue_scan_all(f->q, "M1", NULL, seen_cb, &s), 0);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.items[1], "M1/1 b@a.test 1 9000");
	s.n = 0;
	assert_int_equal(sender_queue_scan_all(f->q, "M10", NULL, seen_cb, &s), 0);
	assert_int_equal(s.n, 1);
	s.n = 0;
	assert_int_equal(sender_queue_scan_all(f->q, "M3", NULL, seen_cb, &s), 0);
	assert_int_equal(sender_queue_scan_all(f->q, "", NULL, seen_cb, &s), 0);
	assert_int_equal(s.n, 0);

	/* The callback stops it. */
	s.stop_after = 3;
	assert_int_equal(sender_queue_scan_all(f->q, NULL, NULL, seen_cb, &s), 0);
	assert_int_equal(s.n, 3);

	/* Going on after a key, whether it is still there or not. */
	s.stop_after = 0;
	s.n = 0;
	struct sender_qref after = { "M1", 0 };
	assert_int_equal(sender_queue_scan_all(f->q, NULL, &after, seen_cb, &s), 0);
	assert_int_equal(s.n, 3);
	assert_string_equal(s.items[0], "M1/1 b@a.test 1 9000");
	s.n = 0;
	after = (struct sender_qref){ "M1", 5 };        /* not a recipient */
	assert_int_equal(sender_queue_scan_all(f->q, NULL, &after, seen_cb, &s), 0);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.items[0], "M10/0 d@c.test 0 3000");
	/* ... within one message, and before it (from its start) or past it. */
	s.n = 0;
	after = (struct sender_qref){ "M1", 0 };
	assert_int_equal(sender_queue_scan_all(f->q, "M1", &after, seen_cb, &s), 0);
	assert_int_equal(s.n, 1);
	assert_string_equal(s.items[0], "M1/1 b@a.test 1 9000");
	s.n = 0;
	after = (struct sender_qref){ "M", 9 };
	assert_int_equal(sender_queue_scan_all(f->q, "M1", &after, seen_cb, &s), 0);
	assert_int_equal(s.n, 2);
	s.n = 0;
	after = (struct sender_qref){ "M2", 0 };
	assert_int_equal(sender_queue_scan_all(f->q, "M1", &after, seen_cb, &s), 0);
	assert_int_equal(s.n, 0);
}

/* admin_delete - sender_queue_delete in a child process on its own handle:
 * how many it deleted, or -1. */
static int
admin_delete(const char *dir, const struct sender_qref *refs, size_t n)
{
	pid_t pid = fork();
	int status;

	assert_true(pid >= 0);
	if (pid == 0) {
		sender_queue *q;
		char err[256] = "";
		size_t done = 0;
		if (sender_queue_open(&q, dir, 0, true, err, sizeof(err)) != 0 ||
		    sender_queue_delete(q, refs, n, &done, err, sizeof(err)) != 0) {
			fprintf(stderr, "admin: %s\n", err);
			_exit(255);
		}
		sender_queue_close(&q);
		_exit(done > 250 ? 250 : (int)done);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	return WEXITSTATUS(status) == 255 ? -1 : WEXITSTATUS(status);
}

static void
test_delete(void **state)
{
	struct fixture *f = *state;
	struct sender_queue_stats st;
	struct seen s = { 0 };
	char err[256] = "";
	size_t done = 99;

	enqueue(f->q, "M1", (const char *[]){ "a@a.test", "b@a.test" }, 2, 1000);
	enqueue(f->q, "M2", (const char *[]){ "c@b.test" }, 1, 1000);
	defer(f->q, "M1", 0, 1500, 9000);

	/* Another process, as `hikyaku queue` is: its own handle (map size 0:
	 * the environment's own), the sender's handle staying open. LMDB wants
	 * one handle per environment and process, hence the fork. */
	struct sender_qref refs[] = { { "M1", 0 }, { "M2", 0 }, { "M9", 0 }, { "M1", 7 },
	    { "", 0 }, { NULL, 0 } };
	assert_int_equal(admin_delete(f->dir, refs, 6), 2);
	/* M2 went with its last recipient; M1 keeps its body for b@. */
	assert_int_equal(sender_queue_stats(f->q, &st), 0);
	assert_int_equal(st.msgs, 1);
	assert_int_equal(st.bodies, 1);
	assert_int_equal(st.rcpts, 1);
	assert_int_equal(st.sched, 1);
	assert_int_equal(st.shards, 1);
	assert_int_equal(sender_queue_msg_load(f->q, "M2", NULL, NULL, NULL), -ENOENT);
	assert_int_equal(sender_queue_scan_due(f->q, 100000, NULL, due_cb, &s), 0);
	assert_int_equal(s.n, 1);
	assert_string_equal(s.items[0], "M1/1");

	/* The sender's own outcome for a deleted recipient: not found. */
	struct sender_qop op = { .kind = SENDER_QOP_DELIVERED, .id = "M1", .idx = 0 };
	struct sender_qop *ops[] = { &op };
	assert_int_equal(sender_queue_commit(f->q, ops, 1, err, sizeof(err)), 0);
	assert_int_equal(op.result, SENDER_QR_NOTFOUND);

	/* Deleting again touches nothing. */
	assert_int_equal(admin_delete(f->dir, refs, 2), 0);
	assert_int_equal(sender_queue_delete(f->q, refs, 2, &done, err, sizeof(err)), 0);
	assert_int_equal(done, 0);
}

static void
test_delete_batches(void **state)
{
	struct fixture *f = *state;
	size_t n = SENDER_QUEUE_ADMIN_BATCH * 2 + 5, done = 0;
	struct sender_qref *refs = calloc(n, sizeof(*refs));
	char (*ids)[16] = calloc(n, sizeof(*ids));
	char err[256] = "";

	for (size_t i = 0; i < n; i++) {
		snprintf(ids[i], sizeof(ids[i]), "B%05zu", i);
		enqueue(f->q, ids[i], (const char *[]){ "x@a.test" }, 1, 1000);
		refs[i] = (struct sender_qref){ ids[i], 0 };
	}
	assert_int_equal(sender_queue_depth(f->q), n);
	assert_int_equal(sender_queue_delete(f->q, refs, n, &done, err, sizeof(err)), 0);
	assert_int_equal(done, n);
	assert_int_equal(sender_queue_depth(f->q), 0);
	free(refs);
	free(ids);
}

static void
test_reschedule(void **state)
{
	struct fixture *f = *state;
	struct seen s = { 0 };
	char err[256] = "";
	size_t done = 0;

	enqueue(f->q, "M1", (const char *[]){ "a@a.test", "b@a.test", "c@b.test" }, 3, 1000);
	defer(f->q, "M1", 0, 1500, 90000);
	defer(f->q, "M1", 1, 1600, 80000);

	/* At 5000 only M1/2 is due. */
	assert_int_equal(sender_queue_scan_due(f->q, 5000, NULL, due_cb, &s), 0);
	assert_int_equal(s.n, 1);

	/* Make everything due at 5000: the two later ones move, the due one and
	 * the absent one do not count. */
	struct sender_qref refs[] = { { "M1", 0 }, { "M1", 1 }, { "M1", 2 }, { "M1", 3 } };
	assert_int_equal(sender_queue_reschedule(f->q, refs, 4, 5000, &done, err, sizeof(err)), 0);
	assert_int_equal(done, 2);
	s.n = 0;
	assert_int_equal(sender_queue_scan_due(f->q, 5000, NULL, due_cb, &s), 0);
	assert_int_equal(s.n, 3);
	/* The schedule holds each once, in time order: M1/2 (1000) first. */
	assert_string_equal(s.items[0], "M1/2");

	/* Attempts and reply untouched; next attempt moved. */
	struct sender_qrcpt *r;
	assert_int_equal(sender_queue_rcpt_load(f->q, "M1", 0, &r), 0);
	assert_int_equal(r->attempts, 1);
	assert_int_equal(r->first_attempt_ms, 1500);
	assert_int_equal(r->next_attempt_ms, 5000);
	assert_string_equal(r->reply, "451 4.7.1 later");
	free(r);
	struct sender_queue_stats st;
	assert_int_equal(sender_queue_stats(f->q, &st), 0);
	assert_int_equal(st.sched, 3);

	/* A deferral after the retry puts it back on its own schedule. */
	defer(f->q, "M1", 0, 6000, 70000);
	s.n = 0;
	assert_int_equal(sender_queue_scan_due(f->q, 6000, NULL, due_cb, &s), 0);
	assert_int_equal(s.n, 2);
	assert_int_equal(sender_queue_stats(f->q, &st), 0);
	assert_int_equal(st.sched, 3);
}

static void
test_commit_all(void **state)
{
	struct fixture *f = *state;
	char err[256] = "";
	Hk__Submission sub;
	Hk__Envelope env;
	Hk__Recipient r, *rp = &r;

	enqueue(f->q, "M1", (const char *[]){ "a@a.test" }, 1, 1000);
	hk__submission__init(&sub);
	hk__envelope__init(&env);
	hk__recipient__init(&r);
	sub.id = "DSN1";
	sub.envelope = &env;
	env.mail_from = "";
	r.address = "from@client.test";
	env.rcpts = &rp;
	env.n_rcpts = 1;
	struct sender_qop enq = { .kind = SENDER_QOP_ENQUEUE, .msg = &sub,
	    .body = (const uint8_t *)BODY, .body_len = sizeof(BODY) - 1, .now_ms = 2000 };
	struct sender_qop gone = { .kind = SENDER_QOP_BOUNCED, .id = "M1", .idx = 5 };
	struct sender_qop rm = { .kind = SENDER_QOP_BOUNCED, .id = "M1", .idx = 0 };

	/* One op not done (a recipient not there): nothing stored. */
	struct sender_qop *bad[] = { &enq, &rm, &gone };
	assert_int_equal(sender_queue_commit_all(f->q, bad, 3, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "not done"));
	assert_int_equal(gone.result, SENDER_QR_NOTFOUND);
	assert_int_equal(sender_queue_depth(f->q), 1);
	assert_int_equal(sender_queue_msg_load(f->q, "DSN1", NULL, NULL, NULL), -ENOENT);

	/* All done: the DSN is queued and the recipient gone, together. */
	struct sender_qop *good[] = { &enq, &rm };
	assert_int_equal(sender_queue_commit_all(f->q, good, 2, err, sizeof(err)), 0);
	assert_int_equal(enq.result, SENDER_QR_DONE);
	assert_int_equal(rm.result, SENDER_QR_DONE);
	assert_int_equal(sender_queue_msg_load(f->q, "M1", NULL, NULL, NULL), -ENOENT);
	struct seen s = { 0 };
	assert_int_equal(sender_queue_scan_all(f->q, NULL, NULL, seen_cb, &s), 0);
	assert_int_equal(s.n, 1);
	assert_string_equal(s.items[0], "DSN1/0 from@client.test 0 2000");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_scan_all, setup, teardown),
		cmocka_unit_test_setup_teardown(test_delete, setup, teardown),
		cmocka_unit_test_setup_teardown(test_delete_batches, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reschedule, setup, teardown),
		cmocka_unit_test_setup_teardown(test_commit_all, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
