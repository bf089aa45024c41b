/*
 * sender_shaping - per-destination traffic shaping: how fast, and over how
 * many connections, one source address may send to one mailbox provider.
 *
 * Rules come from YAML data files (deploy/shaping.yaml is built in; an
 * operator's file is read on top of it; docs/CONFIG.md, "Shaping rules").
 * A rule has a name (the provider: "gmail", "yahoo", "outlook", "icloud",
 * "docomo", "au", "softbank", as sender_class names them, or the
 * operator's own), match lists of destination domains and MX host names,
 * and limits per source address: concurrent connections, messages per
 * connection, messages per minute and per hour, TLS required, and the
 * adaptive settings. The rule "default" takes every destination no other
 * rule matches, and gives every rule the keys it does not set.
 *
 * Matching (sender_shaping_match): a domain match beats an MX match beats
 * "default"; among domain patterns an exact name beats a suffix, and a
 * longer suffix beats a shorter one; among MX patterns the longer suffix
 * wins. So every domain hosted by Google shares "gmail" once its MX is
 * known.
 *
 * State is kept per (source address, rule), in memory:
 *   - open connections (acquire counts one, release ends it);
 *   - messages per minute: an exact sliding window (never more than the
 *     limit within any 60 s), with the messages paced evenly over the
 *     minute rather than sent in one burst;
 *   - messages per hour: sixty one-minute slots (never more than the limit
 *     within any 60 consecutive whole minutes);
 *   - the adaptive control: a throttling reply suspends the pair for the
 *     rule's backoff (doubling while throttling repeats, up to
 *     backoff_max) and multiplies its rate factor by throttle_factor (not
 *     below min_factor); the factor scales the per-minute and per-hour
 *     limits and the connection limit. After recovery_after successes and
 *     at least recovery_interval since the last change, the factor regains
 *     recovery_step (up to 1) and the backoff halves (down to backoff).
 *     Throttling replies that arrive while the pair is already suspended
 *     (sessions that were under way) change nothing more.
 * The adaptive part (factor, suspension, backoff) can be kept in an LMDB
 * environment (sender_shaping_attach) so a restart does not forget that a
 * provider asked us to slow down; connection counts and rate windows start
 * afresh with the process.
 *
 * A message's rate allowance is taken when it is granted (acquire,
 * acquire_msg), not when it is sent: with many sessions at once, counting
 * at the end would let them all pass the same check. A grant whose message
 * never leaves still counts (conservative).
 *
 * Times are Unix epoch milliseconds passed in by the caller; the module
 * never reads a clock. Not thread-safe: one object per scheduler loop.
 */
#ifndef SENDER_SHAPING_H
#define SENDER_SHAPING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <lmdb.h>

typedef struct sender_shaping sender_shaping;

/* A rule after its files are read, with "default"'s values filled in. Owned
 * by the sender_shaping; valid until it is freed (rules are never removed,
 * only disabled, so a pointer stays good across sender_shaping_add_*). */
struct sender_shaping_rule {
	const char *name;                       /* "gmail", ..., "default" */
	uint32_t max_connections;               /* concurrent sessions per source address; 0: no limit */
	uint32_t max_messages_per_connection;   /* transactions per session; 0: no limit */
	uint32_t max_per_minute;                /* messages per source address within any 60 s; 0: no limit */
	uint32_t max_per_hour;                  /* ... within any 60 whole minutes; 0: no limit */
	bool tls_required;                      /* never deliver in plaintext */
	int64_t backoff_ms;                     /* first suspension after a throttling reply */
	int64_t backoff_max_ms;                 /* the doubling stops here */
	double throttle_factor;                 /* factor *= this per throttling (0 < x <= 1) */
	double min_factor;                      /* ... not below this (0 < x <= 1) */
	double recovery_step;                   /* factor += this per recovery (0 < x <= 1) */
	uint32_t recovery_after;                /* successes needed per recovery step */
	int64_t recovery_interval_ms;           /* and time since the last change */
};

/* What acquire and acquire_msg answer. */
enum sender_shaping_verdict {
	SENDER_SHAPING_OK = 0,          /* go: the connection and/or message is counted */
	SENDER_SHAPING_SUSPENDED,       /* the provider throttled this address: wait until *retry_at */
	SENDER_SHAPING_RATE,            /* the minute or hour allowance is spent: wait until *retry_at */
	SENDER_SHAPING_CONNECTIONS,     /* acquire: max_connections are open, *retry_at is INT64_MAX
	                                 * (try again when one is released); acquire_msg: more are open
	                                 * than the (lowered) limit: close this connection */
	SENDER_SHAPING_CONNECTION_FULL, /* acquire_msg: this connection carried max_messages_per_connection: close it */
};

#define SENDER_SHAPING_ADDR_MAX 64      /* longest source address kept (an IPv6 literal is 45) */
#define SENDER_SHAPING_WHY_MAX 160      /* the reason of a suspension, as kept */

/* --- rules ---------------------------------------------------------------- */

/* sender_shaping_new - no rules but a "default" without limits. Caller frees
 * with sender_shaping_free(). Never fails. */
sender_shaping *sender_shaping_new(void);
void sender_shaping_free(sender_shaping **shp); /* NULL is fine */

/* sender_shaping_add_builtin - read the built-in profiles (deploy/shaping.yaml
 * as compiled in). 0, or -1 with the error in ERR. */
int sender_shaping_add_builtin(sender_shaping *sh, char *err, size_t errlen);

/* sender_shaping_add_file - read the rules of PATH on top of what is loaded:
 * a rule of the same name changes only the keys it gives, a new name adds a
 * rule, "enabled: false" disables one, "replace_builtin: true" at the top
 * drops every rule read before. -1 with "PATH:LINE: key 'KEY': ..." in ERR
 * (the rules are then as before the call). */
int sender_shaping_add_file(sender_shaping *sh, const char *path, char *err, size_t errlen);

/* sender_shaping_add_text - the same from TEXT; NAME stands for the file. */
int sender_shaping_add_text(sender_shaping *sh, const char *name, const char *text, char *err, size_t errlen);

/* sender_shaping_load - the usual set-up: a new object with the built-in
 * profiles, then PATH (NULL: none) on top. NULL with ERR on failure. */
sender_shaping *sender_shaping_load(const char *path, char *err, size_t errlen);

/* sender_shaping_rule - the enabled rule NAME, or NULL. */
const struct sender_shaping_rule *sender_shaping_rule(const sender_shaping *sh, const char *name);

/* sender_shaping_rules - the enabled rules, "default" first, then in the
 * order they were first read; *n gets their number. Valid until the next
 * sender_shaping_add_*. */
const struct sender_shaping_rule *const *sender_shaping_rules(const sender_shaping *sh, size_t *n);

/* sender_shaping_match - the rule for destination DOMAIN (canonical: lower
 * case, A-label; a trailing dot is ignored), given its MX host MX_HOST when
 * known (the host the session goes to; NULL or "" before the MX lookup).
 * Never NULL: "default" when nothing else matches. */
const struct sender_shaping_rule *sender_shaping_match(const sender_shaping *sh, const char *domain,
    const char *mx_host);

/* --- state per (source address, rule) -------------------------------------- */

/* sender_shaping_acquire - may ADDR open one more connection to RULE's
 * destinations and send a first message on it, at NOW? On OK, one connection
 * and one message are counted (pair it with one sender_shaping_release when
 * the connection closes). Otherwise nothing is counted and *retry_at is the
 * earliest time the answer could change (INT64_MAX: after a release). */
enum sender_shaping_verdict sender_shaping_acquire(sender_shaping *sh, const struct sender_shaping_rule *rule,
    const char *addr, int64_t now, int64_t *retry_at);

/* sender_shaping_acquire_msg - may a connection already open (acquired) that
 * has carried SENT_ON_CONN messages carry one more, at NOW? On OK one
 * message is counted; CONNECTION_FULL or CONNECTIONS: close this connection
 * (and release it); SUSPENDED, RATE: *retry_at as for acquire. */
enum sender_shaping_verdict sender_shaping_acquire_msg(sender_shaping *sh, const struct sender_shaping_rule *rule,
    const char *addr, uint32_t sent_on_conn, int64_t now, int64_t *retry_at);

/* sender_shaping_release - a connection counted by acquire has closed
 * (QUIT, lost, or failed to connect at all). */
void sender_shaping_release(sender_shaping *sh, const struct sender_shaping_rule *rule, const char *addr);

/* sender_shaping_result - the outcome of one message (or of a session the
 * destination refused) from ADDR under RULE at NOW: THROTTLED as
 * sender_class says (the destination asked us to slow down or back off),
 * with WHY (e.g. the reply, "421 4.7.28 ..."; NULL: none) kept for status.
 * Any other outcome counts as a success towards recovery. */
void sender_shaping_result(sender_shaping *sh, const struct sender_shaping_rule *rule, const char *addr,
    bool throttled, const char *why, int64_t now);

/* sender_shaping_attach - keep the adaptive state (factor, suspension,
 * backoff, counters of throttling) in the named database "shaping" of ENV
 * (e.g. the environment of sender_warmup, sender_warmup_env()), and load what
 * it holds now: pairs of rules that no longer exist are ignored. ENV must
 * outlive SH or a sender_shaping_attach(sh, NULL) detaches. Writes happen
 * only when that state changes (throttling, recovery), one small write
 * transaction each. 0, or -1 with ERR. */
int sender_shaping_attach(sender_shaping *sh, MDB_env *env, char *err, size_t errlen);

/* sender_shaping_prune - forget the pairs that say nothing a new one would
 * not (no connection, full rate, not suspended, nothing granted within the
 * last hour): the per-domain pairs of the "default" rule would otherwise
 * grow with every destination ever seen. Returns how many went. */
size_t sender_shaping_prune(sender_shaping *sh, int64_t now);

/* sender_shaping_factor - the current rate factor of (ADDR, RULE): 1 when it
 * was never throttled. */
double sender_shaping_factor(const sender_shaping *sh, const struct sender_shaping_rule *rule, const char *addr);

/* --- status ------------------------------------------------------------- */

struct sender_shaping_status {
	char addr[SENDER_SHAPING_ADDR_MAX];
	const char *rule;               /* the rule's name (owned by the sender_shaping) */
	uint32_t connections;           /* open now */
	uint32_t max_connections;       /* the limit now (factor applied); 0: none */
	uint32_t sent_minute;           /* messages granted within the last 60 s */
	uint32_t sent_hour;             /* ... within the last 60 whole minutes (this one included) */
	uint32_t max_per_minute;        /* the limits now (factor applied); 0: none */
	uint32_t max_per_hour;
	double factor;                  /* 1: full rate */
	int64_t suspended_until;        /* 0: not suspended */
	char why[SENDER_SHAPING_WHY_MAX]; /* the last throttling reply ("" if none) */
	int64_t last_throttle;          /* 0: never */
	uint64_t sent_total;            /* messages granted since start */
	uint64_t throttles_total;       /* throttling replies (all of them) */
};

/* sender_shaping_status - one entry per (address, rule) pair known, sorted by
 * address then rule, as of NOW. *out is malloc'ed (caller frees; NULL when
 * *n is 0). */
void sender_shaping_status(const sender_shaping *sh, int64_t now, struct sender_shaping_status **out, size_t *n);

/* sender_shaping_status_json - the same as a JSON array of objects (keys as
 * the struct's fields; times as Unix ms, 0 for none). Caller owns it. */
json_t *sender_shaping_status_json(const sender_shaping *sh, int64_t now);

/* sender_shaping_verdict_name - "ok", "suspended", "rate", "connections", "connection_full". */
const char *sender_shaping_verdict_name(enum sender_shaping_verdict v);

#endif
