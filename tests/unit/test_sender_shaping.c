/*
 * test_sender_shaping - shaping rules (the built-in profiles, matching and
 * its precedence, operators' files on top, errors naming file, line and
 * key) and the state per (source address, rule): connection limits, exact
 * per-minute and per-hour rates under load on an injected clock, messages
 * per connection, suspension and slow-down on throttling, recovery, state
 * kept in LMDB across a restart, status. Nothing sleeps.
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

#include "sender_class.h"
#include "sender_shaping.h"
#include "sender_warmup.h"

static void test_prune(void **state);

extern const unsigned char sender_shaping_builtin[];
extern const size_t sender_shaping_builtin_len;

static const int64_t T0 = 1767225600000LL;     /* 2026-01-01T00:00:00Z */

static sender_shaping *
load(const char *text)
{
	char err[512] = "";
	sender_shaping *sh = sender_shaping_new();

	if (sender_shaping_add_builtin(sh, err, sizeof(err)) != 0)
		fail_msg("builtin: %s", err);
	if (text && sender_shaping_add_text(sh, "ops.yaml", text, err, sizeof(err)) != 0)
		fail_msg("ops.yaml: %s", err);
	return sh;
}

/* only - a shaping object with nothing but TEXT (no built-in profiles). */
static sender_shaping *
only(const char *text)
{
	char err[512] = "";
	sender_shaping *sh = sender_shaping_new();

	if (sender_shaping_add_text(sh, "t.yaml", text, err, sizeof(err)) != 0)
		fail_msg("t.yaml: %s", err);
	return sh;
}

static const char *
match(const sender_shaping *sh, const char *domain, const char *mx)
{
	return sender_shaping_match(sh, domain, mx)->name;
}

/* --- rules ---------------------------------------------------------------- */

static void
test_builtin_file_is_embedded(void **state)
{
	FILE *f = fopen("deploy/shaping.yaml", "rb");
	char *buf = malloc(sender_shaping_builtin_len + 2);
	size_t n;
	char err[256];
	sender_shaping *sh = sender_shaping_new();
	(void)state;

	assert_non_null(f);
	n = fread(buf, 1, sender_shaping_builtin_len + 1, f);
	fclose(f);
	assert_int_equal(n, sender_shaping_builtin_len);
	assert_memory_equal(buf, sender_shaping_builtin, n);
	free(buf);
	/* And the file itself loads the same way. */
	assert_int_equal(sender_shaping_add_file(sh, "deploy/shaping.yaml", err, sizeof(err)), 0);
	assert_string_equal(match(sh, "gmail.com", NULL), "gmail");
	sender_shaping_free(&sh);
	assert_null(sh);
}

static void
test_builtin_profiles(void **state)
{
	sender_shaping *sh = load(NULL);
	static const char *const names[] = { "default", "gmail", "yahoo", "outlook", "icloud", "docomo", "au",
		"softbank" };
	const struct sender_shaping_rule *const *rules;
	const struct sender_shaping_rule *def, *g, *d;
	size_t n;
	(void)state;

	rules = sender_shaping_rules(sh, &n);
	assert_int_equal(n, 8);
	for (size_t i = 0; i < n; i++)
		assert_string_equal(rules[i]->name, names[i]);
	def = sender_shaping_rule(sh, "default");
	g = sender_shaping_rule(sh, "gmail");
	d = sender_shaping_rule(sh, "docomo");
	assert_int_equal(g->max_connections, 10);
	assert_int_equal(g->max_per_minute, 300);
	assert_true(g->tls_required);
	assert_false(d->tls_required);
	/* Keys a rule does not give come from default. */
	assert_int_equal(g->backoff_ms, def->backoff_ms);
	assert_int_equal(g->recovery_after, def->recovery_after);
	assert_int_equal(d->backoff_ms, 10 * 60000);
	assert_int_equal(d->backoff_max_ms, 4 * 3600000);
	/* The default rule limits nothing itself: each domain of no named
	 * rule has only the sender's per-domain connection limit. */
	assert_true(d->max_per_minute > 0);
	assert_int_equal(def->max_per_minute, 0);
	assert_int_equal(def->max_connections, 0);
	assert_null(sender_shaping_rule(sh, "nosuch"));
	sender_shaping_free(&sh);
}

static void
test_match(void **state)
{
	sender_shaping *sh = load(NULL);
	(void)state;

	/* Domains. */
	assert_string_equal(match(sh, "gmail.com", NULL), "gmail");
	assert_string_equal(match(sh, "GoogleMail.COM.", NULL), "gmail");
	assert_string_equal(match(sh, "aol.com", NULL), "yahoo");
	assert_string_equal(match(sh, "hotmail.co.jp", NULL), "outlook");
	assert_string_equal(match(sh, "me.com", NULL), "icloud");
	assert_string_equal(match(sh, "docomo.ne.jp", NULL), "docomo");
	assert_string_equal(match(sh, "ezweb.ne.jp", NULL), "au");
	assert_string_equal(match(sh, "au.com", NULL), "au");
	assert_string_equal(match(sh, "i.softbank.jp", NULL), "softbank");
	assert_string_equal(match(sh, "t.vodafone.ne.jp", NULL), "softbank");
	assert_string_equal(match(sh, "vodafone.ne.jp", NULL), "default");     /* ".x" is below x only */
	/* An exact domain pattern does not cover subdomains. */
	assert_string_equal(match(sh, "mail.gmail.com", NULL), "default");
	assert_string_equal(match(sh, "example.com", NULL), "default");
	assert_string_equal(match(sh, NULL, NULL), "default");
	/* MX hosts: the name or below it; a label boundary is needed. */
	assert_string_equal(match(sh, "example.com", "aspmx.l.google.com"), "gmail");
	assert_string_equal(match(sh, "example.com", "ALT1.ASPMX.L.GOOGLE.COM."), "gmail");
	assert_string_equal(match(sh, "example.com", "google.com"), "gmail");
	assert_string_equal(match(sh, "example.com", "notgoogle.com"), "default");
	assert_string_equal(match(sh, "example.com", "mta5.am0.yahoodns.net"), "yahoo");
	assert_string_equal(match(sh, "contoso.com", "contoso-com.mail.protection.outlook.com"), "outlook");
	assert_string_equal(match(sh, "example.org", "mx01.mail.icloud.com"), "icloud");
	assert_string_equal(match(sh, "example.org", ""), "default");
	/* A domain match beats an MX match. */
	assert_string_equal(match(sh, "yahoo.com", "aspmx.l.google.com"), "yahoo");
	sender_shaping_free(&sh);
}

/* The rule names are sender_class's provider names: a reply's provider
 * and the rule of its destination agree. */
static void
test_names_align_with_sender_class(void **state)
{
	sender_shaping *sh = load(NULL);
	static const char *const domains[] = { "gmail.com", "googlemail.com", "yahoo.com", "ymail.com",
		"rocketmail.com", "aol.com", "outlook.com", "hotmail.com", "live.com", "msn.com", "icloud.com",
		"me.com", "mac.com", "docomo.ne.jp", "ezweb.ne.jp", "au.com", "softbank.ne.jp", "i.softbank.jp" };
	static const char *const mx[] = { "aspmx.l.google.com", "mta6.am0.yahoodns.net",
		"x.mail.protection.outlook.com", "mx02.mail.icloud.com" };
	(void)state;

	for (size_t i = 0; i < sizeof(domains) / sizeof(domains[0]); i++)
		assert_string_equal(match(sh, domains[i], NULL), sender_class_provider(domains[i], NULL));
	for (size_t i = 0; i < sizeof(mx) / sizeof(mx[0]); i++)
		assert_string_equal(match(sh, "example.net", mx[i]), sender_class_provider("example.net", mx[i]));
	sender_shaping_free(&sh);
}

static void
test_specific_suffix_wins(void **state)
{
	sender_shaping *sh = only(
	    "rules:\n"
	    "  corp: {domains: [.example.com], mx: [mx.example.net]}\n"
	    "  sales: {domains: ['*.sales.example.com'], mx: [.a.mx.example.net]}\n"
	    "  top: {domains: [example.com]}\n");
	(void)state;

	assert_string_equal(match(sh, "example.com", NULL), "top");
	assert_string_equal(match(sh, "x.example.com", NULL), "corp");
	assert_string_equal(match(sh, "sales.example.com", NULL), "corp");
	assert_string_equal(match(sh, "eu.sales.example.com", NULL), "sales");
	assert_string_equal(match(sh, "other.test", "mx.example.net"), "corp");
	assert_string_equal(match(sh, "other.test", "b.mx.example.net"), "corp");
	assert_string_equal(match(sh, "other.test", "a.mx.example.net"), "corp");  /* ".a..." is below only */
	assert_string_equal(match(sh, "other.test", "z.a.mx.example.net"), "sales");
	sender_shaping_free(&sh);
}

static void
test_operator_file_on_top(void **state)
{
	const struct sender_shaping_rule *g, *def, *c;
	sender_shaping *sh = load(
	    "rules:\n"
	    "  default: {max_per_minute: 60, backoff: 1m}\n"
	    "  gmail: {max_per_minute: 100}\n"
	    "  icloud: {enabled: false}\n"
	    "  partner:\n"
	    "    domains: [partner.example]\n"
	    "    max_connections: 1\n");
	(void)state;

	g = sender_shaping_rule(sh, "gmail");
	def = sender_shaping_rule(sh, "default");
	c = sender_shaping_rule(sh, "partner");
	assert_int_equal(g->max_per_minute, 100);
	assert_int_equal(g->max_connections, 10);       /* kept from the built-in rule */
	assert_int_equal(g->backoff_ms, 60000);         /* from the operator's default */
	assert_int_equal(def->max_per_minute, 60);
	assert_int_equal(def->max_connections, 0);     /* the built-in default's */
	assert_non_null(c);
	assert_int_equal(c->max_connections, 1);
	assert_int_equal(c->max_per_minute, 60);
	assert_null(sender_shaping_rule(sh, "icloud"));
	assert_string_equal(match(sh, "icloud.com", NULL), "default");
	assert_string_equal(match(sh, "partner.example", NULL), "partner");
	/* gmail's match lists are kept when the operator does not give them. */
	assert_string_equal(match(sh, "gmail.com", NULL), "gmail");
	sender_shaping_free(&sh);

	/* replace_builtin: nothing of the built-in file is left. */
	sh = load("replace_builtin: true\n"
	    "rules:\n"
	    "  gmail: {domains: [gmail.com], max_per_minute: 7}\n");
	g = sender_shaping_rule(sh, "gmail");
	assert_int_equal(g->max_per_minute, 7);
	assert_int_equal(g->max_connections, 0);        /* fallback default: no limit */
	assert_false(g->tls_required);
	assert_null(sender_shaping_rule(sh, "yahoo"));
	assert_string_equal(match(sh, "example.com", "aspmx.l.google.com"), "default");
	sender_shaping_free(&sh);
}

static void
expect_error(const char *text, const char *want)
{
	char err[512] = "";
	sender_shaping *sh = sender_shaping_new();

	assert_int_equal(sender_shaping_add_builtin(sh, err, sizeof(err)), 0);
	assert_int_equal(sender_shaping_add_text(sh, "ops.yaml", text, err, sizeof(err)), -1);
	if (strstr(err, want) == NULL)
		fail_msg("error '%s' does not contain '%s'", err, want);
	/* A bad file changes nothing. */
	assert_string_equal(match(sh, "gmail.com", NULL), "gmail");
	assert_int_equal(sender_shaping_rule(sh, "gmail")->max_per_minute, 300);
	sender_shaping_free(&sh);
}

static void
test_errors(void **state)
{
	(void)state;

	expect_error("rules:\n  gmail:\n    max_per_minut: 5\n", "ops.yaml:3: key 'max_per_minut': unknown key in rule 'gmail'");
	expect_error("rules:\n  gmail: {max_per_minute: 5, backoff: 5x}\n", "ops.yaml:2: key 'backoff': unknown duration unit");
	expect_error("rules:\n  gmail: {max_per_minute: -1}\n", "ops.yaml:2: key 'max_per_minute'");
	expect_error("rules:\n  gmail: {max_per_minute: 5}\n  mine:\n    domains: [x.test, gmail.com]\n",
	    "ops.yaml:4: key 'domains': 'gmail.com' is in rule 'mine' and in rule 'gmail'");
	expect_error("rules:\n  mine: {mx: [.google.com]}\n", "key 'mx': '.google.com' is in rule 'mine' and in rule 'gmail'");
	expect_error("rules:\n  mine: {domains: ['bad domain']}\n", "ops.yaml:2: key 'domains': 'bad domain' is not a domain name");
	expect_error("rules:\n  default: {domains: [x.test]}\n", "'default' takes what no rule matches");
	expect_error("rules:\n  default: {enabled: false}\n", "'default' cannot be disabled");
	expect_error("rules:\n  Gmail!: {}\n", "key 'Gmail!': a rule name is");
	expect_error("rules:\n  gmail: {}\n  gmail: {}\n", "ops.yaml:3: key 'gmail': rule given twice");
	expect_error("rules:\n  gmail: {backoff: 2h, backoff_max: 1h}\n", "backoff_max (3600000 ms) is below backoff");
	expect_error("rules:\n  gmail: {throttle_factor: 1.5}\n", "ops.yaml:2: key 'throttle_factor': '1.5' is out of range");
	expect_error("rules:\n  gmail: {tls_required: maybe}\n", "key 'tls_required': expected true or false");
	expect_error("rulez: {}\n", "ops.yaml:1: key 'rulez': unknown key");
	expect_error("rules: [a, b]\n", "key 'rules': expected a mapping");
	expect_error("rules:\n  gmail: {max_per_minute: 5\n", "ops.yaml:3: YAML syntax error");
	expect_error("rules:\n  gmail: {max_per_minute: 60001}\n", "key 'max_per_minute': expected an integer up to 60000");

	/* A missing file. */
	char err[256];
	sender_shaping *sh = sender_shaping_load("/nonexistent/shaping.yaml", err, sizeof(err));
	assert_null(sh);
	assert_non_null(strstr(err, "/nonexistent/shaping.yaml: cannot open"));
}

/* --- limits ------------------------------------------------------------------ */

static void
test_connections(void **state)
{
	sender_shaping *sh = only("rules:\n  r: {domains: [r.test], max_connections: 3}\n");
	const struct sender_shaping_rule *r = sender_shaping_rule(sh, "r"), *def = sender_shaping_rule(sh, "default");
	int64_t retry;
	(void)state;

	for (int i = 0; i < 3; i++)
		assert_int_equal(sender_shaping_acquire(sh, r, "10.0.0.1", T0, &retry), SENDER_SHAPING_OK);
	assert_int_equal(sender_shaping_acquire(sh, r, "10.0.0.1", T0, &retry), SENDER_SHAPING_CONNECTIONS);
	assert_int_equal(retry, INT64_MAX);
	/* Another address, another rule: their own counts. */
	assert_int_equal(sender_shaping_acquire(sh, r, "10.0.0.2", T0, &retry), SENDER_SHAPING_OK);
	assert_int_equal(sender_shaping_acquire(sh, def, "10.0.0.1", T0, &retry), SENDER_SHAPING_OK);
	sender_shaping_release(sh, r, "10.0.0.1");
	assert_int_equal(sender_shaping_acquire(sh, r, "10.0.0.1", T0 + 1, &retry), SENDER_SHAPING_OK);
	assert_int_equal(sender_shaping_acquire(sh, r, "10.0.0.1", T0 + 1, &retry), SENDER_SHAPING_CONNECTIONS);
	/* Unbalanced releases do not wrap the count. */
	for (int i = 0; i < 10; i++)
		sender_shaping_release(sh, r, "10.0.0.2");
	sender_shaping_release(sh, r, "10.9.9.9");
	for (int i = 0; i < 3; i++)
		assert_int_equal(sender_shaping_acquire(sh, r, "10.0.0.2", T0 + 2, &retry), SENDER_SHAPING_OK);
	assert_int_equal(sender_shaping_acquire(sh, r, "10.0.0.2", T0 + 2, &retry), SENDER_SHAPING_CONNECTIONS);
	sender_shaping_free(&sh);
}

static void
test_messages_per_connection(void **state)
{
	sender_shaping *sh = only("rules:\n  r: {domains: [r.test], max_messages_per_connection: 3}\n");
	const struct sender_shaping_rule *r = sender_shaping_rule(sh, "r");
	int64_t retry;
	(void)state;

	assert_int_equal(sender_shaping_acquire(sh, r, "a", T0, &retry), SENDER_SHAPING_OK);
	assert_int_equal(sender_shaping_acquire_msg(sh, r, "a", 1, T0, &retry), SENDER_SHAPING_OK);
	assert_int_equal(sender_shaping_acquire_msg(sh, r, "a", 2, T0, &retry), SENDER_SHAPING_OK);
	assert_int_equal(sender_shaping_acquire_msg(sh, r, "a", 3, T0, &retry), SENDER_SHAPING_CONNECTION_FULL);
	sender_shaping_free(&sh);
}

/*
 * A load simulation: W workers, each holding one connection, ask for the
 * next message as soon as they may (at *retry_at, plus a lateness of
 * 0..LATE ms), for DURATION ms. Every grant time is recorded.
 */
struct sim {
	int64_t *t;
	size_t n, cap;
};

static void
simulate(sender_shaping *sh, const struct sender_shaping_rule *r, const char *addr, int workers,
    int64_t duration, int late, struct sim *out)
{
	int64_t next[64], retry;
	uint32_t sent[64] = { 0 };
	bool open[64] = { false };
	unsigned seed = 7;

	assert_true(workers <= 64);
	for (int w = 0; w < workers; w++)
		next[w] = T0;
	for (;;) {
		int w = 0;
		for (int i = 1; i < workers; i++)
			if (next[i] < next[w])
				w = i;
		int64_t now = next[w];
		if (now >= T0 + duration)
			break;
		enum sender_shaping_verdict v = open[w] ? sender_shaping_acquire_msg(sh, r, addr, sent[w], now, &retry) :
		    sender_shaping_acquire(sh, r, addr, now, &retry);
		if (v == SENDER_SHAPING_OK) {
			if (!open[w])
				sent[w] = 0;
			open[w] = true;
			sent[w]++;
			if (out->n == out->cap) {
				out->cap = out->cap ? out->cap * 2 : 1024;
				out->t = realloc(out->t, out->cap * sizeof(*out->t));
			}
			out->t[out->n++] = now;
			next[w] = now + 1;              /* the transaction itself takes a moment */
		} else if (open[w] && (v == SENDER_SHAPING_CONNECTION_FULL || v == SENDER_SHAPING_CONNECTIONS)) {
			sender_shaping_release(sh, r, addr);
			open[w] = false;
			next[w] = now + 1;
		} else if (v == SENDER_SHAPING_CONNECTIONS) {
			next[w] = now + 1000;           /* wait for a release */
		} else {
			assert_true(retry > now);
			seed = seed * 1103515245 + 12345;
			next[w] = retry + (late ? (int64_t)((seed >> 16) % (unsigned)(late + 1)) : 0);
		}
	}
	for (int w = 0; w < workers; w++)
		if (open[w])
			sender_shaping_release(sh, r, addr);
}

/* max_in_window - the most grants in any window [t, t + W). */
static size_t
max_in_window(const struct sim *s, int64_t w)
{
	size_t best = 0, j = 0;

	for (size_t i = 0; i < s->n; i++) {
		while (s->t[i] - s->t[j] >= w)
			j++;
		if (i - j + 1 > best)
			best = i - j + 1;
	}
	return best;
}

static void
test_per_minute_exact_under_load(void **state)
{
	static const struct { uint32_t limit; int workers, late; } cases[] = {
		{ 120, 10, 0 }, { 120, 10, 40 }, { 300, 20, 15 }, { 30, 2, 500 }, { 1000, 50, 3 },
	};
	(void)state;

	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		char text[256];
		struct sim s = { 0 };
		snprintf(text, sizeof(text), "rules:\n  r: {domains: [r.test], max_per_minute: %u, "
		    "max_messages_per_connection: 10}\n", cases[c].limit);
		sender_shaping *sh = only(text);
		const struct sender_shaping_rule *r = sender_shaping_rule(sh, "r");
		const int minutes = 30;

		simulate(sh, r, "10.0.0.1", cases[c].workers, minutes * 60000LL, cases[c].late, &s);
		/* Never more than the limit in any 60 s ... */
		assert_true(max_in_window(&s, 60000) <= cases[c].limit);
		/* ... and within 5% of it in every calendar minute. */
		size_t i = 0;
		for (int m = 0; m < minutes; m++) {
			size_t n = 0;
			for (; i < s.n && s.t[i] < T0 + (m + 1) * 60000LL; i++)
				n++;
			if (n > cases[c].limit || n < cases[c].limit * 0.95)
				fail_msg("limit %u, workers %d, late %d: minute %d had %zu", cases[c].limit,
				    cases[c].workers, cases[c].late, m, n);
		}
		/* Evenly paced: no more than a twentieth of the minute's allowance
		 * (at least 2) within any 3 s. */
		size_t burst = cases[c].limit / 20 < 2 ? 2 : cases[c].limit / 20;
		assert_true(max_in_window(&s, 3000) <= burst + 1);
		free(s.t);
		sender_shaping_free(&sh);
	}
}

static void
test_per_hour_exact(void **state)
{
	sender_shaping *sh = only("rules:\n  r: {domains: [r.test], max_per_minute: 100, max_per_hour: 1000}\n");
	const struct sender_shaping_rule *r = sender_shaping_rule(sh, "r");
	struct sim s = { 0 };
	int64_t retry;
	(void)state;

	simulate(sh, r, "a", 5, 3 * 3600000LL, 0, &s);
	/* 100 a minute for 10 minutes, then nothing until the first of those
	 * minutes leaves the hour: never more than 1000 in 60 whole minutes. */
	for (int64_t m = -59; m < 180; m++) {
		size_t n = 0;
		for (size_t i = 0; i < s.n; i++)
			if (s.t[i] >= T0 + m * 60000 && s.t[i] < T0 + (m + 60) * 60000)
				n++;
		assert_true(n <= 1000);
	}
	assert_int_equal(s.n, 3000);
	free(s.t);
	sender_shaping_free(&sh);

	/* Refused until the oldest minute leaves the window. */

	sh = only("rules:\n  r: {domains: [r.test], max_per_hour: 3}\n");
	r = sender_shaping_rule(sh, "r");
	assert_int_equal(sender_shaping_acquire(sh, r, "a", T0 + 5000, &retry), SENDER_SHAPING_OK);
	assert_int_equal(sender_shaping_acquire_msg(sh, r, "a", 1, T0 + 61000, &retry), SENDER_SHAPING_OK);
	assert_int_equal(sender_shaping_acquire_msg(sh, r, "a", 2, T0 + 62000, &retry), SENDER_SHAPING_OK);
	assert_int_equal(sender_shaping_acquire_msg(sh, r, "a", 3, T0 + 63000, &retry), SENDER_SHAPING_RATE);
	assert_int_equal(retry, T0 + 60 * 60000LL);
	assert_int_equal(sender_shaping_acquire_msg(sh, r, "a", 3, T0 + 60 * 60000LL - 1, &retry), SENDER_SHAPING_RATE);
	assert_int_equal(sender_shaping_acquire_msg(sh, r, "a", 3, T0 + 60 * 60000LL, &retry), SENDER_SHAPING_OK);
	sender_shaping_free(&sh);
}

/* --- adaptive control ---------------------------------------------------- */

static const char *adaptive_rules =
    "rules:\n"
    "  r:\n"
    "    domains: [r.test]\n"
    "    max_connections: 4\n"
    "    max_per_minute: 60\n"
    "    backoff: 5m\n"
    "    backoff_max: 20m\n"
    "    throttle_factor: 0.5\n"
    "    min_factor: 0.2\n"
    "    recovery_step: 0.25\n"
    "    recovery_after: 10\n"
    "    recovery_interval: 10m\n";

static void
test_throttle_suspends_and_slows(void **state)
{
	sender_shaping *sh = only(adaptive_rules);
	const struct sender_shaping_rule *r = sender_shaping_rule(sh, "r");
	struct sender_shaping_status *st;
	int64_t retry, t = T0;
	size_t n;
	(void)state;

	/* 60 a minute: paced one a second (two at once at most). */
	assert_int_equal(sender_shaping_acquire(sh, r, "a", t, &retry), SENDER_SHAPING_OK);
	assert_int_equal(sender_shaping_acquire(sh, r, "a", t, &retry), SENDER_SHAPING_OK);
	assert_int_equal(sender_shaping_acquire(sh, r, "a", t, &retry), SENDER_SHAPING_RATE);
	assert_int_equal(retry, t + 1000);
	assert_int_equal(sender_shaping_acquire(sh, r, "a", t + 1000, &retry), SENDER_SHAPING_OK);
	assert_int_equal(sender_shaping_acquire(sh, r, "a", t + 2000, &retry), SENDER_SHAPING_OK);
	/* Every open session hears the same 421: one suspension, one cut. */
	for (int i = 0; i < 4; i++)
		sender_shaping_result(sh, r, "a", true, "421 4.7.28 unusual rate", t + i * 1000);
	assert_true(sender_shaping_factor(sh, r, "a") == 0.5);
	assert_int_equal(sender_shaping_acquire(sh, r, "a", t + 1000, &retry), SENDER_SHAPING_SUSPENDED);
	assert_int_equal(retry, t + 5 * 60000);
	assert_int_equal(sender_shaping_acquire_msg(sh, r, "a", 1, t + 1000, &retry), SENDER_SHAPING_SUSPENDED);
	/* Another address is not touched. */
	assert_int_equal(sender_shaping_acquire(sh, r, "b", t + 1000, &retry), SENDER_SHAPING_OK);
	assert_true(sender_shaping_factor(sh, r, "b") == 1.0);

	sender_shaping_status(sh, t + 2000, &st, &n);
	assert_int_equal(n, 2);
	assert_string_equal(st[0].addr, "a");
	assert_int_equal(st[0].suspended_until, t + 5 * 60000);
	assert_string_equal(st[0].why, "421 4.7.28 unusual rate");
	assert_int_equal(st[0].max_connections, 2);
	assert_int_equal(st[0].max_per_minute, 30);
	assert_int_equal(st[0].throttles_total, 4);
	assert_int_equal(st[1].suspended_until, 0);
	free(st);

	/* After the suspension: half the connections (the open ones are told
	 * to close) and half the rate. */
	t += 5 * 60000;
	assert_int_equal(sender_shaping_acquire_msg(sh, r, "a", 1, t, &retry), SENDER_SHAPING_CONNECTIONS);
	for (int i = 0; i < 4; i++)
		sender_shaping_release(sh, r, "a");
	assert_int_equal(sender_shaping_acquire(sh, r, "a", t, &retry), SENDER_SHAPING_OK);
	assert_int_equal(sender_shaping_acquire(sh, r, "a", t, &retry), SENDER_SHAPING_OK);
	assert_int_equal(sender_shaping_acquire(sh, r, "a", t, &retry), SENDER_SHAPING_CONNECTIONS);
	sender_shaping_release(sh, r, "a");
	sender_shaping_release(sh, r, "a");

	/* A second throttling: twice the suspension, half again. */
	t += 60000;
	sender_shaping_result(sh, r, "a", true, "421 again", t);
	assert_int_equal(sender_shaping_acquire(sh, r, "a", t, &retry), SENDER_SHAPING_SUSPENDED);
	assert_int_equal(retry, t + 10 * 60000);
	assert_true(sender_shaping_factor(sh, r, "a") == 0.25);
	/* Third and fourth: the factor stops at min_factor, the backoff at backoff_max. */
	t += 10 * 60000;
	sender_shaping_result(sh, r, "a", true, "421", t);
	assert_true(sender_shaping_factor(sh, r, "a") == 0.2);
	sender_shaping_acquire(sh, r, "a", t, &retry);
	assert_int_equal(retry, t + 20 * 60000);
	t += 20 * 60000;
	sender_shaping_result(sh, r, "a", true, "421", t);
	sender_shaping_acquire(sh, r, "a", t, &retry);
	assert_int_equal(retry, t + 20 * 60000);
	assert_true(sender_shaping_factor(sh, r, "a") == 0.2);
	sender_shaping_free(&sh);
}

static void
test_recovery_step_by_step(void **state)
{
	sender_shaping *sh = only(adaptive_rules);
	const struct sender_shaping_rule *r = sender_shaping_rule(sh, "r");
	int64_t t = T0, retry;
	(void)state;

	sender_shaping_result(sh, r, "a", true, "421", t);           /* factor 0.5, backoff now 10m */
	t += 5 * 60000;
	/* Enough successes but too soon after the change: nothing yet. */
	for (int i = 0; i < 20; i++)
		sender_shaping_result(sh, r, "a", false, NULL, t);
	assert_true(sender_shaping_factor(sh, r, "a") == 0.5);
	/* 10 minutes after the change, 10 successes: one step. */
	t = T0 + 10 * 60000;
	sender_shaping_result(sh, r, "a", false, NULL, t);
	assert_true(sender_shaping_factor(sh, r, "a") == 0.75);
	/* The next step needs 10 more successes and 10 more minutes. */
	for (int i = 0; i < 9; i++)
		sender_shaping_result(sh, r, "a", false, NULL, t + 11 * 60000);
	assert_true(sender_shaping_factor(sh, r, "a") == 0.75);
	sender_shaping_result(sh, r, "a", false, NULL, t + 11 * 60000);
	assert_true(sender_shaping_factor(sh, r, "a") == 1.0);
	/* Recovered: the backoff is back at its start (10m halved per step,
	 * floored at 5m). */
	t += 30 * 60000;
	sender_shaping_result(sh, r, "a", true, "421", t);
	sender_shaping_acquire(sh, r, "a", t, &retry);
	assert_int_equal(retry, t + 5 * 60000);
	sender_shaping_free(&sh);
}

/* --- persistence ------------------------------------------------------------ */

static void
test_state_survives_restart(void **state)
{
	char dir[64] = "/tmp/hk_test_shaping_XXXXXX", err[256], p[128];
	MDB_env *env;
	sender_shaping *sh;
	const struct sender_shaping_rule *r;
	int64_t retry;
	(void)state;

	assert_non_null(mkdtemp(dir));
	assert_int_equal(mdb_env_create(&env), 0);
	mdb_env_set_maxdbs(env, 4);
	assert_int_equal(mdb_env_open(env, dir, MDB_NOTLS, 0600), 0);

	sh = only(adaptive_rules);
	assert_int_equal(sender_shaping_attach(sh, env, err, sizeof(err)), 0);
	r = sender_shaping_rule(sh, "r");
	sender_shaping_result(sh, r, "10.0.0.9", true, "421 4.7.0 [TSS04] Messages temporarily deferred", T0);
	sender_shaping_free(&sh);

	/* A new process: the suspension, the factor and the reason are back. */
	sh = only(adaptive_rules);
	assert_int_equal(sender_shaping_attach(sh, env, err, sizeof(err)), 0);
	r = sender_shaping_rule(sh, "r");
	assert_true(sender_shaping_factor(sh, r, "10.0.0.9") == 0.5);
	assert_int_equal(sender_shaping_acquire(sh, r, "10.0.0.9", T0 + 1000, &retry), SENDER_SHAPING_SUSPENDED);
	assert_int_equal(retry, T0 + 5 * 60000);
	json_t *j = sender_shaping_status_json(sh, T0 + 1000);
	assert_int_equal(json_array_size(j), 1);
	assert_string_equal(json_string_value(json_object_get(json_array_get(j, 0), "why")),
	    "421 4.7.0 [TSS04] Messages temporarily deferred");
	assert_int_equal(json_integer_value(json_object_get(json_array_get(j, 0), "suspended_until")), T0 + 5 * 60000);
	json_decref(j);
	/* The next throttling doubles from the stored backoff. */
	sender_shaping_result(sh, r, "10.0.0.9", true, "421", T0 + 5 * 60000);
	assert_int_equal(sender_shaping_acquire(sh, r, "10.0.0.9", T0 + 5 * 60000, &retry), SENDER_SHAPING_SUSPENDED);
	assert_int_equal(retry, T0 + 15 * 60000);
	sender_shaping_free(&sh);

	/* A rule that is gone: its records are ignored. */
	sh = only("rules:\n  other: {domains: [o.test]}\n");
	assert_int_equal(sender_shaping_attach(sh, env, err, sizeof(err)), 0);
	struct sender_shaping_status *st;
	size_t n;
	sender_shaping_status(sh, T0, &st, &n);
	assert_int_equal(n, 0);
	assert_null(st);
	sender_shaping_free(&sh);

	mdb_env_close(env);
	snprintf(p, sizeof(p), "%s/data.mdb", dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/lock.mdb", dir);
	unlink(p);
	rmdir(dir);
}

/* The set-up the sender is to use: shaping's state in the warm-up
 * environment, both surviving a restart side by side. */
static void
test_state_in_warmup_env(void **state)
{
	char dir[64] = "/tmp/hk_test_shaping_wu_XXXXXX", err[256], p[128];
	sender_warmup_schedule *s;
	sender_warmup *w;
	sender_shaping *sh;
	uint32_t got;
	int64_t retry;
	(void)state;

	assert_non_null(mkdtemp(dir));
	for (int round = 0; round < 2; round++) {
		s = sender_warmup_schedule_load(NULL, err, sizeof(err));
		assert_int_equal(sender_warmup_open(&w, dir, &s, false, err, sizeof(err)), 0);
		sender_warmup_set_address(w, "10.0.0.2", true);
		sh = load(NULL);
		assert_int_equal(sender_shaping_attach(sh, sender_warmup_env(w), err, sizeof(err)), 0);
		const struct sender_shaping_rule *g = sender_shaping_match(sh, "gmail.com", NULL);
		if (round == 0) {
			assert_int_equal(sender_warmup_take(w, "10.0.0.2", g->name, 5, T0, &got, &retry), 0);
			assert_int_equal(got, 5);
			sender_shaping_result(sh, g, "10.0.0.2", true, "421 4.7.28", T0);
			assert_int_equal(sender_warmup_count(w, "10.0.0.2", g->name, SENDER_WARMUP_THROTTLED, T0), 0);
		} else {
			assert_int_equal(sender_shaping_acquire(sh, g, "10.0.0.2", T0 + 1000, &retry),
			    SENDER_SHAPING_SUSPENDED);
			assert_int_equal(retry, T0 + 5 * 60000);
			struct sender_warmup_status *st;
			size_t n;
			assert_int_equal(sender_warmup_status(w, T0 + 1000, &st, &n), 0);
			assert_int_equal(n, 1);
			assert_string_equal(st[0].provider, "gmail");
			assert_int_equal(st[0].sent_day, 5);
			assert_int_equal(st[0].throttled, 1);
			free(st);
		}
		sender_shaping_free(&sh);
		sender_warmup_close(&w);
	}
	snprintf(p, sizeof(p), "%s/data.mdb", dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/lock.mdb", dir);
	unlink(p);
	rmdir(dir);
}

static void
test_status(void **state)
{
	sender_shaping *sh = load(NULL);
	const struct sender_shaping_rule *g = sender_shaping_rule(sh, "gmail"), *y = sender_shaping_rule(sh, "yahoo");
	struct sender_shaping_status *st;
	int64_t retry;
	size_t n;
	(void)state;

	sender_shaping_acquire(sh, y, "10.0.0.2", T0, &retry);
	sender_shaping_acquire(sh, g, "10.0.0.2", T0, &retry);
	sender_shaping_acquire(sh, g, "10.0.0.1", T0, &retry);
	sender_shaping_acquire_msg(sh, g, "10.0.0.1", 1, T0 + 59000, &retry);
	sender_shaping_status(sh, T0 + 61000, &st, &n);
	assert_int_equal(n, 3);
	assert_string_equal(st[0].addr, "10.0.0.1");
	assert_string_equal(st[0].rule, "gmail");
	assert_int_equal(st[0].connections, 1);
	assert_int_equal(st[0].max_connections, 10);
	assert_int_equal(st[0].sent_minute, 1);         /* T0 is over 60 s ago */
	assert_int_equal(st[0].sent_hour, 2);
	assert_int_equal(st[0].sent_total, 2);
	assert_true(st[0].factor == 1.0);
	assert_string_equal(st[1].rule, "gmail");
	assert_string_equal(st[2].rule, "yahoo");
	free(st);
	json_t *j = sender_shaping_status_json(sh, T0);
	assert_int_equal(json_array_size(j), 3);
	assert_int_equal(json_integer_value(json_object_get(json_array_get(j, 0), "max_per_minute")), 300);
	json_decref(j);
	assert_string_equal(sender_shaping_verdict_name(SENDER_SHAPING_RATE), "rate");
	sender_shaping_free(&sh);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_builtin_file_is_embedded),
		cmocka_unit_test(test_builtin_profiles),
		cmocka_unit_test(test_match),
		cmocka_unit_test(test_names_align_with_sender_class),
		cmocka_unit_test(test_specific_suffix_wins),
		cmocka_unit_test(test_operator_file_on_top),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_connections),
		cmocka_unit_test(test_messages_per_connection),
		cmocka_unit_test(test_per_minute_exact_under_load),
		cmocka_unit_test(test_per_hour_exact),
		cmocka_unit_test(test_throttle_suspends_and_slows),
		cmocka_unit_test(test_recovery_step_by_step),
		cmocka_unit_test(test_state_survives_restart),
		cmocka_unit_test(test_state_in_warmup_env),
		cmocka_unit_test(test_status),
		cmocka_unit_test(test_prune),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Pairs that say nothing a new one would not are forgotten; the others
 * stay (an open connection, a suspension, grants within the hour). */
static void
test_prune(void **state)
{
	sender_shaping *sh = only("rules:\n  r: {domains: [r.test], max_per_hour: 10}\n");
	const struct sender_shaping_rule *r = sender_shaping_rule(sh, "r");
	int64_t retry;
	size_t n;
	struct sender_shaping_status *st;
	(void)state;

	assert_int_equal(sender_shaping_acquire(sh, r, "idle", T0, &retry), SENDER_SHAPING_OK);
	sender_shaping_release(sh, r, "idle");
	assert_int_equal(sender_shaping_acquire(sh, r, "open", T0, &retry), SENDER_SHAPING_OK);
	assert_int_equal(sender_shaping_acquire(sh, r, "slow", T0, &retry), SENDER_SHAPING_OK);
	sender_shaping_release(sh, r, "slow");
	sender_shaping_result(sh, r, "slow", true, "421 4.7.0 slow down", T0);
	/* Within the hour the grants still count: nothing goes. */
	assert_int_equal(sender_shaping_prune(sh, T0 + 30 * 60000), 0);
	/* After it, the idle pair goes; the open and the slowed ones stay. */
	assert_int_equal(sender_shaping_prune(sh, T0 + 62 * 60000), 1);
	sender_shaping_status(sh, T0 + 62 * 60000, &st, &n);
	assert_int_equal(n, 2);
	assert_string_equal(st[0].addr, "open");
	assert_string_equal(st[1].addr, "slow");
	free(st);
	/* A pruned pair comes back fresh when used again. */
	assert_int_equal(sender_shaping_acquire(sh, r, "idle", T0 + 63 * 60000, &retry), SENDER_SHAPING_OK);
	sender_shaping_free(&sh);
}
