/*
 * hk_util - allocation that cannot fail (x*), randomness, time, small string helpers.
 */
#ifndef HK_UTIL_H
#define HK_UTIL_H

#include <stddef.h>
#include <stdint.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* hk_random - fill P with N bytes from the OS random source (getrandom). 0, or -1 with errno. */
int hk_random(void *p, size_t n);

/* hk_now_ms - wall clock, Unix epoch milliseconds. */
int64_t hk_now_ms(void);

/* hk_parse_hostport - "host:port" or "[v6]:port" into host (caller frees) and port. 0 or -1. */
/* hk_put_be / hk_get_be - N bytes (1..8) big-endian: the byte order of
 * every stored key and value, so that keys sort as numbers. */
void hk_put_be(uint8_t *p, uint64_t v, int n);
uint64_t hk_get_be(const uint8_t *p, int n);

/* hk_hexval - the value of hex digit C (either case), or -1. */
int hk_hexval(unsigned char c);

int hk_parse_hostport(const char *s, char **host, uint16_t *port);

#endif
