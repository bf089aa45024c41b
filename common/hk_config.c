/*
 * hk_config - load the cluster YAML into typed structs.
 *
 * The file is parsed once with libyaml's document API; each node section is
 * then read by a table of key handlers per role. Unknown keys, wrong types and
 * bad values are errors naming file, line and key, so a typo never becomes a
 * silent default.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <yaml.h>
#include <zmq.h>

#include "hk_config.h"
#include "hk_domain.h"
#include "hk_passwd.h"
#include "hk_util.h"

struct cfg_ctx {
	const char *path;
	yaml_document_t *doc;
	char *err;
	size_t errlen;
};

static int
cfg_error(struct cfg_ctx *c, const yaml_node_t *n, const char *key, const char *fmt, ...)
{
	char what[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	snprintf(c->err, c->errlen, "%s:%lu: key '%s': %s", c->path,
	    n ? (unsigned long)n->start_mark.line + 1 : 0UL, key, what);
	return -1;
}

static const char *
scalar(const yaml_node_t *n)
{
	return n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* --- value parsers: each returns 0 or reports through cfg_error ---------- */

static int
get_string(struct cfg_ctx *c, const yaml_node_t *n, const char *key, char **out)
{
	const char *s = scalar(n);
	if (s == NULL || *s == '\0')
		return cfg_error(c, n, key, "expected a non-empty string");
	free(*out);
	*out = xstrdup(s);
	return 0;
}

static int
get_bool(struct cfg_ctx *c, const yaml_node_t *n, const char *key, bool *out)
{
	const char *s = scalar(n);
	if (s && (!strcmp(s, "true") || !strcmp(s, "yes") || !strcmp(s, "on")))
		*out = true;
	else if (s && (!strcmp(s, "false") || !strcmp(s, "no") || !strcmp(s, "off")))
		*out = false;
	else
		return cfg_error(c, n, key, "expected true or false");
	return 0;
}

static int
get_uint(struct cfg_ctx *c, const yaml_node_t *n, const char *key,
    unsigned long long max, unsigned long long *out)
{
	const char *s = scalar(n);
	char *end;
	unsigned long long v;

	if (s == NULL || *s == '\0' || *s == '-')
		return cfg_error(c, n, key, "expected a non-negative integer");
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v > max)
		return cfg_error(c, n, key, "expected an integer up to %llu, got '%s'", max, s);
	*out = v;
	return 0;
}

static int
get_u32(struct cfg_ctx *c, const yaml_node_t *n, const char *key, uint32_t *out)
{
	unsigned long long v;
	if (get_uint(c, n, key, UINT32_MAX, &v))
		return -1;
	*out = (uint32_t)v;
	return 0;
}

/* get_count - an integer from 1 to UINT32_MAX (a cap; 0 would refuse all). */
static int
get_count(struct cfg_ctx *c, const yaml_node_t *n, const char *key, uint32_t *out)
{
	if (get_u32(c, n, key, out))
		return -1;
	if (*out == 0)
		return cfg_error(c, n, key, "must be at least 1");
	return 0;
}

/* "500ms", "10s", "5m", "1h", "5d"; a bare number is seconds. */
static int
get_duration_ms(struct cfg_ctx *c, const yaml_node_t *n, const char *key, uint32_t *out)
{
	static const struct { const char *unit; unsigned long long ms; } units[] = {
		{ "ms", 1 }, { "s", 1000 }, { "", 1000 }, { "m", 60000 },
		{ "h", 3600000 }, { "d", 86400000 },
	};
	const char *s = scalar(n);
	char *end;
	unsigned long long v;

	if (s == NULL || *s < '0' || *s > '9')
		return cfg_error(c, n, key, "expected a duration like 500ms, 10s, 5m, 1h, 5d");
	errno = 0;
	v = strtoull(s, &end, 10);
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(end, units[i].unit) == 0) {
			if (errno || v > UINT32_MAX / units[i].ms)
				return cfg_error(c, n, key, "duration '%s' is too long (max 49d)", s);
			*out = (uint32_t)(v * units[i].ms);
			return 0;
		}
	}
	return cfg_error(c, n, key, "unknown duration unit in '%s' (use ms, s, m, h or d)", s);
}

/* bytes, or with a K, M or G suffix (powers of 1024). */
static int
get_size(struct cfg_ctx *c, const yaml_node_t *n, const char *key, size_t *out)
{
	const char *s = scalar(n);
	char *end;
	unsigned long long v, mul = 1;

	if (s == NULL || *s < '0' || *s > '9')
		return cfg_error(c, n, key, "expected a size like 1048576, 512K, 25M, 1G");
	errno = 0;
	v = strtoull(s, &end, 10);
	if (!strcmp(end, "K") || !strcmp(end, "k"))
		mul = 1ULL << 10;
	else if (!strcmp(end, "M"))
		mul = 1ULL << 20;
	else if (!strcmp(end, "G"))
		mul = 1ULL << 30;
	else if (*end)
		return cfg_error(c, n, key, "unknown size suffix in '%s' (use K, M or G)", s);
	if (errno || v > SIZE_MAX / mul)
		return cfg_error(c, n, key, "size '%s' is too large", s);
	*out = (size_t)(v * mul);
	return 0;
}

static int
get_hostport(struct cfg_ctx *c, const yaml_node_t *n, const char *key, char **host, uint16_t *port)
{
	const char *s = scalar(n);
	if (s == NULL || hk_parse_hostport(s, host, port) != 0)
		return cfg_error(c, n, key, "expected host:port, e.g. 127.0.0.1:2525");
	return 0;
}

static int
get_endpoint(struct cfg_ctx *c, const yaml_node_t *n, const char *key, char **out)
{
	const char *s = scalar(n);
	if (s == NULL || (strncmp(s, "tcp://", 6) && strncmp(s, "ipc://", 6) && strncmp(s, "inproc://", 9)))
		return cfg_error(c, n, key, "expected a ZeroMQ endpoint (tcp://host:port, ipc://path or inproc://name)");
	return get_string(c, n, key, out);
}

/* A sequence of scalars (or a single scalar, for convenience). */
static int
get_list(struct cfg_ctx *c, const yaml_node_t *n, const char *key, char ***out, size_t *count)
{
	if (n->type == YAML_SCALAR_NODE) {
		*out = xcalloc(1, sizeof(char *));
		*count = 1;
		return get_string(c, n, key, &(*out)[0]);
	}
	if (n->type != YAML_SEQUENCE_NODE)
		return cfg_error(c, n, key, "expected a list");
	size_t len = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
	*out = xcalloc(len ? len : 1, sizeof(char *));
	*count = len;
	for (size_t i = 0; i < len; i++) {
		yaml_node_t *item = yaml_document_get_node(c->doc, n->data.sequence.items.start[i]);
		if (get_string(c, item, key, &(*out)[i]))
			return -1;
	}
	return 0;
}

int
hk_cidr_parse(const char *s, struct hk_cidr *out)
{
	char buf[64];
	const char *slash = strchr(s, '/');
	size_t alen = slash ? (size_t)(slash - s) : strlen(s);
	unsigned long prefix;
	char *end;

	if (alen == 0 || alen >= sizeof(buf))
		return -1;
	memcpy(buf, s, alen);
	buf[alen] = '\0';
	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, buf, out->addr) == 1)
		out->family = AF_INET;
	else if (inet_pton(AF_INET6, buf, out->addr) == 1)
		out->family = AF_INET6;
	else
		return -1;
	unsigned maxp = out->family == AF_INET ? 32 : 128;
	if (slash) {
		prefix = strtoul(slash + 1, &end, 10);
		if (slash[1] == '\0' || *end || prefix > maxp)
			return -1;
	} else {
		prefix = maxp;
	}
	out->prefix = (unsigned)prefix;
	/* Clear host bits so matching is a plain masked compare. */
	for (unsigned i = out->prefix; i < maxp; i++)
		out->addr[i / 8] &= (uint8_t)~(0x80 >> (i % 8));
	return 0;
}

bool
hk_cidr_match(const struct hk_cidr *net, const struct sockaddr *sa)
{
	const uint8_t *a;

	if (sa->sa_family == AF_INET && net->family == AF_INET) {
		a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
	} else if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		if (net->family == AF_INET6)
			a = a6->s6_addr;
		else if (IN6_IS_ADDR_V4MAPPED(a6))
			a = a6->s6_addr + 12;
		else
			return false;
	} else {
		return false;
	}
	for (unsigned i = 0; i < net->prefix; i++) {
		uint8_t m = (uint8_t)(0x80 >> (i % 8));
		if ((a[i / 8] & m) != (net->addr[i / 8] & m))
			return false;
	}
	return true;
}

static const yaml_node_t *
map_get(struct cfg_ctx *c, const yaml_node_t *map, const char *key)
{
	for (const yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		const char *k = scalar(yaml_document_get_node(c->doc, p->key));
		if (k && !strcmp(k, key))
			return yaml_document_get_node(c->doc, p->value);
	}
	return NULL;
}

/* Every key of MAP must be in ALLOWED (NULL-terminated). */
static int
map_check_keys(struct cfg_ctx *c, const yaml_node_t *map, const char *what, const char *const *allowed)
{
	for (const yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		const yaml_node_t *kn = yaml_document_get_node(c->doc, p->key);
		const char *k = scalar(kn);
		size_t i;
		for (i = 0; k && allowed[i]; i++)
			if (!strcmp(k, allowed[i]))
				break;
		if (k == NULL || allowed[i] == NULL)
			return cfg_error(c, kn, k ? k : "?", "unknown key in %s (see docs/CONFIG.md)", what);
	}
	return 0;
}

/* --- tenants ---------------------------------------------------------------- */

static struct hk_tenant_conf *
tenant_add(struct hk_config *cfg, const char *name)
{
	struct hk_tenant_conf *t;

	cfg->tenants = xrealloc(cfg->tenants, (cfg->n_tenants + 1) * sizeof(*cfg->tenants));
	t = &cfg->tenants[cfg->n_tenants++];
	memset(t, 0, sizeof(*t));
	t->name = xstrdup(name);
	t->pool = xstrdup("shared");
	return t;
}

static void
tenant_add_credential(struct hk_tenant_conf *t, const char *user, const char *hash)
{
	t->credentials = xrealloc(t->credentials, (t->n_credentials + 1) * sizeof(*t->credentials));
	t->credentials[t->n_credentials].user = xstrdup(user);
	t->credentials[t->n_credentials].hash = xstrdup(hash);
	t->n_credentials++;
}

/* Check one user/hash pair; WHERE names its origin for the message. */
static int
credential_ok(char *err, size_t errlen, const char *where, const char *user, const char *hash)
{
	if (user == NULL || *user == '\0' || strlen(user) > 255 || strchr(user, ':')) {
		snprintf(err, errlen, "%s: key 'user': expected a non-empty user name (no ':', at most 255 bytes)", where);
		return -1;
	}
	if (hash == NULL || !hk_passwd_hash_ok(hash)) {
		snprintf(err, errlen, "%s: key 'password_hash': user '%s': not a password hash hikyaku can verify "
		    "(\"$6$...\", \"$y$...\" or \"$2b$...\"; make one with `hikyaku passwd`)", where, user);
		return -1;
	}
	return 0;
}

/* credentials: [{user: U, password_hash: H}, ...] */
static int
get_credentials(struct cfg_ctx *c, const yaml_node_t *v, struct hk_tenant_conf *t)
{
	static const char *const keys[] = { "user", "password_hash", NULL };
	char where[512];

	if (v->type != YAML_SEQUENCE_NODE)
		return cfg_error(c, v, "credentials", "expected a list of {user, password_hash}");
	for (yaml_node_item_t *i = v->data.sequence.items.start; i < v->data.sequence.items.top; i++) {
		const yaml_node_t *item = yaml_document_get_node(c->doc, *i), *u, *h;
		if (item->type != YAML_MAPPING_NODE)
			return cfg_error(c, item, "credentials", "each credential is a map {user, password_hash}");
		if (map_check_keys(c, item, "a credential", keys))
			return -1;
		u = map_get(c, item, "user");
		h = map_get(c, item, "password_hash");
		snprintf(where, sizeof(where), "%s:%lu", c->path, (unsigned long)item->start_mark.line + 1);
		if (credential_ok(c->err, c->errlen, where, u ? scalar(u) : NULL, h ? scalar(h) : NULL))
			return -1;
		tenant_add_credential(t, scalar(u), scalar(h));
	}
	return 0;
}

/*
 * load_credentials_file - a Kubernetes Secret mounted as a file: YAML (a map
 * user: hash, or a list of {user, password_hash}), or "user:hash" lines
 * (# comments and blank lines allowed).
 */
static int
load_credentials_file(struct cfg_ctx *c, const yaml_node_t *at, const char *path, struct hk_tenant_conf *t)
{
	yaml_parser_t parser;
	yaml_document_t doc;
	yaml_node_t *root = NULL;
	char where[600], line[1024];
	FILE *f;
	int rc = 0, lineno = 0;

	if ((f = fopen(path, "rb")) == NULL)
		return cfg_error(c, at, "credentials_file", "cannot open %s: %s", path, strerror(errno));
	yaml_parser_initialize(&parser);
	yaml_parser_set_input_file(&parser, f);
	if (yaml_parser_load(&parser, &doc)) {
		root = yaml_document_get_root_node(&doc);
		if (root && root->type == YAML_MAPPING_NODE) {
			for (yaml_node_pair_t *p = root->data.mapping.pairs.start; rc == 0 && p < root->data.mapping.pairs.top; p++) {
				yaml_node_t *k = yaml_document_get_node(&doc, p->key);
				yaml_node_t *v = yaml_document_get_node(&doc, p->value);
				snprintf(where, sizeof(where), "%s:%lu", path, (unsigned long)k->start_mark.line + 1);
				if ((rc = credential_ok(c->err, c->errlen, where, scalar(k), scalar(v))) == 0)
					tenant_add_credential(t, scalar(k), scalar(v));
			}
		} else if (root && root->type == YAML_SEQUENCE_NODE) {
			struct cfg_ctx fc = { path, &doc, c->err, c->errlen };
			rc = get_credentials(&fc, root, t);
		} else {
			root = NULL; /* a scalar: the "user:hash" lines form */
		}
		yaml_document_delete(&doc);
	}
	yaml_parser_delete(&parser);
	if (root != NULL || rc != 0) {
		fclose(f);
		return rc;
	}
	rewind(f);
	while (fgets(line, sizeof(line), f) != NULL) {
		char *p = line, *colon;
		lineno++;
		line[strcspn(line, "\r\n")] = '\0';
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\0' || *p == '#')
			continue;
		snprintf(where, sizeof(where), "%s:%d", path, lineno);
		if ((colon = strchr(p, ':')) == NULL) {
			snprintf(c->err, c->errlen, "%s: expected user:password_hash", where);
			rc = -1;
			break;
		}
		*colon = '\0';
		if ((rc = credential_ok(c->err, c->errlen, where, p, colon + 1)) != 0)
			break;
		tenant_add_credential(t, p, colon + 1);
	}
	fclose(f);
	return rc;
}

/* "100/s", "6000/m", "50000/h" */
static int
get_rate(struct cfg_ctx *c, const yaml_node_t *v, const char *key, uint32_t *count, uint32_t *per_ms)
{
	const char *s = scalar(v);
	char *end;
	unsigned long n;

	if (s == NULL || *s < '0' || *s > '9')
		return cfg_error(c, v, key, "expected a rate like 100/s, 6000/m or 50000/h");
	errno = 0;
	n = strtoul(s, &end, 10);
	if (errno || n == 0 || n > UINT32_MAX || end[0] != '/' || end[2] != '\0' ||
	    (end[1] != 's' && end[1] != 'm' && end[1] != 'h'))
		return cfg_error(c, v, key, "expected a rate like 100/s, 6000/m or 50000/h, got '%s'", s);
	*count = (uint32_t)n;
	*per_ms = end[1] == 's' ? 1000 : end[1] == 'm' ? 60000 : 3600000;
	return 0;
}

/* A relative credentials_file is relative to the configuration file. */
static char *
resolve_path(const char *config, const char *path)
{
	const char *slash = strrchr(config, '/');
	char *out;
	size_t dlen;

	if (path[0] == '/' || slash == NULL)
		return xstrdup(path);
	dlen = (size_t)(slash - config);
	out = xmalloc(dlen + 1 + strlen(path) + 1);
	memcpy(out, config, dlen);
	out[dlen] = '/';
	strcpy(out + dlen + 1, path);
	return out;
}

static int
load_tenant(struct cfg_ctx *c, struct hk_config *cfg, const yaml_node_t *kn, const yaml_node_t *map)
{
	static const char *const keys[] = { "credentials", "credentials_file", "sender_domains",
		"pool", "rate_limit", NULL };
	const char *name = scalar(kn);
	struct hk_tenant_conf *t;
	const yaml_node_t *v;

	if (name == NULL || *name == '\0')
		return cfg_error(c, kn, "tenants", "tenant names must be non-empty strings");
	if (hk_config_tenant(cfg, name))
		return cfg_error(c, kn, name, "tenant defined twice");
	t = tenant_add(cfg, name);
	t->line = (int)kn->start_mark.line + 1;
	if (map->type == YAML_SCALAR_NODE && *scalar(map) == '\0')
		return 0; /* "name:" alone: a tenant with no settings */
	if (map->type != YAML_MAPPING_NODE)
		return cfg_error(c, map, name, "a tenant is a map of settings (see docs/CONFIG.md)");
	if (map_check_keys(c, map, "a tenant", keys))
		return -1;
	if ((v = map_get(c, map, "credentials")) != NULL && get_credentials(c, v, t))
		return -1;
	if ((v = map_get(c, map, "credentials_file")) != NULL) {
		if (scalar(v) == NULL || *scalar(v) == '\0')
			return cfg_error(c, v, "credentials_file", "expected a path");
		t->credentials_file = resolve_path(c->path, scalar(v));
		if (load_credentials_file(c, v, t->credentials_file, t))
			return -1;
	}
	if ((v = map_get(c, map, "sender_domains")) != NULL) {
		if (get_list(c, v, "sender_domains", &t->sender_domains, &t->n_sender_domains))
			return -1;
		for (size_t i = 0; i < t->n_sender_domains; i++) {
			char canon[HK_DOMAIN_MAX];
			if (hk_domain_canon(t->sender_domains[i], canon) != 0)
				return cfg_error(c, v, "sender_domains", "'%s' is not a domain name", t->sender_domains[i]);
			free(t->sender_domains[i]);
			t->sender_domains[i] = xstrdup(canon);
		}
	}
	if ((v = map_get(c, map, "pool")) != NULL && get_string(c, v, "pool", &t->pool))
		return -1;
	if ((v = map_get(c, map, "rate_limit")) != NULL &&
	    get_rate(c, v, "rate_limit", &t->rate_count, &t->rate_per_ms))
		return -1;
	return 0;
}

/* tenants: {NAME: {...}, ...}; then no user may belong to two tenants. */
static int
load_tenants(struct cfg_ctx *c, struct hk_config *cfg, const yaml_node_t *map)
{
	if (map->type != YAML_MAPPING_NODE)
		return cfg_error(c, map, "tenants", "expected a mapping of tenant name to settings");
	for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++)
		if (load_tenant(c, cfg, yaml_document_get_node(c->doc, p->key),
		    yaml_document_get_node(c->doc, p->value)))
			return -1;
	for (size_t i = 0; i < cfg->n_tenants; i++)
		for (size_t j = 0; j < cfg->tenants[i].n_credentials; j++)
			for (size_t k = 0; k <= i; k++)
				for (size_t l = 0; l < (k == i ? j : cfg->tenants[k].n_credentials); l++)
					if (!strcmp(cfg->tenants[i].credentials[j].user, cfg->tenants[k].credentials[l].user)) {
						snprintf(c->err, c->errlen, "%s:%d: key 'user': '%s' belongs to tenant '%s' "
						    "and to tenant '%s': a user names one tenant", c->path, cfg->tenants[i].line,
						    cfg->tenants[i].credentials[j].user, cfg->tenants[k].name, cfg->tenants[i].name);
						return -1;
					}
	return 0;
}

/* --- hot_domains ------------------------------------------------------------ */

/* hot_domains: {DOMAIN: K, ...}; cluster-wide, so every router reads the same map. */
static int
load_hot_domains(struct cfg_ctx *c, struct hk_config *cfg, const yaml_node_t *map)
{
	if (map->type != YAML_MAPPING_NODE)
		return cfg_error(c, map, "hot_domains", "expected a mapping of domain to a number of senders");
	for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		const yaml_node_t *kn = yaml_document_get_node(c->doc, p->key);
		const yaml_node_t *vn = yaml_document_get_node(c->doc, p->value);
		const char *d = scalar(kn);
		char canon[HK_DOMAIN_MAX];
		uint32_t k;

		if (d == NULL || hk_domain_canon(d, canon) != 0)
			return cfg_error(c, kn, "hot_domains", "'%s' is not a domain name", d ? d : "?");
		for (size_t i = 0; i < cfg->n_hot_domains; i++)
			if (!strcmp(cfg->hot_domains[i].domain, canon))
				return cfg_error(c, kn, d, "hot domain listed twice");
		if (get_u32(c, vn, d, &k))
			return -1;
		if (k < 1)
			return cfg_error(c, vn, d, "expected a number of senders >= 1");
		cfg->hot_domains = xrealloc(cfg->hot_domains, (cfg->n_hot_domains + 1) * sizeof(*cfg->hot_domains));
		cfg->hot_domains[cfg->n_hot_domains].domain = xstrdup(canon);
		cfg->hot_domains[cfg->n_hot_domains++].k = k;
	}
	return 0;
}

/* hk_config_hot_k - see hk_config.h. */
uint32_t
hk_config_hot_k(const struct hk_config *cfg, const char *domain)
{
	for (size_t i = 0; i < cfg->n_hot_domains; i++)
		if (!strcmp(cfg->hot_domains[i].domain, domain))
			return cfg->hot_domains[i].k;
	return 1;
}

const struct hk_tenant_conf *
hk_config_tenant(const struct hk_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_tenants; i++)
		if (!strcmp(cfg->tenants[i].name, name))
			return &cfg->tenants[i];
	return NULL;
}

bool
hk_tenant_owns_sender(const struct hk_tenant_conf *t, const char *addr)
{
	const char *at = strrchr(addr, '@');
	size_t dlen, tlen;

	if (*addr == '\0' || t->n_sender_domains == 0)
		return true;
	if (at == NULL)
		return false;
	at++;
	dlen = strlen(at);
	for (size_t i = 0; i < t->n_sender_domains; i++) {
		const char *d = t->sender_domains[i];
		tlen = strlen(d);
		if (dlen == tlen && strcasecmp(at, d) == 0)
			return true;
		/* a subdomain: "x.example.com" for "example.com" */
		if (dlen > tlen && at[dlen - tlen - 1] == '.' && strcasecmp(at + dlen - tlen, d) == 0)
			return true;
	}
	return false;
}

static const struct hk_node_conf *find_node(const struct hk_config *cfg, const char *name);

/* --- curve: CURVE keys of the nodes ---------------------------------------- */

/* A Z85 CURVE key: 40 characters of the Z85 alphabet (32 bytes). */
static bool
z85_key_ok(const char *s)
{
	uint8_t bin[32];

	if (s == NULL || strlen(s) != 40)
		return false;
	return zmq_z85_decode(bin, s) != NULL;
}

/* curve: {NODE: {public_key: Z85, secret_key: Z85 | secret_key_file: PATH}} */
static int
load_curve(struct cfg_ctx *c, struct hk_config *cfg, const yaml_node_t *map)
{
	static const char *const keys[] = { "public_key", "secret_key", "secret_key_file", NULL };

	if (map->type != YAML_MAPPING_NODE || map->data.mapping.pairs.top == map->data.mapping.pairs.start)
		return cfg_error(c, map, "curve", "expected a mapping of node name to "
		    "{public_key, secret_key or secret_key_file} (make keys with `hikyaku keygen`)");
	size_t len = (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
	cfg->curve = xcalloc(len, sizeof(*cfg->curve));
	for (size_t i = 0; i < len; i++) {
		const yaml_node_t *kn = yaml_document_get_node(c->doc, map->data.mapping.pairs.start[i].key);
		const yaml_node_t *v = yaml_document_get_node(c->doc, map->data.mapping.pairs.start[i].value);
		struct hk_curve_conf *k = &cfg->curve[i];
		const yaml_node_t *pub, *sec, *file;
		const char *name = scalar(kn);

		if (name == NULL || *name == '\0')
			return cfg_error(c, kn, "curve", "node names must be non-empty strings");
		if (hk_config_curve(cfg, name))
			return cfg_error(c, kn, name, "curve keys given twice for this node");
		k->node = xstrdup(name);
		k->line = (int)kn->start_mark.line + 1;
		cfg->n_curve++;
		if (v->type != YAML_MAPPING_NODE)
			return cfg_error(c, v, name, "expected {public_key, secret_key or secret_key_file}");
		if (map_check_keys(c, v, "a curve entry", keys))
			return -1;
		if ((pub = map_get(c, v, "public_key")) == NULL)
			return cfg_error(c, v, "public_key", "required for node '%s' (make keys with `hikyaku keygen`)", name);
		if (!z85_key_ok(scalar(pub)))
			return cfg_error(c, pub, "public_key", "node '%s': not a Z85 CURVE key (40 characters, "
			    "from `hikyaku keygen`)", name);
		memcpy(k->public_key, scalar(pub), 41);
		sec = map_get(c, v, "secret_key");
		file = map_get(c, v, "secret_key_file");
		if ((sec == NULL) == (file == NULL))
			return cfg_error(c, v, "secret_key", "node '%s': give exactly one of secret_key and secret_key_file", name);
		if (sec) {
			if (!z85_key_ok(scalar(sec)))
				return cfg_error(c, sec, "secret_key", "node '%s': not a Z85 CURVE key (40 characters)", name);
			k->secret_key = xstrdup(scalar(sec));
		} else {
			if (scalar(file) == NULL || *scalar(file) == '\0')
				return cfg_error(c, file, "secret_key_file", "expected a path");
			k->secret_key_file = resolve_path(c->path, scalar(file));
		}
	}
	return 0;
}

/* With a curve: section, every node has keys, and every entry is a node. */
static int
check_curve(struct cfg_ctx *c, const struct hk_config *cfg)
{
	for (size_t i = 0; i < cfg->n_curve; i++)
		if (find_node(cfg, cfg->curve[i].node) == NULL) {
			snprintf(c->err, c->errlen, "%s:%d: key '%s': curve keys for a node that is not in nodes:",
			    c->path, cfg->curve[i].line, cfg->curve[i].node);
			return -1;
		}
	for (size_t i = 0; i < cfg->n_nodes; i++)
		if (hk_config_curve(cfg, cfg->nodes[i].name) == NULL) {
			snprintf(c->err, c->errlen, "%s:%d: key 'curve': node '%s' has no CURVE keys; with a curve: "
			    "section every node needs them (make keys with `hikyaku keygen`)",
			    c->path, cfg->nodes[i].line, cfg->nodes[i].name);
			return -1;
		}
	return 0;
}

const struct hk_curve_conf *
hk_config_curve(const struct hk_config *cfg, const char *node)
{
	for (size_t i = 0; i < cfg->n_curve; i++)
		if (!strcmp(cfg->curve[i].node, node))
			return &cfg->curve[i];
	return NULL;
}

size_t
hk_config_max_frame(const struct hk_config *cfg)
{
	size_t max = 0;

	for (size_t i = 0; i < cfg->n_nodes; i++)
		if (cfg->nodes[i].role == HK_ROLE_INGRESS && cfg->nodes[i].u.ingress.max_message_size > max)
			max = cfg->nodes[i].u.ingress.max_message_size;
	if (max == 0)
		max = 25u << 20; /* the ingress default */
	return max + HK_FRAME_OVERHEAD;
}

/* --- per-role key tables ------------------------------------------------- */

typedef int (*key_fn)(struct cfg_ctx *, const yaml_node_t *, const char *, struct hk_node_conf *);

struct key_rule {
	const char *key;
	key_fn fn;
};

#define KEY(name, expr) \
	static int k_##name(struct cfg_ctx *c, const yaml_node_t *v, const char *k, struct hk_node_conf *nc) \
	{ (void)nc; return (expr); }

KEY(r_front, get_endpoint(c, v, k, &nc->u.router.front))
KEY(r_back, get_endpoint(c, v, k, &nc->u.router.back))
KEY(r_hbto, get_duration_ms(c, v, k, &nc->u.router.heartbeat_timeout_ms))
KEY(r_enqto, get_duration_ms(c, v, k, &nc->u.router.enqueue_timeout_ms))
KEY(r_resend, get_duration_ms(c, v, k, &nc->u.router.resend_window_ms))
KEY(r_maxinfl, get_count(c, v, k, &nc->u.router.max_inflight_per_sender))
KEY(r_maxpend, get_count(c, v, k, &nc->u.router.max_pending))

/* listen: HOST:PORT - the one relay listener of a simple setup. */
static int
k_i_listen(struct cfg_ctx *c, const yaml_node_t *v, const char *k, struct hk_node_conf *nc)
{
	struct hk_ingress_conf *ic = &nc->u.ingress;

	if (ic->listeners)
		return cfg_error(c, v, k, "give either listen or listeners, not both");
	ic->listeners = xcalloc(1, sizeof(*ic->listeners));
	ic->n_listeners = 1;
	ic->listeners[0].mode = HK_LISTEN_RELAY;
	return get_hostport(c, v, k, &ic->listeners[0].host, &ic->listeners[0].port);
}

/* listeners: [{address: HOST:PORT, mode: relay|submission|smtps, allow_plaintext_auth: BOOL}] */
static int
k_i_listeners(struct cfg_ctx *c, const yaml_node_t *v, const char *k, struct hk_node_conf *nc)
{
	static const char *const keys[] = { "address", "mode", "allow_plaintext_auth", NULL };
	struct hk_ingress_conf *ic = &nc->u.ingress;
	size_t len;

	if (ic->listeners)
		return cfg_error(c, v, k, "give either listen or listeners, not both");
	if (v->type != YAML_SEQUENCE_NODE || v->data.sequence.items.top == v->data.sequence.items.start)
		return cfg_error(c, v, k, "expected a non-empty list of {address, mode, allow_plaintext_auth}");
	len = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
	ic->listeners = xcalloc(len, sizeof(*ic->listeners));
	for (size_t i = 0; i < len; i++) {
		const yaml_node_t *item = yaml_document_get_node(c->doc, v->data.sequence.items.start[i]);
		struct hk_listener_conf *l = &ic->listeners[i];
		const yaml_node_t *a, *m, *p;
		const char *mode;

		ic->n_listeners++;
		if (item->type != YAML_MAPPING_NODE)
			return cfg_error(c, item, k, "each listener is a mapping {address, mode, allow_plaintext_auth}");
		if (map_check_keys(c, item, "a listener", keys))
			return -1;
		if ((a = map_get(c, item, "address")) == NULL)
			return cfg_error(c, item, "address", "required for each listener");
		if (get_hostport(c, a, "address", &l->host, &l->port))
			return -1;
		l->mode = HK_LISTEN_RELAY;
		if ((m = map_get(c, item, "mode")) != NULL) {
			mode = scalar(m);
			if (mode && !strcmp(mode, "relay"))
				l->mode = HK_LISTEN_RELAY;
			else if (mode && !strcmp(mode, "submission"))
				l->mode = HK_LISTEN_SUBMISSION;
			else if (mode && !strcmp(mode, "smtps"))
				l->mode = HK_LISTEN_SMTPS;
			else
				return cfg_error(c, m, "mode", "expected relay, submission or smtps");
		}
		if ((p = map_get(c, item, "allow_plaintext_auth")) != NULL &&
		    get_bool(c, p, "allow_plaintext_auth", &l->allow_plaintext_auth))
			return -1;
	}
	return 0;
}

/* tls: {certificate, key, ciphers, ciphersuites} */
static int
k_i_tls(struct cfg_ctx *c, const yaml_node_t *v, const char *k, struct hk_node_conf *nc)
{
	static const char *const keys[] = { "certificate", "key", "ciphers", "ciphersuites", NULL };
	struct hk_tls_conf *t = &nc->u.ingress.tls;
	const yaml_node_t *x;

	if (v->type != YAML_MAPPING_NODE)
		return cfg_error(c, v, k, "expected a mapping {certificate, key, ciphers, ciphersuites}");
	if (map_check_keys(c, v, "tls", keys))
		return -1;
	if ((x = map_get(c, v, "certificate")) == NULL)
		return cfg_error(c, v, "certificate", "required in tls");
	if (get_string(c, x, "certificate", &t->certificate))
		return -1;
	if ((x = map_get(c, v, "key")) == NULL)
		return cfg_error(c, v, "key", "required in tls");
	if (get_string(c, x, "key", &t->key))
		return -1;
	if ((x = map_get(c, v, "ciphers")) != NULL && get_string(c, x, "ciphers", &t->ciphers))
		return -1;
	if ((x = map_get(c, v, "ciphersuites")) != NULL && get_string(c, x, "ciphersuites", &t->ciphersuites))
		return -1;
	nc->u.ingress.has_tls = true;
	return 0;
}

KEY(i_hostname, get_string(c, v, k, &nc->u.ingress.hostname))
KEY(i_tenant, get_string(c, v, k, &nc->u.ingress.network_tenant))
KEY(i_routers, get_list(c, v, k, &nc->router_names, &nc->u.ingress.n_routers))
KEY(i_subto, get_duration_ms(c, v, k, &nc->u.ingress.submit_timeout_ms))
KEY(i_cmdto, get_duration_ms(c, v, k, &nc->u.ingress.command_timeout_ms))
KEY(i_datato, get_duration_ms(c, v, k, &nc->u.ingress.data_timeout_ms))
KEY(i_maxsize, get_size(c, v, k, &nc->u.ingress.max_message_size))
KEY(i_maxrcpt, get_u32(c, v, k, &nc->u.ingress.max_recipients))
KEY(i_maxsess, get_u32(c, v, k, &nc->u.ingress.max_sessions))

/* An integer that must be at least 1 (0 would refuse everything). */
static int
get_u32_min1(struct cfg_ctx *c, const yaml_node_t *v, const char *k, uint32_t *out)
{
	if (get_u32(c, v, k, out))
		return -1;
	if (*out == 0)
		return cfg_error(c, v, k, "must be at least 1");
	return 0;
}

KEY(i_perip, get_u32_min1(c, v, k, &nc->u.ingress.max_sessions_per_ip))
KEY(i_authlim, get_u32_min1(c, v, k, &nc->u.ingress.auth_failure_limit))
KEY(i_maxerr, get_u32_min1(c, v, k, &nc->u.ingress.max_errors))

static int
k_i_authwin(struct cfg_ctx *c, const yaml_node_t *v, const char *k, struct hk_node_conf *nc)
{
	if (get_duration_ms(c, v, k, &nc->u.ingress.auth_failure_window_ms))
		return -1;
	if (nc->u.ingress.auth_failure_window_ms == 0)
		return cfg_error(c, v, k, "must be longer than 0");
	return 0;
}

/* The DATA reader rejects any line over 998 characters (RFC 5321 4.5.3.1.6),
 * so a header limit can only be lower. */
static int
k_i_hdrlen(struct cfg_ctx *c, const yaml_node_t *v, const char *k, struct hk_node_conf *nc)
{
	uint32_t *n = &nc->u.ingress.max_header_line_length;

	if (get_u32(c, v, k, n))
		return -1;
	if (*n < 78 || *n > 998)
		return cfg_error(c, v, k, "must be 78-998 (RFC 5322 2.1.1)");
	return 0;
}

static int
k_i_barelf(struct cfg_ctx *c, const yaml_node_t *v, const char *k, struct hk_node_conf *nc)
{
	char *s = NULL;
	int rc = 0;

	if (get_string(c, v, k, &s))
		return -1;
	if (!strcmp(s, "reject"))
		nc->u.ingress.bare_lf = HK_BARE_LF_REJECT;
	else if (!strcmp(s, "normalize"))
		nc->u.ingress.bare_lf = HK_BARE_LF_NORMALIZE;
	else
		rc = cfg_error(c, v, k, "'%s' is not reject or normalize", s);
	free(s);
	return rc;
}

static int
k_i_networks(struct cfg_ctx *c, const yaml_node_t *v, const char *k, struct hk_node_conf *nc)
{
	char **list = NULL;
	size_t n = 0;
	int rc = get_list(c, v, k, &list, &n);

	if (rc == 0) {
		free(nc->u.ingress.relay_networks);
		nc->u.ingress.relay_networks = xcalloc(n ? n : 1, sizeof(struct hk_cidr));
		nc->u.ingress.n_relay_networks = n;
		for (size_t i = 0; i < n && rc == 0; i++)
			if (hk_cidr_parse(list[i], &nc->u.ingress.relay_networks[i]) != 0)
				rc = cfg_error(c, v, k, "'%s' is not an address or network (e.g. 10.0.0.0/8)", list[i]);
	}
	for (size_t i = 0; i < n; i++)
		free(list ? list[i] : NULL);
	free(list);
	return rc;
}

KEY(s_routers, get_list(c, v, k, &nc->router_names, &nc->u.sender.n_routers))
KEY(s_queue, get_string(c, v, k, &nc->u.sender.queue_path))
KEY(s_mapsize, get_size(c, v, k, &nc->u.sender.queue_map_size))
KEY(s_sync, get_bool(c, v, k, &nc->u.sender.queue_sync))
KEY(s_hostname, get_string(c, v, k, &nc->u.sender.hostname))
KEY(s_source, get_string(c, v, k, &nc->u.sender.source_address))
KEY(s_weight, get_u32(c, v, k, &nc->u.sender.weight))
KEY(s_dns, get_string(c, v, k, &nc->u.sender.dns_servers))
KEY(s_maxdel, get_u32(c, v, k, &nc->u.sender.max_deliveries))
KEY(s_connto, get_duration_ms(c, v, k, &nc->u.sender.connect_timeout_ms))
KEY(s_cmdto, get_duration_ms(c, v, k, &nc->u.sender.command_timeout_ms))
KEY(s_rmin, get_duration_ms(c, v, k, &nc->u.sender.retry_min_ms))
KEY(s_rmax, get_duration_ms(c, v, k, &nc->u.sender.retry_max_ms))
KEY(s_life, get_duration_ms(c, v, k, &nc->u.sender.max_lifetime_ms))
KEY(s_hb, get_duration_ms(c, v, k, &nc->u.sender.heartbeat_interval_ms))
KEY(s_cachetime, get_duration_ms(c, v, k, &nc->u.sender.connection_cache_time_ms))
KEY(s_delaywarn, get_duration_ms(c, v, k, &nc->u.sender.delay_warning_ms))

/* A path key of a sender, relative to the configuration file. */
static int
get_path(struct cfg_ctx *c, const yaml_node_t *v, const char *k, char **out)
{
	const char *p = scalar(v);

	if (p == NULL || *p == '\0')
		return cfg_error(c, v, k, "expected a path");
	free(*out);
	*out = resolve_path(c->path, p);
	return 0;
}

KEY(s_shaping, get_path(c, v, k, &nc->u.sender.shaping_file))
KEY(s_warmup, get_path(c, v, k, &nc->u.sender.warmup_file))
KEY(s_repdir, get_path(c, v, k, &nc->u.sender.reputation_dir))

static int
k_s_reuse(struct cfg_ctx *c, const yaml_node_t *v, const char *k, struct hk_node_conf *nc)
{
	if (get_u32(c, v, k, &nc->u.sender.connection_reuse_limit))
		return -1;
	if (nc->u.sender.connection_reuse_limit == 0)
		return cfg_error(c, v, k, "must be at least 1 (1: one transaction per connection)");
	return 0;
}

/* tls_ca_file: read at start by the sender; a file it cannot read is a
 * configuration error now rather than a sender that fails later. */
static int
k_s_cafile(struct cfg_ctx *c, const yaml_node_t *v, const char *k, struct hk_node_conf *nc)
{
	if (get_string(c, v, k, &nc->u.sender.tls_ca_file))
		return -1;
	if (access(nc->u.sender.tls_ca_file, R_OK) != 0)
		return cfg_error(c, v, k, "cannot read '%s': %s", nc->u.sender.tls_ca_file,
		    strerror(errno));
	return 0;
}

/* tls_required_domains: [domain, ...], each stored canonical. */
static int
k_s_tlsreq(struct cfg_ctx *c, const yaml_node_t *v, const char *k, struct hk_node_conf *nc)
{
	struct hk_sender_conf *sc = &nc->u.sender;

	if (get_list(c, v, k, &sc->tls_required_domains, &sc->n_tls_required_domains))
		return -1;
	for (size_t i = 0; i < sc->n_tls_required_domains; i++) {
		char canon[HK_DOMAIN_MAX];
		if (hk_domain_canon(sc->tls_required_domains[i], canon) != 0)
			return cfg_error(c, v, k, "'%s' is not a domain name", sc->tls_required_domains[i]);
		free(sc->tls_required_domains[i]);
		sc->tls_required_domains[i] = xstrdup(canon);
	}
	return 0;
}

bool
hk_sender_tls_required(const struct hk_sender_conf *conf, const char *domain)
{
	for (size_t i = 0; i < conf->n_tls_required_domains; i++)
		if (strcmp(conf->tls_required_domains[i], domain) == 0)
			return true;
	return false;
}

/* pools: {NAME: {addresses: [{address, hostname, weight, warmup}], spill_to}} */
static int
k_s_pools(struct cfg_ctx *c, const yaml_node_t *v, const char *k, struct hk_node_conf *nc)
{
	static const char *const pool_keys[] = { "addresses", "spill_to", NULL };
	static const char *const addr_keys[] = { "address", "hostname", "weight", "warmup", NULL };
	struct hk_sender_conf *sc = &nc->u.sender;

	if (v->type != YAML_MAPPING_NODE || v->data.mapping.pairs.top == v->data.mapping.pairs.start)
		return cfg_error(c, v, k, "expected a mapping of pool name to {addresses, spill_to}");
	size_t len = (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
	sc->pools = xcalloc(len, sizeof(*sc->pools));
	for (size_t i = 0; i < len; i++) {
		const yaml_node_t *kn = yaml_document_get_node(c->doc, v->data.mapping.pairs.start[i].key);
		const yaml_node_t *pv = yaml_document_get_node(c->doc, v->data.mapping.pairs.start[i].value);
		struct hk_pool_conf *pc = &sc->pools[i];
		const yaml_node_t *as, *x;
		const char *name = scalar(kn);

		if (name == NULL || *name == '\0')
			return cfg_error(c, kn, k, "pool names must be non-empty strings");
		if (hk_sender_pool(sc, name))
			return cfg_error(c, kn, name, "pool defined twice");
		pc->name = xstrdup(name);
		pc->line = (int)kn->start_mark.line + 1;
		sc->n_pools++;
		if (pv->type != YAML_MAPPING_NODE)
			return cfg_error(c, pv, name, "expected {addresses, spill_to}");
		if (map_check_keys(c, pv, "a pool", pool_keys))
			return -1;
		if ((x = map_get(c, pv, "spill_to")) != NULL && get_string(c, x, "spill_to", &pc->spill_to))
			return -1;
		if ((as = map_get(c, pv, "addresses")) == NULL || as->type != YAML_SEQUENCE_NODE ||
		    as->data.sequence.items.top == as->data.sequence.items.start)
			return cfg_error(c, as ? as : pv, "addresses", "pool '%s' needs a non-empty list of "
			    "{address, hostname, weight, warmup}", name);
		size_t na = (size_t)(as->data.sequence.items.top - as->data.sequence.items.start);
		pc->addrs = xcalloc(na, sizeof(*pc->addrs));
		for (size_t j = 0; j < na; j++) {
			const yaml_node_t *item = yaml_document_get_node(c->doc, as->data.sequence.items.start[j]);
			struct hk_pool_addr *a = &pc->addrs[j];
			unsigned char bin[16];

			pc->n_addrs++;
			a->weight = 1;
			if (item->type != YAML_MAPPING_NODE)
				return cfg_error(c, item, "addresses", "each address is {address, hostname, weight, warmup}");
			if (map_check_keys(c, item, "a pool address", addr_keys))
				return -1;
			if ((x = map_get(c, item, "address")) == NULL)
				return cfg_error(c, item, "address", "required for each address of pool '%s'", name);
			if (get_string(c, x, "address", &a->address))
				return -1;
			if (inet_pton(AF_INET, a->address, bin) != 1 && inet_pton(AF_INET6, a->address, bin) != 1)
				return cfg_error(c, x, "address", "'%s' is not an IPv4 or IPv6 address", a->address);
			for (size_t m = 0; m < j; m++)
				if (strcmp(pc->addrs[m].address, a->address) == 0)
					return cfg_error(c, x, "address", "%s is twice in pool '%s'", a->address, name);
			if ((x = map_get(c, item, "hostname")) == NULL)
				return cfg_error(c, item, "hostname", "required for %s (its EHLO name, matching its PTR)",
				    a->address);
			if (get_string(c, x, "hostname", &a->hostname))
				return -1;
			if ((x = map_get(c, item, "weight")) != NULL && get_u32_min1(c, x, "weight", &a->weight))
				return -1;
			if ((x = map_get(c, item, "warmup")) != NULL && get_bool(c, x, "warmup", &a->warmup))
				return -1;
		}
	}
	for (size_t i = 0; i < sc->n_pools; i++) {
		const char *to = sc->pools[i].spill_to;
		if (to && (hk_sender_pool(sc, to) == NULL || strcmp(to, sc->pools[i].name) == 0))
			return cfg_error(c, v, "spill_to", "pool '%s' spills to '%s', which is not another "
			    "pool of this sender", sc->pools[i].name, to);
	}
	return 0;
}

const struct hk_pool_conf *
hk_sender_pool(const struct hk_sender_conf *sc, const char *name)
{
	for (size_t i = 0; i < sc->n_pools; i++)
		if (sc->pools[i].name && name && strcmp(sc->pools[i].name, name) == 0)
			return &sc->pools[i];
	return NULL;
}

static int
k_s_perdom(struct cfg_ctx *c, const yaml_node_t *v, const char *k, struct hk_node_conf *nc)
{
	if (get_u32(c, v, k, &nc->u.sender.max_connections_per_domain))
		return -1;
	if (nc->u.sender.max_connections_per_domain == 0)
		return cfg_error(c, v, k, "must be at least 1");
	return 0;
}

static int
k_s_port(struct cfg_ctx *c, const yaml_node_t *v, const char *k, struct hk_node_conf *nc)
{
	unsigned long long p;
	if (get_uint(c, v, k, 65535, &p))
		return -1;
	if (p == 0)
		return cfg_error(c, v, k, "port must be 1-65535");
	nc->u.sender.delivery_port = (uint16_t)p;
	return 0;
}

static const struct key_rule router_keys[] = {
	{ "front", k_r_front }, { "back", k_r_back },
	{ "heartbeat_timeout", k_r_hbto }, { "enqueue_timeout", k_r_enqto },
	{ "resend_window", k_r_resend }, { "max_inflight_per_sender", k_r_maxinfl },
	{ "max_pending", k_r_maxpend },
	{ NULL, NULL },
};

static const struct key_rule ingress_keys[] = {
	{ "listen", k_i_listen }, { "listeners", k_i_listeners }, { "tls", k_i_tls },
	{ "hostname", k_i_hostname },
	{ "relay_networks", k_i_networks }, { "network_tenant", k_i_tenant },
	{ "routers", k_i_routers }, { "submit_timeout", k_i_subto },
	{ "command_timeout", k_i_cmdto }, { "data_timeout", k_i_datato },
	{ "max_message_size", k_i_maxsize }, { "max_recipients", k_i_maxrcpt },
	{ "max_sessions", k_i_maxsess }, { "max_sessions_per_ip", k_i_perip },
	{ "max_header_line_length", k_i_hdrlen }, { "bare_lf", k_i_barelf },
	{ "auth_failure_limit", k_i_authlim }, { "auth_failure_window", k_i_authwin },
	{ "max_errors", k_i_maxerr },
	{ NULL, NULL },
};

static const struct key_rule sender_keys[] = {
	{ "routers", k_s_routers }, { "queue", k_s_queue },
	{ "queue_map_size", k_s_mapsize }, { "queue_sync", k_s_sync },
	{ "hostname", k_s_hostname }, { "source_address", k_s_source },
	{ "weight", k_s_weight }, { "dns", k_s_dns },
	{ "delivery_port", k_s_port }, { "max_deliveries", k_s_maxdel },
	{ "connect_timeout", k_s_connto }, { "command_timeout", k_s_cmdto },
	{ "retry_min", k_s_rmin }, { "retry_max", k_s_rmax },
	{ "max_lifetime", k_s_life }, { "heartbeat_interval", k_s_hb },
	{ "connection_cache_time", k_s_cachetime }, { "connection_reuse_limit", k_s_reuse },
	{ "max_connections_per_domain", k_s_perdom }, { "delay_warning_time", k_s_delaywarn },
	{ "pools", k_s_pools }, { "shaping_file", k_s_shaping }, { "warmup_file", k_s_warmup },
	{ "reputation_dir", k_s_repdir },
	{ "tls_required_domains", k_s_tlsreq }, { "tls_ca_file", k_s_cafile },
	{ NULL, NULL },
};

static void
set_defaults(struct hk_node_conf *nc)
{
	switch (nc->role) {
	case HK_ROLE_ROUTER:
		nc->u.router.heartbeat_timeout_ms = 3000;
		nc->u.router.enqueue_timeout_ms = 5000;
		nc->u.router.resend_window_ms = 9000;  /* under the ingress's 10s submit_timeout */
		nc->u.router.max_inflight_per_sender = 1000;
		nc->u.router.max_pending = 10000;
		break;
	case HK_ROLE_INGRESS:
		nc->u.ingress.submit_timeout_ms = 10000;
		nc->u.ingress.command_timeout_ms = 300000;
		nc->u.ingress.data_timeout_ms = 300000;
		nc->u.ingress.max_message_size = 25u << 20;
		nc->u.ingress.max_recipients = 1000;
		nc->u.ingress.max_sessions = 1000;
		nc->u.ingress.max_header_line_length = 998;  /* RFC 5322 2.1.1 */
		nc->u.ingress.max_sessions_per_ip = 50;
		nc->u.ingress.auth_failure_limit = 5;
		nc->u.ingress.auth_failure_window_ms = 300000;
		nc->u.ingress.max_errors = 20;               /* Postfix: smtpd_hard_error_limit */
		nc->u.ingress.bare_lf = HK_BARE_LF_REJECT;   /* Postfix: smtpd_forbid_bare_newline */
		break;
	case HK_ROLE_SENDER:
		nc->u.sender.queue_map_size = (size_t)1 << 30;
		nc->u.sender.queue_sync = true;
		nc->u.sender.weight = 1;
		nc->u.sender.delivery_port = 25;
		nc->u.sender.max_deliveries = 100;
		nc->u.sender.connect_timeout_ms = 30000;
		nc->u.sender.command_timeout_ms = 300000;
		nc->u.sender.retry_min_ms = 300000;
		nc->u.sender.retry_max_ms = 3600000;
		nc->u.sender.max_lifetime_ms = 5u * 86400000u;
		nc->u.sender.heartbeat_interval_ms = 1000;
		nc->u.sender.connection_cache_time_ms = 2000;   /* Postfix: smtp_connection_cache_time_limit */
		nc->u.sender.connection_reuse_limit = 100;
		nc->u.sender.max_connections_per_domain = 20;  /* Postfix: default_destination_concurrency_limit */
		nc->u.sender.delay_warning_ms = 4u * 3600000u;
		break;
	}
}

static int
load_node(struct cfg_ctx *c, const yaml_node_t *key, const yaml_node_t *map, struct hk_node_conf *nc)
{
	const struct key_rule *rules = NULL;
	const yaml_node_pair_t *p;
	const char *name = scalar(key);

	nc->name = xstrdup(name);
	nc->line = (int)key->start_mark.line + 1; /* the line naming the node */
	if (map->type != YAML_MAPPING_NODE)
		return cfg_error(c, map, name, "a node must be a mapping of keys");

	/* The role decides which keys are valid, so read it first. */
	for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		const char *k = scalar(yaml_document_get_node(c->doc, p->key));
		const yaml_node_t *v = yaml_document_get_node(c->doc, p->value);
		if (k && !strcmp(k, "role")) {
			const char *r = scalar(v);
			if (r && !strcmp(r, "ingress"))
				nc->role = HK_ROLE_INGRESS, rules = ingress_keys;
			else if (r && !strcmp(r, "router"))
				nc->role = HK_ROLE_ROUTER, rules = router_keys;
			else if (r && !strcmp(r, "sender"))
				nc->role = HK_ROLE_SENDER, rules = sender_keys;
			else
				return cfg_error(c, v, "role", "node '%s': expected ingress, router or sender", name);
		}
	}
	if (rules == NULL)
		return cfg_error(c, map, "role", "node '%s' has no role", name);
	set_defaults(nc);

	for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		const yaml_node_t *kn = yaml_document_get_node(c->doc, p->key);
		const yaml_node_t *v = yaml_document_get_node(c->doc, p->value);
		const char *k = scalar(kn);
		const struct key_rule *r;

		if (k == NULL)
			return cfg_error(c, kn, "?", "node '%s': keys must be plain strings", name);
		if (!strcmp(k, "role"))
			continue;
		if (!strcmp(k, "http")) {  /* every role: the operations endpoint */
			if (get_hostport(c, v, k, &nc->http_host, &nc->http_port))
				return -1;
			continue;
		}
		for (r = rules; r->key; r++)
			if (!strcmp(r->key, k))
				break;
		if (r->key == NULL)
			return cfg_error(c, kn, k, "unknown key for a %s node '%s' (see docs/CONFIG.md)",
			    hk_role_name(nc->role), name);
		if (r->fn(c, v, k, nc))
			return -1;
	}
	return 0;
}

static const struct hk_node_conf *
find_node(const struct hk_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_nodes; i++)
		if (!strcmp(cfg->nodes[i].name, name))
			return &cfg->nodes[i];
	return NULL;
}

/* Required keys and cross-references, after every node is read. */
static int
check_node(struct cfg_ctx *c, struct hk_config *cfg, struct hk_node_conf *nc, bool tenants_section)
{
#define NEED(cond, key) \
	if (!(cond)) { \
		snprintf(c->err, c->errlen, "%s:%d: key '%s': required for %s node '%s'", \
		    c->path, nc->line, key, hk_role_name(nc->role), nc->name); \
		return -1; \
	}
	char ***eps = NULL;
	size_t n = 0;

	switch (nc->role) {
	case HK_ROLE_ROUTER:
		NEED(nc->u.router.front, "front");
		NEED(nc->u.router.back, "back");
		return 0;
	case HK_ROLE_INGRESS:
		NEED(nc->u.ingress.listeners, "listen (or listeners)");
		NEED(nc->router_names, "routers");
		for (size_t i = 0; i < nc->u.ingress.n_listeners; i++) {
			const struct hk_listener_conf *l = &nc->u.ingress.listeners[i];
			const char *why = NULL;
			if (l->mode == HK_LISTEN_SMTPS && !nc->u.ingress.has_tls)
				why = "an smtps listener needs a tls: map";
			else if (l->mode == HK_LISTEN_SUBMISSION && !nc->u.ingress.has_tls &&
			    !l->allow_plaintext_auth)
				why = "a submission listener needs a tls: map (or allow_plaintext_auth: true)";
			if (why) {
				snprintf(c->err, c->errlen, "%s:%d: key 'listeners': node '%s', listener %s:%u: %s",
				    c->path, nc->line, nc->name, l->host, l->port, why);
				return -1;
			}
		}
		if (!nc->u.ingress.hostname)
			nc->u.ingress.hostname = xstrdup("localhost");
		if (!nc->u.ingress.network_tenant)
			nc->u.ingress.network_tenant = xstrdup("default");
		if (!hk_config_tenant(cfg, nc->u.ingress.network_tenant)) {
			if (tenants_section) {
				snprintf(c->err, c->errlen, "%s:%d: key 'network_tenant': node '%s' names tenant '%s', "
				    "which is not in tenants:", c->path, nc->line, nc->name, nc->u.ingress.network_tenant);
				return -1;
			}
			/* No tenants: section: the network tenant exists implicitly,
			 * with no credentials and no sender restriction. */
			tenant_add(cfg, nc->u.ingress.network_tenant)->implicit = true;
		}
		eps = &nc->u.ingress.routers;
		n = nc->u.ingress.n_routers;
		break;
	case HK_ROLE_SENDER:
		NEED(nc->u.sender.queue_path, "queue");
		NEED(nc->router_names, "routers");
		if (!nc->u.sender.hostname)
			nc->u.sender.hostname = xstrdup("localhost");
		if (nc->u.sender.reputation_dir == NULL) {
			size_t n = strlen(nc->u.sender.queue_path) + sizeof("/reputation");
			nc->u.sender.reputation_dir = xmalloc(n);
			snprintf(nc->u.sender.reputation_dir, n, "%s/reputation", nc->u.sender.queue_path);
		}
		if (nc->u.sender.n_pools > 0 && nc->u.sender.source_address) {
			snprintf(c->err, c->errlen, "%s:%d: key 'source_address': give either source_address "
			    "or pools, not both (node '%s')", c->path, nc->line, nc->name);
			return -1;
		}
		if (nc->u.sender.n_pools == 0) {
			/* One implicit pool: the node's source_address (or the
			 * system's choice) and hostname. */
			struct hk_pool_conf *pc = nc->u.sender.pools = xcalloc(1, sizeof(*pc));
			nc->u.sender.n_pools = 1;
			pc->name = xstrdup("shared");
			pc->line = nc->line;
			pc->addrs = xcalloc(1, sizeof(*pc->addrs));
			pc->n_addrs = 1;
			pc->addrs[0].address = nc->u.sender.source_address
			    ? xstrdup(nc->u.sender.source_address) : NULL;
			pc->addrs[0].hostname = xstrdup(nc->u.sender.hostname);
			pc->addrs[0].weight = 1;
		}
		if (nc->u.sender.weight == 0) {
			snprintf(c->err, c->errlen, "%s:%d: key 'weight': must be at least 1 (node '%s')",
			    c->path, nc->line, nc->name);
			return -1;
		}
		eps = &nc->u.sender.routers;
		n = nc->u.sender.n_routers;
		break;
	}
#undef NEED
	*eps = xcalloc(n ? n : 1, sizeof(char *));
	for (size_t i = 0; i < n; i++) {
		const struct hk_node_conf *r = find_node(cfg, nc->router_names[i]);
		if (r == NULL || r->role != HK_ROLE_ROUTER) {
			snprintf(c->err, c->errlen, "%s:%d: key 'routers': node '%s' names '%s', which is not a router node",
			    c->path, nc->line, nc->name, nc->router_names[i]);
			return -1;
		}
		(*eps)[i] = xstrdup(nc->role == HK_ROLE_INGRESS ? r->u.router.front : r->u.router.back);
	}
	return 0;
}

int
hk_config_load(const char *path, struct hk_config **out, char *err, size_t errlen)
{
	yaml_parser_t parser;
	yaml_document_t doc;
	FILE *f;
	struct hk_config *cfg;
	struct cfg_ctx c = { path, &doc, err, errlen };
	int rc = -1;

	*out = NULL;
	if ((f = fopen(path, "rb")) == NULL) {
		snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	yaml_parser_initialize(&parser);
	yaml_parser_set_input_file(&parser, f);
	if (!yaml_parser_load(&parser, &doc)) {
		snprintf(err, errlen, "%s:%lu: YAML syntax error: %s %s", path,
		    (unsigned long)parser.problem_mark.line + 1,
		    parser.problem ? parser.problem : "", parser.context ? parser.context : "");
		yaml_parser_delete(&parser);
		fclose(f);
		return -1;
	}
	yaml_parser_delete(&parser);
	fclose(f);

	cfg = xcalloc(1, sizeof(*cfg));
	cfg->path = xstrdup(path);
	yaml_node_t *root = yaml_document_get_root_node(&doc);
	yaml_node_t *nodes = NULL, *tenants = NULL, *hot = NULL, *curve = NULL;
	if (root == NULL || root->type != YAML_MAPPING_NODE) {
		cfg_error(&c, root, "nodes", "the file must be a mapping with a 'nodes' key");
		goto out;
	}
	for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
		yaml_node_t *kn = yaml_document_get_node(&doc, p->key);
		const char *k = scalar(kn);
		if (k && !strcmp(k, "nodes"))
			nodes = yaml_document_get_node(&doc, p->value);
		else if (k && !strcmp(k, "tenants"))
			tenants = yaml_document_get_node(&doc, p->value);
		else if (k && !strcmp(k, "hot_domains"))
			hot = yaml_document_get_node(&doc, p->value);
		else if (k && !strcmp(k, "curve"))
			curve = yaml_document_get_node(&doc, p->value);
		else {
			cfg_error(&c, kn, k ? k : "?", "unknown top-level key (expected 'nodes', 'tenants', 'hot_domains' or 'curve')");
			goto out;
		}
	}
	if (tenants && load_tenants(&c, cfg, tenants))
		goto out;
	if (hot && load_hot_domains(&c, cfg, hot))
		goto out;
	if (nodes == NULL || nodes->type != YAML_MAPPING_NODE ||
	    nodes->data.mapping.pairs.top == nodes->data.mapping.pairs.start) {
		cfg_error(&c, nodes ? nodes : root, "nodes", "expected a mapping of node name to node settings");
		goto out;
	}
	size_t count = (size_t)(nodes->data.mapping.pairs.top - nodes->data.mapping.pairs.start);
	cfg->nodes = xcalloc(count, sizeof(struct hk_node_conf));
	for (size_t i = 0; i < count; i++) {
		yaml_node_pair_t *p = &nodes->data.mapping.pairs.start[i];
		yaml_node_t *kn = yaml_document_get_node(&doc, p->key);
		const char *name = scalar(kn);
		if (name == NULL || *name == '\0') {
			cfg_error(&c, kn, "nodes", "node names must be non-empty strings");
			goto out;
		}
		if (find_node(cfg, name)) {
			cfg_error(&c, kn, name, "node defined twice");
			goto out;
		}
		cfg->n_nodes++;
		if (load_node(&c, kn, yaml_document_get_node(&doc, p->value), &cfg->nodes[i]))
			goto out;
	}
	for (size_t i = 0; i < cfg->n_nodes; i++)
		if (check_node(&c, cfg, &cfg->nodes[i], tenants != NULL))
			goto out;
	if (curve && (load_curve(&c, cfg, curve) || check_curve(&c, cfg)))
		goto out;
	/* Resolved last: implicit tenants may have moved the array. */
	for (size_t i = 0; i < cfg->n_nodes; i++)
		if (cfg->nodes[i].role == HK_ROLE_INGRESS)
			cfg->nodes[i].u.ingress.tenant = hk_config_tenant(cfg, cfg->nodes[i].u.ingress.network_tenant);
	rc = 0;
out:
	yaml_document_delete(&doc);
	if (rc == 0)
		*out = cfg;
	else
		hk_config_free(&cfg);
	return rc;
}

static void
free_list(char **l, size_t n)
{
	for (size_t i = 0; l && i < n; i++)
		free(l[i]);
	free(l);
}

void
hk_config_free(struct hk_config **cfgp)
{
	struct hk_config *cfg = *cfgp;

	if (cfg == NULL)
		return;
	for (size_t i = 0; i < cfg->n_nodes; i++) {
		struct hk_node_conf *nc = &cfg->nodes[i];
		switch (nc->role) {
		case HK_ROLE_ROUTER:
			free(nc->u.router.front);
			free(nc->u.router.back);
			break;
		case HK_ROLE_INGRESS:
			for (size_t j = 0; j < nc->u.ingress.n_listeners; j++)
				free(nc->u.ingress.listeners[j].host);
			free(nc->u.ingress.listeners);
			free(nc->u.ingress.tls.certificate);
			free(nc->u.ingress.tls.key);
			free(nc->u.ingress.tls.ciphers);
			free(nc->u.ingress.tls.ciphersuites);
			free(nc->u.ingress.hostname);
			free(nc->u.ingress.relay_networks);
			free(nc->u.ingress.network_tenant);
			free_list(nc->router_names, nc->u.ingress.n_routers);
			free_list(nc->u.ingress.routers, nc->u.ingress.n_routers);
			break;
		case HK_ROLE_SENDER:
			free(nc->u.sender.queue_path);
			free(nc->u.sender.hostname);
			free(nc->u.sender.source_address);
			free(nc->u.sender.dns_servers);
			free(nc->u.sender.tls_ca_file);
			free_list(nc->u.sender.tls_required_domains, nc->u.sender.n_tls_required_domains);
			for (size_t j = 0; j < nc->u.sender.n_pools; j++) {
				struct hk_pool_conf *pc = &nc->u.sender.pools[j];
				for (size_t m = 0; m < pc->n_addrs; m++) {
					free(pc->addrs[m].address);
					free(pc->addrs[m].hostname);
				}
				free(pc->addrs);
				free(pc->name);
				free(pc->spill_to);
			}
			free(nc->u.sender.pools);
			free(nc->u.sender.shaping_file);
			free(nc->u.sender.warmup_file);
			free(nc->u.sender.reputation_dir);
			free_list(nc->router_names, nc->u.sender.n_routers);
			free_list(nc->u.sender.routers, nc->u.sender.n_routers);
			break;
		}
		free(nc->name);
		free(nc->http_host);
	}
	free(cfg->nodes);
	for (size_t i = 0; i < cfg->n_hot_domains; i++)
		free(cfg->hot_domains[i].domain);
	free(cfg->hot_domains);
	for (size_t i = 0; i < cfg->n_tenants; i++) {
		struct hk_tenant_conf *t = &cfg->tenants[i];
		for (size_t j = 0; j < t->n_credentials; j++) {
			free(t->credentials[j].user);
			free(t->credentials[j].hash);
		}
		free(t->credentials);
		free(t->credentials_file);
		free_list(t->sender_domains, t->n_sender_domains);
		free(t->pool);
		free(t->name);
	}
	free(cfg->tenants);
	for (size_t i = 0; i < cfg->n_curve; i++) {
		free(cfg->curve[i].node);
		if (cfg->curve[i].secret_key)
			explicit_bzero(cfg->curve[i].secret_key, strlen(cfg->curve[i].secret_key));
		free(cfg->curve[i].secret_key);
		free(cfg->curve[i].secret_key_file);
	}
	free(cfg->curve);
	free(cfg->path);
	free(cfg);
	*cfgp = NULL;
}

const struct hk_node_conf *
hk_config_node(const struct hk_config *cfg, const char *name)
{
	return find_node(cfg, name);
}

void
hk_config_use_inproc(struct hk_config *cfg)
{
	char buf[512];

	for (size_t i = 0; i < cfg->n_nodes; i++) {
		struct hk_node_conf *nc = &cfg->nodes[i];
		char **eps = NULL;
		size_t n = 0;
		if (nc->role == HK_ROLE_ROUTER) {
			free(nc->u.router.front);
			free(nc->u.router.back);
			snprintf(buf, sizeof(buf), "inproc://%s.front", nc->name);
			nc->u.router.front = xstrdup(buf);
			snprintf(buf, sizeof(buf), "inproc://%s.back", nc->name);
			nc->u.router.back = xstrdup(buf);
			continue;
		}
		if (nc->role == HK_ROLE_INGRESS)
			eps = nc->u.ingress.routers, n = nc->u.ingress.n_routers;
		else
			eps = nc->u.sender.routers, n = nc->u.sender.n_routers;
		for (size_t j = 0; j < n; j++) {
			snprintf(buf, sizeof(buf), "inproc://%s.%s", nc->router_names[j],
			    nc->role == HK_ROLE_INGRESS ? "front" : "back");
			free(eps[j]);
			eps[j] = xstrdup(buf);
		}
	}
}

const char *
hk_listen_mode_name(enum hk_listen_mode mode)
{
	switch (mode) {
	case HK_LISTEN_RELAY: return "relay";
	case HK_LISTEN_SUBMISSION: return "submission";
	case HK_LISTEN_SMTPS: return "smtps";
	}
	return "unknown";
}

const char *
hk_role_name(enum hk_role role)
{
	switch (role) {
	case HK_ROLE_INGRESS: return "ingress";
	case HK_ROLE_ROUTER: return "router";
	case HK_ROLE_SENDER: return "sender";
	}
	return "unknown";
}
