/*
 * ingress_limits - the pure parts of the ingress's limits: the key a client
 * address is counted under, and the end-of-message checks that come after
 * the DATA reader's own (bare LF policy, header line length).
 *
 * The counting itself (sessions per IP, AUTH failures per IP) is hk_rate's
 * and hk_count's, on the node's loop; the replies are chosen here so that
 * the session only forwards them. No socket, no clock, no global.
 */
#ifndef INGRESS_LIMITS_H
#define INGRESS_LIMITS_H

#include <stdbool.h>
#include <stddef.h>

#include <netinet/in.h>
#include <sys/socket.h>

/* common/ */
#include "hk_config.h"

/* This role */
#include "ingress_parse.h"

/* "255.255.255.255" or "ffff:ffff:ffff:ffff::/64" and a NUL (room for any inet_ntop text + "/64"). */
#define INGRESS_IP_KEY_MAX (INET6_ADDRSTRLEN + 4)

/*
 * ingress_limits_ip_key - the key client address SA is counted under: the
 * IPv4 address itself (also for an IPv4-mapped IPv6 address), or the /64 of
 * an IPv6 address ("2001:db8:1:2::/64"), since one IPv6 host usually holds a
 * whole /64 and could otherwise take a fresh address per connection.
 * Returns 0, or -1 (and "") for another address family.
 */
int ingress_limits_ip_key(const struct sockaddr *sa, char out[INGRESS_IP_KEY_MAX]);

/*
 * ingress_limits_message - the end-of-message checks of conf C on the
 * client's message MSG[0..len) (without our Received header), once the DATA
 * reader found nothing wrong: a line ended by a bare LF when bare_lf is
 * reject (BARE_LF says one was seen), then header lines longer than
 * max_header_line_length. Returns false if the message may be queued; else
 * true with the reply in err and the name of the limit (its config key) in
 * *limit.
 */
bool ingress_limits_message(const struct hk_ingress_conf *c, bool bare_lf, const char *msg,
    size_t len, char err[INGRESS_REPLY_MAX], const char **limit);

#endif
