/*
 * cmd_status - `hikyaku shaping|warmup status` (see cmd_status.h).
 */
/* System */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Third-party */
#include <curl/curl.h>
#include <jansson.h>

/* common/ */
#include "cmd_status.h"
#include "hk_config.h"
#include "hk_fetch.h"
#include "hk_util.h"

static long long
num(json_t *o, const char *k)
{
	return (long long)json_integer_value(json_object_get(o, k));
}

static const char *
str(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s && *s ? s : "-";
}

/* A limit, "-" for none. */
static const char *
lim(long long v, char *buf, size_t len)
{
	if (v <= 0 || v == 4294967295LL)
		return "-";
	snprintf(buf, len, "%lld", v);
	return buf;
}

/* "in 42s" / "-": a Unix-ms time from now. */
static const char *
until(long long ms, char *buf, size_t len)
{
	long long now = (long long)hk_now_ms();
	if (ms <= now)
		return "-";
	snprintf(buf, len, "in %llds", (ms - now + 999) / 1000);
	return buf;
}

static void
print_shaping(const char *node, json_t *doc)
{
	json_t *r;
	size_t i;
	char a[32], b[32], c[32], d[32];

	printf("sender %s: %zu (address, rule) pairs\n", node, json_array_size(doc));
	printf("  %-28s %-10s %9s %13s %13s %6s %10s  %s\n", "ADDRESS", "RULE", "CONNS",
	    "SENT/MIN", "SENT/HOUR", "FACTOR", "SUSPENDED", "LAST THROTTLE");
	json_array_foreach(doc, i, r) {
		char conns[40], smin[40], shour[40];
		snprintf(conns, sizeof(conns), "%lld/%s", num(r, "connections"),
		    lim(num(r, "max_connections"), a, sizeof(a)));
		snprintf(smin, sizeof(smin), "%lld/%s", num(r, "sent_minute"),
		    lim(num(r, "max_per_minute"), b, sizeof(b)));
		snprintf(shour, sizeof(shour), "%lld/%s", num(r, "sent_hour"),
		    lim(num(r, "max_per_hour"), c, sizeof(c)));
		printf("  %-28s %-10s %9s %13s %13s %6.2f %10s  %s\n", str(r, "addr"), str(r, "rule"),
		    conns, smin, shour, json_real_value(json_object_get(r, "factor")),
		    until(num(r, "suspended_until"), d, sizeof(d)), str(r, "why"));
	}
}

/* A cap or count that may be null (no cap): "-". */
static const char *
capv(json_t *o, const char *k, char *buf, size_t len)
{
	json_t *v = json_object_get(o, k);
	if (!json_is_integer(v))
		return "-";
	snprintf(buf, len, "%lld", (long long)json_integer_value(v));
	return buf;
}

/* A share that may be null (nothing to divide yet): "-". */
static const char *
pct(json_t *o, const char *k, char *buf, size_t len)
{
	json_t *v = json_object_get(o, k);
	if (!json_is_number(v) || json_number_value(v) < 0)
		return "-";
	snprintf(buf, len, "%.2f%%", 100 * json_number_value(v));
	return buf;
}

static void
print_warmup(const char *node, json_t *doc)
{
	json_t *r;
	size_t i;
	char a[32], b[32], c[32], d[32], e[32], f[32];

	printf("sender %s: %zu (address, provider) pairs under warm-up\n", node, json_array_size(doc));
	printf("  %-16s %-10s %4s %7s %9s %9s %9s %9s %8s %8s %8s  %s\n", "ADDRESS", "PROVIDER",
	    "DAY", "STEP", "DAY_CAP", "SENT", "REMAIN", "HOUR_CAP", "ACCEPT", "BOUNCE", "COMPL", "HOLD");
	json_array_foreach(doc, i, r) {
		char step[32];
		snprintf(step, sizeof(step), "%lld/%lld", num(r, "step"), num(r, "steps"));
		printf("  %-16s %-10s %4lld %7s %9s %9lld %9s %9s %8s %8s %8s  %s%s%s\n",
		    str(r, "addr"), str(r, "provider"), num(r, "day"),
		    json_is_true(json_object_get(r, "done")) ? "warm" : step,
		    capv(r, "day_cap", a, sizeof(a)), num(r, "sent_day"),
		    capv(r, "remaining", b, sizeof(b)), capv(r, "hour_cap", c, sizeof(c)),
		    pct(r, "acceptance", d, sizeof(d)), pct(r, "bounce_rate", e, sizeof(e)),
		    pct(r, "complaint_rate", f, sizeof(f)),
		    str(r, "hold"), *str(r, "why") != '-' ? ": " : "",
		    *str(r, "why") != '-' ? str(r, "why") : "");
	}
}

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: hikyaku shaping|warmup status --config FILE [--node SENDER] [--json]\n"
	    "  asks every sender of FILE (or SENDER) at its http: address for its shaping\n"
	    "  state per (source address, rule), or its warm-up state per (source\n"
	    "  address, provider); exit 1 if a sender cannot be asked\n");
}

int
cmd_status_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "node", required_argument, NULL, 'n' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *config = NULL, *only = NULL, *what = argv[1];
	bool as_json = false;
	struct hk_config *cfg = NULL;
	char err[512];
	int ch, rc = 0, senders = 0;
	CURL *curl;

	if (argc < 3 || strcmp(argv[2], "status") != 0) {
		usage(stderr);
		return 2;
	}
	optind = 3;
	while ((ch = getopt_long(argc, argv, "c:n:jh", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': config = optarg; break;
		case 'n': only = optarg; break;
		case 'j': as_json = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (config == NULL || optind != argc) {
		usage(stderr);
		return 2;
	}
	if (hk_config_load(config, &cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "hikyaku %s: %s\n", what, err);
		return 1;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	curl = curl_easy_init();
	for (size_t i = 0; i < cfg->n_nodes; i++) {
		const struct hk_node_conf *nc = &cfg->nodes[i];
		char url[300], why[256], path[16];
		json_t *doc = NULL;

		if (nc->role != HK_ROLE_SENDER || (only && strcmp(only, nc->name) != 0))
			continue;
		senders++;
		if (nc->http_host == NULL) {
			fprintf(stderr, "sender %s: unreachable: no http: address in %s\n", nc->name, config);
			rc = 1;
			continue;
		}
		snprintf(path, sizeof(path), "/%s", what);
		hk_fetch_url(nc, path, url, sizeof(url));
		if (curl == NULL || hk_fetch_json(curl, url, &doc, why, sizeof(why)) != 0 ||
		    !json_is_array(doc)) {
			fprintf(stderr, "sender %s (%s): unreachable: %s\n", nc->name, url,
			    curl == NULL ? "cannot start libcurl" : doc ? "not a list" : why);
			json_decref(doc);
			rc = 1;
			continue;
		}
		if (as_json) {
			json_t *o = json_pack("{s:s, s:O}", "sender", nc->name, what, doc);
			char *s = json_dumps(o, JSON_COMPACT);
			printf("%s\n", s);
			free(s);
			json_decref(o);
		} else if (!strcmp(what, "shaping")) {
			print_shaping(nc->name, doc);
		} else {
			print_warmup(nc->name, doc);
		}
		json_decref(doc);
	}
	if (senders == 0) {
		fprintf(stderr, "hikyaku %s: no sender%s%s in %s\n", what, only ? " named " : "",
		    only ? only : "", config);
		rc = 1;
	}
	curl_easy_cleanup(curl);
	curl_global_cleanup();
	hk_config_free(&cfg);
	return rc;
}
