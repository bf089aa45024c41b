/*
 * test_sender_dns - MX resolution against a real dnsmasq started by the
 * test, plus two UDP stubs: one answers SERVFAIL to everything (dnsmasq
 * forwards *.servfail.test to it, since dnsmasq cannot make a SERVFAIL
 * itself), one never answers (timeouts).
 */

/* System */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

/* Third-party */
#include <cmocka.h>
#include <uv.h>

/* This role */
#include "sender_dns.h"

struct env {
	pid_t dnsmasq;
	pid_t servfail;
	int silent_fd;
	uint16_t dns_port, servfail_port, silent_port;
	char dir[64];
	char servers[64];               /* "127.0.0.1:<dnsmasq port>" */
	char silent[64];                /* "127.0.0.1:<silent port>" */
	int skip;
};

static struct env g;

/* ------------------------------------------------------------ DNS bits */

/* dns_query_packet - a standard query for NAME/TYPE into BUF. */
static size_t
dns_query_packet(uint8_t *buf, uint16_t id, const char *name, uint16_t type)
{
	size_t n = 12;
	const char *p = name;

	memset(buf, 0, 12);
	buf[0] = (uint8_t)(id >> 8);
	buf[1] = (uint8_t)id;
	buf[2] = 0x01;                  /* RD */
	buf[5] = 1;                     /* QDCOUNT */
	while (*p != '\0') {
		const char *dot = strchr(p, '.');
		size_t len = dot ? (size_t)(dot - p) : strlen(p);
		buf[n++] = (uint8_t)len;
		memcpy(buf + n, p, len);
		n += len;
		p += len + (dot ? 1 : 0);
	}
	buf[n++] = 0;
	buf[n++] = (uint8_t)(type >> 8);
	buf[n++] = (uint8_t)type;
	buf[n++] = 0;
	buf[n++] = 1;                   /* IN */
	return n;
}

/* udp_socket - a UDP socket bound to 127.0.0.1:0; its port in *port. */
static int
udp_socket(uint16_t *port)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_DGRAM, 0);

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 ||
	    getsockname(fd, (struct sockaddr *)&sin, &len) != 0)
		return -1;
	*port = ntohs(sin.sin_port);
	return fd;
}

/* free_port - a port free for both UDP and TCP on 127.0.0.1 (dnsmasq
 * binds both). */
static uint16_t
free_port(void)
{
	for (int i = 0; i < 50; i++) {
		uint16_t port;
		int u = udp_socket(&port), t = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in sin;
		int ok;

		memset(&sin, 0, sizeof(sin));
		sin.sin_family = AF_INET;
		sin.sin_port = htons(port);
		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		ok = u >= 0 && bind(t, (struct sockaddr *)&sin, sizeof(sin)) == 0;
		close(u);
		close(t);
		if (ok)
			return port;
	}
	return 0;
}

/* servfail_stub - child process: answer every query with SERVFAIL. */
static void __attribute__((noreturn))
servfail_stub(int fd)
{
	uint8_t buf[1500];

	for (;;) {
		struct sockaddr_storage from;
		socklen_t flen = sizeof(from);
		ssize_t n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen);
		size_t q = 12;

		if (n < 12)
			continue;
		/* Keep the header and the question, drop everything after. */
		while (q < (size_t)n && buf[q] != 0)
			q += (size_t)buf[q] + 1;
		q += 5;
		if (q > (size_t)n)
			continue;
		buf[2] = (uint8_t)(0x80 | (buf[2] & 0x79));     /* QR, opcode, RD */
		buf[3] = 0x80 | 2;                              /* RA, SERVFAIL */
		memset(buf + 6, 0, 6);                          /* AN/NS/AR counts */
		sendto(fd, buf, q, 0, (struct sockaddr *)&from, flen);
	}
}

/* dns_answers - whether the server at 127.0.0.1:PORT answers a query
 * within 200 ms. */
static int
dns_answers(uint16_t port)
{
	uint8_t q[512], r[512];
	struct sockaddr_in sin;
	struct pollfd pfd;
	size_t n;
	int fd, ok = 0;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	n = dns_query_packet(q, 0x4242, "ready.test", 1);
	if (sendto(fd, q, n, 0, (struct sockaddr *)&sin, sizeof(sin)) == (ssize_t)n) {
		pfd.fd = fd;
		pfd.events = POLLIN;
		if (poll(&pfd, 1, 200) == 1 && recv(fd, r, sizeof(r), 0) >= 12 &&
		    r[0] == 0x42 && r[1] == 0x42)
			ok = 1;
	}
	close(fd);
	return ok;
}

static const char *
find_dnsmasq(void)
{
	static const char *paths[] = { "/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq" };

	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
		if (access(paths[i], X_OK) == 0)
			return paths[i];
	return NULL;
}

static int
env_start(void **state)
{
	const char *dnsmasq = find_dnsmasq();
	char port[32], pidfile[128], fwd[96], logfile[128];
	int sfd, tries, st;

	(void)state;
	memset(&g, 0, sizeof(g));
	g.silent_fd = -1;
	if (dnsmasq == NULL) {
		fprintf(stderr, "SKIP: dnsmasq not found (apt-get install dnsmasq-base); "
		    "sender_dns tests skipped\n");
		g.skip = 1;
		return 0;
	}
	snprintf(g.dir, sizeof(g.dir), "/tmp/hk-test-dns-XXXXXX");
	if (mkdtemp(g.dir) == NULL)
		return -1;

	/* The silent server: bound, never read. */
	if ((g.silent_fd = udp_socket(&g.silent_port)) < 0)
		return -1;
	snprintf(g.silent, sizeof(g.silent), "127.0.0.1:%u", g.silent_port);

	/* The SERVFAIL stub. */
	if ((sfd = udp_socket(&g.servfail_port)) < 0)
		return -1;
	if ((g.servfail = fork()) == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);      /* never outlive the test */
		servfail_stub(sfd);
	}
	close(sfd);

	g.dns_port = free_port();
	snprintf(g.servers, sizeof(g.servers), "127.0.0.1:%u", g.dns_port);
	snprintf(port, sizeof(port), "--port=%u", g.dns_port);
	snprintf(pidfile, sizeof(pidfile), "--pid-file=%s/dnsmasq.pid", g.dir);
	snprintf(fwd, sizeof(fwd), "--server=/servfail.test/127.0.0.1#%u", g.servfail_port);
	snprintf(logfile, sizeof(logfile), "%s/dnsmasq.log", g.dir);

	if ((g.dnsmasq = fork()) == 0) {
		int fd;
		prctl(PR_SET_PDEATHSIG, SIGTERM);      /* never outlive the test */
		fd = open(logfile, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execl(dnsmasq, dnsmasq, "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
		    "--listen-address=127.0.0.1", port, "--bind-interfaces", "--keep-in-foreground",
		    "--user=root", pidfile, "--cache-size=0", "--local=/test/", fwd,
		    "--local-ttl=60", /* local records: cacheable unless they say 0 */
		    /* ttl0.test: its MX host's address has TTL 0, so it is never cached. */
		    "--mx-host=ttl0.test,mx-ttl0.test,10",
		    "--host-record=mx-ttl0.test,127.0.0.30,0",
		    "--host-record=ready.test,127.0.0.1",
		    /* mx.test: three preferences, listed out of order. */
		    "--mx-host=mx.test,mx-b.test,20",
		    "--mx-host=mx.test,mx-c.test,30",
		    "--mx-host=mx.test,mx-a.test,10",
		    "--host-record=mx-a.test,127.0.0.10",
		    "--host-record=mx-b.test,127.0.0.11,fd00::11",
		    "--host-record=mx-c.test,127.0.0.12",
		    /* equal.test: three at 10, one at 50. */
		    "--mx-host=equal.test,eq1.test,10",
		    "--mx-host=equal.test,eq2.test,10",
		    "--mx-host=equal.test,eq3.test,10",
		    "--mx-host=equal.test,eq4.test,50",
		    "--host-record=eq1.test,127.0.1.1",
		    "--host-record=eq2.test,127.0.1.2",
		    "--host-record=eq3.test,127.0.1.3",
		    "--host-record=eq4.test,127.0.1.4",
		    /* No MX: the domain's own addresses. */
		    "--host-record=plain.test,127.0.0.20",
		    "--host-record=v6only.test,fd00::20",
		    "--mx-host=nullmx.test,.,0",
		    /* MX host that does not exist; a name with only a TXT record. */
		    "--mx-host=nohost.test,gone.test,10",
		    "--txt-record=txtonly.test,\"hello\"",
		    /* One MX host fails temporarily, the other resolves. */
		    "--mx-host=partial.test,x.servfail.test,10",
		    "--mx-host=partial.test,mx-c.test,20",
		    "--mx-host=allfail.test,y.servfail.test,10",
		    (char *)NULL);
		_exit(127);
	}
	for (tries = 0; !dns_answers(g.dns_port); tries++) {
		if (tries > 50 || waitpid(g.dnsmasq, &st, WNOHANG) == g.dnsmasq) {
			fprintf(stderr, "dnsmasq did not answer on port %u (see %s)\n", g.dns_port,
			    logfile);
			return -1;
		}
	}
	return 0;
}

static int
env_stop(void **state)
{
	char path[128];

	(void)state;
	if (g.dnsmasq > 0) {
		kill(g.dnsmasq, SIGTERM);
		waitpid(g.dnsmasq, NULL, 0);
	}
	if (g.servfail > 0) {
		kill(g.servfail, SIGTERM);
		waitpid(g.servfail, NULL, 0);
	}
	if (g.silent_fd >= 0)
		close(g.silent_fd);
	if (g.dir[0] != '\0') {
		snprintf(path, sizeof(path), "%s/dnsmasq.log", g.dir);
		unlink(path);
		snprintf(path, sizeof(path), "%s/dnsmasq.pid", g.dir);
		unlink(path);
		rmdir(g.dir);
	}
	return 0;
}

#define SKIP_WITHOUT_DNSMASQ() do { if (g.skip) skip(); } while (0)

/* ------------------------------------------------------------ harness */

struct capture {
	int calls;
	enum sender_dns_status status;
	char domain[256];
	char error[160];
	size_t n;
	char host[16][256];
	char ip[16][64];
	uint16_t pref[16];
};

struct run {
	sender_dns *dns;
	int outstanding;
	struct capture *caps;
};

struct cb_arg {
	struct run *run;
	struct capture *cap;
};

static void
on_resolved(const struct sender_dns_result *res, void *arg)
{
	struct cb_arg *a = arg;
	struct capture *c = a->cap;

	c->calls++;
	c->status = res->status;
	snprintf(c->domain, sizeof(c->domain), "%s", res->domain);
	snprintf(c->error, sizeof(c->error), "%s", res->error);
	c->n = res->n_addrs;
	for (size_t i = 0; i < res->n_addrs && i < 16; i++) {
		const struct sender_mx_addr *m = &res->addrs[i];
		snprintf(c->host[i], sizeof(c->host[i]), "%s", m->host);
		c->pref[i] = m->pref;
		if (m->addr.ss_family == AF_INET) {
			assert_int_equal(m->addrlen, sizeof(struct sockaddr_in));
			assert_int_equal(((const struct sockaddr_in *)&m->addr)->sin_port, 0);
			uv_ip4_name((const struct sockaddr_in *)&m->addr, c->ip[i], sizeof(c->ip[i]));
		} else {
			assert_int_equal(m->addr.ss_family, AF_INET6);
			assert_int_equal(m->addrlen, sizeof(struct sockaddr_in6));
			uv_ip6_name((const struct sockaddr_in6 *)&m->addr, c->ip[i], sizeof(c->ip[i]));
		}
	}
	/* The last callback closes the resolver, so the loop runs dry. */
	if (--a->run->outstanding == 0)
		sender_dns_close(a->run->dns);
}

/* resolve_many - resolve DOMAINS[0..N) at once; every callback must come
 * exactly once, never from inside sender_dns_resolve(). */
static void
resolve_many(const char *servers, uint32_t timeout_ms, const char **domains, size_t n,
    struct capture *caps)
{
	uv_loop_t loop;
	struct run run;
	struct cb_arg *args = calloc(n, sizeof(*args));
	char err[256] = "";

	memset(caps, 0, n * sizeof(*caps));
	assert_int_equal(uv_loop_init(&loop), 0);
	memset(&run, 0, sizeof(run));
	assert_int_equal(sender_dns_new(&run.dns, &loop, servers, timeout_ms, err, sizeof(err)), 0);
	run.outstanding = (int)n;
	for (size_t i = 0; i < n; i++) {
		args[i].run = &run;
		args[i].cap = &caps[i];
		assert_int_equal(sender_dns_resolve(run.dns, domains[i], on_resolved, &args[i]), 0);
		assert_int_equal(caps[i].calls, 0);
	}
	uv_run(&loop, UV_RUN_DEFAULT);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(caps[i].calls, 1);
	assert_int_equal(uv_loop_close(&loop), 0);
	free(args);
}

static void
resolve_one(const char *servers, uint32_t timeout_ms, const char *domain, struct capture *cap)
{
	resolve_many(servers, timeout_ms, &domain, 1, cap);
}

/* ------------------------------------------------------------ tests */

static void
test_mx_ordered_by_preference(void **state)
{
	struct capture c;

	(void)state;
	SKIP_WITHOUT_DNSMASQ();
	resolve_one(g.servers, 2000, "mx.test", &c);
	assert_int_equal(c.status, SENDER_DNS_OK);
	assert_string_equal(c.domain, "mx.test");
	assert_int_equal(c.n, 4);
	assert_string_equal(c.host[0], "mx-a.test");
	assert_int_equal(c.pref[0], 10);
	assert_string_equal(c.ip[0], "127.0.0.10");
	/* One host's IPv4 before its IPv6. */
	assert_string_equal(c.host[1], "mx-b.test");
	assert_int_equal(c.pref[1], 20);
	assert_string_equal(c.ip[1], "127.0.0.11");
	assert_string_equal(c.host[2], "mx-b.test");
	assert_string_equal(c.ip[2], "fd00::11");
	assert_string_equal(c.host[3], "mx-c.test");
	assert_int_equal(c.pref[3], 30);
	assert_string_equal(c.ip[3], "127.0.0.12");

	/* A trailing dot names the same domain. */
	resolve_one(g.servers, 2000, "mx.test.", &c);
	assert_int_equal(c.status, SENDER_DNS_OK);
	assert_string_equal(c.domain, "mx.test");
	assert_int_equal(c.n, 4);
}

static void
test_equal_preferences_shuffled(void **state)
{
	const char *d[30];
	struct capture c[30];
	int first_seen[3] = { 0, 0, 0 };

	(void)state;
	SKIP_WITHOUT_DNSMASQ();
	for (int i = 0; i < 30; i++)
		d[i] = "equal.test";
	resolve_many(g.servers, 2000, d, 30, c);
	for (int i = 0; i < 30; i++) {
		int seen[3] = { 0, 0, 0 };
		assert_int_equal(c[i].status, SENDER_DNS_OK);
		assert_int_equal(c[i].n, 4);
		for (int k = 0; k < 3; k++) {
			assert_int_equal(c[i].pref[k], 10);
			assert_true(strncmp(c[i].host[k], "eq", 2) == 0);
			int h = c[i].host[k][2] - '1';
			assert_true(h >= 0 && h < 3);
			seen[h]++;
		}
		assert_int_equal(seen[0] + seen[1] + seen[2], 3);
		assert_true(seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
		first_seen[c[i].host[0][2] - '1']++;
		assert_string_equal(c[i].host[3], "eq4.test");
		assert_int_equal(c[i].pref[3], 50);
	}
	/* 30 draws from 3: all from one host would be a 1 in 10^14 event. */
	assert_true((first_seen[0] > 0) + (first_seen[1] > 0) + (first_seen[2] > 0) >= 2);
}

static void
test_implicit_mx(void **state)
{
	struct capture c;

	(void)state;
	SKIP_WITHOUT_DNSMASQ();
	resolve_one(g.servers, 2000, "plain.test", &c);
	assert_int_equal(c.status, SENDER_DNS_OK);
	assert_int_equal(c.n, 1);
	assert_string_equal(c.host[0], "plain.test");
	assert_int_equal(c.pref[0], 0);
	assert_string_equal(c.ip[0], "127.0.0.20");

	resolve_one(g.servers, 2000, "v6only.test", &c);
	assert_int_equal(c.status, SENDER_DNS_OK);
	assert_int_equal(c.n, 1);
	assert_string_equal(c.ip[0], "fd00::20");
}

static void
test_null_mx(void **state)
{
	struct capture c;

	(void)state;
	SKIP_WITHOUT_DNSMASQ();
	resolve_one(g.servers, 2000, "nullmx.test", &c);
	assert_int_equal(c.status, SENDER_DNS_NULLMX);
	assert_int_equal(c.n, 0);
	assert_non_null(strstr(c.error, "null MX"));
}

static void
test_nxdomain(void **state)
{
	struct capture c;

	(void)state;
	SKIP_WITHOUT_DNSMASQ();
	resolve_one(g.servers, 2000, "missing.test", &c);
	assert_int_equal(c.status, SENDER_DNS_NXDOMAIN);
	assert_int_equal(c.n, 0);
	assert_non_null(strstr(c.error, "missing.test"));
}

static void
test_no_host(void **state)
{
	struct capture c;

	(void)state;
	SKIP_WITHOUT_DNSMASQ();
	/* The MX host does not exist. */
	resolve_one(g.servers, 2000, "nohost.test", &c);
	assert_int_equal(c.status, SENDER_DNS_NOHOST);
	assert_non_null(strstr(c.error, "gone.test"));
	/* The name exists, but has neither MX nor address. */
	resolve_one(g.servers, 2000, "txtonly.test", &c);
	assert_int_equal(c.status, SENDER_DNS_NOHOST);
}

static void
test_servfail(void **state)
{
	struct capture c;

	(void)state;
	SKIP_WITHOUT_DNSMASQ();
	resolve_one(g.servers, 2000, "servfail.test", &c);
	assert_int_equal(c.status, SENDER_DNS_TEMPFAIL);
	assert_non_null(strstr(c.error, "MX lookup failed"));

	/* Only MX host fails: TEMPFAIL, naming it. */
	resolve_one(g.servers, 2000, "allfail.test", &c);
	assert_int_equal(c.status, SENDER_DNS_TEMPFAIL);
	assert_non_null(strstr(c.error, "y.servfail.test"));

	/* One of two MX hosts fails: deliver to the one that resolved. */
	resolve_one(g.servers, 2000, "partial.test", &c);
	assert_int_equal(c.status, SENDER_DNS_OK);
	assert_int_equal(c.n, 1);
	assert_string_equal(c.host[0], "mx-c.test");
	assert_string_equal(c.ip[0], "127.0.0.12");
}

static void
test_timeout(void **state)
{
	struct capture c;
	uint64_t t0;

	(void)state;
	SKIP_WITHOUT_DNSMASQ();
	t0 = uv_hrtime();
	resolve_one(g.silent, 300, "mx.test", &c);
	assert_int_equal(c.status, SENDER_DNS_TEMPFAIL);
	assert_non_null(strstr(c.error, "MX lookup failed"));
	/* Two tries within the budget, give or take scheduling. */
	assert_true((uv_hrtime() - t0) / 1000000 < 1500);
}

static void
test_invalid_domain_is_async(void **state)
{
	const char *d[] = { "bad name.test", "", "a..b.test", "x\r\n.test" };
	struct capture c[4];

	(void)state;
	SKIP_WITHOUT_DNSMASQ();
	resolve_many(g.servers, 2000, d, 4, c);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(c[i].status, SENDER_DNS_NXDOMAIN);
		assert_non_null(strstr(c[i].error, "invalid domain"));
	}
}

static void
test_mixed_parallel(void **state)
{
	const char *d[] = { "mx.test", "nullmx.test", "missing.test", "plain.test", "servfail.test",
		"nohost.test", "mx.test", "partial.test" };
	const enum sender_dns_status want[] = { SENDER_DNS_OK, SENDER_DNS_NULLMX,
		SENDER_DNS_NXDOMAIN, SENDER_DNS_OK, SENDER_DNS_TEMPFAIL, SENDER_DNS_NOHOST,
		SENDER_DNS_OK, SENDER_DNS_OK };
	struct capture c[8];

	(void)state;
	SKIP_WITHOUT_DNSMASQ();
	resolve_many(g.servers, 2000, d, 8, c);
	for (int i = 0; i < 8; i++) {
		assert_int_equal(c[i].status, want[i]);
		assert_string_equal(c[i].domain, d[i]);
	}
}

struct cancel_ctx {
	sender_dns *dns;
	int calls;
	enum sender_dns_status status;
	char error[160];
};

static void
on_cancelled(const struct sender_dns_result *res, void *arg)
{
	struct cancel_ctx *x = arg;

	x->calls++;
	x->status = res->status;
	snprintf(x->error, sizeof(x->error), "%s", res->error);
}

static void
test_close_cancels_pending(void **state)
{
	struct cancel_ctx x[2];
	uv_loop_t loop;
	char err[256];
	sender_dns *dns;

	(void)state;
	SKIP_WITHOUT_DNSMASQ();
	memset(x, 0, sizeof(x));
	uv_loop_init(&loop);
	assert_int_equal(sender_dns_new(&dns, &loop, g.silent, 5000, err, sizeof(err)), 0);
	x[0].dns = x[1].dns = dns;
	assert_int_equal(sender_dns_resolve(dns, "mx.test", on_cancelled, &x[0]), 0);
	/* Finished at once but not yet delivered: close flushes it too. */
	assert_int_equal(sender_dns_resolve(dns, "bad name", on_cancelled, &x[1]), 0);
	assert_int_equal(x[0].calls + x[1].calls, 0);
	sender_dns_close(dns);
	/* Pending callbacks have run inside close, once each. */
	assert_int_equal(x[0].calls, 1);
	assert_int_equal(x[1].calls, 1);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(x[0].calls, 1);
	assert_int_equal(x[0].status, SENDER_DNS_TEMPFAIL);
	assert_non_null(strstr(x[0].error, "cancelled"));
	assert_int_equal(x[1].calls, 1);
	assert_int_equal(x[1].status, SENDER_DNS_NXDOMAIN);
	assert_int_equal(uv_loop_close(&loop), 0);

	/* Close with nothing pending, and resolve after close is refused. */
	uv_loop_init(&loop);
	assert_int_equal(sender_dns_new(&dns, &loop, g.servers, 1000, err, sizeof(err)), 0);
	sender_dns_close(dns);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&loop), 0);
}

/* Resolve DOMAIN, then (dnsmasq frozen with SIGSTOP) resolve it again on
 * the same resolver: only a cached answer can come back OK. */
struct twice {
	sender_dns *dns;
	const char *domain;
	struct capture cap[2];
	struct cb_arg args[2];
	int step;
};

static void
on_twice(const struct sender_dns_result *res, void *arg)
{
	struct twice *t = arg;
	struct cb_arg a = { NULL, &t->cap[t->step] };
	struct run r = { t->dns, 2, NULL };

	a.run = &r; /* on_resolved needs a run; it must not close the resolver */
	on_resolved(res, &a);
	if (t->step++ == 0) {
		kill(g.dnsmasq, SIGSTOP);
		assert_int_equal(sender_dns_resolve(t->dns, t->domain, on_twice, t), 0);
		assert_int_equal(t->cap[1].calls, 0); /* even a hit answers later */
	} else {
		kill(g.dnsmasq, SIGCONT);
		sender_dns_close(t->dns);
	}
}

static void
resolve_twice(const char *domain, struct twice *t)
{
	uv_loop_t loop;
	char err[256] = "";

	memset(t, 0, sizeof(*t));
	t->domain = domain;
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(sender_dns_new(&t->dns, &loop, g.servers, 600, err, sizeof(err)), 0);
	assert_int_equal(sender_dns_resolve(t->dns, domain, on_twice, t), 0);
	uv_run(&loop, UV_RUN_DEFAULT);
	kill(g.dnsmasq, SIGCONT);
	assert_int_equal(t->cap[0].calls, 1);
	assert_int_equal(t->cap[1].calls, 1);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static void
test_cache(void **state)
{
	struct twice t;

	(void)state;
	SKIP_WITHOUT_DNSMASQ();
	resolve_twice("mx.test", &t);
	assert_int_equal(t.cap[0].status, SENDER_DNS_OK);
	assert_int_equal(t.cap[1].status, SENDER_DNS_OK); /* the server was frozen */
	assert_int_equal(t.cap[1].n, 4);
	for (size_t i = 0; i < 4; i++) {
		assert_string_equal(t.cap[1].host[i], t.cap[0].host[i]);
		assert_string_equal(t.cap[1].ip[i], t.cap[0].ip[i]);
	}

	/* A record with TTL 0 makes the whole answer uncacheable. */
	resolve_twice("ttl0.test", &t);
	assert_int_equal(t.cap[0].status, SENDER_DNS_OK);
	assert_string_equal(t.cap[0].ip[0], "127.0.0.30");
	assert_int_equal(t.cap[1].status, SENDER_DNS_TEMPFAIL);
}

static void
test_bad_server_list(void **state)
{
	uv_loop_t loop;
	sender_dns *dns = (sender_dns *)1;
	char err[256] = "";

	(void)state;
	uv_loop_init(&loop);
	assert_true(sender_dns_new(&dns, &loop, "not an address", 1000, err, sizeof(err)) < 0);
	assert_null(dns);
	assert_non_null(strstr(err, "not an address"));
	/* System configuration when no servers are given. */
	assert_int_equal(sender_dns_new(&dns, &loop, NULL, 1000, err, sizeof(err)), 0);
	sender_dns_close(dns);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&loop), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mx_ordered_by_preference),
		cmocka_unit_test(test_equal_preferences_shuffled),
		cmocka_unit_test(test_implicit_mx),
		cmocka_unit_test(test_null_mx),
		cmocka_unit_test(test_nxdomain),
		cmocka_unit_test(test_no_host),
		cmocka_unit_test(test_servfail),
		cmocka_unit_test(test_timeout),
		cmocka_unit_test(test_invalid_domain_is_async),
		cmocka_unit_test(test_mixed_parallel),
		cmocka_unit_test(test_close_cancels_pending),
		cmocka_unit_test(test_cache),
		cmocka_unit_test(test_bad_server_list),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests_name("sender_dns", tests, env_start, env_stop);
}
