/*
 * hk_domain - the destination domain of an address, in the canonical form the
 * cluster shards on: lower-case ASCII, IDNA A-label (libidn2), no trailing dot.
 */
#ifndef HK_DOMAIN_H
#define HK_DOMAIN_H

#include <stddef.h>

#define HK_DOMAIN_MAX 256

/* hk_domain_of - canonical domain of ADDRESS ("local@domain"), the part after
 * the last '@'. Returns 0, or -1 if there is no valid domain. */
int hk_domain_of(const char *address, char out[HK_DOMAIN_MAX]);

/* hk_domain_canon - canonical form of a domain name. 0 or -1. */
int hk_domain_canon(const char *domain, char out[HK_DOMAIN_MAX]);

#endif
