/*
 * hk_zlink - a ZeroMQ socket driven by a libuv loop.
 *
 * ZMQ_FD only signals that ZMQ_EVENTS may have changed, and it is
 * edge-triggered: one wake-up can stand for many messages, and a send can
 * consume the edge for a pending receive. So every wake-up drains the socket
 * while ZMQ_EVENTS has ZMQ_POLLIN, and every send schedules one more drain on
 * the next loop iteration (an idle handle) rather than recursing into the
 * user's callback from inside send.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "hk_log.h"
#include "hk_logrl.h"
#include "hk_util.h"
#include "hk_zlink.h"

#define ZLINK_MAX_PARTS 3 /* [identity] frame [body] */
/* Messages handled per wake-up before yielding to the loop: a peer flooding
 * one socket must not starve the node's other sockets and timers. */
#define ZLINK_DRAIN_BATCH 256
#define ZLINK_DROP_LOGS_PER_SEC 10

struct hk_zlink {
	void *sock;
	int type;
	uv_poll_t poll;
	uv_idle_t idle;
	int handles_open;       /* handles still to be closed by libuv */
	bool closing;
	char *node;
	hk_zlink_cb cb;
	void *arg;
	uint64_t dropped;
	struct hk_logrl drop_log; /* frame_dropped lines */
};

static void zlink_drain(hk_zlink *l);

static void
on_poll(uv_poll_t *h, int status, int events)
{
	(void)status;
	(void)events;
	zlink_drain(h->data);
}

static void
on_idle(uv_idle_t *h)
{
	hk_zlink *l = h->data;
	uv_idle_stop(&l->idle);
	zlink_drain(l);
}

int
hk_zlink_new(hk_zlink **out, uv_loop_t *loop, void *zctx, int type,
    const char *identity, const char *node, hk_zlink_cb cb, void *arg)
{
	hk_zlink *l;
	int one = 1, zero = 0, rc;
	zmq_fd_t fd;
	size_t fdlen = sizeof(fd);

	*out = NULL;
	l = xcalloc(1, sizeof(*l));
	l->type = type;
	l->node = xstrdup(node ? node : "");
	l->cb = cb;
	l->arg = arg;
	if ((l->sock = zmq_socket(zctx, type)) == NULL) {
		rc = -zmq_errno();
		goto fail;
	}
	zmq_setsockopt(l->sock, ZMQ_LINGER, &zero, sizeof(zero));
	if (identity && *identity)
		zmq_setsockopt(l->sock, ZMQ_ROUTING_ID, identity, strlen(identity));
	if (type == ZMQ_ROUTER) {
		zmq_setsockopt(l->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
		zmq_setsockopt(l->sock, ZMQ_ROUTER_HANDOVER, &one, sizeof(one));
	} else {
		zmq_setsockopt(l->sock, ZMQ_IMMEDIATE, &one, sizeof(one));
	}
	if (zmq_getsockopt(l->sock, ZMQ_FD, &fd, &fdlen) != 0) {
		rc = -zmq_errno();
		goto fail;
	}
	if ((rc = uv_poll_init(loop, &l->poll, fd)) != 0)
		goto fail;
	uv_idle_init(loop, &l->idle);
	l->poll.data = l->idle.data = l;
	l->handles_open = 2;
	uv_poll_start(&l->poll, UV_READABLE, on_poll);
	*out = l;
	return 0;
fail:
	if (l->sock)
		zmq_close(l->sock);
	free(l->node);
	free(l);
	return rc;
}

int
hk_zlink_bind(hk_zlink *l, const char *endpoint)
{
	return zmq_bind(l->sock, endpoint) == 0 ? 0 : -zmq_errno();
}

int
hk_zlink_connect(hk_zlink *l, const char *endpoint)
{
	int rc = zmq_connect(l->sock, endpoint) == 0 ? 0 : -zmq_errno();
	/* A connect can make the socket ready without an fd edge we saw. */
	uv_idle_start(&l->idle, on_idle);
	return rc;
}

static void
free_packed(void *data, void *hint)
{
	(void)hint;
	free(data);
}

int
hk_zlink_send(hk_zlink *l, const void *peer, size_t peer_len, Hk__Frame *frame,
    const void *body, size_t body_len)
{
	zmq_msg_t m;
	size_t len;
	uint8_t *buf;
	int more = body ? ZMQ_SNDMORE : 0;

	if (l->closing)
		return -EPIPE;
	frame->version = HK__VERSION__VERSION_CURRENT;
	frame->from_node = l->node;
	len = hk__frame__get_packed_size(frame);
	buf = xmalloc(len);
	hk__frame__pack(frame, buf);

	if (l->type == ZMQ_ROUTER) {
		if (zmq_send(l->sock, peer, peer_len, ZMQ_DONTWAIT | ZMQ_SNDMORE) < 0) {
			free(buf);
			return -zmq_errno();
		}
	}
	/* The packed frame is handed to ZeroMQ without another copy. */
	zmq_msg_init_data(&m, buf, len, free_packed, NULL);
	if (zmq_msg_send(&m, l->sock, ZMQ_DONTWAIT | more) < 0) {
		int err = zmq_errno();
		zmq_msg_close(&m);
		return -err;
	}
	if (body && zmq_send(l->sock, body, body_len, ZMQ_DONTWAIT) < 0)
		return -zmq_errno();
	uv_idle_start(&l->idle, on_idle);
	return 0;
}

/* Receive one whole multipart message; parts beyond the limit are counted. */
static int
recv_message(hk_zlink *l, zmq_msg_t *parts, int *nparts)
{
	int n = 0, more = 1, extra = 0;

	while (more) {
		zmq_msg_t tmp;
		zmq_msg_t *m = n < ZLINK_MAX_PARTS ? &parts[n] : &tmp;
		zmq_msg_init(m);
		if (zmq_msg_recv(m, l->sock, ZMQ_DONTWAIT) < 0) {
			int err = zmq_errno();
			zmq_msg_close(m);
			for (int i = 0; i < n; i++)
				zmq_msg_close(&parts[i]);
			return -err;
		}
		more = zmq_msg_more(m);
		if (n < ZLINK_MAX_PARTS)
			n++;
		else {
			zmq_msg_close(m);
			extra++;
		}
	}
	*nparts = extra ? -1 : n;
	if (extra) {
		for (int i = 0; i < n; i++)
			zmq_msg_close(&parts[i]);
	}
	return 0;
}

/* Count a dropped message and log why, at most ZLINK_DROP_LOGS_PER_SEC a
 * second; the peer's routing id is logged as printable bytes only. */
static void
zlink_log_drop(hk_zlink *l, const char *why, zmq_msg_t *peer)
{
	char id[65];
	size_t len = 0;
	uint64_t suppressed;

	l->dropped++;
	if (!hk_logrl_allow(&l->drop_log, hk_now_ms(), ZLINK_DROP_LOGS_PER_SEC, &suppressed))
		return;
	if (peer) {
		const unsigned char *p = zmq_msg_data(peer);
		size_t plen = zmq_msg_size(peer);
		for (; len < plen && len < sizeof(id) - 1; len++)
			id[len] = p[len] >= 0x20 && p[len] < 0x7f ? (char)p[len] : '?';
	}
	id[len] = '\0';
	hk_log_warn("frame_dropped", "{s:s, s:s, s:I, s:I}", "reason", why, "peer", id,
	    "dropped", (json_int_t)l->dropped, "suppressed", (json_int_t)suppressed);
}

static void
zlink_dispatch(hk_zlink *l, zmq_msg_t *parts, int n)
{
	int first = l->type == ZMQ_ROUTER ? 1 : 0;
	const char *why = NULL;
	Hk__Frame *f;

	if (n - first < 1 || n - first > 2) {
		why = "wrong number of parts";
		goto drop;
	}
	f = hk_msg_decode(zmq_msg_data(&parts[first]), zmq_msg_size(&parts[first]), &why);
	if (f == NULL)
		goto drop;
	/* Over CURVE the router's ZAP handler names the node that owns the
	 * peer's key (User-Id): a node speaks only for itself. */
	const char *uid = zmq_msg_gets(&parts[first], "User-Id");
	if (uid != NULL && *uid != '\0' && strcmp(uid, f->from_node) != 0) {
		hk__frame__free_unpacked(f, NULL);
		why = "from_node is not the node of its CURVE key";
		goto drop;
	}
	l->cb(l, first ? zmq_msg_data(&parts[0]) : NULL, first ? zmq_msg_size(&parts[0]) : 0, f,
	    n - first == 2 ? zmq_msg_data(&parts[first + 1]) : NULL,
	    n - first == 2 ? zmq_msg_size(&parts[first + 1]) : 0, l->arg);
	hk__frame__free_unpacked(f, NULL);
	return;
drop:
	zlink_log_drop(l, why, first && n > 0 ? &parts[0] : NULL);
}

static void
zlink_drain(hk_zlink *l)
{
	zmq_msg_t parts[ZLINK_MAX_PARTS];
	int events, n = 0, batch = 0;
	size_t elen = sizeof(events);

	while (!l->closing) {
		if (zmq_getsockopt(l->sock, ZMQ_EVENTS, &events, &elen) != 0 || !(events & ZMQ_POLLIN))
			break;
		if (++batch > ZLINK_DRAIN_BATCH) {
			/* More is waiting: carry on at the next loop iteration. */
			uv_idle_start(&l->idle, on_idle);
			break;
		}
		if (recv_message(l, parts, &n) != 0)
			break;
		if (n < 0) {
			zlink_log_drop(l, "too many parts", NULL);
			continue;
		}
		zlink_dispatch(l, parts, n);
		for (int i = 0; i < n; i++)
			zmq_msg_close(&parts[i]);
	}
}

static void
on_handle_closed(uv_handle_t *h)
{
	hk_zlink *l = h->data;
	if (--l->handles_open == 0) {
		free(l->node);
		free(l);
	}
}

void
hk_zlink_close(hk_zlink *l)
{
	if (l == NULL || l->closing)
		return;
	l->closing = true;
	/* Stop watching the fd before ZeroMQ closes it. */
	uv_close((uv_handle_t *)&l->poll, on_handle_closed);
	uv_close((uv_handle_t *)&l->idle, on_handle_closed);
	zmq_close(l->sock);
	l->sock = NULL;
}

void
hk_zlink_tick(hk_zlink *l)
{
	uint64_t suppressed;

	if (l && hk_logrl_flush(&l->drop_log, hk_now_ms(), &suppressed))
		hk_log_warn("log_suppressed", "{s:s, s:I, s:I}", "about", "frame_dropped",
		    "suppressed", (json_int_t)suppressed, "total", (json_int_t)l->dropped);
}

int
hk_zlink_setsockopt(hk_zlink *l, int option, const void *value, size_t len)
{
	return zmq_setsockopt(l->sock, option, value, len) == 0 ? 0 : -zmq_errno();
}

uint64_t
hk_zlink_dropped(const hk_zlink *l)
{
	return l->dropped;
}

static bool
submission_ok(const Hk__Submission *m, const char **why)
{
	if (m == NULL || m->id == NULL || m->id[0] == '\0')
		return *why = "submission without id", false;
	if (m->envelope == NULL || m->envelope->n_rcpts == 0)
		return *why = "submission without recipients", false;
	for (size_t i = 0; i < m->envelope->n_rcpts; i++)
		if (m->envelope->rcpts[i]->address[0] == '\0')
			return *why = "empty recipient address", false;
	return true;
}

Hk__Frame *
hk_msg_decode(const uint8_t *data, size_t len, const char **why)
{
	Hk__Frame *f = hk__frame__unpack(NULL, len, data);
	bool ok = true;

	if (f == NULL) {
		*why = "not a valid hk.Frame protobuf";
		return NULL;
	}
	if (f->version != HK__VERSION__VERSION_CURRENT) {
		*why = "unknown schema version";
		ok = false;
	} else {
		switch (f->body_case) {
		case HK__FRAME__BODY_SUBMIT:
			ok = submission_ok(f->submit->msg, why);
			break;
		case HK__FRAME__BODY_ENQUEUE:
			ok = submission_ok(f->enqueue->msg, why);
			break;
		case HK__FRAME__BODY_HEARTBEAT:
			if (f->heartbeat->node_id[0] == '\0')
				*why = "heartbeat without node id", ok = false;
			break;
		case HK__FRAME__BODY_MEMBER_VIEW:
			for (size_t i = 0; ok && i < f->member_view->n_members; i++)
				if (f->member_view->members[i]->node_id[0] == '\0')
					*why = "member view with an unnamed member", ok = false;
			break;
		case HK__FRAME__BODY_SUBMIT_REPLY:
		case HK__FRAME__BODY_ENQUEUE_REPLY:
			break;
		default:
			*why = "no message body (unknown kind)";
			ok = false;
		}
	}
	if (!ok) {
		hk__frame__free_unpacked(f, NULL);
		return NULL;
	}
	return f;
}

const char *
hk_msg_name(const Hk__Frame *f)
{
	switch (f->body_case) {
	case HK__FRAME__BODY_SUBMIT: return "SubmitRequest";
	case HK__FRAME__BODY_SUBMIT_REPLY: return "SubmitReply";
	case HK__FRAME__BODY_ENQUEUE: return "EnqueueRequest";
	case HK__FRAME__BODY_ENQUEUE_REPLY: return "EnqueueReply";
	case HK__FRAME__BODY_HEARTBEAT: return "Heartbeat";
	case HK__FRAME__BODY_MEMBER_VIEW: return "MemberView";
	default: return "unknown";
	}
}

bool
hk_zlink_writable(hk_zlink *l)
{
	int events = 0;
	size_t elen = sizeof(events);

	if (l == NULL || l->closing || zmq_getsockopt(l->sock, ZMQ_EVENTS, &events, &elen) != 0)
		return false;
	/* Reading ZMQ_EVENTS may take the fd's edge: drain on the next turn. */
	uv_idle_start(&l->idle, on_idle);
	return (events & ZMQ_POLLOUT) != 0;
}
