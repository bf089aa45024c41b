/*
 * hk_curve - CURVE keys, CURVE sockets, and the router's ZAP handler.
 *
 * The ZAP handler is a REP socket on inproc://zeromq.zap.01 driven by the
 * loop like any link: ZMQ_FD is edge-triggered, so each wake-up drains while
 * ZMQ_EVENTS says readable, and checking ZMQ_EVENTS after each reply re-arms
 * the edge. A request is answered at once from the configuration: no I/O.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "hk_curve.h"
#include "hk_log.h"
#include "hk_logrl.h"
#include "hk_util.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_MAX_PARTS 8
#define ZAP_REFUSE_LOGS_PER_SEC 10

bool
hk_curve_key_ok(const char *s)
{
	uint8_t bin[32];

	if (s == NULL || strlen(s) != HK_CURVE_KEY_LEN)
		return false;
	return zmq_z85_decode(bin, s) != NULL;
}

bool
hk_curve_wanted(const struct hk_config *cfg, const char *endpoint)
{
	return cfg->curve != NULL && strncmp(endpoint, "inproc://", 9) != 0;
}

/* The first line of PATH, trimmed, into OUT (at most HK_CURVE_KEY_LEN chars). */
static int
read_key_file(const char *path, char out[HK_CURVE_KEY_LEN + 1], char *err, size_t errlen)
{
	char line[256], *p, *end;
	FILE *f = fopen(path, "rb");

	if (f == NULL) {
		snprintf(err, errlen, "cannot open secret_key_file %s: %s", path, strerror(errno));
		return -1;
	}
	if (fgets(line, sizeof(line), f) == NULL)
		line[0] = '\0';
	fclose(f);
	for (p = line; *p == ' ' || *p == '\t'; p++)
		;
	end = p + strlen(p);
	while (end > p && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' ' || end[-1] == '\t'))
		*--end = '\0';
	if (!hk_curve_key_ok(p)) {
		explicit_bzero(line, sizeof(line));
		snprintf(err, errlen, "secret_key_file %s does not hold a Z85 CURVE key (40 characters, "
		    "from `hikyaku keygen`)", path);
		return -1;
	}
	memcpy(out, p, HK_CURVE_KEY_LEN + 1);
	explicit_bzero(line, sizeof(line));
	return 0;
}

int
hk_curve_secret(const struct hk_config *cfg, const char *node, char out[HK_CURVE_KEY_LEN + 1],
    char *err, size_t errlen)
{
	const struct hk_curve_conf *k = hk_config_curve(cfg, node);
	char pub[HK_CURVE_KEY_LEN + 1];

	if (k == NULL) {
		snprintf(err, errlen, "node '%s' has no CURVE keys in curve:", node);
		return -1;
	}
	if (k->secret_key)
		memcpy(out, k->secret_key, HK_CURVE_KEY_LEN + 1);
	else if (read_key_file(k->secret_key_file, out, err, errlen) != 0)
		return -1;
	if (zmq_curve_public(pub, out) != 0 || strcmp(pub, k->public_key) != 0) {
		explicit_bzero(out, HK_CURVE_KEY_LEN + 1);
		snprintf(err, errlen, "node '%s': the secret key does not belong to its public_key", node);
		return -1;
	}
	return 0;
}

int
hk_curve_server(hk_zlink *l, const struct hk_config *cfg, const char *node,
    const char *domain, char *err, size_t errlen)
{
	char sec[HK_CURVE_KEY_LEN + 1];
	int one = 1, rc;

	if (hk_curve_secret(cfg, node, sec, err, errlen) != 0)
		return -1;
	if ((rc = hk_zlink_setsockopt(l, ZMQ_CURVE_SERVER, &one, sizeof(one))) != 0 ||
	    (rc = hk_zlink_setsockopt(l, ZMQ_CURVE_SECRETKEY, sec, HK_CURVE_KEY_LEN + 1)) != 0 ||
	    (rc = hk_zlink_setsockopt(l, ZMQ_ZAP_DOMAIN, domain, strlen(domain))) != 0) {
		explicit_bzero(sec, sizeof(sec));
		snprintf(err, errlen, "CURVE server setup: %s", zmq_strerror(-rc));
		return -1;
	}
	explicit_bzero(sec, sizeof(sec));
	return 0;
}

int
hk_curve_client(hk_zlink *l, const struct hk_config *cfg, const char *node,
    const char *server, char *err, size_t errlen)
{
	const struct hk_curve_conf *me = hk_config_curve(cfg, node), *srv = hk_config_curve(cfg, server);
	char sec[HK_CURVE_KEY_LEN + 1];
	int rc;

	if (me == NULL || srv == NULL) {
		snprintf(err, errlen, "node '%s' has no CURVE keys in curve:", me ? server : node);
		return -1;
	}
	if (hk_curve_secret(cfg, node, sec, err, errlen) != 0)
		return -1;
	if ((rc = hk_zlink_setsockopt(l, ZMQ_CURVE_SERVERKEY, srv->public_key, HK_CURVE_KEY_LEN + 1)) != 0 ||
	    (rc = hk_zlink_setsockopt(l, ZMQ_CURVE_PUBLICKEY, me->public_key, HK_CURVE_KEY_LEN + 1)) != 0 ||
	    (rc = hk_zlink_setsockopt(l, ZMQ_CURVE_SECRETKEY, sec, HK_CURVE_KEY_LEN + 1)) != 0) {
		explicit_bzero(sec, sizeof(sec));
		snprintf(err, errlen, "CURVE client setup: %s", zmq_strerror(-rc));
		return -1;
	}
	explicit_bzero(sec, sizeof(sec));
	return 0;
}

const char *
hk_curve_lookup(const struct hk_config *cfg, const char *domain, const uint8_t key[32])
{
	enum hk_role want;
	uint8_t bin[32];

	if (!strcmp(domain, "front"))
		want = HK_ROLE_INGRESS;
	else if (!strcmp(domain, "back"))
		want = HK_ROLE_SENDER;
	else
		return NULL;
	for (size_t i = 0; i < cfg->n_curve; i++) {
		const struct hk_node_conf *nc = hk_config_node(cfg, cfg->curve[i].node);
		if (nc == NULL || nc->role != want)
			continue;
		if (zmq_z85_decode(bin, cfg->curve[i].public_key) != NULL && memcmp(bin, key, 32) == 0)
			return nc->name;
	}
	return NULL;
}

/* --- the ZAP handler ------------------------------------------------------- */

struct hk_zap {
	void *sock;
	uv_poll_t poll;
	const struct hk_config *cfg;
	uint64_t refused, accepted;
	struct hk_logrl refuse_log;
};

/* A part as a C string (printable bytes only), into BUF. */
static const char *
part_str(zmq_msg_t *m, char *buf, size_t size)
{
	const unsigned char *p = zmq_msg_data(m);
	size_t n = zmq_msg_size(m), i;

	for (i = 0; i < n && i < size - 1; i++)
		buf[i] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
	buf[i] = '\0';
	return buf;
}

static void
zap_reply(hk_zap *z, zmq_msg_t *req_id, const char *code, const char *text, const char *user)
{
	zmq_send(z->sock, "1.0", 3, ZMQ_SNDMORE | ZMQ_DONTWAIT);
	zmq_send(z->sock, zmq_msg_data(req_id), zmq_msg_size(req_id), ZMQ_SNDMORE | ZMQ_DONTWAIT);
	zmq_send(z->sock, code, strlen(code), ZMQ_SNDMORE | ZMQ_DONTWAIT);
	zmq_send(z->sock, text, strlen(text), ZMQ_SNDMORE | ZMQ_DONTWAIT);
	zmq_send(z->sock, user, strlen(user), ZMQ_SNDMORE | ZMQ_DONTWAIT);
	zmq_send(z->sock, "", 0, ZMQ_DONTWAIT);
}

/* One request (RFC 27): version, request id, domain, address, routing id,
 * mechanism, credentials. */
static void
zap_handle(hk_zap *z, zmq_msg_t *parts, int n)
{
	char domain[32] = "", address[64] = "", mech[16] = "", keytxt[HK_CURVE_KEY_LEN + 1] = "";
	const char *node = NULL, *why;
	uint64_t suppressed;

	if (n < 6) {
		why = "malformed ZAP request";
	} else {
		part_str(&parts[2], domain, sizeof(domain));
		part_str(&parts[3], address, sizeof(address));
		part_str(&parts[5], mech, sizeof(mech));
		if (strcmp(mech, "CURVE") != 0 || n < 7 || zmq_msg_size(&parts[6]) != 32) {
			why = "not CURVE";
		} else {
			zmq_z85_encode(keytxt, zmq_msg_data(&parts[6]), 32);
			node = hk_curve_lookup(z->cfg, domain, zmq_msg_data(&parts[6]));
			why = "unknown key";
		}
	}
	if (node) {
		z->accepted++;
		zap_reply(z, &parts[1], "200", "OK", node);
		hk_log_debug("curve_accepted", "{s:s, s:s, s:s}", "peer", address, "socket", domain, "member", node);
		return;
	}
	z->refused++;
	if (n >= 2)
		zap_reply(z, &parts[1], "400", why, "");
	if (hk_logrl_allow(&z->refuse_log, hk_now_ms(), ZAP_REFUSE_LOGS_PER_SEC, &suppressed))
		hk_log_warn("curve_refused", "{s:s, s:s, s:s, s:s, s:I, s:I}", "peer", address, "socket", domain,
		    "reason", why, "key", keytxt, "refused", (json_int_t)z->refused,
		    "suppressed", (json_int_t)suppressed);
}

static void
zap_drain(uv_poll_t *h, int status, int events)
{
	hk_zap *z = h->data;
	zmq_msg_t parts[ZAP_MAX_PARTS];
	int ev;
	size_t elen = sizeof(ev);
	(void)status;
	(void)events;

	while (z->sock && zmq_getsockopt(z->sock, ZMQ_EVENTS, &ev, &elen) == 0 && (ev & ZMQ_POLLIN)) {
		int n = 0, more = 1;
		while (more) {
			zmq_msg_t tmp, *m = n < ZAP_MAX_PARTS ? &parts[n] : &tmp;
			zmq_msg_init(m);
			if (zmq_msg_recv(m, z->sock, ZMQ_DONTWAIT) < 0) {
				zmq_msg_close(m);
				break;
			}
			more = zmq_msg_more(m);
			if (m == &tmp)
				zmq_msg_close(m);
			else
				n++;
		}
		if (more) { /* receive failed mid-message: cannot happen on inproc */
			for (int i = 0; i < n; i++)
				zmq_msg_close(&parts[i]);
			break;
		}
		zap_handle(z, parts, n);
		for (int i = 0; i < n; i++)
			zmq_msg_close(&parts[i]);
	}
}

int
hk_zap_new(hk_zap **out, uv_loop_t *loop, void *zctx, const struct hk_config *cfg)
{
	hk_zap *z = xcalloc(1, sizeof(*z));
	int zero = 0, rc;
	zmq_fd_t fd;
	size_t fdlen = sizeof(fd);

	*out = NULL;
	z->cfg = cfg;
	if ((z->sock = zmq_socket(zctx, ZMQ_REP)) == NULL) {
		rc = -zmq_errno();
		free(z);
		return rc;
	}
	zmq_setsockopt(z->sock, ZMQ_LINGER, &zero, sizeof(zero));
	if (zmq_bind(z->sock, ZAP_ENDPOINT) != 0 || zmq_getsockopt(z->sock, ZMQ_FD, &fd, &fdlen) != 0) {
		rc = -zmq_errno();
		zmq_close(z->sock);
		free(z);
		return rc;
	}
	if ((rc = uv_poll_init(loop, &z->poll, fd)) != 0) {
		zmq_close(z->sock);
		free(z);
		return rc;
	}
	z->poll.data = z;
	uv_poll_start(&z->poll, UV_READABLE, zap_drain);
	*out = z;
	return 0;
}

static void
zap_closed(uv_handle_t *h)
{
	free(h->data);
}

void
hk_zap_close(hk_zap *z)
{
	if (z == NULL)
		return;
	uv_close((uv_handle_t *)&z->poll, zap_closed);
	zmq_close(z->sock);
	z->sock = NULL;
}

uint64_t
hk_zap_refused(const hk_zap *z)
{
	return z->refused;
}

uint64_t
hk_zap_accepted(const hk_zap *z)
{
	return z->accepted;
}

/* --- hikyaku keygen -------------------------------------------------------- */

int
hk_keygen_main(int argc, char **argv)
{
	char pub[HK_CURVE_KEY_LEN + 1], sec[HK_CURVE_KEY_LEN + 1];
	const char *node = argc >= 3 ? argv[2] : "NODE";

	if (argc > 3 || (argc == 3 && (argv[2][0] == '-' || argv[2][0] == '\0'))) {
		FILE *f = argc == 3 && !strcmp(argv[2], "--help") ? stdout : stderr;
		fprintf(f, "usage: hikyaku keygen [NODE]\n"
		    "  prints a new CURVE keypair (Z85) as an entry of the configuration's curve: section\n");
		return f == stdout ? 0 : 2;
	}
	if (zmq_curve_keypair(pub, sec) != 0) {
		fprintf(stderr, "hikyaku keygen: %s (is libzmq built with CURVE?)\n", zmq_strerror(zmq_errno()));
		return 1;
	}
	printf("# CURVE keys of node %s: paste under curve: in the configuration.\n"
	    "# Keep the secret key secret: in production put it in a file (a Kubernetes\n"
	    "# Secret) and give secret_key_file: PATH instead of secret_key.\n"
	    "  %s:\n"
	    "    public_key: \"%s\"\n"
	    "    secret_key: \"%s\"\n", node, node, pub, sec);
	explicit_bzero(sec, sizeof(sec));
	if (fflush(stdout) != 0) {
		fprintf(stderr, "hikyaku keygen: writing the keys: %s\n", strerror(errno));
		return 1;
	}
	return 0;
}
