/*
 * hk_fetch - the admin commands' HTTP client (libcurl): GET a node's JSON
 * document from its `http:` address.
 */
#ifndef HK_FETCH_H
#define HK_FETCH_H

#include <stddef.h>
#include <curl/curl.h>
#include <jansson.h>
#include "hk_config.h"

/* hk_fetch_url - the URL of PATH on node NC's http: address (a wildcard
 * listen address is asked on loopback). */
void hk_fetch_url(const struct hk_node_conf *nc, const char *path, char *url, size_t len);

/* hk_fetch_json - GET URL (3 s timeout, no proxy) and parse the body (at
 * most 16 MB) into *doc. 0, or -1 with why (transport, status, JSON). */
int hk_fetch_json(CURL *curl, const char *url, json_t **doc, char *why, size_t whylen);

#endif
