/*
 * hk_zlink - one ZeroMQ socket joined to a libuv loop, speaking hk Frames.
 *
 * The seam between ZeroMQ and libuv is here and nowhere else. ZMQ_FD is
 * edge-triggered, so after every wake-up and after every send the link drains
 * the socket while ZMQ_EVENTS says readable. The socket belongs to the loop's
 * thread; never use a link from another thread.
 *
 * Wire format of one message: [peer identity (ROUTER only)] [Frame] [body]?
 * The Frame is protobuf (proto/hikyaku.proto); the optional last frame is the
 * raw message body, kept out of protobuf so it is never re-encoded.
 *
 * Incoming frames are decoded strictly (hk_msg_decode): a frame that does not
 * parse, has an unknown version or no body case is logged, counted and
 * dropped; the callback only ever sees valid frames. Drop lines are rate
 * limited (10 a second per link, with the count of those suppressed). One
 * wake-up handles at most 256 messages, then yields to the loop, so a flood
 * on one socket does not starve the node's other sockets and timers.
 */
#ifndef HK_ZLINK_H
#define HK_ZLINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "hikyaku.pb-c.h"

typedef struct hk_zlink hk_zlink;

/*
 * Called for each valid incoming message. peer/peer_len is the sender's
 * routing id on a ROUTER socket (NULL/0 on a DEALER). frame, peer and body are
 * owned by the link and valid only during the call; copy what you keep.
 */
typedef void (*hk_zlink_cb)(hk_zlink *link, const void *peer, size_t peer_len,
    const Hk__Frame *frame, const uint8_t *body, size_t body_len, void *arg);

/*
 * hk_zlink_new - a socket of TYPE (ZMQ_ROUTER or ZMQ_DEALER) on LOOP. identity
 * (may be NULL) becomes ZMQ_ROUTING_ID; node is put in every Frame's
 * from_node. ROUTER sockets get ROUTER_MANDATORY (send to an unknown peer
 * fails with -EHOSTUNREACH) and ROUTER_HANDOVER; DEALER sockets get
 * ZMQ_IMMEDIATE (send with no connected peer fails with -EAGAIN).
 * Returns 0 and *out, or a negative errno.
 */
int hk_zlink_new(hk_zlink **out, uv_loop_t *loop, void *zctx, int type,
    const char *identity, const char *node, hk_zlink_cb cb, void *arg);

int hk_zlink_bind(hk_zlink *link, const char *endpoint);    /* 0 or -errno */
int hk_zlink_connect(hk_zlink *link, const char *endpoint); /* 0 or -errno */

/*
 * hk_zlink_send - send FRAME (version and from_node are filled in here) to
 * PEER (ROUTER sockets; NULL on DEALER), followed by BODY if body != NULL.
 * Never blocks: returns 0, -EAGAIN (no peer / high-water mark),
 * -EHOSTUNREACH (unknown ROUTER peer) or another negative errno.
 */
int hk_zlink_send(hk_zlink *link, const void *peer, size_t peer_len,
    Hk__Frame *frame, const void *body, size_t body_len);

/* hk_zlink_close - stop polling, close the socket, free the link once libuv
 * has released its handle. The callback is never called afterwards. */
void hk_zlink_close(hk_zlink *link);

/* hk_zlink_setsockopt - zmq_setsockopt on the link's socket, before bind or
 * connect (CURVE keys, ZMQ_MAXMSGSIZE). 0 or a negative errno. */
int hk_zlink_setsockopt(hk_zlink *link, int option, const void *value, size_t len);

/* hk_zlink_tick - from a timer (about once a second): report frame_dropped
 * lines suppressed by the rate limit (log_suppressed), so none goes unseen. */
void hk_zlink_tick(hk_zlink *link);

/* hk_zlink_writable - could a message be sent now? On a DEALER (with
 * ZMQ_IMMEDIATE) that means: at least one peer is connected and not at its
 * high-water mark. For readiness checks, from the loop's thread. */
bool hk_zlink_writable(hk_zlink *link);

/* Counters for metrics and tests. */
uint64_t hk_zlink_dropped(const hk_zlink *link); /* malformed frames dropped */

/*
 * hk_msg_decode - strict decode of one Frame: unpacks, checks the version and
 * that a body case is set and the fields it requires are present. Returns the
 * frame (free with hk__frame__free_unpacked(f, NULL)) or NULL with a reason.
 */
Hk__Frame *hk_msg_decode(const uint8_t *data, size_t len, const char **why);

/* hk_msg_name - the body case's name, for logs. */
const char *hk_msg_name(const Hk__Frame *frame);

#endif
