/*
 * hk_fetch - GET a node's JSON document over HTTP (see hk_fetch.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hk_fetch.h"
#include "hk_util.h"

#define FETCH_TIMEOUT_MS 3000L
#define FETCH_MAX_BODY (16u << 20)

struct body {
	char *data;
	size_t len;
};

static size_t
on_data(char *p, size_t size, size_t n, void *arg)
{
	struct body *b = arg;
	size_t add = size * n;

	if (b->len + add > FETCH_MAX_BODY)
		return 0;   /* curl fails the transfer */
	b->data = xrealloc(b->data, b->len + add + 1);
	memcpy(b->data + b->len, p, add);
	b->len += add;
	b->data[b->len] = '\0';
	return add;
}

void
hk_fetch_url(const struct hk_node_conf *nc, const char *path, char *url, size_t len)
{
	const char *h = nc->http_host;

	if (!strcmp(h, "0.0.0.0") || !strcmp(h, "*"))
		h = "127.0.0.1";
	else if (!strcmp(h, "::"))
		h = "::1";
	if (strchr(h, ':'))
		snprintf(url, len, "http://[%s]:%u%s", h, nc->http_port, path);
	else
		snprintf(url, len, "http://%s:%u%s", h, nc->http_port, path);
}

int
hk_fetch_json(CURL *curl, const char *url, json_t **doc, char *why, size_t whylen)
{
	struct body b = { NULL, 0 };
	json_error_t jerr;
	long status = 0;
	CURLcode rc;

	curl_easy_reset(curl);
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, FETCH_TIMEOUT_MS);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, FETCH_TIMEOUT_MS);
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
	if (*doc == NULL) {
		snprintf(why, whylen, "not JSON: %s", jerr.text);
		return -1;
	}
	return 0;
}

