/*
 * sender_shaping - per-destination traffic shaping (see sender_shaping.h).
 *
 * Rules. Each rule keeps the values its files gave (with a bit per key
 * given) and its resolved values: "default" over the built-in fallbacks,
 * every other rule over "default". A file is parsed whole into a list of
 * changes, checked against the rules as they would be after it (values,
 * conflicting patterns), and only then applied, so a bad file changes
 * nothing. Rule objects are never freed before the whole object, so the
 * pointers callers and pairs hold stay valid.
 *
 * Pairs. One struct pair per (rule, source address), in a chained hash
 * table. The per-minute limit is enforced twice: a pacing clock (GCRA:
 * one message per 60 s / limit, one interval of slack so a caller that
 * comes a little late catches up) spreads the messages over the minute,
 * and a ring of the last grant times (as many as the limit) makes it
 * exact: a grant needs the limit-th most recent one to be at least 60 s
 * old. The hourly limit counts grants in sixty one-minute slots.
 */
/* System */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Third-party */
#include <jansson.h>
#include <lmdb.h>

/* common/ */
#include "hk_log.h"
#include "hk_util.h"

/* This role */
#include "sender_shaping.h"
#include "sender_yaml.h"

extern const unsigned char sender_shaping_builtin[];   /* deploy/shaping.yaml, cmake/embed.cmake */
extern const size_t sender_shaping_builtin_len;

#define MINUTE_MS 60000
#define SLOTS 60                        /* one-minute slots of the hourly window */
#define MAX_PER_MINUTE 60000            /* the ring holds this many times at most (1000/s) */
#define NAME_MAX_LEN 63
#define STATE_FORMAT 1

/* The keys of a rule that hold a value; a bit each in rule.set. */
enum key {
	K_MAX_CONNECTIONS, K_MAX_MPC, K_MAX_PER_MINUTE, K_MAX_PER_HOUR, K_TLS_REQUIRED,
	K_BACKOFF, K_BACKOFF_MAX, K_THROTTLE_FACTOR, K_MIN_FACTOR, K_RECOVERY_STEP,
	K_RECOVERY_AFTER, K_RECOVERY_INTERVAL, K_NKEYS
};

/* What a rule without any file says: no limits, and the adaptive settings
 * of docs/CONFIG.md. */
static const struct sender_shaping_rule fallback = {
	.name = "default",
	.tls_required = false,
	.backoff_ms = 5 * 60000,
	.backoff_max_ms = 2 * 3600000,
	.throttle_factor = 0.5,
	.min_factor = 0.1,
	.recovery_step = 0.1,
	.recovery_after = 200,
	.recovery_interval_ms = 10 * 60000,
};

struct pattern {
	char *name;             /* lower case, no leading dot, no trailing dot */
	bool below;             /* ".x" / "*.x": only names strictly below x */
	char origin[96];        /* "FILE:LINE", for conflict errors */
};

struct plist {
	struct pattern *v;
	size_t n;
};

struct rule {
	struct sender_shaping_rule pub; /* resolved; pub.name is name */
	char *name;
	struct sender_shaping_rule given;
	uint32_t set;                   /* 1 << enum key: given by a file */
	struct plist domains, mx;
	bool enabled;
	char origin[96];                /* where it was last defined */
};

struct pair {
	struct pair *next;              /* hash chain */
	struct rule *rule;
	char *addr;
	uint32_t conns;
	/* minute: the last grant times, a ring */
	int64_t *ring;
	uint32_t ring_cap, ring_len, ring_head; /* head: where the next goes */
	double tat;                     /* pacing: theoretical time of the next grant */
	/* hour: grants per minute slot */
	int64_t slot_minute[SLOTS];     /* the minute slot i counts (INT64_MIN: none) */
	uint32_t slot_count[SLOTS];
	/* adaptive */
	double factor;
	int64_t suspended_until;
	int64_t backoff_cur;
	int64_t last_change;
	int64_t last_throttle;
	uint32_t successes;             /* since the last change */
	uint64_t sent_total, throttles_total;
	char why[SENDER_SHAPING_WHY_MAX];
};

struct sender_shaping {
	struct rule **rules;            /* [0] is "default" */
	size_t n_rules;
	const struct sender_shaping_rule **enabled;     /* for sender_shaping_rules() */
	size_t n_enabled;
	struct pair **buckets;
	size_t n_buckets, n_pairs;
	MDB_env *env;                   /* attached state, or NULL */
	MDB_dbi dbi;
};

/* --- names --------------------------------------------------------------- */

/* name_eq - A equals B, case-insensitively, a trailing dot on A ignored. */
static bool
name_eq(const char *a, const char *b)
{
	size_t n = strlen(a), k = strlen(b);

	if (n > 0 && a[n - 1] == '.')
		n--;
	return n == k && strncasecmp(a, b, k) == 0;
}

/* name_below - A is strictly below B ("x.b"), case-insensitively. */
static bool
name_below(const char *a, const char *b)
{
	size_t n = strlen(a), k = strlen(b);

	if (n > 0 && a[n - 1] == '.')
		n--;
	return n > k + 1 && a[n - k - 1] == '.' && strncasecmp(a + n - k, b, k) == 0;
}

/* --- rules: resolution and matching --------------------------------------- */

static void
resolve_one(struct sender_shaping_rule *out, const struct sender_shaping_rule *base,
    const struct sender_shaping_rule *given, uint32_t set, const char *name)
{
	*out = *base;
	out->name = name;
#define TAKE(k, f) if (set & (1u << (k))) out->f = given->f
	TAKE(K_MAX_CONNECTIONS, max_connections);
	TAKE(K_MAX_MPC, max_messages_per_connection);
	TAKE(K_MAX_PER_MINUTE, max_per_minute);
	TAKE(K_MAX_PER_HOUR, max_per_hour);
	TAKE(K_TLS_REQUIRED, tls_required);
	TAKE(K_BACKOFF, backoff_ms);
	TAKE(K_BACKOFF_MAX, backoff_max_ms);
	TAKE(K_THROTTLE_FACTOR, throttle_factor);
	TAKE(K_MIN_FACTOR, min_factor);
	TAKE(K_RECOVERY_STEP, recovery_step);
	TAKE(K_RECOVERY_AFTER, recovery_after);
	TAKE(K_RECOVERY_INTERVAL, recovery_interval_ms);
#undef TAKE
}

static void
resolve(sender_shaping *sh)
{
	struct rule *def = sh->rules[0];

	resolve_one(&def->pub, &fallback, &def->given, def->set, def->name);
	sh->n_enabled = 0;
	sh->enabled[sh->n_enabled++] = &def->pub;
	for (size_t i = 1; i < sh->n_rules; i++) {
		struct rule *r = sh->rules[i];
		resolve_one(&r->pub, &def->pub, &r->given, r->set, r->name);
		if (r->enabled)
			sh->enabled[sh->n_enabled++] = &r->pub;
	}
}

static struct rule *
rule_find(const sender_shaping *sh, const char *name)
{
	for (size_t i = 0; i < sh->n_rules; i++)
		if (strcmp(sh->rules[i]->name, name) == 0)
			return sh->rules[i];
	return NULL;
}

static struct rule *
rule_new(sender_shaping *sh, const char *name)
{
	struct rule *r = xcalloc(1, sizeof(*r));

	r->name = xstrdup(name);
	r->pub.name = r->name;
	sh->rules = xrealloc(sh->rules, (sh->n_rules + 1) * sizeof(*sh->rules));
	sh->rules[sh->n_rules++] = r;
	sh->enabled = xrealloc(sh->enabled, sh->n_rules * sizeof(*sh->enabled));
	return r;
}

static void
plist_free(struct plist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i].name);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

sender_shaping *
sender_shaping_new(void)
{
	sender_shaping *sh = xcalloc(1, sizeof(*sh));
	struct rule *def;

	def = rule_new(sh, "default");
	def->enabled = true;
	snprintf(def->origin, sizeof(def->origin), "(fallback)");
	sh->n_buckets = 64;
	sh->buckets = xcalloc(sh->n_buckets, sizeof(*sh->buckets));
	resolve(sh);
	return sh;
}

void
sender_shaping_free(sender_shaping **shp)
{
	sender_shaping *sh = *shp;

	if (sh == NULL)
		return;
	for (size_t b = 0; b < sh->n_buckets; b++) {
		struct pair *p = sh->buckets[b], *next;
		for (; p; p = next) {
			next = p->next;
			free(p->ring);
			free(p->addr);
			free(p);
		}
	}
	free(sh->buckets);
	for (size_t i = 0; i < sh->n_rules; i++) {
		plist_free(&sh->rules[i]->domains);
		plist_free(&sh->rules[i]->mx);
		free(sh->rules[i]->name);
		free(sh->rules[i]);
	}
	free(sh->rules);
	free(sh->enabled);
	free(sh);
	*shp = NULL;
}

const struct sender_shaping_rule *
sender_shaping_rule(const sender_shaping *sh, const char *name)
{
	struct rule *r = rule_find(sh, name);

	return r && r->enabled ? &r->pub : NULL;
}

const struct sender_shaping_rule *const *
sender_shaping_rules(const sender_shaping *sh, size_t *n)
{
	*n = sh->n_enabled;
	return sh->enabled;
}

const struct sender_shaping_rule *
sender_shaping_match(const sender_shaping *sh, const char *domain, const char *mx_host)
{
	const struct rule *best = NULL;
	size_t best_len = 0;

	if (domain && *domain) {
		for (size_t i = 1; i < sh->n_rules; i++) {
			const struct rule *r = sh->rules[i];
			if (!r->enabled)
				continue;
			for (size_t j = 0; j < r->domains.n; j++) {
				const struct pattern *p = &r->domains.v[j];
				if (!p->below && name_eq(domain, p->name))
					return &r->pub;         /* exact: unique by construction */
				if (p->below && (best == NULL || strlen(p->name) > best_len) &&
				    name_below(domain, p->name)) {
					best = r;
					best_len = strlen(p->name);
				}
			}
		}
		if (best)
			return &best->pub;
	}
	if (mx_host && *mx_host) {
		for (size_t i = 1; i < sh->n_rules; i++) {
			const struct rule *r = sh->rules[i];
			if (!r->enabled)
				continue;
			for (size_t j = 0; j < r->mx.n; j++) {
				const struct pattern *p = &r->mx.v[j];
				size_t len = strlen(p->name);
				if ((best == NULL || len > best_len) &&
				    (name_below(mx_host, p->name) || (!p->below && name_eq(mx_host, p->name)))) {
					best = r;
					best_len = len;
				}
			}
		}
		if (best)
			return &best->pub;
	}
	return &sh->rules[0]->pub;
}

/* --- rules: reading files --------------------------------------------------- */

/* One rule as a file gives it. */
struct change {
	char *name;
	const yaml_node_t *at;          /* for errors */
	struct sender_shaping_rule given;
	uint32_t set;
	bool has_domains, has_mx;
	struct plist domains, mx;
	int enabled;                    /* -1: not given */
	char origin[96];
};

static void
change_free(struct change *c)
{
	free(c->name);
	plist_free(&c->domains);
	plist_free(&c->mx);
}

static bool
valid_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > NAME_MAX_LEN)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-' || *s == '_'))
			return false;
	return true;
}

/* parse_pattern - "name", ".name" or "*.name" into P: a domain name of
 * letters, digits, hyphens and dots (A-labels for IDNs). */
static int
parse_pattern(struct sender_yaml *y, const yaml_node_t *n, const char *key, struct pattern *p)
{
	const char *s = sender_yaml_scalar(n);
	size_t len;
	char *v;

	if (s == NULL || *s == '\0')
		return sender_yaml_error(y, n, key, "expected a domain name");
	p->below = false;
	if (s[0] == '*' && s[1] == '.') {
		p->below = true;
		s += 2;
	} else if (s[0] == '.') {
		p->below = true;
		s += 1;
	}
	v = xstrdup(s);
	len = strlen(v);
	if (len > 0 && v[len - 1] == '.')
		v[--len] = '\0';
	for (size_t i = 0; i < len; i++) {
		char c = v[i];
		if (c >= 'A' && c <= 'Z')
			v[i] = (char)(c - 'A' + 'a');
		else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
		    (c == '.' && i > 0 && v[i - 1] != '.'))) {
			free(v);
			return sender_yaml_error(y, n, key, "'%s' is not a domain name (use the A-label of an IDN; "
			    "'.name' or '*.name' for the names below it)", sender_yaml_scalar(n));
		}
	}
	if (len == 0 || v[len - 1] == '.') {
		free(v);
		return sender_yaml_error(y, n, key, "'%s' is not a domain name", sender_yaml_scalar(n));
	}
	p->name = v;
	snprintf(p->origin, sizeof(p->origin), "%s:%lu", y->name, (unsigned long)n->start_mark.line + 1);
	return 0;
}

static int
parse_patterns(struct sender_yaml *y, const yaml_node_t *n, const char *key, struct plist *out)
{
	if (n->type == YAML_SCALAR_NODE) {
		out->v = xcalloc(1, sizeof(*out->v));
		if (parse_pattern(y, n, key, &out->v[0]) != 0)
			return -1;
		out->n = 1;
		return 0;
	}
	if (n->type != YAML_SEQUENCE_NODE)
		return sender_yaml_error(y, n, key, "expected a list of domain names");
	size_t len = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
	out->v = xcalloc(len ? len : 1, sizeof(*out->v));
	for (size_t i = 0; i < len; i++) {
		const yaml_node_t *item = yaml_document_get_node(&y->doc, n->data.sequence.items.start[i]);
		if (parse_pattern(y, item, key, &out->v[i]) != 0)
			return -1;
		out->n++;
	}
	return 0;
}

static int
get_u32(struct sender_yaml *y, const yaml_node_t *n, const char *key, uint64_t max, uint32_t *out)
{
	uint64_t v;

	if (sender_yaml_uint(y, n, key, max, &v) != 0)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

static int
parse_rule(struct sender_yaml *y, const yaml_node_t *kn, const yaml_node_t *map, struct change *c)
{
	static const char *const allowed[] = {
		"domains", "mx", "enabled", "max_connections", "max_messages_per_connection",
		"max_per_minute", "max_per_hour", "tls_required", "backoff", "backoff_max",
		"throttle_factor", "min_factor", "recovery_step", "recovery_after",
		"recovery_interval", NULL,
	};
	const char *name = sender_yaml_scalar(kn);
	char what[96];

	c->enabled = -1;
	c->at = kn;
	if (name == NULL || !valid_name(name))
		return sender_yaml_error(y, kn, name ? name : "?",
		    "a rule name is 1 to %d of a-z, 0-9, '-', '_'", NAME_MAX_LEN);
	c->name = xstrdup(name);
	snprintf(c->origin, sizeof(c->origin), "%s:%lu", y->name, (unsigned long)kn->start_mark.line + 1);
	if (sender_yaml_is_null(map))
		return 0;                       /* "name:" alone: enabled, nothing changed */
	if (map->type != YAML_MAPPING_NODE)
		return sender_yaml_error(y, map, name, "expected the rule's settings (a mapping)");
	snprintf(what, sizeof(what), "rule '%s'", name);
	if (sender_yaml_check_keys(y, map, what, allowed) != 0)
		return -1;
	for (size_t i = 0; i < sender_yaml_map_len(map); i++) {
		const char *k = sender_yaml_scalar(sender_yaml_map_key(y, map, i));
		const yaml_node_t *v = sender_yaml_map_value(y, map, i);
		struct sender_shaping_rule *g = &c->given;
		int rc = 0, key = -1;
		bool b;

		if (!strcmp(k, "domains")) {
			if (!strcmp(name, "default"))
				return sender_yaml_error(y, v, k, "'default' takes what no rule matches: it has no domains");
			c->has_domains = true;
			rc = parse_patterns(y, v, k, &c->domains);
		} else if (!strcmp(k, "mx")) {
			if (!strcmp(name, "default"))
				return sender_yaml_error(y, v, k, "'default' takes what no rule matches: it has no mx");
			c->has_mx = true;
			rc = parse_patterns(y, v, k, &c->mx);
		} else if (!strcmp(k, "enabled")) {
			if ((rc = sender_yaml_bool(y, v, k, &b)) == 0)
				c->enabled = b;
			if (rc == 0 && !b && !strcmp(name, "default"))
				return sender_yaml_error(y, v, k, "'default' cannot be disabled");
		} else if (!strcmp(k, "max_connections")) {
			key = K_MAX_CONNECTIONS;
			rc = get_u32(y, v, k, 100000, &g->max_connections);
		} else if (!strcmp(k, "max_messages_per_connection")) {
			key = K_MAX_MPC;
			rc = get_u32(y, v, k, UINT32_MAX, &g->max_messages_per_connection);
		} else if (!strcmp(k, "max_per_minute")) {
			key = K_MAX_PER_MINUTE;
			rc = get_u32(y, v, k, MAX_PER_MINUTE, &g->max_per_minute);
		} else if (!strcmp(k, "max_per_hour")) {
			key = K_MAX_PER_HOUR;
			rc = get_u32(y, v, k, UINT32_MAX, &g->max_per_hour);
		} else if (!strcmp(k, "tls_required")) {
			key = K_TLS_REQUIRED;
			rc = sender_yaml_bool(y, v, k, &g->tls_required);
		} else if (!strcmp(k, "backoff") || !strcmp(k, "backoff_max") || !strcmp(k, "recovery_interval")) {
			int64_t *out = !strcmp(k, "backoff") ? &g->backoff_ms :
			    !strcmp(k, "backoff_max") ? &g->backoff_max_ms : &g->recovery_interval_ms;
			key = !strcmp(k, "backoff") ? K_BACKOFF : !strcmp(k, "backoff_max") ? K_BACKOFF_MAX :
			    K_RECOVERY_INTERVAL;
			rc = sender_yaml_duration_ms(y, v, k, out);
			if (rc == 0 && key != K_RECOVERY_INTERVAL && *out < 1000)
				return sender_yaml_error(y, v, k, "must be at least 1s");
		} else if (!strcmp(k, "throttle_factor") || !strcmp(k, "min_factor") || !strcmp(k, "recovery_step")) {
			double *out = !strcmp(k, "throttle_factor") ? &g->throttle_factor :
			    !strcmp(k, "min_factor") ? &g->min_factor : &g->recovery_step;
			key = !strcmp(k, "throttle_factor") ? K_THROTTLE_FACTOR : !strcmp(k, "min_factor") ?
			    K_MIN_FACTOR : K_RECOVERY_STEP;
			rc = sender_yaml_number(y, v, k, 0.001, 1.0, out);
		} else if (!strcmp(k, "recovery_after")) {
			key = K_RECOVERY_AFTER;
			rc = get_u32(y, v, k, UINT32_MAX, &g->recovery_after);
			if (rc == 0 && g->recovery_after == 0)
				return sender_yaml_error(y, v, k, "must be at least 1");
		}
		if (rc != 0)
			return -1;
		if (key >= 0)
			c->set |= 1u << key;
	}
	return 0;
}

/* What a rule would be after the changes: its patterns and whether it is
 * enabled. */
struct view {
	const char *name;
	bool enabled;
	const struct plist *domains, *mx;
	struct sender_shaping_rule given;
	uint32_t set;
	const char *origin;
};

static void
view_apply(struct view *v, const struct change *c)
{
	v->enabled = c->enabled != 0;
	if (c->has_domains)
		v->domains = &c->domains;
	if (c->has_mx)
		v->mx = &c->mx;
	resolve_one(&v->given, &v->given, &c->given, c->set, v->name);
	v->set |= c->set;
	v->origin = c->origin;
}

static int
check_conflicts(struct sender_yaml *y, struct view *views, size_t n)
{
	static const struct plist none;

	for (size_t a = 0; a < n; a++) {
		if (!views[a].enabled)
			continue;
		for (int which = 0; which < 2; which++) {
			const struct plist *la = which ? views[a].mx : views[a].domains;
			la = la ? la : &none;
			for (size_t i = 0; i < la->n; i++) {
				for (size_t b = a + 1; b < n; b++) {
					const struct plist *lb = which ? views[b].mx : views[b].domains;
					if (!views[b].enabled || lb == NULL)
						continue;
					for (size_t j = 0; j < lb->n; j++) {
						const struct pattern *p = &la->v[i], *q = &lb->v[j];
						/* MX patterns "x" and ".x" overlap on every name
						 * below x; domain patterns only when equal. */
						if (strcmp(p->name, q->name) == 0 && (which || p->below == q->below)) {
							snprintf(y->err, y->errlen, "%s: key '%s': '%s%s' is in rule '%s' and "
							    "in rule '%s' (%s): a destination must have one rule; disable or "
							    "change one of them", q->origin, which ? "mx" : "domains",
							    q->below ? "." : "", q->name, views[b].name, views[a].name, p->origin);
							return -1;
						}
					}
				}
			}
		}
	}
	return 0;
}

static int
check_values(struct sender_yaml *y, struct view *views, size_t n)
{
	struct sender_shaping_rule def, r;

	resolve_one(&def, &fallback, &views[0].given, views[0].set, "default");
	for (size_t i = 0; i < n; i++) {
		if (!views[i].enabled)
			continue;
		if (i == 0)
			r = def;
		else
			resolve_one(&r, &def, &views[i].given, views[i].set, views[i].name);
		if (r.backoff_max_ms < r.backoff_ms) {
			snprintf(y->err, y->errlen, "%s: key 'backoff_max': rule '%s': backoff_max (%lld ms) is below "
			    "backoff (%lld ms)", views[i].origin, views[i].name, (long long)r.backoff_max_ms,
			    (long long)r.backoff_ms);
			return -1;
		}
	}
	return 0;
}

static int
add_doc(sender_shaping *sh, struct sender_yaml *y)
{
	const yaml_node_t *root = sender_yaml_root(y), *rules = NULL;
	static const char *const top[] = { "rules", "replace_builtin", NULL };
	struct change *changes = NULL;
	struct view *views = NULL;
	size_t n_changes = 0, n_views;
	bool replace = false;
	int rc = -1;

	if (root == NULL || sender_yaml_is_null(root))
		return 0;                       /* an empty file changes nothing */
	if (root->type != YAML_MAPPING_NODE)
		return sender_yaml_error(y, root, "rules", "expected a mapping with 'rules'");
	if (sender_yaml_check_keys(y, root, "a shaping file (expected 'rules', 'replace_builtin')", top) != 0)
		return -1;
	for (size_t i = 0; i < sender_yaml_map_len(root); i++) {
		const char *k = sender_yaml_scalar(sender_yaml_map_key(y, root, i));
		const yaml_node_t *v = sender_yaml_map_value(y, root, i);
		if (!strcmp(k, "rules"))
			rules = v;
		else if (sender_yaml_bool(y, v, k, &replace) != 0)
			return -1;
	}
	if (rules && !sender_yaml_is_null(rules)) {
		if (rules->type != YAML_MAPPING_NODE)
			return sender_yaml_error(y, rules, "rules", "expected a mapping of rule name to settings");
		changes = xcalloc(sender_yaml_map_len(rules) + 1, sizeof(*changes));
		for (size_t i = 0; i < sender_yaml_map_len(rules); i++) {
			struct change *c = &changes[n_changes++];
			if (parse_rule(y, sender_yaml_map_key(y, rules, i), sender_yaml_map_value(y, rules, i), c) != 0)
				goto out;
			for (size_t j = 0; j + 1 < n_changes; j++)
				if (!strcmp(changes[j].name, c->name)) {
					sender_yaml_error(y, c->at, c->name, "rule given twice");
					goto out;
				}
		}
	}

	/* The rules as they would be: every rule so far (reset if replaced),
	 * then the new names. */
	views = xcalloc(sh->n_rules + n_changes, sizeof(*views));
	n_views = sh->n_rules;
	for (size_t i = 0; i < sh->n_rules; i++) {
		struct rule *r = sh->rules[i];
		views[i] = (struct view){ r->name, i == 0 || (!replace && r->enabled),
		    replace ? NULL : &r->domains, replace ? NULL : &r->mx, r->given, replace ? 0 : r->set, r->origin };
		if (replace)
			memset(&views[i].given, 0, sizeof(views[i].given));
	}
	for (size_t c = 0; c < n_changes; c++) {
		size_t i;
		for (i = 0; i < n_views; i++)
			if (!strcmp(views[i].name, changes[c].name))
				break;
		if (i == n_views)
			views[n_views++] = (struct view){ changes[c].name, true, NULL, NULL, { 0 }, 0, changes[c].origin };
		view_apply(&views[i], &changes[c]);
	}
	if (check_values(y, views, n_views) != 0 || check_conflicts(y, views, n_views) != 0)
		goto out;

	/* Apply. */
	if (replace) {
		for (size_t i = 0; i < sh->n_rules; i++) {
			struct rule *r = sh->rules[i];
			r->enabled = i == 0;
			r->set = 0;
			memset(&r->given, 0, sizeof(r->given));
			plist_free(&r->domains);
			plist_free(&r->mx);
		}
	}
	for (size_t c = 0; c < n_changes; c++) {
		struct change *ch = &changes[c];
		struct rule *r = rule_find(sh, ch->name);
		if (r == NULL)
			r = rule_new(sh, ch->name);
		r->enabled = ch->enabled != 0;
		resolve_one(&r->given, &r->given, &ch->given, ch->set, r->name);
		r->set |= ch->set;
		if (ch->has_domains) {
			plist_free(&r->domains);
			r->domains = ch->domains;
			ch->domains = (struct plist){ 0 };
		}
		if (ch->has_mx) {
			plist_free(&r->mx);
			r->mx = ch->mx;
			ch->mx = (struct plist){ 0 };
		}
		snprintf(r->origin, sizeof(r->origin), "%s", ch->origin);
	}
	resolve(sh);
	rc = 0;
out:
	for (size_t c = 0; c < n_changes; c++)
		change_free(&changes[c]);
	free(changes);
	free(views);
	return rc;
}

int
sender_shaping_add_text(sender_shaping *sh, const char *name, const char *text, char *err, size_t errlen)
{
	struct sender_yaml y;
	int rc = -1;

	if (sender_yaml_load_text(&y, name, text, strlen(text), err, errlen) == 0)
		rc = add_doc(sh, &y);
	sender_yaml_free(&y);
	return rc;
}

int
sender_shaping_add_file(sender_shaping *sh, const char *path, char *err, size_t errlen)
{
	struct sender_yaml y;
	int rc = -1;

	if (sender_yaml_load_file(&y, path, err, errlen) == 0)
		rc = add_doc(sh, &y);
	sender_yaml_free(&y);
	return rc;
}

int
sender_shaping_add_builtin(sender_shaping *sh, char *err, size_t errlen)
{
	return sender_shaping_add_text(sh, "(built-in deploy/shaping.yaml)", (const char *)sender_shaping_builtin,
	    err, errlen);
}

sender_shaping *
sender_shaping_load(const char *path, char *err, size_t errlen)
{
	sender_shaping *sh = sender_shaping_new();

	if (sender_shaping_add_builtin(sh, err, errlen) != 0 ||
	    (path != NULL && sender_shaping_add_file(sh, path, err, errlen) != 0))
		sender_shaping_free(&sh);
	return sh;
}

/* --- pairs ----------------------------------------------------------------- */

static int64_t
floordiv(int64_t a, int64_t b)
{
	int64_t q = a / b;
	return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static size_t
pair_hash(const struct rule *r, const char *addr)
{
	uint64_t h = 1469598103934665603ULL;    /* FNV-1a: our own addresses, not a peer's input */

	for (const unsigned char *s = (const unsigned char *)addr; *s; s++)
		h = (h ^ *s) * 1099511628211ULL;
	for (const unsigned char *s = (const unsigned char *)r->name; *s; s++)
		h = (h ^ *s) * 1099511628211ULL;
	return (size_t)(h ^ (h >> 29));
}

static struct pair *
pair_find(const sender_shaping *sh, const struct rule *r, const char *addr)
{
	for (struct pair *p = sh->buckets[pair_hash(r, addr) & (sh->n_buckets - 1)]; p; p = p->next)
		if (p->rule == r && strcmp(p->addr, addr) == 0)
			return p;
	return NULL;
}

static struct pair *
pair_get(sender_shaping *sh, const struct sender_shaping_rule *pub, const char *addr)
{
	struct rule *r = (struct rule *)pub;    /* pub is the first member */
	struct pair *p = pair_find(sh, r, addr);

	if (p)
		return p;
	if (sh->n_pairs >= sh->n_buckets) {
		size_t nb = sh->n_buckets * 2;
		struct pair **b = xcalloc(nb, sizeof(*b));
		for (size_t i = 0; i < sh->n_buckets; i++) {
			struct pair *q = sh->buckets[i], *next;
			for (; q; q = next) {
				next = q->next;
				size_t h = pair_hash(q->rule, q->addr) & (nb - 1);
				q->next = b[h];
				b[h] = q;
			}
		}
		free(sh->buckets);
		sh->buckets = b;
		sh->n_buckets = nb;
	}
	p = xcalloc(1, sizeof(*p));
	p->rule = r;
	p->addr = xstrdup(addr);
	p->factor = 1.0;
	p->backoff_cur = r->pub.backoff_ms;
	p->tat = -INFINITY;
	for (int i = 0; i < SLOTS; i++)
		p->slot_minute[i] = INT64_MIN;
	size_t h = pair_hash(r, addr) & (sh->n_buckets - 1);
	p->next = sh->buckets[h];
	sh->buckets[h] = p;
	sh->n_pairs++;
	return p;
}

/* pair_idle - P says nothing a fresh pair would not: no connection, full
 * rate, not suspended, and nothing granted within the hour window. */
static bool
pair_idle(const struct pair *p, int64_t now)
{
	int64_t minute = floordiv(now, 60000);

	if (p->conns > 0 || p->factor < 1.0 || p->suspended_until > now || p->tat > (double)now)
		return false;
	for (int i = 0; i < SLOTS; i++)
		if (p->slot_minute[i] != INT64_MIN && p->slot_minute[i] > minute - SLOTS)
			return false;
	for (uint32_t i = 0; i < p->ring_len; i++)
		if (p->ring[i] > now - 60000)
			return false;
	return true;
}

size_t
sender_shaping_prune(sender_shaping *sh, int64_t now)
{
	size_t gone = 0;

	for (size_t b = 0; b < sh->n_buckets; b++) {
		struct pair **pp = &sh->buckets[b];
		while (*pp) {
			struct pair *p = *pp;
			if (!pair_idle(p, now)) {
				pp = &p->next;
				continue;
			}
			*pp = p->next;
			free(p->ring);
			free(p->addr);
			free(p);
			sh->n_pairs--;
			gone++;
		}
	}
	return gone;
}

/* scaled - LIMIT times the factor, at least 1; 0 stays 0 (no limit). The
 * small epsilon keeps 0.3 * 10 from flooring to 2. */
static uint32_t
scaled(uint32_t limit, double factor)
{
	double v;

	if (limit == 0)
		return 0;
	v = floor((double)limit * factor + 1e-9);
	return v < 1 ? 1 : (uint32_t)v;
}

/* ring_nth - the Kth most recent grant time (1: the newest); K <= ring_len. */
static int64_t
ring_nth(const struct pair *p, uint32_t k)
{
	return p->ring[(p->ring_head + p->ring_cap - k) % p->ring_cap];
}

static void
ring_push(struct pair *p, uint32_t want_cap, int64_t t)
{
	if (want_cap > p->ring_cap) {
		/* The rule was raised: copy the ring out in order into a bigger one. */
		int64_t *n = xcalloc(want_cap, sizeof(*n));
		for (uint32_t k = p->ring_len; k >= 1; k--)
			n[p->ring_len - k] = ring_nth(p, k);
		free(p->ring);
		p->ring = n;
		p->ring_cap = want_cap;
		p->ring_head = p->ring_len % want_cap;
	}
	p->ring[p->ring_head] = t;
	p->ring_head = (p->ring_head + 1) % p->ring_cap;
	if (p->ring_len < p->ring_cap)
		p->ring_len++;
}

/* hour_count - grants in the 60 minute slots ending with NOW's minute. */
static uint32_t
hour_count(const struct pair *p, int64_t now)
{
	int64_t m = floordiv(now, MINUTE_MS);
	uint32_t n = 0;

	for (int i = 0; i < SLOTS; i++)
		if (p->slot_minute[i] > m - SLOTS && p->slot_minute[i] <= m)
			n += p->slot_count[i];
	return n;
}

/* minute_count - grants within the last 60 s: (now - 60 s, now]. */
static uint32_t
minute_count(const struct pair *p, int64_t now)
{
	uint32_t n = 0;

	for (uint32_t k = 1; k <= p->ring_len; k++) {
		int64_t t = ring_nth(p, k);
		if (t <= now - MINUTE_MS)
			break;
		if (t <= now)
			n++;
	}
	return n;
}

/* rate_ready - the earliest time >= NOW at which one more message fits
 * the minute and hour limits of P at its factor. */
static int64_t
rate_ready(const struct pair *p, int64_t now)
{
	const struct sender_shaping_rule *r = &p->rule->pub;
	uint32_t per_min = scaled(r->max_per_minute, p->factor);
	uint32_t per_hour = scaled(r->max_per_hour, p->factor);
	int64_t ready = now;

	if (per_min > 0) {
		double interval = (double)MINUTE_MS / per_min;
		/* Pacing, with one interval of slack. */
		if (p->tat - interval > (double)now)
			ready = (int64_t)ceil(p->tat - interval);
		/* Exact: the per_min-th most recent grant must be 60 s old. */
		if (p->ring_len >= per_min) {
			int64_t t = ring_nth(p, per_min) + MINUTE_MS;
			if (t > ready)
				ready = t;
		}
	}
	if (per_hour > 0) {
		uint32_t n = hour_count(p, now);
		if (n >= per_hour) {
			/* Drop the oldest minutes until one more fits. */
			uint32_t need = n - per_hour + 1, dropped = 0;
			int64_t m = floordiv(now, MINUTE_MS);
			for (int64_t k = m - SLOTS + 1; k <= m; k++) {
				int i = (int)(((k % SLOTS) + SLOTS) % SLOTS);
				if (p->slot_minute[i] == k)
					dropped += p->slot_count[i];
				if (dropped >= need) {
					int64_t t = (k + SLOTS) * MINUTE_MS;
					if (t > ready)
						ready = t;
					break;
				}
			}
		}
	}
	return ready;
}

static void
rate_take(struct pair *p, int64_t now)
{
	const struct sender_shaping_rule *r = &p->rule->pub;
	uint32_t per_min = scaled(r->max_per_minute, p->factor);
	int64_t m = floordiv(now, MINUTE_MS);
	int i = (int)(((m % SLOTS) + SLOTS) % SLOTS);

	if (per_min > 0) {
		double interval = (double)MINUTE_MS / per_min;
		p->tat = (p->tat > (double)now ? p->tat : (double)now) + interval;
		ring_push(p, r->max_per_minute, now);
	}
	if (p->slot_minute[i] != m) {
		p->slot_minute[i] = m;
		p->slot_count[i] = 0;
	}
	p->slot_count[i]++;
	p->sent_total++;
}

enum sender_shaping_verdict
sender_shaping_acquire(sender_shaping *sh, const struct sender_shaping_rule *rule, const char *addr,
    int64_t now, int64_t *retry_at)
{
	struct pair *p = pair_get(sh, rule, addr);
	uint32_t max_conns = scaled(rule->max_connections, p->factor);
	int64_t ready;

	if (now < p->suspended_until) {
		*retry_at = p->suspended_until;
		return SENDER_SHAPING_SUSPENDED;
	}
	if (max_conns > 0 && p->conns >= max_conns) {
		*retry_at = INT64_MAX;
		return SENDER_SHAPING_CONNECTIONS;
	}
	if ((ready = rate_ready(p, now)) > now) {
		*retry_at = ready;
		return SENDER_SHAPING_RATE;
	}
	p->conns++;
	rate_take(p, now);
	*retry_at = now;
	return SENDER_SHAPING_OK;
}

enum sender_shaping_verdict
sender_shaping_acquire_msg(sender_shaping *sh, const struct sender_shaping_rule *rule, const char *addr,
    uint32_t sent_on_conn, int64_t now, int64_t *retry_at)
{
	struct pair *p = pair_get(sh, rule, addr);
	uint32_t max_conns = scaled(rule->max_connections, p->factor);
	int64_t ready;

	*retry_at = now;
	if (now < p->suspended_until) {
		*retry_at = p->suspended_until;
		return SENDER_SHAPING_SUSPENDED;
	}
	if (rule->max_messages_per_connection > 0 && sent_on_conn >= rule->max_messages_per_connection)
		return SENDER_SHAPING_CONNECTION_FULL;
	if (max_conns > 0 && p->conns > max_conns)
		return SENDER_SHAPING_CONNECTIONS;
	if ((ready = rate_ready(p, now)) > now) {
		*retry_at = ready;
		return SENDER_SHAPING_RATE;
	}
	rate_take(p, now);
	return SENDER_SHAPING_OK;
}

void
sender_shaping_release(sender_shaping *sh, const struct sender_shaping_rule *rule, const char *addr)
{
	struct pair *p = pair_find(sh, (const struct rule *)rule, addr);

	/* An unbalanced release would otherwise wrap the count: ignore it. */
	if (p && p->conns > 0)
		p->conns--;
}

double
sender_shaping_factor(const sender_shaping *sh, const struct sender_shaping_rule *rule, const char *addr)
{
	const struct pair *p = pair_find(sh, (const struct rule *)rule, addr);

	return p ? p->factor : 1.0;
}

/* --- persistence of the adaptive state ---------------------------------------- */

/* Value format 1: [1][be64 suspended_until][be64 backoff_cur][be64
 * last_change][be64 last_throttle][be32 factor in millionths][be32
 * successes][be64 throttles_total][be16 why length][why]. Key: rule name,
 * NUL, address. */
#define REC_FIXED (1 + 8 * 4 + 4 + 4 + 8 + 2)

static void
persist(sender_shaping *sh, const struct pair *p)
{
	uint8_t buf[REC_FIXED + SENDER_SHAPING_WHY_MAX];
	size_t wl = strlen(p->why), kl = strlen(p->rule->name) + 1 + strlen(p->addr);
	char *key;
	MDB_txn *txn;
	MDB_val k, v;
	int rc;

	if (sh->env == NULL)
		return;
	buf[0] = STATE_FORMAT;
	hk_put_be(buf + 1, (uint64_t)p->suspended_until, 8);
	hk_put_be(buf + 9, (uint64_t)p->backoff_cur, 8);
	hk_put_be(buf + 17, (uint64_t)p->last_change, 8);
	hk_put_be(buf + 25, (uint64_t)p->last_throttle, 8);
	hk_put_be(buf + 33, (uint64_t)llround(p->factor * 1e6), 4);
	hk_put_be(buf + 37, p->successes, 4);
	hk_put_be(buf + 41, p->throttles_total, 8);
	hk_put_be(buf + 49, wl, 2);
	memcpy(buf + REC_FIXED, p->why, wl);
	key = xmalloc(kl);
	memcpy(key, p->rule->name, strlen(p->rule->name) + 1);
	memcpy(key + strlen(p->rule->name) + 1, p->addr, strlen(p->addr));
	k = (MDB_val){ kl, key };
	v = (MDB_val){ REC_FIXED + wl, buf };
	if ((rc = mdb_txn_begin(sh->env, NULL, 0, &txn)) == 0) {
		if ((rc = mdb_put(txn, sh->dbi, &k, &v, 0)) == 0)
			rc = mdb_txn_commit(txn);
		else
			mdb_txn_abort(txn);
	}
	if (rc != 0)
		hk_log_warn("shaping_state_write_failed", "{s:s, s:s, s:s}", "rule", p->rule->name,
		    "source", p->addr, "error", mdb_strerror(rc));
	free(key);
}

int
sender_shaping_attach(sender_shaping *sh, MDB_env *env, char *err, size_t errlen)
{
	MDB_txn *txn = NULL;
	MDB_cursor *cur = NULL;
	MDB_val k, v;
	int rc;

	sh->env = NULL;
	if (env == NULL)
		return 0;
	if ((rc = mdb_txn_begin(env, NULL, 0, &txn)) != 0 ||
	    (rc = mdb_dbi_open(txn, "shaping", MDB_CREATE, &sh->dbi)) != 0 ||
	    (rc = mdb_cursor_open(txn, sh->dbi, &cur)) != 0)
		goto fail;
	while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
		const char *key = k.mv_data, *nul = memchr(key, 0, k.mv_size);
		const uint8_t *b = v.mv_data;
		char name[NAME_MAX_LEN + 1], addr[256];
		struct rule *r;
		struct pair *p;

		if (nul == NULL || (size_t)(nul - key) > NAME_MAX_LEN || k.mv_size - (size_t)(nul - key) - 1 >= sizeof(addr) ||
		    v.mv_size < REC_FIXED || b[0] != STATE_FORMAT ||
		    v.mv_size < REC_FIXED + hk_get_be(b + 49, 2))
			continue;               /* not ours to read: leave it */
		memcpy(name, key, (size_t)(nul - key));
		name[nul - key] = '\0';
		memcpy(addr, nul + 1, k.mv_size - (size_t)(nul - key) - 1);
		addr[k.mv_size - (size_t)(nul - key) - 1] = '\0';
		if ((r = rule_find(sh, name)) == NULL || !r->enabled)
			continue;
		p = pair_get(sh, &r->pub, addr);
		p->suspended_until = (int64_t)hk_get_be(b + 1, 8);
		p->backoff_cur = (int64_t)hk_get_be(b + 9, 8);
		p->last_change = (int64_t)hk_get_be(b + 17, 8);
		p->last_throttle = (int64_t)hk_get_be(b + 25, 8);
		p->factor = (double)hk_get_be(b + 33, 4) / 1e6;
		if (p->factor > 1.0 || p->factor <= 0)
			p->factor = 1.0;
		p->successes = (uint32_t)hk_get_be(b + 37, 4);
		p->throttles_total = hk_get_be(b + 41, 8);
		size_t wl = (size_t)hk_get_be(b + 49, 2);
		if (wl >= sizeof(p->why))
			wl = sizeof(p->why) - 1;
		memcpy(p->why, b + REC_FIXED, wl);
		p->why[wl] = '\0';
	}
	if (rc != MDB_NOTFOUND)
		goto fail;
	mdb_cursor_close(cur);
	cur = NULL;
	if ((rc = mdb_txn_commit(txn)) != 0) {
		txn = NULL;
		goto fail;
	}
	sh->env = env;
	return 0;
fail:
	snprintf(err, errlen, "shaping state: %s", mdb_strerror(rc));
	if (cur)
		mdb_cursor_close(cur);
	if (txn)
		mdb_txn_abort(txn);
	return -1;
}

/* --- adaptive control ------------------------------------------------------- */

static double
round_factor(double f)
{
	return round(f * 1e6) / 1e6;
}

void
sender_shaping_result(sender_shaping *sh, const struct sender_shaping_rule *rule, const char *addr,
    bool throttled, const char *why, int64_t now)
{
	struct pair *p = pair_get(sh, rule, addr);

	/* The rule may have changed since the pair began. */
	if (p->backoff_cur < rule->backoff_ms)
		p->backoff_cur = rule->backoff_ms;
	if (p->backoff_cur > rule->backoff_max_ms)
		p->backoff_cur = rule->backoff_max_ms;

	if (throttled) {
		p->throttles_total++;
		p->last_throttle = now;
		snprintf(p->why, sizeof(p->why), "%s", why ? why : "throttled");
		/* Sessions under way when the first reply came say the same
		 * thing again: one suspension, one cut. */
		if (now < p->suspended_until)
			return;
		p->suspended_until = now + p->backoff_cur;
		p->backoff_cur = p->backoff_cur * 2 > rule->backoff_max_ms ? rule->backoff_max_ms : p->backoff_cur * 2;
		p->factor = round_factor(p->factor * rule->throttle_factor);
		if (p->factor < rule->min_factor)
			p->factor = rule->min_factor;
		p->successes = 0;
		p->last_change = now;
		hk_log_info("shaping_suspended", "{s:s, s:s, s:I, s:f, s:s}", "rule", rule->name, "source", addr,
		    "until_ms", (json_int_t)p->suspended_until, "factor", p->factor, "why", p->why);
		persist(sh, p);
		return;
	}
	if (p->factor >= 1.0 && p->backoff_cur <= rule->backoff_ms)
		return;                         /* nothing to recover */
	p->successes++;
	if (p->successes >= rule->recovery_after && now - p->last_change >= rule->recovery_interval_ms &&
	    now >= p->suspended_until) {
		p->factor = round_factor(p->factor + rule->recovery_step);
		if (p->factor > 1.0)
			p->factor = 1.0;
		p->backoff_cur = p->backoff_cur / 2 < rule->backoff_ms ? rule->backoff_ms : p->backoff_cur / 2;
		p->successes = 0;
		p->last_change = now;
		hk_log_info("shaping_recovered", "{s:s, s:s, s:f}", "rule", rule->name, "source", addr,
		    "factor", p->factor);
		persist(sh, p);
	}
}

/* --- status ---------------------------------------------------------------- */

static int
status_cmp(const void *a, const void *b)
{
	const struct sender_shaping_status *x = a, *y = b;
	int c = strcmp(x->addr, y->addr);

	return c ? c : strcmp(x->rule, y->rule);
}

void
sender_shaping_status(const sender_shaping *sh, int64_t now, struct sender_shaping_status **out, size_t *n)
{
	struct sender_shaping_status *v = NULL;
	size_t k = 0;

	if (sh->n_pairs)
		v = xcalloc(sh->n_pairs, sizeof(*v));
	for (size_t b = 0; b < sh->n_buckets; b++) {
		for (const struct pair *p = sh->buckets[b]; p; p = p->next) {
			struct sender_shaping_status *s = &v[k++];
			const struct sender_shaping_rule *r = &p->rule->pub;
			snprintf(s->addr, sizeof(s->addr), "%s", p->addr);
			s->rule = r->name;
			s->connections = p->conns;
			s->max_connections = scaled(r->max_connections, p->factor);
			s->sent_minute = minute_count(p, now);
			s->sent_hour = hour_count(p, now);
			s->max_per_minute = scaled(r->max_per_minute, p->factor);
			s->max_per_hour = scaled(r->max_per_hour, p->factor);
			s->factor = p->factor;
			s->suspended_until = now < p->suspended_until ? p->suspended_until : 0;
			snprintf(s->why, sizeof(s->why), "%s", p->why);
			s->last_throttle = p->last_throttle;
			s->sent_total = p->sent_total;
			s->throttles_total = p->throttles_total;
		}
	}
	if (k > 1)
		qsort(v, k, sizeof(*v), status_cmp);
	*out = v;
	*n = k;
}

json_t *
sender_shaping_status_json(const sender_shaping *sh, int64_t now)
{
	struct sender_shaping_status *v;
	json_t *a = json_array();
	size_t n;

	sender_shaping_status(sh, now, &v, &n);
	for (size_t i = 0; i < n; i++) {
		json_array_append_new(a, json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:I, s:s, s:I, s:I, s:I}",
		    "addr", v[i].addr, "rule", v[i].rule,
		    "connections", (json_int_t)v[i].connections, "max_connections", (json_int_t)v[i].max_connections,
		    "sent_minute", (json_int_t)v[i].sent_minute, "sent_hour", (json_int_t)v[i].sent_hour,
		    "max_per_minute", (json_int_t)v[i].max_per_minute, "max_per_hour", (json_int_t)v[i].max_per_hour,
		    "factor", v[i].factor, "suspended_until", (json_int_t)v[i].suspended_until,
		    "why", v[i].why, "last_throttle", (json_int_t)v[i].last_throttle,
		    "sent_total", (json_int_t)v[i].sent_total, "throttles_total", (json_int_t)v[i].throttles_total));
	}
	free(v);
	return a;
}

const char *
sender_shaping_verdict_name(enum sender_shaping_verdict v)
{
	switch (v) {
	case SENDER_SHAPING_OK: return "ok";
	case SENDER_SHAPING_SUSPENDED: return "suspended";
	case SENDER_SHAPING_RATE: return "rate";
	case SENDER_SHAPING_CONNECTIONS: return "connections";
	case SENDER_SHAPING_CONNECTION_FULL: return "connection_full";
	}
	return "?";
}
