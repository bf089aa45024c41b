/*
 * ingress_limits - client address keys and end-of-message limit checks.
 *
 * Bare LF: a line ended by LF alone is what SMTP smuggling (CVE-2023-51766
 * and its kin) hides a second message behind, because servers disagree on
 * whether "<LF>.<LF>" ends the data. Our DATA reader never ends there, but a
 * server downstream of a normalising relay might be fooled by what we pass
 * on; so by default such a message is refused whole, as Postfix's
 * smtpd_forbid_bare_newline does (there with 521 and a disconnect; here the
 * session goes on, only the message is refused).
 */
/* System */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

/* This role */
#include "ingress_headers.h"
#include "ingress_limits.h"

int
ingress_limits_ip_key(const struct sockaddr *sa, char out[INGRESS_IP_KEY_MAX])
{
	struct in6_addr net;
	char buf[INET6_ADDRSTRLEN];

	out[0] = '\0';
	if (sa->sa_family == AF_INET) {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, INGRESS_IP_KEY_MAX);
		return 0;
	}
	if (sa->sa_family != AF_INET6)
		return -1;
	net = ((const struct sockaddr_in6 *)sa)->sin6_addr;
	if (IN6_IS_ADDR_V4MAPPED(&net)) {
		inet_ntop(AF_INET, net.s6_addr + 12, out, INGRESS_IP_KEY_MAX);
		return 0;
	}
	memset(net.s6_addr + 8, 0, 8);
	inet_ntop(AF_INET6, &net, buf, sizeof(buf));
	snprintf(out, INGRESS_IP_KEY_MAX, "%s/64", buf);
	return 0;
}

bool
ingress_limits_message(const struct hk_ingress_conf *c, bool bare_lf, const char *msg,
    size_t len, char err[INGRESS_REPLY_MAX], const char **limit)
{
	struct ingress_headers h;

	if (bare_lf && c->bare_lf == HK_BARE_LF_REJECT) {
		snprintf(err, INGRESS_REPLY_MAX, "550 5.5.2 Error: bare <LF> received");
		*limit = "bare_lf";
		return true;
	}
	ingress_headers_scan(msg, len, &h);
	if (h.max_line_len > c->max_header_line_length) {
		snprintf(err, INGRESS_REPLY_MAX,
		    "554 5.6.0 Message rejected: header line too long (more than %u characters)",
		    (unsigned)c->max_header_line_length);
		*limit = "max_header_line_length";
		return true;
	}
	return false;
}
