/*
 * test_sender_warmup - warm-up schedules (the built-in table, configured
 * tables, errors naming file, line and key) and the state in LMDB on an
 * injected clock: a 30-day run that matches the table day by day with a
 * restart midway, exact hour and day caps, holding on bounces, complaints,
 * low acceptance and low volume, stepping back after repeated throttling,
 * warm addresses, giving back unsent budget, status. Nothing sleeps.
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

#include "sender_warmup.h"

extern const unsigned char sender_warmup_builtin[];
extern const size_t sender_warmup_builtin_len;

#define DAY 86400000LL
#define HOUR 3600000LL
static const int64_t T0 = 1767225600000LL;     /* 2026-01-01T00:00:00Z, a Thursday */

struct fixture {
	char dir[64];
	sender_warmup *w;
};

static sender_warmup_schedule *
sched_text(const char *text)
{
	char err[512] = "";
	sender_warmup_schedule *s = text ? sender_warmup_schedule_text("w.yaml", text, err, sizeof(err)) :
	    sender_warmup_schedule_load(NULL, err, sizeof(err));

	if (s == NULL)
		fail_msg("schedule: %s", err);
	return s;
}

static void
open_w(struct fixture *f, const char *text, bool readonly)
{
	char err[512] = "";
	sender_warmup_schedule *s = sched_text(text);

	if (sender_warmup_open(&f->w, f->dir, &s, readonly, err, sizeof(err)) != 0)
		fail_msg("open: %s", err);
	assert_null(s);
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	snprintf(f->dir, sizeof(f->dir), "/tmp/hk_test_warmup_XXXXXX");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	strcat(f->dir, "/rep");         /* open must create it */
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	char p[128];

	sender_warmup_close(&f->w);
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

/* take_all - take one recipient at a time at NOW until refused; returns how
 * many were taken, with the refusal's retry time. */
static uint32_t
take_all(sender_warmup *w, const char *addr, const char *prov, int64_t now, int64_t *retry_at)
{
	uint32_t n = 0, got;

	for (;;) {
		assert_int_equal(sender_warmup_take(w, addr, prov, 1, now, &got, retry_at), 0);
		if (got == 0)
			return n;
		n++;
		assert_true(n < 1000000);
	}
}

/* run_day - a day of sending from DAY_START: every hour, take what the
 * budget allows (one at a time when ONE_BY_ONE, else in one request),
 * checking the hour cap; each recipient taken is delivered, except that
 * every BOUNCE_EVERY-th bounces (0: none). Returns the day's total. */
static uint32_t
run_day(sender_warmup *w, const char *addr, const char *prov, int64_t day_start, bool one_by_one,
    uint32_t bounce_every, uint32_t hour_cap, uint32_t *seq)
{
	uint32_t total = 0;

	for (int h = 0; h < 24; h++) {
		int64_t now = day_start + h * HOUR + 17 * 60000, retry;
		uint32_t got;
		if (one_by_one) {
			got = take_all(w, addr, prov, now, &retry);
		} else {
			assert_int_equal(sender_warmup_take(w, addr, prov, 1000000, now, &got, &retry), 0);
		}
		assert_true(got <= hour_cap);
		if (hour_cap == UINT32_MAX) {
			total += got;           /* warm: nothing to count */
			continue;
		}
		if (got == 0 || got == hour_cap)
			assert_true(retry == day_start + (h + 1) * HOUR || retry == day_start + DAY);
		for (uint32_t i = 0; i < got; i++) {
			enum sender_warmup_outcome o = SENDER_WARMUP_DELIVERED;
			if (bounce_every && ++*seq % bounce_every == 0)
				o = SENDER_WARMUP_BOUNCED;
			assert_int_equal(sender_warmup_count(w, addr, prov, o, now + 1000), 0);
		}
		total += got;
	}
	return total;
}

/* --- schedules ------------------------------------------------------------------ */

static void
test_builtin_schedule(void **state)
{
	sender_warmup_schedule *s = sched_text(NULL);
	FILE *f = fopen("deploy/warmup.yaml", "rb");
	char *buf = malloc(sender_warmup_builtin_len + 2);
	size_t n;
	(void)state;

	assert_non_null(f);
	n = fread(buf, 1, sender_warmup_builtin_len + 1, f);
	fclose(f);
	assert_int_equal(n, sender_warmup_builtin_len);
	assert_memory_equal(buf, sender_warmup_builtin, n);
	free(buf);

	assert_int_equal(sender_warmup_schedule_steps(s, "gmail"), 30);
	assert_int_equal(sender_warmup_schedule_day_cap(s, "gmail", 0), 50);
	assert_int_equal(sender_warmup_schedule_hour_cap(s, "gmail", 0), 9);           /* ceil(50 / 24 * 4) */
	assert_int_equal(sender_warmup_schedule_day_cap(s, "default", 29), 25000);
	assert_int_equal(sender_warmup_schedule_hour_cap(s, "default", 29), 4167);
	assert_int_equal(sender_warmup_schedule_day_cap(s, "gmail", 30), SENDER_WARMUP_NO_CAP);
	assert_int_equal(sender_warmup_schedule_hour_cap(s, "gmail", 30), SENDER_WARMUP_NO_CAP);
	/* The carriers' own, shared through a YAML alias. */
	assert_int_equal(sender_warmup_schedule_day_cap(s, "docomo", 0), 20);
	assert_int_equal(sender_warmup_schedule_day_cap(s, "softbank", 29), 10000);
	assert_int_equal(sender_warmup_schedule_hour_cap(s, "au", 0), 4);
	/* Roughly doubling every three days. */
	for (uint32_t d = 3; d < 30; d++) {
		double r = (double)sender_warmup_schedule_day_cap(s, "gmail", d) /
		    sender_warmup_schedule_day_cap(s, "gmail", d - 3);
		assert_true(r >= 1.8 && r <= 2.1);
	}
	sender_warmup_schedule_free(&s);
	assert_null(s);
}

static void
expect_error(const char *text, const char *want)
{
	char err[512] = "";

	assert_null(sender_warmup_schedule_text("w.yaml", text, err, sizeof(err)));
	if (strstr(err, want) == NULL)
		fail_msg("error '%s' does not contain '%s'", err, want);
}

static void
test_schedule_errors(void **state)
{
	char err[256];
	(void)state;

	expect_error("days: [10, 20]\nmax_bounce: 3%\n", "w.yaml:2: key 'max_bounce': unknown key in a warm-up schedule");
	expect_error("hour_factor: 2\n", "w.yaml:1: key 'days': the schedule needs 'days'");
	expect_error("days: [10, 0, 20]\n", "w.yaml:1: key 'days': a daily cap must be at least 1");
	expect_error("days: []\n", "key 'days': expected 1 to 366 daily caps");
	expect_error("days: 10\n", "key 'days': expected a list of daily caps");
	expect_error("days: [10]\nmax_bounce_rate: 300%\n", "w.yaml:2: key 'max_bounce_rate': '300%' is out of range");
	expect_error("days: [10]\nmin_acceptance: lots\n", "key 'min_acceptance': expected a fraction");
	expect_error("days: [10]\nthrottle_episode: 10 minutes\n", "key 'throttle_episode': unknown duration unit");
	expect_error("days: [10]\nproviders:\n  Gmail: [1]\n", "w.yaml:3: key 'Gmail': a provider is");
	expect_error("days: [10]\nproviders:\n  gmail: [x]\n", "w.yaml:3: key 'gmail': expected a non-negative integer");
	expect_error("days: [10]\nstep_back_after: 0\n", "key 'step_back_after': must be at least 1");
	expect_error("days: [10\n", "w.yaml:2: YAML syntax error");
	assert_null(sender_warmup_schedule_load("/nonexistent/warmup.yaml", err, sizeof(err)));
	assert_non_null(strstr(err, "/nonexistent/warmup.yaml: cannot open"));

	/* Percentages and fractions are the same thing. */
	sender_warmup_schedule *s = sched_text("days: [10]\nmax_bounce_rate: 0.05\nmin_acceptance: 80%\n");
	sender_warmup_schedule_free(&s);
}

/* --- caps ---------------------------------------------------------------------- */

static void
test_hour_and_day_caps_exact(void **state)
{
	struct fixture *f = *state;
	int64_t retry, t = T0 + 5 * HOUR + 1234;
	uint32_t got, allowed;

	open_w(f, "days: [100, 200]\nhour_factor: 6\n", false);        /* hour cap 25 */
	sender_warmup_set_address(f->w, "10.0.0.2", true);
	assert_int_equal(sender_warmup_budget(f->w, "10.0.0.2", "gmail", t, &allowed, &retry), 0);
	assert_int_equal(allowed, 25);
	/* One at a time: exactly the hour cap, then the next hour. */
	assert_int_equal(take_all(f->w, "10.0.0.2", "gmail", t, &retry), 25);
	assert_int_equal(retry, T0 + 6 * HOUR);
	assert_int_equal(sender_warmup_budget(f->w, "10.0.0.2", "gmail", T0 + 6 * HOUR - 1, &allowed, &retry), 0);
	assert_int_equal(allowed, 0);
	assert_int_equal(retry, T0 + 6 * HOUR);
	/* A large request gets what is left, and says when more comes. */
	assert_int_equal(sender_warmup_take(f->w, "10.0.0.2", "gmail", 40, T0 + 6 * HOUR, &got, &retry), 0);
	assert_int_equal(got, 25);
	assert_int_equal(retry, T0 + 7 * HOUR);
	assert_int_equal(sender_warmup_take(f->w, "10.0.0.2", "gmail", 10, T0 + 7 * HOUR, &got, &retry), 0);
	assert_int_equal(got, 10);
	assert_int_equal(retry, 0);
	/* Another provider and another address have budgets of their own. */
	assert_int_equal(take_all(f->w, "10.0.0.2", "yahoo", T0 + 6 * HOUR, &retry), 25);
	sender_warmup_set_address(f->w, "10.0.0.3", true);
	assert_int_equal(take_all(f->w, "10.0.0.3", "gmail", T0 + 6 * HOUR, &retry), 25);
	/* The day cap: 60 taken so far, 40 more over the next hours, then the
	 * next day. */
	assert_int_equal(take_all(f->w, "10.0.0.2", "gmail", T0 + 7 * HOUR + 5, &retry), 15);
	assert_int_equal(take_all(f->w, "10.0.0.2", "gmail", T0 + 8 * HOUR, &retry), 25);
	assert_int_equal(take_all(f->w, "10.0.0.2", "gmail", T0 + 9 * HOUR, &retry), 0);
	assert_int_equal(retry, T0 + DAY);
	assert_int_equal(sender_warmup_budget(f->w, "10.0.0.2", "gmail", T0 + DAY - 1, &allowed, &retry), 0);
	assert_int_equal(allowed, 0);
	assert_int_equal(retry, T0 + DAY);
	/* Next day: the step advanced (volume: 100 of 100, no outcomes to judge). */
	assert_int_equal(sender_warmup_budget(f->w, "10.0.0.2", "gmail", T0 + DAY, &allowed, &retry), 0);
	assert_int_equal(allowed, 50);
	/* take(0) takes nothing and is not an error. */
	assert_int_equal(sender_warmup_take(f->w, "10.0.0.2", "gmail", 0, T0 + DAY, &got, &retry), 0);
	assert_int_equal(got, 0);
}

static void
test_untake(void **state)
{
	struct fixture *f = *state;
	int64_t retry, t = T0 + 3 * HOUR;
	uint32_t got, allowed;

	open_w(f, "days: [48]\nhour_factor: 1\n", false);               /* hour cap 2 */
	sender_warmup_set_address(f->w, "a", true);
	assert_int_equal(sender_warmup_take(f->w, "a", "gmail", 2, t, &got, &retry), 0);
	assert_int_equal(got, 2);
	/* One never left (connection refused): it is given back. */
	assert_int_equal(sender_warmup_untake(f->w, "a", "gmail", 1, t, t + 1000), 0);
	assert_int_equal(sender_warmup_budget(f->w, "a", "gmail", t + 2000, &allowed, &retry), 0);
	assert_int_equal(allowed, 1);
	assert_int_equal(sender_warmup_take(f->w, "a", "gmail", 2, t + 2000, &got, &retry), 0);
	assert_int_equal(got, 1);
	/* Taken in an hour that is over: that hour is gone, the day's count
	 * is still given back. */
	assert_int_equal(sender_warmup_untake(f->w, "a", "gmail", 1, t, t + HOUR), 0);
	assert_int_equal(sender_warmup_budget(f->w, "a", "gmail", t + HOUR, &allowed, &retry), 0);
	assert_int_equal(allowed, 2);
	struct sender_warmup_status *st;
	size_t n;
	assert_int_equal(sender_warmup_status(f->w, t + HOUR, &st, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(st[0].sent_day, 1);    /* 2 - 1 + 1 - 1 */
	assert_int_equal(st[0].sent_hour, 0);
	free(st);
	/* Nothing to give back for a pair that never took. */
	assert_int_equal(sender_warmup_untake(f->w, "a", "yahoo", 1, t, t), 0);
	assert_int_equal(sender_warmup_status(f->w, t, &st, &n), 0);
	assert_int_equal(n, 1);
	free(st);
}

static void
test_warm_address_has_no_caps(void **state)
{
	struct fixture *f = *state;
	struct sender_warmup_status *st;
	uint32_t got, allowed;
	int64_t retry;
	size_t n;

	open_w(f, NULL, false);
	/* Never registered, or registered warm. */
	sender_warmup_set_address(f->w, "10.0.0.5", true);
	sender_warmup_set_address(f->w, "10.0.0.5", false);
	assert_false(sender_warmup_warming(f->w, "10.0.0.5"));
	for (const char *const *a = (const char *const[]){ "10.0.0.4", "10.0.0.5", NULL }; *a; a++) {
		assert_int_equal(sender_warmup_budget(f->w, *a, "gmail", T0, &allowed, &retry), 0);
		assert_int_equal(allowed, SENDER_WARMUP_NO_CAP);
		assert_int_equal(sender_warmup_take(f->w, *a, "gmail", 100000, T0, &got, &retry), 0);
		assert_int_equal(got, 100000);
		assert_int_equal(sender_warmup_count(f->w, *a, "gmail", SENDER_WARMUP_THROTTLED, T0), 0);
	}
	assert_int_equal(sender_warmup_status(f->w, T0, &st, &n), 0);
	assert_int_equal(n, 0);                 /* nothing stored */
	assert_null(st);
}

/* --- the 30-day run ---------------------------------------------------------------- */

static const char *table30 =
    "days: [10, 10, 12, 15, 15, 20, 25, 25, 30, 40,\n"
    "       40, 50, 60, 60, 75, 90, 100, 120, 120, 150,\n"
    "       180, 200, 240, 240, 300, 360, 400, 480, 480, 600]\n"
    "hour_factor: 3\n"
    "min_sample: 10\n"
    "providers:\n"
    "  docomo: [5, 5, 5, 10, 10, 10, 20, 20, 20, 40,\n"
    "           40, 40, 80, 80, 80, 100, 100, 100, 150, 150,\n"
    "           150, 200, 200, 200, 250, 250, 250, 300, 300, 300]\n";

static void
test_30_day_run_with_restart(void **state)
{
	struct fixture *f = *state;
	static const char *const provs[] = { "gmail", "docomo" };
	sender_warmup_schedule *s = sched_text(table30);
	uint32_t seq = 0;

	open_w(f, table30, false);
	for (int d = 0; d < 32; d++) {
		for (int p = 0; p < 2; p++) {
			uint32_t cap = sender_warmup_schedule_day_cap(s, provs[p], (uint32_t)d);
			uint32_t hcap = sender_warmup_schedule_hour_cap(s, provs[p], (uint32_t)d);
			uint32_t sent;

			sender_warmup_set_address(f->w, "10.0.0.2", true);
			if (d == 15 && p == 1) {
				/* A restart in the middle of day 16 (cap 100, 13 an
				 * hour): four hours before, the rest after; nothing
				 * is reset. */
				uint32_t before = 0, after = 0, got;
				int64_t retry;
				for (int h = 0; h < 4; h++) {
					assert_int_equal(sender_warmup_take(f->w, "10.0.0.2", "docomo", 1000000,
					    T0 + d * DAY + h * HOUR, &got, &retry), 0);
					for (uint32_t i = 0; i < got; i++)
						sender_warmup_count(f->w, "10.0.0.2", "docomo", SENDER_WARMUP_DELIVERED,
						    T0 + d * DAY + h * HOUR);
					before += got;
				}
				sender_warmup_close(&f->w);
				open_w(f, table30, false);
				sender_warmup_set_address(f->w, "10.0.0.2", true);
				for (int h = 4; h < 24; h++) {
					assert_int_equal(sender_warmup_take(f->w, "10.0.0.2", "docomo", 1000000,
					    T0 + d * DAY + h * HOUR, &got, &retry), 0);
					for (uint32_t i = 0; i < got; i++)
						sender_warmup_count(f->w, "10.0.0.2", "docomo", SENDER_WARMUP_DELIVERED,
						    T0 + d * DAY + h * HOUR);
					after += got;
				}
				assert_int_equal(before, 4 * 13);
				assert_int_equal(before + after, cap);
				continue;
			}
			sent = run_day(f->w, "10.0.0.2", provs[p], T0 + d * DAY, d % 2 == 0 && d < 30, 0,
			    d < 30 ? hcap : UINT32_MAX, &seq);
			if (d < 30) {
				if (sent != cap)
					fail_msg("%s day %d: sent %u, the table says %u", provs[p], d + 1, sent, cap);
			} else {
				/* Past the table: warm, no cap (the day's demand is a
				 * million an hour here). */
				assert_int_equal(sent, 24 * 1000000);
			}
		}
		if (d == 20) {
			/* Status midway, read as the CLI would. */
			struct sender_warmup_status *st;
			size_t n;
			assert_int_equal(sender_warmup_status(f->w, T0 + d * DAY + 23 * HOUR + 59 * 60000, &st, &n), 0);
			assert_int_equal(n, 2);
			assert_string_equal(st[0].provider, "docomo");
			assert_string_equal(st[1].provider, "gmail");
			assert_int_equal(st[1].day, 21);
			assert_int_equal(st[1].step, 21);
			assert_int_equal(st[1].steps, 30);
			assert_int_equal(st[1].day_cap, 180);
			assert_int_equal(st[1].sent_day, 180);
			assert_int_equal(st[1].remaining, 0);
			assert_int_equal(st[1].next_budget, T0 + 21 * DAY);
			assert_int_equal(st[1].start, T0 + 17 * 60000);
			assert_int_equal(st[1].hold, SENDER_WARMUP_HOLD_NONE);
			assert_true(st[1].acceptance == 1.0);
			assert_false(st[1].done);
			free(st);
		}
	}
	struct sender_warmup_status *st;
	size_t n;
	assert_int_equal(sender_warmup_status(f->w, T0 + 32 * DAY, &st, &n), 0);
	assert_true(st[1].done);
	assert_int_equal(st[1].day_cap, SENDER_WARMUP_NO_CAP);
	assert_int_equal(st[1].day, 33);
	free(st);
	sender_warmup_schedule_free(&s);
}

/* The built-in table, the same way (only volume to judge: every
 * recipient taken at once, no outcomes), for its 30 days. */
static void
test_30_day_builtin(void **state)
{
	struct fixture *f = *state;
	sender_warmup_schedule *s = sched_text(NULL);
	uint32_t total = 0;

	open_w(f, NULL, false);
	sender_warmup_set_address(f->w, "192.0.2.1", true);
	for (int d = 0; d < 30; d++) {
		uint32_t sent = 0, got;
		int64_t retry;
		for (int h = 0; h < 24; h++) {
			assert_int_equal(sender_warmup_take(f->w, "192.0.2.1", "yahoo", 1000000, T0 + d * DAY + h * HOUR,
			    &got, &retry), 0);
			assert_true(got <= sender_warmup_schedule_hour_cap(s, "yahoo", (uint32_t)d));
			sent += got;
		}
		assert_int_equal(sent, sender_warmup_schedule_day_cap(s, "yahoo", (uint32_t)d));
		total += sent;
	}
	assert_int_equal(total, 3 * (50 + 100 + 200 + 400 + 800 + 1500 + 3000 + 6000 + 12000 + 25000));
	sender_warmup_schedule_free(&s);
}

/* --- results --------------------------------------------------------------------------- */

static const char *table_flat = "days: [100, 200, 300, 400, 500, 600]\nhour_factor: 24\nmin_sample: 20\n";

/* day - take everything for DAY (0-based), then the given outcomes. */
static uint32_t
day(sender_warmup *w, int d, uint32_t delivered, uint32_t deferred, uint32_t bounced, uint32_t complaints)
{
	int64_t t = T0 + d * DAY + 10 * HOUR, retry;
	uint32_t got;

	assert_int_equal(sender_warmup_take(w, "a", "gmail", delivered + deferred + bounced, t, &got, &retry), 0);
	for (uint32_t i = 0; i < delivered; i++)
		sender_warmup_count(w, "a", "gmail", SENDER_WARMUP_DELIVERED, t + 60000);
	for (uint32_t i = 0; i < deferred; i++)
		sender_warmup_count(w, "a", "gmail", SENDER_WARMUP_DEFERRED, t + 60000);
	for (uint32_t i = 0; i < bounced; i++)
		sender_warmup_count(w, "a", "gmail", SENDER_WARMUP_BOUNCED, t + 60000);
	for (uint32_t i = 0; i < complaints; i++)
		sender_warmup_count(w, "a", "gmail", SENDER_WARMUP_COMPLAINT, t + 2 * HOUR);
	return got;
}

static uint32_t
cap_on(sender_warmup *w, int d)
{
	uint32_t allowed;
	int64_t retry;

	assert_int_equal(sender_warmup_budget(w, "a", "gmail", T0 + d * DAY, &allowed, &retry), 0);
	return allowed;
}

static struct sender_warmup_status
status_of(sender_warmup *w, int64_t now)
{
	struct sender_warmup_status *st, r;
	size_t n;

	assert_int_equal(sender_warmup_status(w, now, &st, &n), 0);
	assert_int_equal(n, 1);
	r = *st;
	free(st);
	return r;
}

static void
test_hold_on_bounces(void **state)
{
	struct fixture *f = *state;
	struct sender_warmup_status st;

	open_w(f, table_flat, false);
	sender_warmup_set_address(f->w, "a", true);
	assert_int_equal(day(f->w, 0, 100, 0, 0, 0), 100);
	assert_int_equal(cap_on(f->w, 1), 200);
	/* Day 2: 5% bounced: day 3 holds at 200. */
	assert_int_equal(day(f->w, 1, 190, 0, 10, 0), 200);
	assert_int_equal(cap_on(f->w, 2), 200);
	st = status_of(f->w, T0 + 2 * DAY);
	assert_int_equal(st.hold, SENDER_WARMUP_HOLD_BOUNCES);
	assert_int_equal(st.step, 2);
	assert_int_equal(st.day, 3);
	assert_string_equal(st.why, "bounce rate 5.0% >= 3.0% (10 of 200)");
	assert_true(st.bounce_rate == 0.05);
	/* Day 3 clean: the step's rate is 10 of 400, 2.5%: day 4 advances. */
	assert_int_equal(day(f->w, 2, 200, 0, 0, 0), 200);
	assert_int_equal(cap_on(f->w, 3), 300);
	st = status_of(f->w, T0 + 3 * DAY);
	assert_int_equal(st.hold, SENDER_WARMUP_HOLD_NONE);
	assert_int_equal(st.bounced, 0);        /* a new step, new counts */
	/* Exactly at the threshold holds too ("stays under 3%"). */
	assert_int_equal(day(f->w, 3, 291, 0, 9, 0), 300);
	assert_int_equal(cap_on(f->w, 4), 300);
	/* Idle days neither advance nor hold; a restart changes nothing. */
	sender_warmup_close(&f->w);
	open_w(f, table_flat, false);
	sender_warmup_set_address(f->w, "a", true);
	assert_int_equal(cap_on(f->w, 9), 300);
	st = status_of(f->w, T0 + 9 * DAY);
	assert_int_equal(st.hold, SENDER_WARMUP_HOLD_BOUNCES);
	assert_int_equal(st.day, 10);
	assert_int_equal(st.step, 3);
}

static void
test_hold_on_complaints_acceptance_volume(void **state)
{
	struct fixture *f = *state;
	struct sender_warmup_status st;

	open_w(f, table_flat, false);
	sender_warmup_set_address(f->w, "a", true);
	/* One complaint in 100 delivered: 1% >= 0.1%. */
	day(f->w, 0, 100, 0, 0, 1);
	assert_int_equal(cap_on(f->w, 1), 100);
	st = status_of(f->w, T0 + DAY);
	assert_int_equal(st.hold, SENDER_WARMUP_HOLD_COMPLAINTS);
	assert_string_equal(st.why, "complaint rate 1.00% >= 0.10% (1 of 100 delivered)");
	assert_string_equal(sender_warmup_hold_name(st.hold), "complaints");
	sender_warmup_close(&f->w);

	/* Too many deferrals: 80 delivered, 20 deferred, acceptance 80%. */
	char p[128];
	snprintf(p, sizeof(p), "%s/data.mdb", f->dir);
	unlink(p);
	open_w(f, table_flat, false);
	sender_warmup_set_address(f->w, "a", true);
	day(f->w, 0, 80, 20, 0, 0);
	assert_int_equal(cap_on(f->w, 1), 100);
	assert_int_equal(status_of(f->w, T0 + DAY).hold, SENDER_WARMUP_HOLD_ACCEPTANCE);
	/* Low volume: 40 of a cap of 100 (advance_fill 50%). */
	day(f->w, 1, 40, 0, 0, 0);              /* acceptance now 120 of 140: still low */
	day(f->w, 2, 40, 0, 0, 0);              /* 160 of 180: 88.9%: still low */
	day(f->w, 3, 40, 0, 0, 0);              /* 200 of 220: 90.9%: fine, but volume */
	assert_int_equal(cap_on(f->w, 4), 100);
	st = status_of(f->w, T0 + 4 * DAY);
	assert_int_equal(st.hold, SENDER_WARMUP_HOLD_VOLUME);
	assert_string_equal(st.why, "sent 40 on its last day, under 50% of its cap 100");
	day(f->w, 4, 50, 0, 0, 0);
	assert_int_equal(cap_on(f->w, 5), 200);
	/* Below min_sample nothing is judged but volume: 10 sent of a cap of
	 * 10, one bounced. */
	sender_warmup_close(&f->w);
	unlink(p);
	open_w(f, "days: [10, 20]\nmin_sample: 20\nhour_factor: 24\n", false);
	sender_warmup_set_address(f->w, "a", true);
	day(f->w, 0, 9, 0, 1, 0);
	assert_int_equal(cap_on(f->w, 1), 20);
}

static void
test_step_back_on_throttling(void **state)
{
	struct fixture *f = *state;
	struct sender_warmup_status st;
	int64_t t;

	open_w(f, table_flat, false);
	sender_warmup_set_address(f->w, "a", true);
	for (int d = 0; d < 3; d++)
		day(f->w, d, 100 * (d + 1), 0, 0, 0);
	assert_int_equal(cap_on(f->w, 3), 400);
	/* Day 4: throttling. Replies within 10 minutes of an episode's first
	 * are that episode: ten at once, then two more episodes. */
	t = T0 + 3 * DAY + 9 * HOUR;
	uint32_t got;
	int64_t retry;
	assert_int_equal(sender_warmup_take(f->w, "a", "gmail", 100, t, &got, &retry), 0);
	for (int i = 0; i < 10; i++)
		sender_warmup_count(f->w, "a", "gmail", SENDER_WARMUP_THROTTLED, t + i * 1000);
	sender_warmup_count(f->w, "a", "gmail", SENDER_WARMUP_THROTTLED, t + 9 * 60000);
	assert_int_equal(status_of(f->w, t + 9 * 60000).episodes, 1);
	sender_warmup_count(f->w, "a", "gmail", SENDER_WARMUP_THROTTLED, t + 10 * 60000);
	st = status_of(f->w, t + 10 * 60000);
	assert_int_equal(st.episodes, 2);
	assert_int_equal(st.throttled, 12);
	assert_int_equal(st.step, 4);
	/* The third episode: one step back at once, its cap applies now (100
	 * already sent today of 300). */
	sender_warmup_count(f->w, "a", "gmail", SENDER_WARMUP_THROTTLED, t + HOUR);
	st = status_of(f->w, t + HOUR);
	assert_int_equal(st.step, 3);
	assert_int_equal(st.day_cap, 300);
	assert_int_equal(st.remaining, 200);
	assert_int_equal(st.hold, SENDER_WARMUP_HOLD_STEPPED_BACK);
	assert_string_equal(st.why, "stepped back from step 4: 3 throttling episodes");
	assert_int_equal(st.episodes, 0);
	/* The rest of the day, healthy; the next day still holds at step 3 ... */
	assert_int_equal(sender_warmup_take(f->w, "a", "gmail", 1000, t + 2 * HOUR, &got, &retry), 0);
	assert_int_equal(got, 200);
	for (uint32_t i = 0; i < got; i++)
		sender_warmup_count(f->w, "a", "gmail", SENDER_WARMUP_DELIVERED, t + 2 * HOUR);
	assert_int_equal(cap_on(f->w, 4), 300);
	assert_int_equal(status_of(f->w, T0 + 4 * DAY).hold, SENDER_WARMUP_HOLD_STEPPED_BACK);
	/* ... and the one after advances again. */
	day(f->w, 4, 300, 0, 0, 0);
	assert_int_equal(cap_on(f->w, 5), 400);
	assert_int_equal(status_of(f->w, T0 + 5 * DAY).hold, SENDER_WARMUP_HOLD_NONE);
}

/* A warm pair (past its table) that is throttled again is capped again. */
static void
test_step_back_from_warm(void **state)
{
	struct fixture *f = *state;
	uint32_t got;
	int64_t retry, t;

	open_w(f, "days: [10, 20]\nstep_back_after: 2\nthrottle_episode: 1m\nhour_factor: 24\n", false);
	sender_warmup_set_address(f->w, "a", true);
	day(f->w, 0, 10, 0, 0, 0);
	day(f->w, 1, 20, 0, 0, 0);
	assert_int_equal(cap_on(f->w, 2), SENDER_WARMUP_NO_CAP);
	t = T0 + 2 * DAY;
	assert_int_equal(sender_warmup_take(f->w, "a", "gmail", 50, t, &got, &retry), 0);
	assert_int_equal(got, 50);
	sender_warmup_count(f->w, "a", "gmail", SENDER_WARMUP_THROTTLED, t);
	sender_warmup_count(f->w, "a", "gmail", SENDER_WARMUP_THROTTLED, t + 60000);
	assert_int_equal(cap_on(f->w, 3), 20);
	assert_int_equal(status_of(f->w, T0 + 3 * DAY).step, 2);
}

static void
test_status_json_and_readonly(void **state)
{
	struct fixture *f = *state;
	char err[256];
	uint32_t got, allowed;
	int64_t retry;

	/* Read-only on a directory that is not there: an error, nothing made. */
	sender_warmup_schedule *s = sched_text(NULL);
	assert_int_equal(sender_warmup_open(&f->w, f->dir, &s, true, err, sizeof(err)), -1);
	assert_null(s);
	assert_null(f->w);

	open_w(f, NULL, false);
	sender_warmup_set_address(f->w, "10.0.0.7", true);
	assert_int_equal(sender_warmup_take(f->w, "10.0.0.7", "docomo", 3, T0, &got, &retry), 0);
	assert_int_equal(sender_warmup_take(f->w, "10.0.0.7", NULL, 3, T0, &got, &retry), 0);
	sender_warmup_count(f->w, "10.0.0.7", "docomo", SENDER_WARMUP_DELIVERED, T0);
	sender_warmup_count(f->w, "10.0.0.7", "docomo", SENDER_WARMUP_BOUNCED, T0);
	sender_warmup_close(&f->w);

	/* What `hikyaku warmup status` does: open read-only, register the
	 * configured addresses, read. */
	open_w(f, NULL, true);
	sender_warmup_set_address(f->w, "10.0.0.7", true);
	json_t *j = sender_warmup_status_json(f->w, T0 + HOUR);
	assert_int_equal(json_array_size(j), 2);
	json_t *d = json_array_get(j, 1), *def = json_array_get(j, 0);
	assert_string_equal(json_string_value(json_object_get(def, "provider")), "default");
	assert_string_equal(json_string_value(json_object_get(d, "provider")), "docomo");
	assert_int_equal(json_integer_value(json_object_get(d, "day_cap")), 20);
	assert_int_equal(json_integer_value(json_object_get(d, "hour_cap")), 4);
	assert_int_equal(json_integer_value(json_object_get(d, "sent_day")), 3);
	assert_int_equal(json_integer_value(json_object_get(d, "sent_hour")), 0);
	assert_int_equal(json_integer_value(json_object_get(d, "remaining")), 4);
	assert_true(json_real_value(json_object_get(d, "bounce_rate")) == 0.5);
	assert_true(json_is_null(json_object_get(def, "bounce_rate")));
	assert_string_equal(json_string_value(json_object_get(d, "hold")), "none");
	assert_true(json_is_true(json_object_get(d, "warming")));
	json_decref(j);
	/* Budget reads; take and count cannot write. */
	assert_int_equal(sender_warmup_budget(f->w, "10.0.0.7", "docomo", T0 + HOUR, &allowed, &retry), 0);
	assert_int_equal(allowed, 4);
	assert_int_equal(sender_warmup_take(f->w, "10.0.0.7", "docomo", 1, T0 + HOUR, &got, &retry), -1);
	assert_int_equal(got, 0);
	/* An address configured warm now is shown without caps. */
	sender_warmup_set_address(f->w, "10.0.0.7", false);
	j = sender_warmup_status_json(f->w, T0 + HOUR);
	assert_true(json_is_null(json_object_get(json_array_get(j, 1), "remaining")));
	assert_true(json_is_false(json_object_get(json_array_get(j, 1), "warming")));
	json_decref(j);
	assert_string_equal(sender_warmup_outcome_name(SENDER_WARMUP_THROTTLED), "throttled");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_builtin_schedule),
		cmocka_unit_test(test_schedule_errors),
		cmocka_unit_test_setup_teardown(test_hour_and_day_caps_exact, setup, teardown),
		cmocka_unit_test_setup_teardown(test_untake, setup, teardown),
		cmocka_unit_test_setup_teardown(test_warm_address_has_no_caps, setup, teardown),
		cmocka_unit_test_setup_teardown(test_30_day_run_with_restart, setup, teardown),
		cmocka_unit_test_setup_teardown(test_30_day_builtin, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hold_on_bounces, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hold_on_complaints_acceptance_volume, setup, teardown),
		cmocka_unit_test_setup_teardown(test_step_back_on_throttling, setup, teardown),
		cmocka_unit_test_setup_teardown(test_step_back_from_warm, setup, teardown),
		cmocka_unit_test_setup_teardown(test_status_json_and_readonly, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
