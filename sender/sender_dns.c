/*
 * sender_dns - MX resolution with c-ares inside the libuv loop.
 *
 * c-ares tells us which sockets it wants watched (ARES_OPT_SOCK_STATE_CB);
 * each gets a uv_poll_t whose events go to ares_process_fd(). One uv_timer,
 * re-armed from ares_timeout() after every c-ares call, drives retries and
 * timeouts. Only DNS is consulted: ares_query() never reads /etc/hosts and
 * never applies search domains.
 *
 * A request runs in two phases: the MX query, then A and AAAA queries for
 * every MX host at once (or for the domain itself when it has no MX). A
 * finished request is not reported from inside c-ares: it goes on a done
 * list that a zero-delay timer delivers, so the callback never runs inside
 * sender_dns_resolve() or inside a c-ares callback.
 *
 * Answers are cached per domain for the smallest TTL of the records that
 * made them (MX and A/AAAA, capped at DNS_CACHE_MAX_S): a busy sender asks
 * about each destination once per TTL, not once per message. Only complete
 * answers (OK) are cached; a record with TTL 0 is never cached. A cache hit
 * still reports asynchronously and reshuffles equal MX preferences.
 *
 * Status rules: NXDOMAIN on the MX query (or, with no MX, on the domain's
 * own A/AAAA) is NXDOMAIN; a lone "0 ." MX is NULLMX; any address found is
 * OK even if other MX hosts failed (as Postfix does: deliver to what
 * resolved); no address and a temporary failure anywhere is TEMPFAIL; no
 * address otherwise is NOHOST.
 */

/* System */
#include <errno.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/nameser.h>

/* Third-party */
#include <ares.h>
#include <uv.h>

/* common/ */
#include "hk_log.h"
#include "hk_u64map.h"
#include "hk_util.h"

/* This role */
#include "sender_dns.h"

#define DNS_TRIES 2
#define DNS_MAX_HOSTS 16        /* MX hosts looked up per domain */
#define DNS_MAX_ADDRS 32        /* addresses kept per host and family */
#define DNS_CACHE_MAX_S 3600    /* the longest an answer is trusted */
#define DNS_CACHE_MAX_ENTRIES 100000

/* Outcome of one query, coarser than ares status codes. */
enum dns_qstatus { Q_PENDING, Q_OK, Q_NODATA, Q_NXDOMAIN, Q_TEMPFAIL };

struct dns_req;

/* One A or AAAA lookup of one host. */
struct dns_addrq {
	struct dns_req *req;
	struct dns_host *host;
	int family;
	enum dns_qstatus st;
	int ares_status;
	struct sockaddr_storage addrs[DNS_MAX_ADDRS];
	size_t n;
};

struct dns_host {
	char name[256];
	uint16_t pref;
	struct dns_addrq q4, q6;
};

struct dns_req {
	sender_dns *dns;
	char domain[256];
	sender_dns_cb cb;
	void *arg;
	int implicit;                   /* no MX: the domain is its own host */
	struct dns_host *hosts;
	size_t n_hosts;
	unsigned pending;               /* c-ares queries (and guards) outstanding */
	int finished;                   /* status decided; on the done list */
	enum sender_dns_status status;
	char error[160];
	uint32_t ttl;                   /* smallest TTL seen in its answers */
	struct sender_mx_addr *cached;  /* a cache hit's addresses (owned) */
	size_t n_cached;
	struct dns_req *prev, *next;    /* dns->active, or dns->done (next only) */
};

/* One cached answer: the addresses in MX order, until expires_ms. */
struct dns_cached {
	char domain[256];
	struct sender_mx_addr *addrs;
	size_t n_addrs;
	int64_t expires_ms;
	struct dns_cached *prev, *next; /* dns->cache_list */
};

struct dns_poll {
	uv_poll_t poll;
	ares_socket_t fd;
	sender_dns *dns;
	struct dns_poll *next;
};

struct sender_dns {
	uv_loop_t *loop;
	ares_channel channel;
	uv_timer_t timer;               /* c-ares timeouts */
	uv_timer_t defer;               /* delivers the done list */
	struct dns_poll *polls;
	struct dns_req *active;
	struct dns_req *done_head, *done_tail;
	int handles;                    /* initialised handles not yet closed */
	int closing;
	hk_u64map *cache;               /* hash(domain) -> struct dns_cached */
	struct dns_cached *cache_list;  /* every entry, for eviction and close */
};

/* Status names for logs, indexed by enum sender_dns_status. */
static const char *const dns_status_names[] = {
	[SENDER_DNS_OK] = "ok",
	[SENDER_DNS_TEMPFAIL] = "tempfail",
	[SENDER_DNS_NXDOMAIN] = "nxdomain",
	[SENDER_DNS_NULLMX] = "nullmx",
	[SENDER_DNS_NOHOST] = "nohost",
};

static void dns_rearm(sender_dns *dns);
static void dns_deliver(sender_dns *dns);

/* dns_handle_closed - close_cb for every handle; frees on the last one. */
static void
dns_handle_closed(uv_handle_t *h)
{
	sender_dns *dns = h->data;

	if (h->type == UV_POLL) {
		struct dns_poll *p = (struct dns_poll *)h;
		dns = p->dns;
		free(p);
	}
	if (--dns->handles == 0 && dns->closing)
		free(dns);
}

/* dns_poll_find - the poll watching FD, unlinking it when UNLINK. */
static struct dns_poll *
dns_poll_find(sender_dns *dns, ares_socket_t fd, int unlink)
{
	struct dns_poll **pp, *p;

	for (pp = &dns->polls; (p = *pp) != NULL; pp = &p->next) {
		if (p->fd == fd) {
			if (unlink)
				*pp = p->next;
			return p;
		}
	}
	return NULL;
}

/* dns_on_poll - socket activity: let c-ares read/write it. */
static void
dns_on_poll(uv_poll_t *h, int status, int events)
{
	struct dns_poll *p = (struct dns_poll *)h;
	sender_dns *dns = p->dns;
	ares_socket_t fd = p->fd;

	/* On a poll error let c-ares touch the socket both ways: its own
	 * read/write then sees the error and fails over. */
	if (status < 0)
		events = UV_READABLE | UV_WRITABLE;
	ares_process_fd(dns->channel, (events & UV_READABLE) ? fd : ARES_SOCKET_BAD,
	    (events & UV_WRITABLE) ? fd : ARES_SOCKET_BAD);
	/* p may have been closed by now (sock_state_cb). */
	dns_rearm(dns);
}

/* dns_sock_state - c-ares wants FD watched for READABLE/WRITABLE (or no
 * longer watched at all when both are 0: it is about to close it). */
static void
dns_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
	sender_dns *dns = data;
	struct dns_poll *p;
	int rc;

	if (!readable && !writable) {
		if ((p = dns_poll_find(dns, fd, 1)) != NULL)
			uv_close((uv_handle_t *)&p->poll, dns_handle_closed);
		return;
	}
	if ((p = dns_poll_find(dns, fd, 0)) == NULL) {
		p = xcalloc(1, sizeof(*p));
		p->fd = fd;
		p->dns = dns;
		if ((rc = uv_poll_init_socket(dns->loop, &p->poll, fd)) < 0) {
			/* The query on this socket will time out through the timer. */
			hk_log_error("dns_poll_failed", "{s:i, s:s}", "fd", (int)fd,
			    "error", uv_strerror(rc));
			free(p);
			return;
		}
		p->poll.data = dns;
		dns->handles++;
		p->next = dns->polls;
		dns->polls = p;
	}
	rc = uv_poll_start(&p->poll, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0),
	    dns_on_poll);
	if (rc < 0)
		hk_log_error("dns_poll_failed", "{s:i, s:s}", "fd", (int)fd, "error", uv_strerror(rc));
}

/* dns_on_timer - c-ares' next timeout is due. */
static void
dns_on_timer(uv_timer_t *t)
{
	sender_dns *dns = t->data;

	ares_process_fd(dns->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	dns_rearm(dns);
}

/* dns_rearm - point the timer at c-ares' next deadline, if any. */
static void
dns_rearm(sender_dns *dns)
{
	struct timeval tv, *tp;
	uint64_t ms;

	if (dns->closing)
		return;
	tp = ares_timeout(dns->channel, NULL, &tv);
	if (tp == NULL) {
		uv_timer_stop(&dns->timer);
		return;
	}
	ms = (uint64_t)tp->tv_sec * 1000 + ((uint64_t)tp->tv_usec + 999) / 1000;
	uv_timer_start(&dns->timer, dns_on_timer, ms, 0);
}

/* dns_on_defer - deliver finished requests outside any c-ares frame. */
static void
dns_on_defer(uv_timer_t *t)
{
	dns_deliver(t->data);
}

/* dns_classify - map an ares status to a query outcome. */
static enum dns_qstatus
dns_classify(int status)
{
	switch (status) {
	case ARES_SUCCESS:
		return Q_OK;
	case ARES_ENODATA:
		return Q_NODATA;
	case ARES_ENOTFOUND:
	case ARES_EBADNAME:     /* a name DNS cannot carry cannot exist */
		return Q_NXDOMAIN;
	default:
		return Q_TEMPFAIL;
	}
}

/* dns_finish - decide REQ's status and queue it for delivery. */
static void
dns_finish(struct dns_req *req, enum sender_dns_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
dns_finish(struct dns_req *req, enum sender_dns_status st, const char *fmt, ...)
{
	sender_dns *dns = req->dns;
	va_list ap;

	if (req->finished)
		return;
	req->finished = 1;
	req->status = st;
	req->error[0] = '\0';
	if (fmt != NULL) {
		va_start(ap, fmt);
		vsnprintf(req->error, sizeof(req->error), fmt, ap);
		va_end(ap);
	}
	if (req->prev != NULL)
		req->prev->next = req->next;
	else if (dns->active == req)
		dns->active = req->next;
	if (req->next != NULL)
		req->next->prev = req->prev;
	req->prev = req->next = NULL;
	if (dns->done_tail != NULL)
		dns->done_tail->next = req;
	else
		dns->done_head = req;
	dns->done_tail = req;
	if (!dns->closing)
		uv_timer_start(&dns->defer, dns_on_defer, 0, 0);
}

/* dns_hosts_done - every A/AAAA query of REQ has answered: decide. */
static void
dns_hosts_done(struct dns_req *req)
{
	size_t i, n_addrs = 0;
	const char *temp_host = NULL;
	int temp_status = 0, nx = 0;

	for (i = 0; i < req->n_hosts; i++) {
		struct dns_addrq *qs[2] = { &req->hosts[i].q4, &req->hosts[i].q6 };
		for (int k = 0; k < 2; k++) {
			n_addrs += qs[k]->n;
			if (qs[k]->st == Q_TEMPFAIL && temp_host == NULL) {
				temp_host = req->hosts[i].name;
				temp_status = qs[k]->ares_status;
			}
			if (qs[k]->st == Q_NXDOMAIN)
				nx = 1;
		}
	}
	if (req->dns->closing)
		dns_finish(req, SENDER_DNS_TEMPFAIL, "%s: lookup cancelled", req->domain);
	else if (n_addrs > 0)
		dns_finish(req, SENDER_DNS_OK, NULL);
	else if (temp_host != NULL)
		dns_finish(req, SENDER_DNS_TEMPFAIL, "%s: address lookup for %s failed: %s",
		    req->domain, temp_host, ares_strerror(temp_status));
	else if (req->implicit && nx)
		dns_finish(req, SENDER_DNS_NXDOMAIN, "%s: domain not found", req->domain);
	else if (req->implicit)
		dns_finish(req, SENDER_DNS_NOHOST, "%s: no MX and no A/AAAA record", req->domain);
	else
		dns_finish(req, SENDER_DNS_NOHOST, "%s: no address for any MX host (%s%s)",
		    req->domain, req->hosts[0].name, req->n_hosts > 1 ? ", ..." : "");
}

/* dns_release - one outstanding query (or guard) of REQ is over. */
static void
dns_release(struct dns_req *req)
{
	if (--req->pending == 0 && !req->finished)
		dns_hosts_done(req);
}

/* dns_min_ttl - the smallest TTL of the answer records in ABUF, or
 * UINT32_MAX if there are none. Names are stepped over with
 * ares_expand_name(), c-ares's own name decoder. */
static uint32_t
dns_min_ttl(const unsigned char *abuf, int alen)
{
	const unsigned char *p = abuf + 12, *end = abuf + alen;
	uint32_t min = UINT32_MAX;
	unsigned qd, an;
	char *name;
	long len;

	if (alen < 12)
		return min;
	qd = (unsigned)abuf[4] << 8 | abuf[5];
	an = (unsigned)abuf[6] << 8 | abuf[7];
	for (unsigned i = 0; i < qd; i++) {
		if (ares_expand_name(p, abuf, alen, &name, &len) != ARES_SUCCESS)
			return min;
		ares_free_string(name);
		p += len + 4;
		if (p > end)
			return min;
	}
	for (unsigned i = 0; i < an; i++) {
		if (ares_expand_name(p, abuf, alen, &name, &len) != ARES_SUCCESS)
			return min;
		ares_free_string(name);
		p += len;
		if (end - p < 10)
			return min;
		uint32_t ttl = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
		if (ttl < min)
			min = ttl;
		p += 10 + ((size_t)p[8] << 8 | p[9]);
		if (p > end)
			return min;
	}
	return min;
}

static uint64_t
dns_cache_key(const char *domain)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (const unsigned char *p = (const unsigned char *)domain; *p; p++) {
		h ^= (uint64_t)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
		h *= 0x100000001b3ULL;
	}
	return h ? h : 1; /* 0 is not a valid map key */
}

static void
dns_cache_drop(sender_dns *dns, struct dns_cached *c)
{
	hk_u64map_pop(dns->cache, dns_cache_key(c->domain));
	if (c->prev)
		c->prev->next = c->next;
	else
		dns->cache_list = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c->addrs);
	free(c);
}

/* dns_cache_get - a live entry for DOMAIN, or NULL (dropping a stale one). */
static struct dns_cached *
dns_cache_get(sender_dns *dns, const char *domain)
{
	struct dns_cached *c = hk_u64map_get(dns->cache, dns_cache_key(domain));

	if (c == NULL || strcasecmp(c->domain, domain) != 0)
		return NULL;
	if (c->expires_ms <= hk_now_ms()) {
		dns_cache_drop(dns, c);
		return NULL;
	}
	return c;
}

static void
dns_cache_put(sender_dns *dns, const char *domain, uint32_t ttl,
    const struct sender_mx_addr *addrs, size_t n)
{
	struct dns_cached *c, *old;

	if (ttl == 0 || n == 0)
		return;
	if (ttl > DNS_CACHE_MAX_S)
		ttl = DNS_CACHE_MAX_S;
	/* A full cache starts over rather than tracking recency. */
	if (hk_u64map_count(dns->cache) >= DNS_CACHE_MAX_ENTRIES)
		while (dns->cache_list)
			dns_cache_drop(dns, dns->cache_list);
	if ((old = hk_u64map_get(dns->cache, dns_cache_key(domain))) != NULL)
		dns_cache_drop(dns, old); /* same domain refreshed, or a hash collision */
	c = xcalloc(1, sizeof(*c));
	snprintf(c->domain, sizeof(c->domain), "%s", domain);
	c->addrs = xmalloc(n * sizeof(*addrs));
	memcpy(c->addrs, addrs, n * sizeof(*addrs));
	c->n_addrs = n;
	c->expires_ms = hk_now_ms() + (int64_t)ttl * 1000;
	c->next = dns->cache_list;
	if (c->next)
		c->next->prev = c;
	dns->cache_list = c;
	hk_u64map_put(dns->cache, dns_cache_key(domain), c);
}

/* dns_cache_copy - a cached answer, with hosts of equal preference in a new
 * random order (RFC 5321 §5.1), each host's addresses kept together. */
static struct sender_mx_addr *
dns_cache_copy(const struct dns_cached *c)
{
	struct sender_mx_addr *out = xmalloc(c->n_addrs * sizeof(*out));
	size_t *start = xmalloc((c->n_addrs + 1) * sizeof(*start));
	size_t n_groups = 0, o = 0;

	/* Host groups: runs of one host name. */
	for (size_t i = 0; i < c->n_addrs; i++)
		if (i == 0 || strcmp(c->addrs[i].host, c->addrs[i - 1].host) != 0)
			start[n_groups++] = i;
	start[n_groups] = c->n_addrs;
	for (size_t g = 0, h; g < n_groups; g = h) {
		/* [g, h): groups of one preference; shuffle their order. */
		for (h = g + 1; h < n_groups && c->addrs[start[h]].pref == c->addrs[start[g]].pref; h++)
			;
		size_t order[DNS_MAX_HOSTS + 1], m = h - g;
		if (m > DNS_MAX_HOSTS)
			m = DNS_MAX_HOSTS;
		for (size_t k = 0; k < m; k++)
			order[k] = g + k;
		for (size_t k = m; k > 1; k--) {
			size_t r = arc4random_uniform((uint32_t)k), t = order[k - 1];
			order[k - 1] = order[r];
			order[r] = t;
		}
		for (size_t k = 0; k < m; k++) {
			size_t a = start[order[k]], b = start[order[k] + 1];
			memcpy(out + o, c->addrs + a, (b - a) * sizeof(*out));
			o += b - a;
		}
	}
	free(start);
	return out;
}

/* dns_on_addr - an A or AAAA answer (or failure) for one host. */
static void
dns_on_addr(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_addrq *q = arg;
	size_t i;
	int n;

	(void)timeouts;
	q->ares_status = status;
	q->st = dns_classify(status);
	if (q->st == Q_OK && q->family == AF_INET) {
		struct ares_addrttl ttls[DNS_MAX_ADDRS];
		n = DNS_MAX_ADDRS;
		status = ares_parse_a_reply(abuf, alen, NULL, ttls, &n);
		if (status == ARES_SUCCESS) {
			for (i = 0; i < (size_t)n; i++) {
				struct sockaddr_in *sin = (struct sockaddr_in *)&q->addrs[q->n++];
				memset(sin, 0, sizeof(*sin));
				sin->sin_family = AF_INET;
				sin->sin_addr = ttls[i].ipaddr;
			}
		} else {
			q->ares_status = status;
			q->st = dns_classify(status);
		}
	} else if (q->st == Q_OK) {
		struct ares_addr6ttl ttls[DNS_MAX_ADDRS];
		n = DNS_MAX_ADDRS;
		status = ares_parse_aaaa_reply(abuf, alen, NULL, ttls, &n);
		if (status == ARES_SUCCESS) {
			for (i = 0; i < (size_t)n; i++) {
				struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&q->addrs[q->n++];
				memset(sin6, 0, sizeof(*sin6));
				sin6->sin6_family = AF_INET6;
				memcpy(&sin6->sin6_addr, &ttls[i].ip6addr, sizeof(sin6->sin6_addr));
			}
		} else {
			q->ares_status = status;
			q->st = dns_classify(status);
		}
	}
	if (q->st == Q_OK) {
		uint32_t ttl = dns_min_ttl(abuf, alen);
		if (ttl < q->req->ttl)
			q->req->ttl = ttl;
	}
	dns_release(q->req);
}

/* dns_lookup_hosts - start A and AAAA queries for every host of REQ. */
static void
dns_lookup_hosts(struct dns_req *req)
{
	size_t i;

	/* The guard keeps a query that fails synchronously inside ares_query()
	 * from finishing the request before the others are issued. */
	req->pending++;
	for (i = 0; i < req->n_hosts; i++) {
		struct dns_host *h = &req->hosts[i];
		h->q4.req = h->q6.req = req;
		h->q4.host = h->q6.host = h;
		h->q4.family = AF_INET;
		h->q6.family = AF_INET6;
		h->q4.st = h->q6.st = Q_PENDING;
		req->pending += 2;
		ares_query(req->dns->channel, h->name, ns_c_in, ns_t_a, dns_on_addr, &h->q4);
		ares_query(req->dns->channel, h->name, ns_c_in, ns_t_aaaa, dns_on_addr, &h->q6);
	}
	dns_release(req);
}

/* dns_mx_cmp - order by preference (qsort is not stable; ties are
 * shuffled afterwards anyway). */
static int
dns_mx_cmp(const void *a, const void *b)
{
	const struct dns_host *x = a, *y = b;

	return (int)x->pref - (int)y->pref;
}

/* dns_is_root - an MX target that names the root ("", "."). */
static int
dns_is_root(const char *host)
{
	return host[0] == '\0' || strcmp(host, ".") == 0;
}

/* dns_on_mx - the MX answer: pick hosts, or fall back, or decide. */
static void
dns_on_mx(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_req *req = arg;
	struct ares_mx_reply *mx = NULL, *m;
	size_t i, j, n;
	enum dns_qstatus st;

	(void)timeouts;
	req->pending--;
	if (req->dns->closing) {
		dns_finish(req, SENDER_DNS_TEMPFAIL, "%s: lookup cancelled", req->domain);
		return;
	}
	st = dns_classify(status);
	if (st == Q_OK) {
		status = ares_parse_mx_reply(abuf, alen, &mx);
		st = dns_classify(status);
	}
	switch (st) {
	case Q_NXDOMAIN:
		dns_finish(req, SENDER_DNS_NXDOMAIN, "%s: domain not found", req->domain);
		return;
	case Q_TEMPFAIL:
		dns_finish(req, SENDER_DNS_TEMPFAIL, "%s: MX lookup failed: %s", req->domain,
		    ares_strerror(status));
		return;
	case Q_NODATA:
		/* RFC 5321 §5.1: no MX at all, the domain is its own implicit MX. */
		req->implicit = 1;
		req->n_hosts = 1;
		req->hosts = xcalloc(1, sizeof(*req->hosts));
		snprintf(req->hosts[0].name, sizeof(req->hosts[0].name), "%s", req->domain);
		dns_lookup_hosts(req);
		return;
	default:
		break;
	}
	req->ttl = dns_min_ttl(abuf, alen);

	if (mx != NULL && mx->next == NULL && mx->priority == 0 && dns_is_root(mx->host)) {
		ares_free_data(mx);
		dns_finish(req, SENDER_DNS_NULLMX, "%s: null MX, domain accepts no mail", req->domain);
		return;
	}
	for (n = 0, m = mx; m != NULL; m = m->next)
		n++;
	req->hosts = xcalloc(n > 0 ? n : 1, sizeof(*req->hosts));
	for (m = mx; m != NULL; m = m->next) {
		if (dns_is_root(m->host) || strlen(m->host) >= sizeof(req->hosts[0].name))
			continue;
		/* A host listed twice keeps its best preference. */
		for (j = 0; j < req->n_hosts; j++)
			if (strcasecmp(req->hosts[j].name, m->host) == 0)
				break;
		if (j < req->n_hosts) {
			if (m->priority < req->hosts[j].pref)
				req->hosts[j].pref = m->priority;
			continue;
		}
		snprintf(req->hosts[req->n_hosts].name, sizeof(req->hosts[0].name), "%s", m->host);
		req->hosts[req->n_hosts].pref = m->priority;
		req->n_hosts++;
	}
	ares_free_data(mx);
	if (req->n_hosts == 0) {
		dns_finish(req, SENDER_DNS_NOHOST, "%s: no usable MX host", req->domain);
		return;
	}
	qsort(req->hosts, req->n_hosts, sizeof(*req->hosts), dns_mx_cmp);
	/* RFC 5321 §5.1: spread load randomly among equal preferences. */
	for (i = 0; i < req->n_hosts; i = j) {
		for (j = i + 1; j < req->n_hosts && req->hosts[j].pref == req->hosts[i].pref; j++)
			;
		for (size_t k = j - 1; k > i; k--) {
			size_t r = i + arc4random_uniform((uint32_t)(k - i + 1));
			struct dns_host tmp = req->hosts[k];
			req->hosts[k] = req->hosts[r];
			req->hosts[r] = tmp;
		}
	}
	if (req->n_hosts > DNS_MAX_HOSTS)
		req->n_hosts = DNS_MAX_HOSTS;
	dns_lookup_hosts(req);
}

/* dns_req_free - release REQ (not linked anywhere any more). */
static void
dns_req_free(struct dns_req *req)
{
	free(req->hosts);
	free(req->cached);
	free(req);
}

/* dns_deliver_one - run REQ's callback with its result, then free it. */
static void
dns_deliver_one(struct dns_req *req)
{
	struct sender_dns_result res;
	struct sender_mx_addr *addrs = NULL;
	size_t i, k, n = 0;

	memset(&res, 0, sizeof(res));
	res.status = req->status;
	res.domain = req->domain;
	snprintf(res.error, sizeof(res.error), "%s", req->error);
	if (req->status == SENDER_DNS_OK && req->cached != NULL) {
		res.addrs = req->cached;
		res.n_addrs = n = req->n_cached;
	} else if (req->status == SENDER_DNS_OK) {
		for (i = 0; i < req->n_hosts; i++)
			n += req->hosts[i].q4.n + req->hosts[i].q6.n;
		addrs = xcalloc(n, sizeof(*addrs));
		n = 0;
		for (i = 0; i < req->n_hosts; i++) {
			struct dns_host *h = &req->hosts[i];
			struct dns_addrq *qs[2] = { &h->q4, &h->q6 };
			for (int f = 0; f < 2; f++) {
				for (k = 0; k < qs[f]->n; k++) {
					struct sender_mx_addr *a = &addrs[n++];
					snprintf(a->host, sizeof(a->host), "%s", h->name);
					a->pref = h->pref;
					a->addr = qs[f]->addrs[k];
					a->addrlen = qs[f]->family == AF_INET ? sizeof(struct sockaddr_in)
					    : sizeof(struct sockaddr_in6);
				}
			}
		}
		res.addrs = addrs;
		res.n_addrs = n;
		if (req->ttl != UINT32_MAX && !req->dns->closing)
			dns_cache_put(req->dns, req->domain, req->ttl, addrs, n);
	}
	hk_log_debug("dns_resolved", "{s:s, s:s, s:i, s:s}", "domain", req->domain,
	    "status", dns_status_names[req->status], "addrs", (int)n, "error", req->error);
	req->cb(&res, req->arg);
	free(addrs);
	dns_req_free(req);
}

/* dns_deliver - run the callbacks of every finished request. */
static void
dns_deliver(sender_dns *dns)
{
	struct dns_req *req;

	/* Pop before calling: a callback may resolve again or close. */
	while ((req = dns->done_head) != NULL) {
		dns->done_head = req->next;
		if (dns->done_head == NULL)
			dns->done_tail = NULL;
		req->next = NULL;
		dns_deliver_one(req);
	}
}

int
sender_dns_new(sender_dns **out, uv_loop_t *loop, const char *servers,
    uint32_t timeout_ms, char *err, size_t errlen)
{
	struct ares_options opts;
	sender_dns *dns;
	int rc, per_try;

	*out = NULL;
	dns = xcalloc(1, sizeof(*dns));
	dns->loop = loop;

	/* c-ares doubles the timeout on the second round: T + 2T per lookup. */
	per_try = (int)(timeout_ms / 3);
	if (per_try < 50)
		per_try = 50;
	memset(&opts, 0, sizeof(opts));
	opts.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
	opts.timeout = per_try;
	opts.tries = DNS_TRIES;
	opts.sock_state_cb = dns_sock_state;
	opts.sock_state_cb_data = dns;
	opts.lookups = (char *)"b";     /* never /etc/hosts (ares_query ignores it anyway) */
	rc = ares_init_options(&dns->channel, &opts,
	    ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB |
	    ARES_OPT_LOOKUPS);
	if (rc != ARES_SUCCESS) {
		snprintf(err, errlen, "c-ares init failed: %s", ares_strerror(rc));
		free(dns);
		return -EIO;
	}
	if (servers != NULL && servers[0] != '\0') {
		rc = ares_set_servers_ports_csv(dns->channel, servers);
		if (rc != ARES_SUCCESS) {
			snprintf(err, errlen, "bad DNS server list \"%s\": %s", servers,
			    ares_strerror(rc));
			ares_destroy(dns->channel);
			free(dns);
			return -EINVAL;
		}
	}
	uv_timer_init(loop, &dns->timer);
	uv_timer_init(loop, &dns->defer);
	dns->timer.data = dns->defer.data = dns;
	dns->handles = 2;
	dns->cache = hk_u64map_new();
	*out = dns;
	return 0;
}

/* dns_valid_name - a domain ares_query() can be given: printable, no
 * spaces, no empty labels, at most 253 characters. */
static int
dns_valid_name(const char *d)
{
	size_t i, len = strlen(d);

	if (len == 0 || len > 253 || d[0] == '.' || strstr(d, "..") != NULL)
		return 0;
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)d[i];
		if (c <= 0x20 || c >= 0x7f || c == '\\')
			return 0;
	}
	return 1;
}

int
sender_dns_resolve(sender_dns *dns, const char *domain, sender_dns_cb cb, void *arg)
{
	struct dns_req *req;
	size_t len;

	if (dns == NULL || dns->closing || cb == NULL || domain == NULL)
		return -EINVAL;
	req = xcalloc(1, sizeof(*req));
	req->dns = dns;
	req->cb = cb;
	req->arg = arg;
	len = strlen(domain);
	if (len > 0 && domain[len - 1] == '.')
		len--;
	snprintf(req->domain, sizeof(req->domain), "%.*s", (int)(len < 255 ? len : 255), domain);
	req->next = dns->active;
	if (dns->active != NULL)
		dns->active->prev = req;
	dns->active = req;

	if (len > 253 || !dns_valid_name(req->domain)) {
		dns_finish(req, SENDER_DNS_NXDOMAIN, "invalid domain name \"%s\"", req->domain);
		return 0;
	}
	const struct dns_cached *hit = dns_cache_get(dns, req->domain);
	if (hit != NULL) {
		req->cached = dns_cache_copy(hit);
		req->n_cached = hit->n_addrs;
		dns_finish(req, SENDER_DNS_OK, NULL);
		return 0;
	}
	req->ttl = UINT32_MAX;
	req->pending = 1;
	ares_query(dns->channel, req->domain, ns_c_in, ns_t_mx, dns_on_mx, req);
	/* req may be finished already (queued for delivery, never freed here). */
	dns_rearm(dns);
	return 0;
}

void
sender_dns_close(sender_dns *dns)
{
	struct dns_poll *p;

	if (dns == NULL || dns->closing)
		return;
	dns->closing = 1;
	/* Every pending query calls back with ARES_ECANCELLED right here; each
	 * request then lands on the done list as TEMPFAIL. */
	ares_cancel(dns->channel);
	while (dns->active != NULL)     /* defensive: nothing should remain */
		dns_finish(dns->active, SENDER_DNS_TEMPFAIL, "%s: lookup cancelled",
		    dns->active->domain);
	dns_deliver(dns);
	while (dns->cache_list)
		dns_cache_drop(dns, dns->cache_list);
	hk_u64map_destroy(&dns->cache);
	/* ares_destroy() reports its sockets closed through dns_sock_state. */
	ares_destroy(dns->channel);
	while ((p = dns->polls) != NULL) {
		dns->polls = p->next;
		uv_close((uv_handle_t *)&p->poll, dns_handle_closed);
	}
	uv_close((uv_handle_t *)&dns->timer, dns_handle_closed);
	uv_close((uv_handle_t *)&dns->defer, dns_handle_closed);
}
