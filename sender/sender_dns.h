/*
 * sender_dns - MX resolution with c-ares inside the libuv loop.
 *
 * Resolves a destination domain to the ordered list of addresses to try
 * (RFC 5321 §5.1): MX records ordered by preference, random order among equal
 * preferences, each host's A and AAAA addresses; no MX records at all falls
 * back to the domain's own A/AAAA (implicit MX, preference 0); a null MX
 * (RFC 7505: a single "0 ." record) is reported as SENDER_DNS_NULLMX.
 */
#ifndef SENDER_DNS_H
#define SENDER_DNS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

typedef struct sender_dns sender_dns;

enum sender_dns_status {
	SENDER_DNS_OK = 0,
	SENDER_DNS_TEMPFAIL,    /* SERVFAIL, timeout, refused: try later */
	SENDER_DNS_NXDOMAIN,    /* the domain does not exist: bounce */
	SENDER_DNS_NULLMX,      /* RFC 7505: domain accepts no mail: bounce 5.1.10 */
	SENDER_DNS_NOHOST,      /* MX hosts (or the domain) have no address: try later */
};

struct sender_mx_addr {
	char host[256];                 /* MX host name (or the domain itself) */
	uint16_t pref;
	struct sockaddr_storage addr;   /* port is 0: the caller sets it */
	socklen_t addrlen;
};

struct sender_dns_result {
	enum sender_dns_status status;
	const char *domain;
	struct sender_mx_addr *addrs;   /* in the order to try; owned by the module */
	size_t n_addrs;
	char error[160];                /* human-readable cause when status != OK */
};

/* Called exactly once per resolve, always asynchronously. res and everything
 * it points to are valid only during the call. */
typedef void (*sender_dns_cb)(const struct sender_dns_result *res, void *arg);

/* sender_dns_new - servers is "host:port[,host:port...]" or NULL (system
 * resolv.conf). Returns 0 or a negative error, with a reason in err. */
int sender_dns_new(sender_dns **out, uv_loop_t *loop, const char *servers,
    uint32_t timeout_ms, char *err, size_t errlen);

/* sender_dns_resolve - start resolving DOMAIN; cb(arg) is called later.
 * Returns 0, or negative (cb will not be called). */
int sender_dns_resolve(sender_dns *dns, const char *domain, sender_dns_cb cb, void *arg);

/* sender_dns_close - cancel pending lookups (their callbacks run with
 * SENDER_DNS_TEMPFAIL), close handles; freed once libuv released them. */
void sender_dns_close(sender_dns *dns);

#endif
