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
#include "hk_util.h"

#define CLUSTER_TIMEOUT_MS 3000L
#define CLUSTER_MAX_BODY (16u << 20)

struct body {
	char *data;
	size_t len;
};

static size_t
on_data(char *p, size_t size, size_t n, void *arg)
{
	struct body *b = arg;
	size_t add = size * n;

	if (b->len + add > CLUSTER_MAX_BODY)
		return 0;   /* curl fails the transfer */
	b->data = xrealloc(b->data, b->len + add + 1);
	memcpy(b->data + b->len, p, add);
	b->len += add;
	b->data[b->len] = '\0';
	return add;
}

/* The URL of a router's /cluster: a wildcard listen address is asked on loopback. */
static void
cluster_url(const struct hk_node_conf *nc, char *url, size_t len)
{
	const char *h = nc->http_host;

	if (!strcmp(h, "0.0.0.0") || !strcmp(h, "*"))
		h = "127.0.0.1";
	else if (!strcmp(h, "::"))
		h = "::1";
	if (strchr(h, ':'))
		snprintf(url, len, "http://[%s]:%u/cluster", h, nc->http_port);
	else
		snprintf(url, len, "http://%s:%u/cluster", h, nc->http_port);
}

/* fetch - GET URL into *doc. 0, or -1 with why. */
static int
fetch(CURL *curl, const char *url, json_t **doc, char *why, size_t whylen)
{
	struct body b = { NULL, 0 };
	json_error_t jerr;
	long status = 0;
	CURLcode rc;

	curl_easy_reset(curl);
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, CLUSTER_TIMEOUT_MS);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, CLUSTER_TIMEOUT_MS);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, &b);
	rc = curl_easy_perform(curl);
	if (rc != CURLE_OK) {
		snprintf(why, whylen, "%s", curl_easy_strerror(rc));
		free(b.data);
		return -1;
	}
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
	if (status != 200) {
		snprintf(why, whylen, "HTTP status %ld", status);
		free(b.data);
		return -1;
	}
	*doc = json_loadb(b.data ? b.data : "", b.len, 0, &jerr);
	free(b.data);
	if (*doc == NULL || !json_is_array(json_object_get(*doc, "members"))) {
		snprintf(why, whylen, "not a /cluster document: %s", *doc ? "no members" : jerr.text);
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
		cluster_url(nc, url, sizeof(url));
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
