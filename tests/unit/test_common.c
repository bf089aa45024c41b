/* test_common - config loading and errors, ids, domains, CIDR, u64map. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <cmocka.h>

#include "hk_config.h"
#include "hk_domain.h"
#include "hk_id.h"
#include "hk_u64map.h"

#define HASH "$6$rounds=1000$saltsalt$w9KQdgZ0Ki6LoC1UHsgXGBQaO4XJhW7upynW4LSaoTX6YuFX0KIqzhQcvdJFwTJS.I2sYmby8LApILDV7m1xF/" /* "x" */

static char *
write_tmp(const char *text)
{
	static char path[64];
	strcpy(path, "/tmp/hk_test_cfg_XXXXXX");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	return path;
}

static const char good_cfg[] =
    "nodes:\n"
    "  r1:\n"
    "    role: router\n"
    "    front: tcp://127.0.0.1:7101\n"
    "    back: tcp://127.0.0.1:7102\n"
    "    http: 127.0.0.1:9101\n"
    "  s1:\n"
    "    role: sender\n"
    "    routers: [r1]\n"
    "    queue: /tmp/q\n"
    "    retry_min: 1500ms\n"
    "    max_lifetime: 5d\n"
    "    queue_map_size: 64M\n"
    "    connection_cache_time: 500ms\n"
    "  i1:\n"
    "    role: ingress\n"
    "    listen: 127.0.0.1:2525\n"
    "    relay_networks: [127.0.0.0/8, '::1']\n"
    "    routers: r1\n";

static void
test_config_good(void **state)
{
	struct hk_config *cfg;
	char err[512];
	char *path = write_tmp(good_cfg);
	(void)state;

	assert_int_equal(hk_config_load(path, &cfg, err, sizeof(err)), 0);
	const struct hk_node_conf *s = hk_config_node(cfg, "s1");
	assert_non_null(s);
	assert_int_equal(s->role, HK_ROLE_SENDER);
	assert_string_equal(s->u.sender.routers[0], "tcp://127.0.0.1:7102");
	assert_int_equal(s->u.sender.retry_min_ms, 1500);
	assert_int_equal(s->u.sender.max_lifetime_ms, 5u * 86400000u);
	assert_int_equal(s->u.sender.queue_map_size, 64u << 20);
	assert_int_equal(s->u.sender.delivery_port, 25); /* default */
	assert_int_equal(s->u.sender.connection_cache_time_ms, 500);
	assert_int_equal(s->u.sender.connection_reuse_limit, 100); /* default */
	assert_null(s->http_host); /* no http: key, no HTTP */
	assert_int_equal(s->u.sender.n_tls_required_domains, 0);
	assert_null(s->u.sender.tls_ca_file);
	assert_false(hk_sender_tls_required(&s->u.sender, "example.com"));
	const struct hk_node_conf *r = hk_config_node(cfg, "r1");
	assert_string_equal(r->http_host, "127.0.0.1");
	assert_int_equal(r->http_port, 9101);
	/* router: timeouts and caps, defaults */
	assert_int_equal(r->u.router.heartbeat_timeout_ms, 3000);
	assert_int_equal(r->u.router.enqueue_timeout_ms, 5000);
	assert_int_equal(r->u.router.resend_window_ms, 9000);
	assert_int_equal(r->u.router.max_inflight_per_sender, 1000);
	assert_int_equal(r->u.router.max_pending, 10000);
	const struct hk_node_conf *i = hk_config_node(cfg, "i1");
	assert_string_equal(i->u.ingress.routers[0], "tcp://127.0.0.1:7101");
	assert_int_equal(i->u.ingress.n_listeners, 1);
	assert_int_equal(i->u.ingress.listeners[0].port, 2525);
	assert_int_equal(i->u.ingress.listeners[0].mode, HK_LISTEN_RELAY);
	assert_false(i->u.ingress.listeners[0].allow_plaintext_auth);
	assert_false(i->u.ingress.has_tls);
	assert_int_equal(i->u.ingress.n_relay_networks, 2);
	/* limits: defaults */
	assert_int_equal(i->u.ingress.max_header_line_length, 998);
	assert_int_equal(i->u.ingress.max_sessions_per_ip, 50);
	assert_int_equal(i->u.ingress.auth_failure_limit, 5);
	assert_int_equal(i->u.ingress.auth_failure_window_ms, 300000);
	assert_int_equal(i->u.ingress.max_errors, 20);
	assert_int_equal(i->u.ingress.bare_lf, HK_BARE_LF_REJECT);
	hk_config_use_inproc(cfg);
	assert_string_equal(i->u.ingress.routers[0], "inproc://r1.front");
	assert_string_equal(s->u.sender.routers[0], "inproc://r1.back");
	hk_config_free(&cfg);
	assert_null(cfg);
	unlink(path);
}

/* The router's failover and backpressure keys, set. */
static void
test_config_router_keys(void **state)
{
	struct hk_config *cfg;
	char err[512];
	char *path = write_tmp("nodes:\n  r1:\n    role: router\n    front: tcp://a:1\n    back: tcp://a:2\n"
	    "    resend_window: 2500ms\n    max_inflight_per_sender: 1\n    max_pending: 2\n");
	(void)state;

	assert_int_equal(hk_config_load(path, &cfg, err, sizeof(err)), 0);
	const struct hk_node_conf *r = hk_config_node(cfg, "r1");
	assert_int_equal(r->u.router.resend_window_ms, 2500);
	assert_int_equal(r->u.router.max_inflight_per_sender, 1);
	assert_int_equal(r->u.router.max_pending, 2);
	hk_config_free(&cfg);
	unlink(path);
}

/* tls_required_domains: canonical (lower case, A-label), exact match. */
static void
test_config_sender_tls(void **state)
{
	struct hk_config *cfg;
	char err[512];
	char *path = write_tmp("nodes:\n  r1:\n    role: router\n    front: tcp://a:1\n    back: tcp://a:2\n"
	    "  s1:\n    role: sender\n    routers: [r1]\n    queue: /q\n"
	    "    tls_required_domains: [Bank.Example, b\xc3\xbc" "cher.example]\n"
	    "    tls_ca_file: /dev/null\n");
	(void)state;

	assert_int_equal(hk_config_load(path, &cfg, err, sizeof(err)), 0);
	const struct hk_sender_conf *sc = &hk_config_node(cfg, "s1")->u.sender;
	assert_int_equal(sc->n_tls_required_domains, 2);
	assert_string_equal(sc->tls_required_domains[0], "bank.example");
	assert_string_equal(sc->tls_required_domains[1], "xn--bcher-kva.example");
	assert_true(hk_sender_tls_required(sc, "bank.example"));
	assert_true(hk_sender_tls_required(sc, "xn--bcher-kva.example"));
	assert_false(hk_sender_tls_required(sc, "mail.bank.example"));  /* exact match only */
	assert_false(hk_sender_tls_required(sc, "example"));
	assert_string_equal(sc->tls_ca_file, "/dev/null");
	hk_config_free(&cfg);
	unlink(path);
}

/* pools: named pools of {address, hostname, weight, warmup}; without one
 * the node has an implicit "shared" of its source_address and hostname. */
static void
test_config_sender_pools(void **state)
{
	struct hk_config *cfg;
	char err[512];
	char *path = write_tmp("nodes:\n  r1:\n    role: router\n    front: tcp://a:1\n    back: tcp://a:2\n"
	    "  s1:\n    role: sender\n    routers: [r1]\n    queue: /q\n"
	    "    pools:\n      shared:\n        addresses:\n"
	    "          - {address: 127.0.0.2, hostname: a.example, weight: 3}\n"
	    "          - {address: '::1', hostname: b.example, warmup: true}\n"
	    "      acme: {addresses: [{address: 127.0.0.4, hostname: c.example}], spill_to: shared}\n"
	    "  s2:\n    role: sender\n    routers: [r1]\n    queue: /q2\n"
	    "    source_address: 127.0.0.9\n    hostname: s2.example\n");
	(void)state;

	assert_int_equal(hk_config_load(path, &cfg, err, sizeof(err)), 0);
	const struct hk_sender_conf *sc = &hk_config_node(cfg, "s1")->u.sender;
	assert_int_equal(sc->n_pools, 2);
	const struct hk_pool_conf *sh = hk_sender_pool(sc, "shared");
	assert_non_null(sh);
	assert_int_equal(sh->n_addrs, 2);
	assert_string_equal(sh->addrs[0].address, "127.0.0.2");
	assert_string_equal(sh->addrs[0].hostname, "a.example");
	assert_int_equal(sh->addrs[0].weight, 3);
	assert_false(sh->addrs[0].warmup);
	assert_true(sh->addrs[1].warmup);
	assert_int_equal(sh->addrs[1].weight, 1);
	assert_string_equal(hk_sender_pool(sc, "acme")->spill_to, "shared");
	assert_null(hk_sender_pool(sc, "nope"));
	const struct hk_sender_conf *s2 = &hk_config_node(cfg, "s2")->u.sender;
	assert_int_equal(s2->n_pools, 1);
	assert_string_equal(s2->pools[0].name, "shared");
	assert_string_equal(s2->pools[0].addrs[0].address, "127.0.0.9");
	assert_string_equal(s2->pools[0].addrs[0].hostname, "s2.example");
	hk_config_free(&cfg);
	unlink(path);
}

/* Each bad file must fail with an error naming the line and the key. */
static void
test_config_errors(void **state)
{
	static const struct { const char *text; const char *expect; } cases[] = {
		{ "nodes:\n  r1:\n    role: router\n    front: tcp://a:1\n    back: tcp://a:2\n    bogus: 1\n",
		  ":6: key 'bogus': unknown key" },
		{ "nodes:\n  s1:\n    role: sender\n    routers: [r1]\n    queue: /q\n    retry_min: 5 weeks\n",
		  ":6: key 'retry_min':" },
		{ "nodes:\n  s1:\n    role: sender\n    queue: /q\n", ":2: key 'routers': required" },
		{ "nodes:\n  s1:\n    role: sender\n    routers: [r1]\n    queue: /q\n    connection_reuse_limit: 0\n",
		  ":6: key 'connection_reuse_limit': must be at least 1" },
		{ "nodes:\n  s1:\n    role: sender\n    routers: [r1]\n    queue: /q\n"
		  "    tls_required_domains: [ok.example, 'not a domain']\n",
		  ":6: key 'tls_required_domains': 'not a domain' is not a domain name" },
		{ "nodes:\n  s1:\n    role: sender\n    routers: [r1]\n    queue: /q\n"
		  "    tls_ca_file: /nonexistent/ca.pem\n",
		  ":6: key 'tls_ca_file': cannot read '/nonexistent/ca.pem'" },
		{ "nodes:\n  s1:\n    role: sender\n    routers: [r1]\n    queue: /q\n    pools:\n"
		  "      p: {addresses: [{address: 10.0.0.300, hostname: x}]}\n",
		  ":7: key 'address': '10.0.0.300' is not an IPv4 or IPv6 address" },
		{ "nodes:\n  s1:\n    role: sender\n    routers: [r1]\n    queue: /q\n    pools:\n"
		  "      p: {addresses: [{address: 10.0.0.3}]}\n",
		  ":7: key 'hostname': required for 10.0.0.3" },
		{ "nodes:\n  s1:\n    role: sender\n    routers: [r1]\n    queue: /q\n    pools:\n"
		  "      p: {addresses: [{address: 10.0.0.3, hostname: x}], spill_to: q}\n",
		  "key 'spill_to': pool 'p' spills to 'q', which is not another pool" },
		{ "nodes:\n  s1:\n    role: sender\n    routers: [r1]\n    queue: /q\n    pools:\n"
		  "      p: {addresses: []}\n",
		  ":7: key 'addresses': pool 'p' needs a non-empty list" },
		{ "nodes:\n  s1:\n    role: sender\n    queue: /q\n    routers: [nope]\n",
		  "key 'routers': node 's1' names 'nope'" },
		{ "nodes:\n  x:\n    role: mailer\n", ":3: key 'role':" },
		{ "nodes:\n  i:\n    role: ingress\n    listen: nowhere\n", ":4: key 'listen':" },
		{ "nodes:\n  i:\n    role: ingress\n    relay_networks: [10.0.0.0/33]\n", ":4: key 'relay_networks': '10.0.0.0/33'" },
		{ "nodes:\n  i:\n    role: ingress\n    routers: [r]\n    listen: 127.0.0.1:25\n"
		  "    listeners: [{address: '127.0.0.1:26'}]\n", ":6: key 'listeners': give either listen or listeners" },
		{ "nodes:\n  i:\n    role: ingress\n    listeners:\n      - address: 127.0.0.1:465\n        mode: tls\n",
		  ":6: key 'mode': expected relay, submission or smtps" },
		{ "nodes:\n  i:\n    role: ingress\n    listeners:\n      - address: 127.0.0.1:465\n        port: 1\n",
		  ":6: key 'port': unknown key in a listener" },
		{ "nodes:\n  r:\n    role: router\n    front: tcp://a:1\n    back: tcp://a:2\n"
		  "  i:\n    role: ingress\n    routers: [r]\n    listeners:\n      - {address: '127.0.0.1:465', mode: smtps}\n",
		  ":6: key 'listeners': node 'i', listener 127.0.0.1:465: an smtps listener needs a tls: map" },
		{ "nodes:\n  i:\n    role: ingress\n    tls:\n      certificate: /c.pem\n",
		  ":5: key 'key': required in tls" },
		{ "tenants:\n  a:\n    credentials:\n      - {user: u, password_hash: plaintext}\nnodes: {}\n",
		  ":4: key 'password_hash': user 'u': not a password hash" },
		{ "tenants:\n  a:\n    credentials: [{user: u, password_hash: '" HASH "'}]\n"
		  "  b:\n    credentials: [{user: u, password_hash: '" HASH "'}]\nnodes: {}\n",
		  ":4: key 'user': 'u' belongs to tenant 'a' and to tenant 'b'" },
		{ "tenants:\n  a:\n    rate_limit: 10/day\nnodes: {}\n", ":3: key 'rate_limit': expected a rate" },
		{ "tenants:\n  a:\n    sender_domain: x.test\nnodes: {}\n", ":3: key 'sender_domain': unknown key in a tenant" },
		{ "tenants:\n  a:\n    credentials_file: /nonexistent/creds\nnodes: {}\n",
		  ":3: key 'credentials_file': cannot open /nonexistent/creds" },
		{ "tenants:\n  a: {}\nnodes:\n  r: {role: router, front: 'tcp://a:1', back: 'tcp://a:2'}\n"
		  "  i: {role: ingress, listen: '127.0.0.1:1', routers: [r], network_tenant: b}\n",
		  ":5: key 'network_tenant': node 'i' names tenant 'b', which is not in tenants:" },
		{ "nodes:\n  i:\n    role: ingress\n    bare_lf: allow\n", ":4: key 'bare_lf': 'allow' is not reject or normalize" },
		{ "nodes:\n  i:\n    role: ingress\n    max_header_line_length: 999\n", ":4: key 'max_header_line_length': must be 78-998" },
		{ "nodes:\n  i:\n    role: ingress\n    max_sessions_per_ip: 0\n", ":4: key 'max_sessions_per_ip': must be at least 1" },
		{ "nodes:\n  i:\n    role: ingress\n    max_errors: 0\n", ":4: key 'max_errors': must be at least 1" },
		{ "nodes:\n  i:\n    role: ingress\n    auth_failure_window: 0s\n", ":4: key 'auth_failure_window': must be longer than 0" },
		{ "nodes:\n  s1:\n    role: sender\n    routers: [r1]\n    queue: /q\n    http: 9101\n",
		  ":6: key 'http': expected host:port" },
		{ "nodes:\n  r1:\n    role: router\n    front: tcp://a:1\n    back: tcp://a:2\n    max_pending: 0\n",
		  ":6: key 'max_pending': must be at least 1" },
		{ "nodes:\n  r1:\n    role: router\n    front: tcp://a:1\n    back: tcp://a:2\n    max_inflight_per_sender: -1\n",
		  ":6: key 'max_inflight_per_sender': expected a non-negative integer" },
		{ "nodes:\n  r1:\n    role: router\n    front: tcp://a:1\n    back: tcp://a:2\n    resend_window: soon\n",
		  ":6: key 'resend_window':" },
		{ "nodes: [\n", "YAML syntax error" },
		{ "other: 1\n", ":1: key 'other': unknown top-level key" },
		{ "hot_domains: [gmail.com]\nnodes: {}\n", ":1: key 'hot_domains': expected a mapping" },
		{ "hot_domains:\n  gmail.com: 0\nnodes: {}\n", ":2: key 'gmail.com': expected a number of senders >= 1" },
		{ "hot_domains:\n  gmail.com: many\nnodes: {}\n", ":2: key 'gmail.com': expected an integer" },
		{ "hot_domains:\n  gmail.com: 2\n  GMail.COM: 3\nnodes: {}\n", ":3: key 'GMail.COM': hot domain listed twice" },
		{ "hot_domains:\n  'not a domain': 2\nnodes: {}\n", ":2: key 'hot_domains': 'not a domain' is not a domain name" },
	};
	(void)state;

	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		struct hk_config *cfg = (void *)1;
		char err[512] = "";
		char *path = write_tmp(cases[k].text);
		assert_int_equal(hk_config_load(path, &cfg, err, sizeof(err)), -1);
		assert_null(cfg);
		if (strstr(err, cases[k].expect) == NULL || strstr(err, path) == NULL)
			fail_msg("case %zu: error '%s' lacks '%s' or the path", k, err, cases[k].expect);
		unlink(path);
	}
}


/* hot_domains: canonical domain -> k; every other domain has k = 1. */
static void
test_config_hot_domains(void **state)
{
	char err[512];
	struct hk_config *cfg;
	char *path = write_tmp("hot_domains:\n  GMail.com: 4\n  b\xc3\xbc" "cher.example: 2\n"
	    "nodes:\n  r1: {role: router, front: 'tcp://127.0.0.1:1', back: 'tcp://127.0.0.1:2'}\n");
	(void)state;

	if (hk_config_load(path, &cfg, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	assert_int_equal(cfg->n_hot_domains, 2);
	assert_int_equal(hk_config_hot_k(cfg, "gmail.com"), 4);
	assert_int_equal(hk_config_hot_k(cfg, "xn--bcher-kva.example"), 2);
	assert_int_equal(hk_config_hot_k(cfg, "example.com"), 1);
	hk_config_free(&cfg);
	unlink(path);
}

/* tenants: credentials inline and from a file in both formats, sender
 * domains canonical, pool and rate; network_tenant resolved. */
static void
test_config_tenants(void **state)
{
	char text[4096], err[512], *cfgpath, lines_path[64], yaml_path[64];
	struct hk_config *cfg;
	(void)state;

	snprintf(lines_path, sizeof(lines_path), "%s", write_tmp("# comment\n\nbob:" HASH "\n  carol:" HASH "\n"));
	snprintf(yaml_path, sizeof(yaml_path), "%s", write_tmp("dave: \"" HASH "\"\n"));
	snprintf(text, sizeof(text),
	    "tenants:\n"
	    "  acme:\n"
	    "    credentials:\n"
	    "      - {user: alice, password_hash: \"" HASH "\"}\n"
	    "    credentials_file: %s\n"
	    "    sender_domains: [Example.COM, b\xc3\xbc" "cher.example]\n"
	    "    pool: dedicated-1\n"
	    "    rate_limit: 6000/m\n"
	    "  beta:\n"
	    "    credentials_file: %s\n"
	    "  net:\n"
	    "nodes:\n"
	    "  r1: {role: router, front: 'tcp://127.0.0.1:1', back: 'tcp://127.0.0.1:2'}\n"
	    "  i1: {role: ingress, listen: '127.0.0.1:25', routers: [r1], network_tenant: net}\n",
	    lines_path, yaml_path);
	cfgpath = write_tmp(text);
	if (hk_config_load(cfgpath, &cfg, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	const struct hk_tenant_conf *t = hk_config_tenant(cfg, "acme");
	assert_non_null(t);
	assert_int_equal(t->n_credentials, 3);
	assert_string_equal(t->credentials[0].user, "alice");
	assert_string_equal(t->credentials[1].user, "bob");
	assert_string_equal(t->credentials[2].user, "carol");
	assert_string_equal(t->credentials[2].hash, HASH);
	assert_int_equal(t->n_sender_domains, 2);
	assert_string_equal(t->sender_domains[0], "example.com");
	assert_string_equal(t->sender_domains[1], "xn--bcher-kva.example");
	assert_string_equal(t->pool, "dedicated-1");
	assert_int_equal(t->rate_count, 6000);
	assert_int_equal(t->rate_per_ms, 60000);
	assert_true(hk_tenant_owns_sender(t, "x@example.com"));
	assert_true(hk_tenant_owns_sender(t, "x@Mail.Example.com"));
	assert_true(hk_tenant_owns_sender(t, ""));
	assert_false(hk_tenant_owns_sender(t, "x@badexample.com"));
	assert_false(hk_tenant_owns_sender(t, "x@example.com.evil"));
	const struct hk_tenant_conf *b = hk_config_tenant(cfg, "beta");
	assert_int_equal(b->n_credentials, 1);
	assert_string_equal(b->credentials[0].user, "dave");
	assert_string_equal(b->pool, "shared");
	assert_int_equal(b->rate_count, 0);
	const struct hk_node_conf *i = hk_config_node(cfg, "i1");
	assert_ptr_equal(i->u.ingress.tenant, hk_config_tenant(cfg, "net"));
	assert_false(i->u.ingress.tenant->implicit);
	assert_true(hk_tenant_owns_sender(i->u.ingress.tenant, "x@anything.test"));
	hk_config_free(&cfg);
	unlink(cfgpath);

	/* Without tenants: network_tenant is made up, with no restriction. */
	cfgpath = write_tmp(good_cfg);
	assert_int_equal(hk_config_load(cfgpath, &cfg, err, sizeof(err)), 0);
	i = hk_config_node(cfg, "i1");
	assert_non_null(i->u.ingress.tenant);
	assert_string_equal(i->u.ingress.tenant->name, "default");
	assert_true(i->u.ingress.tenant->implicit);
	assert_int_equal(i->u.ingress.tenant->n_credentials, 0);
	hk_config_free(&cfg);
	unlink(cfgpath);
	unlink(lines_path);
	unlink(yaml_path);
}

static void
test_ids(void **state)
{
	hk_idgen *g = hk_idgen_new();
	char prev[HK_ID_LEN + 1], cur[HK_ID_LEN + 1];
	(void)state;

	assert_non_null(g);
	hk_id_next(g, prev);
	assert_int_equal(strlen(prev), HK_ID_LEN);
	for (int i = 0; i < 10000; i++) {
		hk_id_next(g, cur);
		assert_true(strcmp(prev, cur) < 0); /* strictly increasing */
		strcpy(prev, cur);
	}
	assert_true(hk_id_time_ms(cur) > 1700000000000LL);
	assert_int_equal(hk_id_time_ms("short"), -1);
	hk_idgen_destroy(&g);
	assert_null(g);
}

static void
test_domains(void **state)
{
	char out[HK_DOMAIN_MAX];
	(void)state;

	assert_int_equal(hk_domain_of("User@Example.COM", out), 0);
	assert_string_equal(out, "example.com");
	assert_int_equal(hk_domain_of("x@example.com.", out), 0);
	assert_string_equal(out, "example.com");
	assert_int_equal(hk_domain_of("x@bücher.example", out), 0);
	assert_string_equal(out, "xn--bcher-kva.example");
	assert_int_equal(hk_domain_of("x@docomo.ne.jp", out), 0);
	assert_int_equal(hk_domain_of("no-at-sign", out), -1);
	assert_int_equal(hk_domain_of("x@", out), -1);
	assert_int_equal(hk_domain_of("x@a..b", out), -1);
	assert_int_equal(hk_domain_of("x@-a.b", out), -1);
	assert_int_equal(hk_domain_of("x@a_b.c", out), -1);
}

static void
test_cidr(void **state)
{
	struct hk_cidr net;
	struct sockaddr_in sin = { .sin_family = AF_INET };
	struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6 };
	(void)state;

	assert_int_equal(hk_cidr_parse("127.0.0.0/8", &net), 0);
	inet_pton(AF_INET, "127.1.2.3", &sin.sin_addr);
	assert_true(hk_cidr_match(&net, (struct sockaddr *)&sin));
	inet_pton(AF_INET, "128.0.0.1", &sin.sin_addr);
	assert_false(hk_cidr_match(&net, (struct sockaddr *)&sin));
	inet_pton(AF_INET6, "::ffff:127.0.0.9", &sin6.sin6_addr);
	assert_true(hk_cidr_match(&net, (struct sockaddr *)&sin6));
	assert_int_equal(hk_cidr_parse("::1", &net), 0);
	inet_pton(AF_INET6, "::1", &sin6.sin6_addr);
	assert_true(hk_cidr_match(&net, (struct sockaddr *)&sin6));
	assert_int_equal(hk_cidr_parse("10.0.0.0/33", &net), -1);
	assert_int_equal(hk_cidr_parse("not-an-ip", &net), -1);
}

static void
test_u64map(void **state)
{
	hk_u64map *m = hk_u64map_new();
	static int vals[5000];
	(void)state;

	for (uint64_t k = 1; k <= 5000; k++)
		hk_u64map_put(m, k * 7919, &vals[k - 1]);
	assert_int_equal(hk_u64map_count(m), 5000);
	/* Remove every other key; the rest must stay reachable across shifts. */
	for (uint64_t k = 1; k <= 5000; k += 2)
		assert_ptr_equal(hk_u64map_pop(m, k * 7919), &vals[k - 1]);
	for (uint64_t k = 1; k <= 5000; k++)
		assert_ptr_equal(hk_u64map_get(m, k * 7919), k % 2 ? NULL : &vals[k - 1]);
	assert_null(hk_u64map_pop(m, 12345));
	assert_int_equal(hk_u64map_count(m), 2500);
	hk_u64map_destroy(&m);
	assert_null(m);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_config_good),
		cmocka_unit_test(test_config_router_keys),
		cmocka_unit_test(test_config_sender_tls),
		cmocka_unit_test(test_config_sender_pools),
		cmocka_unit_test(test_config_errors),
		cmocka_unit_test(test_config_tenants),
		cmocka_unit_test(test_config_hot_domains),
		cmocka_unit_test(test_ids),
		cmocka_unit_test(test_domains),
		cmocka_unit_test(test_cidr),
		cmocka_unit_test(test_u64map),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
