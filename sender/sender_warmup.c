/*
 * sender_warmup - warm-up schedules and the per (address, provider) state
 * in LMDB (see sender_warmup.h).
 *
 * Records (keys and values are permanent formats; every value starts with
 * a format byte, and a reader takes a longer value of the same format, so
 * fields can be appended):
 *
 *   info  "format"               -> [1]
 *   addr  address                -> [1][be64 first use, ms]
 *   pair  address \0 provider    -> [1][be32 step][be32 day][be64 hour]
 *         [be32 sent_day][be32 sent_hour][be32 delivered][be32 deferred]
 *         [be32 bounced][be32 complaints][be32 throttled][be32 episodes]
 *         [be64 episode_start][be32 step_day][u8 hold][u8 flags]
 *         [be32 days_sent][be64 sent_total][u8 why length][why]
 *
 * day and hour are the UTC day (ms / 86400000) and hour whose sends
 * sent_day and sent_hour count; the counters of outcomes are those of the
 * current step. A record is "rolled" to the present before use: a past day
 * with sends is judged (advance, hold or, after a step back, hold once),
 * and the day and hour counters restart.
 */
/* System */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Third-party */
#include <jansson.h>
#include <lmdb.h>

/* common/ */
#include "hk_log.h"
#include "hk_util.h"

/* This role */
#include "sender_warmup.h"
#include "sender_yaml.h"

extern const unsigned char sender_warmup_builtin[];    /* deploy/warmup.yaml, cmake/embed.cmake */
extern const size_t sender_warmup_builtin_len;

#define DAY_MS 86400000LL
#define HOUR_MS 3600000LL
#define FORMAT 1
#define MAP_SIZE (64UL << 20)           /* a record is ~100 bytes: ample */
#define MAX_STEPS 366
#define F_HOLD_NEXT 0x01                /* stepped back: hold at the next judgement */
#define PAIR_FIXED 76

/* --- schedules ------------------------------------------------------------------ */

struct table {
	char *provider;                 /* NULL: the default table */
	uint32_t *caps;
	uint32_t n;
};

struct sender_warmup_schedule {
	double hour_factor;
	double advance_fill;
	uint32_t min_sample;
	double min_acceptance;
	double max_bounce_rate;
	double max_complaint_rate;
	uint32_t step_back_after;
	int64_t throttle_episode_ms;
	struct table def;
	struct table *prov;
	size_t n_prov;
};

void
sender_warmup_schedule_free(sender_warmup_schedule **sp)
{
	sender_warmup_schedule *s = *sp;

	if (s == NULL)
		return;
	free(s->def.caps);
	for (size_t i = 0; i < s->n_prov; i++) {
		free(s->prov[i].provider);
		free(s->prov[i].caps);
	}
	free(s->prov);
	free(s);
	*sp = NULL;
}

static int
parse_caps(struct sender_yaml *y, const yaml_node_t *n, const char *key, struct table *t)
{
	size_t len;

	if (n->type != YAML_SEQUENCE_NODE)
		return sender_yaml_error(y, n, key, "expected a list of daily caps, e.g. [50, 50, 100, ...]");
	len = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
	if (len == 0 || len > MAX_STEPS)
		return sender_yaml_error(y, n, key, "expected 1 to %d daily caps", MAX_STEPS);
	t->caps = xcalloc(len, sizeof(*t->caps));
	t->n = (uint32_t)len;
	for (size_t i = 0; i < len; i++) {
		const yaml_node_t *item = yaml_document_get_node(&y->doc, n->data.sequence.items.start[i]);
		uint64_t v;
		if (sender_yaml_uint(y, item, key, UINT32_MAX - 1, &v) != 0)
			return -1;
		if (v == 0)
			return sender_yaml_error(y, item, key, "a daily cap must be at least 1");
		t->caps[i] = (uint32_t)v;
	}
	return 0;
}

static bool
valid_provider(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n >= SENDER_WARMUP_PROVIDER_MAX)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-' || *s == '_'))
			return false;
	return true;
}

static sender_warmup_schedule *
schedule_doc(struct sender_yaml *y)
{
	static const char *const allowed[] = {
		"hour_factor", "advance_fill", "min_sample", "min_acceptance", "max_bounce_rate",
		"max_complaint_rate", "step_back_after", "throttle_episode", "days", "providers", NULL,
	};
	const yaml_node_t *root = sender_yaml_root(y);
	sender_warmup_schedule *s = xcalloc(1, sizeof(*s));
	uint64_t u;

	s->hour_factor = 4;
	s->advance_fill = 0.5;
	s->min_sample = 20;
	s->min_acceptance = 0.9;
	s->max_bounce_rate = 0.03;
	s->max_complaint_rate = 0.001;
	s->step_back_after = 3;
	s->throttle_episode_ms = 10 * 60000;
	if (root == NULL || root->type != YAML_MAPPING_NODE) {
		sender_yaml_error(y, root, "days", "expected a mapping with at least 'days'");
		goto fail;
	}
	if (sender_yaml_check_keys(y, root, "a warm-up schedule", allowed) != 0)
		goto fail;
	for (size_t i = 0; i < sender_yaml_map_len(root); i++) {
		const yaml_node_t *kn = sender_yaml_map_key(y, root, i), *v = sender_yaml_map_value(y, root, i);
		const char *k = sender_yaml_scalar(kn);
		int rc = 0;

		if (!strcmp(k, "hour_factor"))
			rc = sender_yaml_number(y, v, k, 1, 24, &s->hour_factor);
		else if (!strcmp(k, "advance_fill"))
			rc = sender_yaml_fraction(y, v, k, 0, 1, &s->advance_fill);
		else if (!strcmp(k, "min_sample")) {
			rc = sender_yaml_uint(y, v, k, UINT32_MAX, &u);
			s->min_sample = (uint32_t)u;
		} else if (!strcmp(k, "min_acceptance"))
			rc = sender_yaml_fraction(y, v, k, 0, 1, &s->min_acceptance);
		else if (!strcmp(k, "max_bounce_rate"))
			rc = sender_yaml_fraction(y, v, k, 0.0001, 1, &s->max_bounce_rate);
		else if (!strcmp(k, "max_complaint_rate"))
			rc = sender_yaml_fraction(y, v, k, 0.00001, 1, &s->max_complaint_rate);
		else if (!strcmp(k, "step_back_after")) {
			rc = sender_yaml_uint(y, v, k, 1000000, &u);
			if (rc == 0 && u == 0)
				rc = sender_yaml_error(y, v, k, "must be at least 1");
			s->step_back_after = (uint32_t)u;
		} else if (!strcmp(k, "throttle_episode"))
			rc = sender_yaml_duration_ms(y, v, k, &s->throttle_episode_ms);
		else if (!strcmp(k, "days"))
			rc = parse_caps(y, v, k, &s->def);
		else if (!strcmp(k, "providers")) {
			if (v->type != YAML_MAPPING_NODE) {
				sender_yaml_error(y, v, k, "expected a mapping of provider to daily caps");
				goto fail;
			}
			s->prov = xcalloc(sender_yaml_map_len(v) + 1, sizeof(*s->prov));
			for (size_t j = 0; j < sender_yaml_map_len(v); j++) {
				const yaml_node_t *pk = sender_yaml_map_key(y, v, j);
				const char *name = sender_yaml_scalar(pk);
				if (name == NULL || !valid_provider(name)) {
					sender_yaml_error(y, pk, name ? name : "?", "a provider is a shaping rule's "
					    "name: a-z, 0-9, '-', '_'");
					goto fail;
				}
				for (size_t q = 0; q < s->n_prov; q++)
					if (!strcmp(s->prov[q].provider, name)) {
						sender_yaml_error(y, pk, name, "provider given twice");
						goto fail;
					}
				s->prov[s->n_prov].provider = xstrdup(name);
				s->n_prov++;
				if (parse_caps(y, sender_yaml_map_value(y, v, j), name, &s->prov[s->n_prov - 1]) != 0)
					goto fail;
			}
		}
		if (rc != 0)
			goto fail;
	}
	if (s->def.n == 0) {
		sender_yaml_error(y, root, "days", "the schedule needs 'days', the list of daily caps");
		goto fail;
	}
	return s;
fail:
	sender_warmup_schedule_free(&s);
	return NULL;
}

sender_warmup_schedule *
sender_warmup_schedule_text(const char *name, const char *text, char *err, size_t errlen)
{
	struct sender_yaml y;
	sender_warmup_schedule *s = NULL;

	if (sender_yaml_load_text(&y, name, text, strlen(text), err, errlen) == 0)
		s = schedule_doc(&y);
	sender_yaml_free(&y);
	return s;
}

sender_warmup_schedule *
sender_warmup_schedule_load(const char *path, char *err, size_t errlen)
{
	struct sender_yaml y;
	sender_warmup_schedule *s = NULL;

	if (path == NULL)
		return sender_warmup_schedule_text("(built-in deploy/warmup.yaml)",
		    (const char *)sender_warmup_builtin, err, errlen);
	if (sender_yaml_load_file(&y, path, err, errlen) == 0)
		s = schedule_doc(&y);
	sender_yaml_free(&y);
	return s;
}

static const struct table *
table_of(const sender_warmup_schedule *s, const char *provider)
{
	for (size_t i = 0; i < s->n_prov; i++)
		if (!strcmp(s->prov[i].provider, provider))
			return &s->prov[i];
	return &s->def;
}

uint32_t
sender_warmup_schedule_steps(const sender_warmup_schedule *s, const char *provider)
{
	return table_of(s, provider)->n;
}

uint32_t
sender_warmup_schedule_day_cap(const sender_warmup_schedule *s, const char *provider, uint32_t step)
{
	const struct table *t = table_of(s, provider);

	return step < t->n ? t->caps[step] : SENDER_WARMUP_NO_CAP;
}

static uint32_t
hour_cap_of(const sender_warmup_schedule *s, uint32_t day_cap)
{
	double h;

	if (day_cap == SENDER_WARMUP_NO_CAP)
		return SENDER_WARMUP_NO_CAP;
	h = ceil((double)day_cap / 24.0 * s->hour_factor - 1e-9);
	if (h < 1)
		h = 1;
	return h > day_cap ? day_cap : (uint32_t)h;
}

uint32_t
sender_warmup_schedule_hour_cap(const sender_warmup_schedule *s, const char *provider, uint32_t step)
{
	return hour_cap_of(s, sender_warmup_schedule_day_cap(s, provider, step));
}

/* --- records ------------------------------------------------------------------- */

struct pair_rec {
	uint32_t step;
	int32_t day;
	int64_t hour;
	uint32_t sent_day, sent_hour;
	uint32_t delivered, deferred, bounced, complaints, throttled, episodes;
	int64_t episode_start;
	int32_t step_day;
	uint8_t hold, flags;
	uint32_t days_sent;
	uint64_t sent_total;
	char why[SENDER_WARMUP_WHY_MAX];
};

static size_t
pair_encode(const struct pair_rec *r, uint8_t *b)
{
	size_t wl = strlen(r->why);

	if (wl > 255)
		wl = 255;
	b[0] = FORMAT;
	hk_put_be(b + 1, r->step, 4);
	hk_put_be(b + 5, (uint32_t)r->day, 4);
	hk_put_be(b + 9, (uint64_t)r->hour, 8);
	hk_put_be(b + 17, r->sent_day, 4);
	hk_put_be(b + 21, r->sent_hour, 4);
	hk_put_be(b + 25, r->delivered, 4);
	hk_put_be(b + 29, r->deferred, 4);
	hk_put_be(b + 33, r->bounced, 4);
	hk_put_be(b + 37, r->complaints, 4);
	hk_put_be(b + 41, r->throttled, 4);
	hk_put_be(b + 45, r->episodes, 4);
	hk_put_be(b + 49, (uint64_t)r->episode_start, 8);
	hk_put_be(b + 57, (uint32_t)r->step_day, 4);
	b[61] = r->hold;
	b[62] = r->flags;
	hk_put_be(b + 63, r->days_sent, 4);
	hk_put_be(b + 67, r->sent_total, 8);
	b[75] = (uint8_t)wl;
	memcpy(b + PAIR_FIXED, r->why, wl);
	return PAIR_FIXED + wl;
}

static bool
pair_decode(const MDB_val *v, struct pair_rec *r)
{
	const uint8_t *b = v->mv_data;
	size_t wl;

	if (v->mv_size < PAIR_FIXED || b[0] != FORMAT || v->mv_size < PAIR_FIXED + (size_t)b[75])
		return false;
	memset(r, 0, sizeof(*r));
	r->step = (uint32_t)hk_get_be(b + 1, 4);
	r->day = (int32_t)(uint32_t)hk_get_be(b + 5, 4);
	r->hour = (int64_t)hk_get_be(b + 9, 8);
	r->sent_day = (uint32_t)hk_get_be(b + 17, 4);
	r->sent_hour = (uint32_t)hk_get_be(b + 21, 4);
	r->delivered = (uint32_t)hk_get_be(b + 25, 4);
	r->deferred = (uint32_t)hk_get_be(b + 29, 4);
	r->bounced = (uint32_t)hk_get_be(b + 33, 4);
	r->complaints = (uint32_t)hk_get_be(b + 37, 4);
	r->throttled = (uint32_t)hk_get_be(b + 41, 4);
	r->episodes = (uint32_t)hk_get_be(b + 45, 4);
	r->episode_start = (int64_t)hk_get_be(b + 49, 8);
	r->step_day = (int32_t)(uint32_t)hk_get_be(b + 57, 4);
	r->hold = b[61];
	r->flags = b[62];
	r->days_sent = (uint32_t)hk_get_be(b + 63, 4);
	r->sent_total = hk_get_be(b + 67, 8);
	wl = b[75] < sizeof(r->why) ? b[75] : sizeof(r->why) - 1;
	memcpy(r->why, b + PAIR_FIXED, wl);
	r->why[wl] = '\0';
	return true;
}

/* --- the object ---------------------------------------------------------------- */

struct sender_warmup {
	char *path;
	MDB_env *env;
	MDB_dbi info, addr, pair;
	bool readonly, have_dbs;        /* read-only: the databases may not exist yet */
	sender_warmup_schedule *sched;
	char **warming;
	size_t n_warming;
};

static int64_t
floordiv(int64_t a, int64_t b)
{
	int64_t q = a / b;
	return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static int32_t
day_of(int64_t ms)
{
	return (int32_t)floordiv(ms, DAY_MS);
}

static int64_t
hour_of(int64_t ms)
{
	return floordiv(ms, HOUR_MS);
}

static int
mkdir_p(const char *path, char *err, size_t errlen)
{
	char *p = xstrdup(path);

	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, 0700) != 0 && errno != EEXIST)
			goto fail;
		*s = '/';
	}
	if (mkdir(p, 0700) != 0 && errno != EEXIST)
		goto fail;
	free(p);
	return 0;
fail:
	snprintf(err, errlen, "warm-up state %s: cannot create %s: %s", path, p, strerror(errno));
	free(p);
	return -1;
}

int
sender_warmup_open(sender_warmup **out, const char *dir, sender_warmup_schedule **sched, bool readonly,
    char *err, size_t errlen)
{
	sender_warmup *w = xcalloc(1, sizeof(*w));
	MDB_txn *txn = NULL;
	const char *step = "";
	int rc = 0, dead = 0;

	*out = NULL;
	w->sched = *sched;
	*sched = NULL;
	w->readonly = readonly;
	if (dir == NULL || *dir == '\0' || w->sched == NULL) {
		snprintf(err, errlen, "warm-up state: no %s", w->sched ? "directory" : "schedule");
		goto fail_quiet;
	}
	if (!readonly && mkdir_p(dir, err, errlen) != 0)
		goto fail_quiet;
	w->path = xstrdup(dir);
	step = "mdb_env_create";
	if ((rc = mdb_env_create(&w->env)) != 0)
		goto fail;
	mdb_env_set_maxdbs(w->env, 8);          /* ours, and sender_shaping's "shaping" */
	step = "mdb_env_set_mapsize";
	if ((rc = mdb_env_set_mapsize(w->env, MAP_SIZE)) != 0)
		goto fail;
	step = "mdb_env_open";
	if ((rc = mdb_env_open(w->env, dir, MDB_NOTLS | (readonly ? MDB_RDONLY : MDB_NOSYNC), 0600)) != 0)
		goto fail;
	mdb_reader_check(w->env, &dead);
	step = "mdb_txn_begin";
	if ((rc = mdb_txn_begin(w->env, NULL, readonly ? MDB_RDONLY : 0, &txn)) != 0)
		goto fail;
	step = "mdb_dbi_open";
	unsigned flags = readonly ? 0 : MDB_CREATE;
	rc = mdb_dbi_open(txn, "info", flags, &w->info);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "addr", flags, &w->addr);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "pair", flags, &w->pair);
	if (rc == MDB_NOTFOUND && readonly) {
		rc = 0;                         /* nothing was ever stored */
	} else if (rc != 0) {
		goto fail;
	} else {
		MDB_val k = { 6, "format" }, v;
		w->have_dbs = true;
		rc = mdb_get(txn, w->info, &k, &v);
		if (rc == 0 && (v.mv_size < 1 || ((uint8_t *)v.mv_data)[0] != FORMAT)) {
			snprintf(err, errlen, "warm-up state %s: unknown format %d", dir,
			    v.mv_size ? ((uint8_t *)v.mv_data)[0] : -1);
			goto fail_quiet;
		}
		if (rc == MDB_NOTFOUND && !readonly) {
			uint8_t f = FORMAT;
			v = (MDB_val){ 1, &f };
			step = "mdb_put(info)";
			if ((rc = mdb_put(txn, w->info, &k, &v, 0)) != 0)
				goto fail;
		} else if (rc != 0 && rc != MDB_NOTFOUND) {
			step = "mdb_get(info)";
			goto fail;
		}
	}
	/* Committed even when read-only: the database handles opened in a
	 * transaction live on only if it commits. */
	step = "mdb_txn_commit";
	rc = mdb_txn_commit(txn);
	txn = NULL;
	if (rc != 0)
		goto fail;
	*out = w;
	return 0;
fail:
	snprintf(err, errlen, "warm-up state %s: %s: %s", dir, step, mdb_strerror(rc));
fail_quiet:
	if (txn)
		mdb_txn_abort(txn);
	if (w->env)
		mdb_env_close(w->env);
	sender_warmup_schedule_free(&w->sched);
	free(w->path);
	free(w);
	return -1;
}

void
sender_warmup_close(sender_warmup **wp)
{
	sender_warmup *w = *wp;

	if (w == NULL)
		return;
	if (!w->readonly)
		mdb_env_sync(w->env, 1);
	mdb_env_close(w->env);
	for (size_t i = 0; i < w->n_warming; i++)
		free(w->warming[i]);
	free(w->warming);
	sender_warmup_schedule_free(&w->sched);
	free(w->path);
	free(w);
	*wp = NULL;
}

MDB_env *
sender_warmup_env(sender_warmup *w)
{
	return w->env;
}

int
sender_warmup_sync(sender_warmup *w)
{
	return w->readonly ? 0 : mdb_env_sync(w->env, 1);
}

void
sender_warmup_set_address(sender_warmup *w, const char *addr, bool warming)
{
	for (size_t i = 0; i < w->n_warming; i++) {
		if (strcmp(w->warming[i], addr) == 0) {
			if (!warming) {
				free(w->warming[i]);
				w->warming[i] = w->warming[--w->n_warming];
			}
			return;
		}
	}
	if (warming) {
		w->warming = xrealloc(w->warming, (w->n_warming + 1) * sizeof(*w->warming));
		w->warming[w->n_warming++] = xstrdup(addr);
	}
}

bool
sender_warmup_warming(const sender_warmup *w, const char *addr)
{
	for (size_t i = 0; i < w->n_warming; i++)
		if (strcmp(w->warming[i], addr) == 0)
			return true;
	return false;
}

/* --- judging and rolling ------------------------------------------------------------ */

static const char *
norm_provider(const char *provider)
{
	return provider && *provider ? provider : "default";
}

static double
ratio(uint32_t a, uint32_t b)
{
	return b ? (double)a / b : -1;
}

/* judge - the judgement of REC's last day of sending, as of TODAY. */
static void
judge(const sender_warmup_schedule *s, const char *provider, struct pair_rec *r, int32_t today)
{
	uint32_t steps = sender_warmup_schedule_steps(s, provider);
	uint32_t cap = sender_warmup_schedule_day_cap(s, provider, r->step);
	uint32_t outcomes = r->delivered + r->deferred + r->bounced;
	double need = ceil(s->advance_fill * (cap == SENDER_WARMUP_NO_CAP ? 0 : cap) - 1e-9);

	if (r->step >= steps)
		return;                         /* warm: nothing to judge */
	if (r->flags & F_HOLD_NEXT) {
		r->flags &= (uint8_t)~F_HOLD_NEXT;
		r->hold = SENDER_WARMUP_HOLD_STEPPED_BACK;
		/* why: kept from the step back */
		return;
	}
	if (outcomes >= s->min_sample && outcomes > 0) {
		if (r->complaints > 0 && (r->delivered == 0 ||
		    (double)r->complaints / r->delivered >= s->max_complaint_rate)) {
			r->hold = SENDER_WARMUP_HOLD_COMPLAINTS;
			snprintf(r->why, sizeof(r->why), "complaint rate %.2f%% >= %.2f%% (%u of %u delivered)",
			    100.0 * ratio(r->complaints, r->delivered), 100 * s->max_complaint_rate,
			    r->complaints, r->delivered);
			return;
		}
		if (r->delivered + r->bounced > 0 &&
		    (double)r->bounced / (r->delivered + r->bounced) >= s->max_bounce_rate) {
			r->hold = SENDER_WARMUP_HOLD_BOUNCES;
			snprintf(r->why, sizeof(r->why), "bounce rate %.1f%% >= %.1f%% (%u of %u)",
			    100.0 * r->bounced / (r->delivered + r->bounced), 100 * s->max_bounce_rate,
			    r->bounced, r->delivered + r->bounced);
			return;
		}
		if ((double)r->delivered / outcomes < s->min_acceptance) {
			r->hold = SENDER_WARMUP_HOLD_ACCEPTANCE;
			snprintf(r->why, sizeof(r->why), "acceptance %.1f%% < %.1f%% (%u delivered, %u deferred, "
			    "%u bounced)", 100.0 * r->delivered / outcomes, 100 * s->min_acceptance,
			    r->delivered, r->deferred, r->bounced);
			return;
		}
	}
	if ((double)r->sent_day < need) {
		r->hold = SENDER_WARMUP_HOLD_VOLUME;
		snprintf(r->why, sizeof(r->why), "sent %u on its last day, under %.0f%% of its cap %u",
		    r->sent_day, 100 * s->advance_fill, cap);
		return;
	}
	r->step++;
	r->delivered = r->deferred = r->bounced = r->complaints = r->throttled = r->episodes = 0;
	r->episode_start = 0;
	r->step_day = today;
	r->hold = SENDER_WARMUP_HOLD_NONE;
	r->why[0] = '\0';
}

/* roll - bring REC to NOW: judge a past day that had sends, restart the
 * day and hour counters. */
static void
roll(const sender_warmup_schedule *s, const char *provider, struct pair_rec *r, int64_t now)
{
	int32_t today = day_of(now);
	int64_t hour = hour_of(now);

	if (r->day < today) {
		if (r->sent_day > 0)
			judge(s, provider, r, today);
		r->day = today;
		r->sent_day = 0;
	}
	if (r->hour < hour) {
		r->hour = hour;
		r->sent_hour = 0;
	}
}

static void
fresh(struct pair_rec *r, int64_t now)
{
	memset(r, 0, sizeof(*r));
	r->day = day_of(now);
	r->hour = hour_of(now);
	r->step_day = r->day;
}

/* allowance - what R allows now, and when more comes if nothing. */
static uint32_t
allowance(const sender_warmup_schedule *s, const char *provider, const struct pair_rec *r, int64_t now,
    int64_t *retry_at)
{
	uint32_t dc = sender_warmup_schedule_day_cap(s, provider, r->step), hc = hour_cap_of(s, dc);
	uint32_t rd, rh;

	*retry_at = 0;
	if (dc == SENDER_WARMUP_NO_CAP)
		return SENDER_WARMUP_NO_CAP;
	rd = r->sent_day >= dc ? 0 : dc - r->sent_day;
	rh = r->sent_hour >= hc ? 0 : hc - r->sent_hour;
	if (rd == 0)
		*retry_at = (day_of(now) + 1) * DAY_MS;
	else if (rh == 0)
		*retry_at = (hour_of(now) + 1) * HOUR_MS;
	return rd < rh ? rd : rh;
}

/* --- reads and writes ------------------------------------------------------------- */

static size_t
pair_key(char *buf, size_t cap, const char *addr, const char *provider)
{
	size_t a = strlen(addr), p = strlen(provider);

	if (a + 1 + p > cap)
		return 0;
	memcpy(buf, addr, a);
	buf[a] = '\0';
	memcpy(buf + a + 1, provider, p);
	return a + 1 + p;
}

/* get_pair - REC from TXN: 1 found, 0 not, -1 error (logged). */
static int
get_pair(sender_warmup *w, MDB_txn *txn, const char *addr, const char *provider, struct pair_rec *rec)
{
	char kb[SENDER_WARMUP_ADDR_MAX + SENDER_WARMUP_PROVIDER_MAX + 1];
	MDB_val k = { pair_key(kb, sizeof(kb), addr, provider), kb }, v;
	int rc;

	if (!w->have_dbs)
		return 0;
	rc = mdb_get(txn, w->pair, &k, &v);
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc == 0 && pair_decode(&v, rec))
		return 1;
	hk_log_error("warmup_state_failed", "{s:s, s:s, s:s, s:s}", "source", addr, "provider", provider,
	    "op", "read", "error", rc ? mdb_strerror(rc) : "unreadable record");
	return -1;
}

static bool
args_ok(const char *addr, const char *provider)
{
	return addr && *addr && strlen(addr) < SENDER_WARMUP_ADDR_MAX && strlen(provider) < SENDER_WARMUP_PROVIDER_MAX;
}

int
sender_warmup_budget(sender_warmup *w, const char *addr, const char *provider, int64_t now,
    uint32_t *allowed_now, int64_t *retry_at)
{
	struct pair_rec rec;
	MDB_txn *txn;
	int rc;

	provider = norm_provider(provider);
	*retry_at = 0;
	*allowed_now = SENDER_WARMUP_NO_CAP;
	if (!sender_warmup_warming(w, addr))
		return 0;
	*allowed_now = 0;
	*retry_at = now + 60000;
	if (!args_ok(addr, provider) || mdb_txn_begin(w->env, NULL, MDB_RDONLY, &txn) != 0)
		return -1;
	rc = get_pair(w, txn, addr, provider, &rec);
	mdb_txn_abort(txn);
	if (rc < 0)
		return -1;
	if (rc == 0)
		fresh(&rec, now);
	roll(w->sched, provider, &rec, now);
	*allowed_now = allowance(w->sched, provider, &rec, now, retry_at);
	return 0;
}

/* update - read-modify-write of (ADDR, PROVIDER) in one write transaction:
 * FN changes the rolled record (a fresh one when there is none; CREATE
 * false: then nothing is written). Also notes the address's first use. */
typedef void (*update_fn)(sender_warmup *w, const char *addr, const char *provider, struct pair_rec *r,
    int64_t now, void *arg);

static int
update(sender_warmup *w, const char *addr, const char *provider, int64_t now, bool create, update_fn fn, void *arg)
{
	char kb[SENDER_WARMUP_ADDR_MAX + SENDER_WARMUP_PROVIDER_MAX + 1];
	uint8_t vb[PAIR_FIXED + 256];
	struct pair_rec rec;
	MDB_txn *txn;
	MDB_val k, v;
	int rc, found;
	const char *op = "write";

	if (w->readonly || !args_ok(addr, provider))
		return -1;
	if ((rc = mdb_txn_begin(w->env, NULL, 0, &txn)) != 0)
		goto fail;
	if ((found = get_pair(w, txn, addr, provider, &rec)) < 0) {
		mdb_txn_abort(txn);
		return -1;
	}
	if (found == 0 && !create) {
		mdb_txn_abort(txn);
		return 0;
	}
	if (found == 0) {
		MDB_val ak = { strlen(addr), (void *)addr }, av;
		uint8_t ab[9];
		fresh(&rec, now);
		if ((rc = mdb_get(txn, w->addr, &ak, &av)) == MDB_NOTFOUND) {
			ab[0] = FORMAT;
			hk_put_be(ab + 1, (uint64_t)now, 8);
			av = (MDB_val){ sizeof(ab), ab };
			rc = mdb_put(txn, w->addr, &ak, &av, 0);
		}
		if (rc != 0) {
			mdb_txn_abort(txn);
			goto fail;
		}
	}
	roll(w->sched, provider, &rec, now);
	fn(w, addr, provider, &rec, now, arg);
	k = (MDB_val){ pair_key(kb, sizeof(kb), addr, provider), kb };
	v = (MDB_val){ pair_encode(&rec, vb), vb };
	if ((rc = mdb_put(txn, w->pair, &k, &v, 0)) != 0) {
		mdb_txn_abort(txn);
		goto fail;
	}
	op = "commit";
	if ((rc = mdb_txn_commit(txn)) != 0)
		goto fail;
	return 0;
fail:
	hk_log_error("warmup_state_failed", "{s:s, s:s, s:s, s:s}", "source", addr, "provider", provider,
	    "op", op, "error", mdb_strerror(rc));
	return -1;
}

struct take_arg {
	uint32_t n, taken;
	int64_t retry_at;
};

static void
do_take(sender_warmup *w, const char *addr, const char *provider, struct pair_rec *r, int64_t now, void *arg)
{
	struct take_arg *a = arg;
	(void)addr;
	uint32_t allowed = allowance(w->sched, provider, r, now, &a->retry_at);

	a->taken = a->n < allowed ? a->n : allowed;
	if (a->taken == 0)
		return;
	if (r->sent_day == 0)
		r->days_sent++;
	r->sent_day += a->taken;
	r->sent_hour += a->taken;
	r->sent_total += a->taken;
	if (a->taken < a->n)
		allowance(w->sched, provider, r, now, &a->retry_at);
	else
		a->retry_at = 0;
}

int
sender_warmup_take(sender_warmup *w, const char *addr, const char *provider, uint32_t n, int64_t now,
    uint32_t *taken, int64_t *retry_at)
{
	struct take_arg a = { n, 0, 0 };
	uint32_t allowed;

	provider = norm_provider(provider);
	*taken = 0;
	*retry_at = 0;
	if (!sender_warmup_warming(w, addr)) {
		*taken = n;
		return 0;
	}
	/* A pair past its schedule: no cap, and nothing worth a write. */
	if (sender_warmup_budget(w, addr, provider, now, &allowed, retry_at) != 0)
		return -1;
	if (allowed == SENDER_WARMUP_NO_CAP) {
		*taken = n;
		return 0;
	}
	if (n == 0)
		return 0;
	if (update(w, addr, provider, now, true, do_take, &a) != 0)
		return -1;
	*taken = a.taken;
	*retry_at = a.retry_at;
	return 0;
}

struct untake_arg {
	uint32_t n;
	int64_t taken_at;
};

static void
do_untake(sender_warmup *w, const char *addr, const char *provider, struct pair_rec *r, int64_t now, void *arg)
{
	struct untake_arg *a = arg;
	(void)addr;
	(void)w;
	(void)provider;
	(void)now;

	if (day_of(a->taken_at) == r->day)
		r->sent_day = r->sent_day > a->n ? r->sent_day - a->n : 0;
	if (hour_of(a->taken_at) == r->hour)
		r->sent_hour = r->sent_hour > a->n ? r->sent_hour - a->n : 0;
	r->sent_total = r->sent_total > a->n ? r->sent_total - a->n : 0;
}

int
sender_warmup_untake(sender_warmup *w, const char *addr, const char *provider, uint32_t n, int64_t taken_at,
    int64_t now)
{
	struct untake_arg a = { n, taken_at };

	provider = norm_provider(provider);
	if (!sender_warmup_warming(w, addr) || n == 0)
		return 0;
	return update(w, addr, provider, now, false, do_untake, &a);
}

static void
do_count(sender_warmup *w, const char *addr, const char *provider, struct pair_rec *r, int64_t now, void *arg)
{
	const sender_warmup_schedule *s = w->sched;
	enum sender_warmup_outcome o = *(enum sender_warmup_outcome *)arg;

	switch (o) {
	case SENDER_WARMUP_DELIVERED:
		r->delivered++;
		break;
	case SENDER_WARMUP_DEFERRED:
		r->deferred++;
		break;
	case SENDER_WARMUP_BOUNCED:
		r->bounced++;
		break;
	case SENDER_WARMUP_COMPLAINT:
		r->complaints++;
		break;
	case SENDER_WARMUP_THROTTLED:
		r->deferred++;
		r->throttled++;
		if (r->episodes > 0 && now - r->episode_start < s->throttle_episode_ms)
			break;                  /* the same episode */
		r->episodes++;
		r->episode_start = now;
		if (r->episodes < s->step_back_after)
			break;
		snprintf(r->why, sizeof(r->why), "stepped back from step %u: %u throttling episodes",
		    r->step + 1, r->episodes);
		if (r->step > 0)
			r->step--;
		else
			snprintf(r->why, sizeof(r->why), "held at step 1: %u throttling episodes", r->episodes);
		hk_log_warn("warmup_stepped_back", "{s:s, s:s, s:i, s:s}", "source", addr, "provider", provider,
		    "step", (int)r->step + 1, "why", r->why);
		r->delivered = r->deferred = r->bounced = r->complaints = r->throttled = r->episodes = 0;
		r->episode_start = 0;
		r->step_day = day_of(now);
		r->hold = SENDER_WARMUP_HOLD_STEPPED_BACK;
		r->flags |= F_HOLD_NEXT;
		break;
	}
}

int
sender_warmup_count(sender_warmup *w, const char *addr, const char *provider,
    enum sender_warmup_outcome outcome, int64_t now)
{
	provider = norm_provider(provider);
	if (outcome < SENDER_WARMUP_DELIVERED || outcome > SENDER_WARMUP_COMPLAINT)
		return -1;
	if (!sender_warmup_warming(w, addr))
		return 0;
	/* An outcome of a pair that never took budget (sent before its
	 * address was under warm-up) starts its record too. */
	return update(w, addr, provider, now, true, do_count, &outcome);
}

/* --- status ---------------------------------------------------------------------- */

static int
status_cmp(const void *a, const void *b)
{
	const struct sender_warmup_status *x = a, *y = b;
	int c = strcmp(x->addr, y->addr);

	return c ? c : strcmp(x->provider, y->provider);
}

int
sender_warmup_status(sender_warmup *w, int64_t now, struct sender_warmup_status **out, size_t *n)
{
	struct sender_warmup_status *v = NULL;
	size_t len = 0, cap = 0;
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, val;
	int rc;

	*out = NULL;
	*n = 0;
	if (!w->have_dbs)
		return 0;
	if ((rc = mdb_txn_begin(w->env, NULL, MDB_RDONLY, &txn)) != 0)
		return -1;
	if ((rc = mdb_cursor_open(txn, w->pair, &cur)) != 0) {
		mdb_txn_abort(txn);
		return -1;
	}
	while ((rc = mdb_cursor_get(cur, &k, &val, MDB_NEXT)) == 0) {
		const char *key = k.mv_data, *nul = memchr(key, 0, k.mv_size);
		struct sender_warmup_status *s;
		struct pair_rec r;
		size_t al, pl;

		if (nul == NULL || !pair_decode(&val, &r))
			continue;
		al = (size_t)(nul - key);
		pl = k.mv_size - al - 1;
		if (al >= SENDER_WARMUP_ADDR_MAX || pl >= SENDER_WARMUP_PROVIDER_MAX)
			continue;
		if (len == cap) {
			cap = cap ? cap * 2 : 16;
			v = xrealloc(v, cap * sizeof(*v));
		}
		s = &v[len++];
		memset(s, 0, sizeof(*s));
		memcpy(s->addr, key, al);
		memcpy(s->provider, nul + 1, pl);

		MDB_val ak = { al, (void *)key }, av;
		if (mdb_get(txn, w->addr, &ak, &av) == 0 && av.mv_size >= 9)
			s->start = (int64_t)hk_get_be((const uint8_t *)av.mv_data + 1, 8);
		roll(w->sched, s->provider, &r, now);
		s->warming = sender_warmup_warming(w, s->addr);
		s->steps = sender_warmup_schedule_steps(w->sched, s->provider);
		s->done = r.step >= s->steps;
		s->day = s->start ? (uint32_t)(day_of(now) - day_of(s->start) + 1) : 0;
		s->step = r.step + 1;
		s->day_cap = sender_warmup_schedule_day_cap(w->sched, s->provider, r.step);
		s->hour_cap = hour_cap_of(w->sched, s->day_cap);
		s->sent_day = r.sent_day;
		s->sent_hour = r.sent_hour;
		s->remaining = s->warming ? allowance(w->sched, s->provider, &r, now, &s->next_budget) :
		    SENDER_WARMUP_NO_CAP;
		if (!s->warming)
			s->next_budget = 0;
		s->delivered = r.delivered;
		s->deferred = r.deferred;
		s->bounced = r.bounced;
		s->complaints = r.complaints;
		s->throttled = r.throttled;
		s->episodes = r.episodes;
		s->acceptance = ratio(r.delivered, r.delivered + r.deferred + r.bounced);
		s->bounce_rate = ratio(r.bounced, r.delivered + r.bounced);
		s->complaint_rate = ratio(r.complaints, r.delivered);
		s->hold = (enum sender_warmup_hold)r.hold;
		snprintf(s->why, sizeof(s->why), "%s", r.why);
		s->sent_total = r.sent_total;
	}
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	if (rc != MDB_NOTFOUND) {
		free(v);
		return -1;
	}
	if (len > 1)
		qsort(v, len, sizeof(*v), status_cmp);
	*out = v;
	*n = len;
	return 0;
}

static json_t *
cap_json(uint32_t v)
{
	return v == SENDER_WARMUP_NO_CAP ? json_null() : json_integer(v);
}

static json_t *
rate_json(double v)
{
	return v < 0 ? json_null() : json_real(v);
}

json_t *
sender_warmup_status_json(sender_warmup *w, int64_t now)
{
	struct sender_warmup_status *v;
	json_t *a;
	size_t n;

	if (sender_warmup_status(w, now, &v, &n) != 0)
		return NULL;
	a = json_array();
	for (size_t i = 0; i < n; i++) {
		const struct sender_warmup_status *s = &v[i];
		json_t *o = json_pack("{s:s, s:s, s:b, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
		    "s:I, s:s, s:s, s:I}",
		    "addr", s->addr, "provider", s->provider, "warming", s->warming, "done", s->done,
		    "day", (json_int_t)s->day, "step", (json_int_t)s->step, "steps", (json_int_t)s->steps,
		    "sent_day", (json_int_t)s->sent_day, "sent_hour", (json_int_t)s->sent_hour,
		    "next_budget", (json_int_t)s->next_budget,
		    "delivered", (json_int_t)s->delivered, "deferred", (json_int_t)s->deferred,
		    "bounced", (json_int_t)s->bounced, "complaints", (json_int_t)s->complaints,
		    "throttled", (json_int_t)s->throttled, "episodes", (json_int_t)s->episodes,
		    "start", (json_int_t)s->start, "hold", sender_warmup_hold_name(s->hold), "why", s->why,
		    "sent_total", (json_int_t)s->sent_total);
		json_object_set_new(o, "day_cap", cap_json(s->day_cap));
		json_object_set_new(o, "hour_cap", cap_json(s->hour_cap));
		json_object_set_new(o, "remaining", cap_json(s->remaining));
		json_object_set_new(o, "acceptance", rate_json(s->acceptance));
		json_object_set_new(o, "bounce_rate", rate_json(s->bounce_rate));
		json_object_set_new(o, "complaint_rate", rate_json(s->complaint_rate));
		json_array_append_new(a, o);
	}
	free(v);
	return a;
}

const char *
sender_warmup_outcome_name(enum sender_warmup_outcome o)
{
	switch (o) {
	case SENDER_WARMUP_DELIVERED: return "delivered";
	case SENDER_WARMUP_DEFERRED: return "deferred";
	case SENDER_WARMUP_BOUNCED: return "bounced";
	case SENDER_WARMUP_THROTTLED: return "throttled";
	case SENDER_WARMUP_COMPLAINT: return "complaint";
	}
	return "?";
}

const char *
sender_warmup_hold_name(enum sender_warmup_hold h)
{
	switch (h) {
	case SENDER_WARMUP_HOLD_NONE: return "none";
	case SENDER_WARMUP_HOLD_VOLUME: return "volume";
	case SENDER_WARMUP_HOLD_ACCEPTANCE: return "acceptance";
	case SENDER_WARMUP_HOLD_BOUNCES: return "bounces";
	case SENDER_WARMUP_HOLD_COMPLAINTS: return "complaints";
	case SENDER_WARMUP_HOLD_STEPPED_BACK: return "stepped_back";
	}
	return "?";
}
