/*
 * sender_warmup - reputation warm-up of new source addresses, per
 * destination provider, driven by a schedule and by results.
 *
 * A schedule (deploy/warmup.yaml is built in; docs/CONFIG.md, "Warm-up
 * schedule") is a table of daily caps, one per step, with optional tables
 * per provider; a provider is the shaping rule's name ("gmail", ...,
 * "default" for every destination no rule names). Each (address,
 * provider) pair is at a step: its day cap is the table's entry, its hour
 * cap ceil(day cap / 24 * hour_factor) (never above the day cap). Days and
 * hours are UTC calendar days and hours. Caps count recipients.
 *
 * A pair starts at the first step when it first sends. At the first call
 * on a later day, the day it last sent on is judged and the pair advances
 * one step only if
 *   - that day used at least advance_fill of its cap (volume earned), and,
 *     once the step has at least min_sample outcomes, its results are
 *     healthy: complaints / delivered < max_complaint_rate, bounced /
 *     (delivered + bounced) < max_bounce_rate, delivered / (delivered +
 *     deferred + bounced) >= min_acceptance,
 * and holds otherwise (the step's counts carry on: the step must prove
 * itself with more mail). Days without mail neither advance nor hold. Repeated
 * throttling, step_back_after episodes at one step (replies within
 * throttle_episode of an episode's first are one episode), sends the pair
 * one step back at once, and the next day is held. Past the last step the
 * pair is warm: no caps (a step back caps it again).
 *
 * An address is under warm-up only when registered so
 * (sender_warmup_set_address; `warmup: true` of a pool address); any other
 * address is warm and has no caps, and nothing is counted for it.
 *
 * State lives in an LMDB environment of its own (a directory, e.g. the
 * queue's directory + "/reputation"), so these small per-message writes
 * never wait behind the queue's group commit and its fsync: one write
 * transaction per take/count, not synced (MDB_NOSYNC: a killed process
 * loses nothing, a crash of the machine at most the last moments; call
 * sender_warmup_sync() from a timer to bound that). Databases: "info"
 * (format), "addr" (address -> first use), "pair" (address, provider ->
 * step and counters); sender_shaping can keep its state in the same
 * environment (sender_warmup_env). Another process may open it read-only
 * (`hikyaku warmup status`) while the sender runs.
 *
 * Budget and status never write: the day's judgement is computed from
 * what is stored whenever it is read, and stored by the next take or
 * count, with the same result.
 *
 * Times are Unix epoch milliseconds from the caller; the module never
 * reads a clock. Not thread-safe: one object per loop.
 */
#ifndef SENDER_WARMUP_H
#define SENDER_WARMUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <lmdb.h>

typedef struct sender_warmup sender_warmup;
typedef struct sender_warmup_schedule sender_warmup_schedule;

#define SENDER_WARMUP_NO_CAP UINT32_MAX
#define SENDER_WARMUP_ADDR_MAX 64       /* longest address kept (an IPv6 literal is 45) */
#define SENDER_WARMUP_PROVIDER_MAX 64   /* longest provider name (a rule name is at most 63) */
#define SENDER_WARMUP_WHY_MAX 160

/* What happened to a recipient sent under warm-up. Values are stored: never renumber. */
enum sender_warmup_outcome {
	SENDER_WARMUP_DELIVERED = 1,
	SENDER_WARMUP_DEFERRED = 2,     /* a 4xx that is not throttling */
	SENDER_WARMUP_BOUNCED = 3,
	SENDER_WARMUP_THROTTLED = 4,    /* a deferral sender_class calls throttled (counts as deferred too) */
	SENDER_WARMUP_COMPLAINT = 5,    /* a feedback-loop report about mail from this pair */
};

/* Why a pair did not advance at its last judgement. Stored: never renumber. */
enum sender_warmup_hold {
	SENDER_WARMUP_HOLD_NONE = 0,            /* it advanced (or was never judged) */
	SENDER_WARMUP_HOLD_VOLUME = 1,          /* the day used less than advance_fill of its cap */
	SENDER_WARMUP_HOLD_ACCEPTANCE = 2,      /* delivered share below min_acceptance */
	SENDER_WARMUP_HOLD_BOUNCES = 3,         /* bounce rate at or above max_bounce_rate */
	SENDER_WARMUP_HOLD_COMPLAINTS = 4,      /* complaint rate at or above max_complaint_rate */
	SENDER_WARMUP_HOLD_STEPPED_BACK = 5,    /* repeated throttling stepped it back; held a day */
};

/* --- schedules --------------------------------------------------------------- */

/* sender_warmup_schedule_load - the schedule of PATH, or the built-in one
 * (deploy/warmup.yaml as compiled in) when PATH is NULL. NULL with
 * "FILE:LINE: key 'KEY': ..." in ERR. Caller frees with
 * sender_warmup_schedule_free() (or hands it to sender_warmup_open). */
sender_warmup_schedule *sender_warmup_schedule_load(const char *path, char *err, size_t errlen);

/* sender_warmup_schedule_text - the same from TEXT; NAME stands for the file. */
sender_warmup_schedule *sender_warmup_schedule_text(const char *name, const char *text, char *err, size_t errlen);

void sender_warmup_schedule_free(sender_warmup_schedule **sp); /* NULL is fine */

/* The table of PROVIDER (its own, else the default one): how many steps,
 * and the caps at STEP (0-based; SENDER_WARMUP_NO_CAP past the end). */
uint32_t sender_warmup_schedule_steps(const sender_warmup_schedule *s, const char *provider);
uint32_t sender_warmup_schedule_day_cap(const sender_warmup_schedule *s, const char *provider, uint32_t step);
uint32_t sender_warmup_schedule_hour_cap(const sender_warmup_schedule *s, const char *provider, uint32_t step);

/* --- state ------------------------------------------------------------------ */

/* sender_warmup_open - open (creating it and its directory unless
 * READONLY) the state in directory DIR, judged by the schedule *SCHED,
 * which the object takes (*sched becomes NULL, also on failure). 0, or -1
 * with ERR. */
int sender_warmup_open(sender_warmup **out, const char *dir, sender_warmup_schedule **sched, bool readonly,
    char *err, size_t errlen);

/* sender_warmup_close - close and free; a writable environment is synced first. */
void sender_warmup_close(sender_warmup **wp);

/* sender_warmup_env - the LMDB environment, e.g. for sender_shaping_attach. */
MDB_env *sender_warmup_env(sender_warmup *w);

/* sender_warmup_sync - flush what was written to disk (mdb_env_sync). 0 or an LMDB error. */
int sender_warmup_sync(sender_warmup *w);

/* sender_warmup_set_address - ADDR is under warm-up (WARMING) or warm. Not
 * stored: the configuration says it at every start. */
void sender_warmup_set_address(sender_warmup *w, const char *addr, bool warming);
bool sender_warmup_warming(const sender_warmup *w, const char *addr);

/* sender_warmup_budget - how many recipients ADDR may send to PROVIDER
 * now: *allowed_now (SENDER_WARMUP_NO_CAP for a warm address or pair),
 * and when it is 0, *retry_at, the next hour or day at which it may send
 * again. Reads only. 0, or -1 if the state could not be read (then
 * *allowed_now is 0 and *retry_at a minute away). */
int sender_warmup_budget(sender_warmup *w, const char *addr, const char *provider, int64_t now,
    uint32_t *allowed_now, int64_t *retry_at);

/* sender_warmup_take - reserve up to N recipients of budget at NOW:
 * *taken gets how many (0..N), counted as sent this hour and day; the
 * caller sends that many and leaves the rest waiting (when *taken < N,
 * *retry_at is when more budget comes). A warm address or pair takes all N
 * and nothing is stored. 0, or -1 on a storage error (nothing taken). */
int sender_warmup_take(sender_warmup *w, const char *addr, const char *provider, uint32_t n, int64_t now,
    uint32_t *taken, int64_t *retry_at);

/* sender_warmup_untake - give back N recipients taken at TAKEN_AT that were
 * never sent (no connection, the session failed before the transaction): they
 * leave the counts of the hour and day they were taken in, if those are still
 * the current ones. 0 or -1. */
int sender_warmup_untake(sender_warmup *w, const char *addr, const char *provider, uint32_t n, int64_t taken_at,
    int64_t now);

/* sender_warmup_count - the outcome of one recipient ADDR sent to PROVIDER,
 * at NOW (a throttling may step the pair back at once). Nothing for a warm
 * address. 0 or -1. */
int sender_warmup_count(sender_warmup *w, const char *addr, const char *provider,
    enum sender_warmup_outcome outcome, int64_t now);

/* --- status ------------------------------------------------------------------ */

struct sender_warmup_status {
	char addr[SENDER_WARMUP_ADDR_MAX];
	char provider[SENDER_WARMUP_PROVIDER_MAX];
	bool warming;                   /* the address is under warm-up (else warm: no caps) */
	bool done;                      /* the pair passed its last step: no caps */
	uint32_t day;                   /* UTC days since the address's first use, 1 on that day */
	uint32_t step;                  /* the step (1-based: "day N of the table") */
	uint32_t steps;                 /* steps of the pair's table */
	uint32_t day_cap, hour_cap;     /* SENDER_WARMUP_NO_CAP: none */
	uint32_t sent_day, sent_hour;   /* this UTC day, this UTC hour */
	uint32_t remaining;             /* what budget would allow now */
	int64_t next_budget;            /* when remaining is 0: when it is not; else 0 */
	uint32_t delivered, deferred, bounced, complaints, throttled, episodes; /* at this step */
	double acceptance, bounce_rate, complaint_rate;  /* at this step; -1: nothing to divide */
	enum sender_warmup_hold hold;   /* the last judgement */
	char why[SENDER_WARMUP_WHY_MAX]; /* its reasons, "" if it advanced */
	int64_t start;                  /* the address's first use */
	uint64_t sent_total;
};

/* sender_warmup_status - one entry per (address, provider) pair stored, by
 * address then provider, as of NOW. *out is malloc'ed (caller frees; NULL
 * when *n is 0). 0 or -1. */
int sender_warmup_status(sender_warmup *w, int64_t now, struct sender_warmup_status **out, size_t *n);

/* sender_warmup_status_json - the same as a JSON array (keys as the fields;
 * no cap is null). NULL on a storage error. Caller owns it. */
json_t *sender_warmup_status_json(sender_warmup *w, int64_t now);

const char *sender_warmup_outcome_name(enum sender_warmup_outcome o);   /* "delivered", ... */
const char *sender_warmup_hold_name(enum sender_warmup_hold h);         /* "none", "volume", ... */

#endif
