/*
 * hk_curve - CURVE security between nodes: keys, socket set-up, and the ZAP
 * handler that lets only the cluster's own nodes talk to a router.
 *
 * Keys come from the top-level curve: section (docs/CONFIG.md): each node has
 * a public key and a secret key (inline, or in a file such as a mounted
 * Kubernetes Secret, read when the node starts). Routers are CURVE servers;
 * ingress and sender DEALERs are CURVE clients that know each router's public
 * key. inproc:// endpoints (`hikyaku all`) never use CURVE.
 *
 * The ZAP handler (inproc://zeromq.zap.01, one per ZeroMQ context) runs on
 * the router's loop. It accepts a client key only if it is the public key of
 * a node whose role may use that socket: ingress nodes on the front socket
 * (ZAP domain "front"), senders on the back socket ("back"). Anything else is
 * refused, counted and logged (curve_refused, with the peer address).
 */
#ifndef HK_CURVE_H
#define HK_CURVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "hk_config.h"
#include "hk_zlink.h"

#define HK_CURVE_KEY_LEN 40 /* Z85 text of a 32-byte key */

/* hk_curve_key_ok - is S a Z85 CURVE key (40 characters of the Z85 alphabet)? */
bool hk_curve_key_ok(const char *s);

/* hk_curve_wanted - must a socket on ENDPOINT use CURVE? (a curve: section
 * is configured and the endpoint is not inproc://) */
bool hk_curve_wanted(const struct hk_config *cfg, const char *endpoint);

/*
 * hk_curve_secret - NODE's secret key (Z85, NUL-terminated) into OUT: the
 * inline secret_key, or the first line of secret_key_file (surrounding
 * white space ignored). It must belong to the configured public_key. 0, or
 * -1 with a message in ERR.
 */
int hk_curve_secret(const struct hk_config *cfg, const char *node,
    char out[HK_CURVE_KEY_LEN + 1], char *err, size_t errlen);

/* hk_curve_server - make LINK (a ROUTER, before bind) a CURVE server with
 * NODE's keys, authenticated by ZAP under DOMAIN ("front" or "back").
 * 0, or -1 with a message in ERR. */
int hk_curve_server(hk_zlink *link, const struct hk_config *cfg, const char *node,
    const char *domain, char *err, size_t errlen);

/* hk_curve_client - make LINK (a DEALER, before its connect to the router
 * SERVER) a CURVE client with NODE's keys and SERVER's public key. Each
 * connect takes the server key set last, so call it before every connect.
 * 0, or -1 with a message in ERR. */
int hk_curve_client(hk_zlink *link, const struct hk_config *cfg, const char *node,
    const char *server, char *err, size_t errlen);

/*
 * hk_curve_lookup - the node allowed to connect under ZAP DOMAIN with the
 * 32-byte public KEY: an ingress node for "front", a sender for "back".
 * NULL if none (unknown key, wrong socket for its role, unknown domain).
 */
const char *hk_curve_lookup(const struct hk_config *cfg, const char *domain, const uint8_t key[32]);

typedef struct hk_zap hk_zap;

/*
 * hk_zap_new - bind the ZAP handler of ZCTX on LOOP, deciding with
 * hk_curve_lookup over CFG (which must outlive it). Must run before any CURVE
 * server socket binds: without a handler libzmq lets every key in. Returns 0
 * and *out, or a negative errno (-EADDRINUSE: the context has one already).
 */
int hk_zap_new(hk_zap **out, uv_loop_t *loop, void *zctx, const struct hk_config *cfg);

/* hk_zap_close - stop and free (once libuv released its handles). NULL is fine. */
void hk_zap_close(hk_zap *zap);

/* hk_zap_refused / hk_zap_accepted - counters for metrics and tests. */
uint64_t hk_zap_refused(const hk_zap *zap);
uint64_t hk_zap_accepted(const hk_zap *zap);

/* hk_keygen_main - `hikyaku keygen [NODE]`: print a new keypair as a curve:
 * entry for NODE. 0, 1 on errors, 2 on usage. */
int hk_keygen_main(int argc, char **argv);

#endif
