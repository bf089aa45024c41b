/*
 * cmd_cluster - `hikyaku cluster status` (see cmd_cluster.h), with libcurl.
 */
/* System */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Third-party */
#include <curl/curl.h>
#include <jansson.h>

/* common/ */
#include "cmd_cluster.h"
#include "hk_config.h"
#include "hk_fetch.h"
#include "hk_util.h"

/* fetch - GET URL into *doc, a /cluster document. 0, or -1 with why. */
static int
fetch(CURL *curl, const char *url, json_t **doc, char *why, size_t whylen)
{
	if (hk_fetch_json(curl, url, doc, why, whylen) != 0)
		return -1;
	if (!json_is_array(json_object_get(*doc, "members"))) {
		snprintf(why, whylen, "not a /cluster document: no members");
		json_decref(*doc);
		return -1;
	}
	return 0;
}

static void
print_router(const char *name, const char *url, json_t *doc)
{
	json_t *members = json_object_get(doc, "members"), *m;
	size_t i;
	int w = 6;

	printf("router %s (%s): %zu members, %lld domains seen recently\n", name, url,
	    json_array_size(members), (long long)json_integer_value(json_object_get(doc, "domains_seen")));
	json_array_foreach(members, i, m) {
		int l = (int)strlen(json_string_value(json_object_get(m, "id")) ?: "");
		if (l > w)
			w = l;
	}
	printf("  %-*s  %-4s  %-8s  %6s  %8s  %8s  %8s  %7s  %s\n", w, "MEMBER", "LIVE", "DRAINING",
	    "WEIGHT", "QUEUE", "INFLIGHT", "HB_AGE", "DOMAINS", "ENDPOINT");
	json_array_foreach(members, i, m) {
		const char *id = json_string_value(json_object_get(m, "id"));
		const char *ep = json_string_value(json_object_get(m, "endpoint"));
		char age[32];
		snprintf(age, sizeof(age), "%.1fs",
		    (double)json_integer_value(json_object_get(m, "heartbeat_age_ms")) / 1000.0);
		printf("  %-*s  %-4s  %-8s  %6lld  %8lld  %8lld  %8s  %7lld  %s\n", w, id ? id : "?",
		    json_is_true(json_object_get(m, "live")) ? "yes" : "no",
		    json_is_true(json_object_get(m, "draining")) ? "yes" : "no",
		    (long long)json_integer_value(json_object_get(m, "weight")),
		    (long long)json_integer_value(json_object_get(m, "queue_depth")),
		    (long long)json_integer_value(json_object_get(m, "inflight")),
		    age, (long long)json_integer_value(json_object_get(m, "domains")),
		    ep && *ep ? ep : "-");
	}
	long long unowned = json_integer_value(json_object_get(doc, "domains_unowned"));
	if (unowned > 0)
		printf("  %lld domains have no owner (no live sender)\n", unowned);
}

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: hikyaku cluster status --config FILE\n"
	    "  asks every router of FILE (its http: address) for the members it sees\n"
	    "  and how many of its recently routed domains each owns; exit 1 if a\n"
	    "  router cannot be asked\n");
}

int
cmd_cluster_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *config = NULL;
	struct hk_config *cfg = NULL;
	char err[512];
	int ch, rc = 0, routers = 0;
	CURL *curl;

	if (argc < 3 || strcmp(argv[2], "status") != 0) {
		usage(stderr);
		return 2;
	}
	optind = 3;
	while ((ch = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': config = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (config == NULL || optind != argc) {
		usage(stderr);
		return 2;
	}
	if (hk_config_load(config, &cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "hikyaku cluster: %s\n", err);
		return 1;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	curl = curl_easy_init();
	for (size_t i = 0; i < cfg->n_nodes; i++) {
		const struct hk_node_conf *nc = &cfg->nodes[i];
		char url[300], why[256];
		json_t *doc = NULL;

		if (nc->role != HK_ROLE_ROUTER)
			continue;
		routers++;
		if (nc->http_host == NULL) {
			fprintf(stderr, "router %s: unreachable: no http: address in %s\n", nc->name, config);
			rc = 1;
			continue;
		}
		hk_fetch_url(nc, "/cluster", url, sizeof(url));
		if (curl == NULL || fetch(curl, url, &doc, why, sizeof(why)) != 0) {
			fprintf(stderr, "router %s (%s): unreachable: %s\n", nc->name, url,
			    curl ? why : "cannot start libcurl");
			printf("router %s (%s): UNREACHABLE\n", nc->name, url);
			rc = 1;
			continue;
		}
		print_router(nc->name, url, doc);
		json_decref(doc);
	}
	if (routers == 0) {
		fprintf(stderr, "hikyaku cluster: no router in %s\n", config);
		rc = 1;
	}
	curl_easy_cleanup(curl);
	curl_global_cleanup();
	hk_config_free(&cfg);
	return rc;
}
