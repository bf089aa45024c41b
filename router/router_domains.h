/*
 * router_domains - a bounded set of the destination domains a router has
 * routed recently, least recently used first out.
 *
 * It feeds the per-member domain counts of GET /cluster. Not thread-safe:
 * the router's loop touches it and the HTTP thread copies it, under the
 * router's lock (router_http).
 */
#ifndef ROUTER_DOMAINS_H
#define ROUTER_DOMAINS_H

#include <stddef.h>

#define ROUTER_DOMAINS_MAX 100000

typedef struct router_domains router_domains;

/* router_domains_new - an empty set holding at most CAP (>= 1) domains. */
router_domains *router_domains_new(size_t cap);
void router_domains_free(router_domains **d);

/* router_domains_touch - add DOMAIN, or mark it used now; the least
 * recently used one goes when the set is full. */
void router_domains_touch(router_domains *d, const char *domain);

size_t router_domains_count(const router_domains *d);
int router_domains_has(const router_domains *d, const char *domain);

/* router_domains_copy - every domain, most recently used first, as one
 * buffer of NUL-terminated strings (caller frees); *n gets the count. */
char *router_domains_copy(const router_domains *d, size_t *n);

#endif
