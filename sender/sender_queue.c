/*
 * sender_queue - the sender's durable queue, in LMDB (see sender_queue.h for
 * the databases and their keys).
 *
 * A recipient record (rcpt value), format 1, integers big-endian:
 *
 *   u8  1
 *   u64 queued_at_ms, first_attempt_ms, last_attempt_ms, next_attempt_ms
 *   u32 attempts, shard
 *   str address, str domain           str = u16 length, bytes, NUL
 *   u16 n_params, u32 params_len, params (each NUL-terminated, back to back)
 *   str reply
 *
 * Strings keep their NUL in the record so that readers can point into LMDB's
 * memory without copying. Every decoder checks lengths and terminators: a
 * record it cannot read is reported, never trusted.
 */

/* System */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Third-party */
#include <lmdb.h>

/* common/ */
#include "hk_domain.h"
#include "hk_log.h"
#include "hk_util.h"

/* This role */
#include "sender_queue.h"

#define QFORMAT 2               /* the queue's overall format (info/"format"):
                                 * 1 had one time-ordered "sched"; 2 has the
                                 * per-domain dq/dnext/dom (opening a 1
                                 * rebuilds them from rcpt) */
#define REC_V1 1                /* version byte of every value written */
#define RKEY_MAX (SENDER_QUEUE_ID_MAX + 1 + 4)
#define SKEY_MAX (8 + RKEY_MAX)
#define DQKEY_MAX (HK_DOMAIN_MAX + 1 + SKEY_MAX)
#define DNKEY_MAX (8 + HK_DOMAIN_MAX)
#define OKEY_MAX (SENDER_QUEUE_ID_MAX + 1 + SENDER_QUEUE_NODE_MAX + 1 + 4)

/* okey - the origin key of a handed-on recipient: id \0 node \0 be32 idx. */
static size_t
okey(uint8_t *k, const char *id, const char *node, uint32_t idx)
{
	size_t a = strlen(id) + 1, b = strlen(node) + 1;
	memcpy(k, id, a);
	memcpy(k + a, node, b);
	hk_put_be(k + a + b, idx, 4);
	return a + b + 4;
}

struct sender_queue {
	MDB_env *env;
	MDB_dbi info, msg, body, rcpt, dq, dnext, dom, shard, origin;
	char *path;
};

/* ---- byte encoding ---- */

struct wbuf {
	uint8_t *p;
	size_t len, cap;
};

static void
w_need(struct wbuf *w, size_t n)
{
	if (w->len + n > w->cap) {
		w->cap = (w->len + n) * 2 + 64;
		w->p = xrealloc(w->p, w->cap);
	}
}

static void
w_bytes(struct wbuf *w, const void *b, size_t n)
{
	w_need(w, n);
	if (n)
		memcpy(w->p + w->len, b, n);
	w->len += n;
}

static void
w_u8(struct wbuf *w, uint8_t v)
{
	w_bytes(w, &v, 1);
}

static void
w_be(struct wbuf *w, uint64_t v, int n)
{
	w_need(w, n);
	hk_put_be(w->p + w->len, v, n);
	w->len += n;
}

static void
w_str(struct wbuf *w, const char *s, size_t n)
{
	w_be(w, n, 2);
	w_bytes(w, s, n);
	w_u8(w, 0);
}

struct rbuf {
	const uint8_t *p;
	size_t len, off;
	bool bad;
};

static uint64_t
r_be(struct rbuf *r, int n)
{
	if (r->bad || r->len - r->off < (size_t)n) {
		r->bad = true;
		return 0;
	}
	uint64_t v = hk_get_be(r->p + r->off, n);
	r->off += n;
	return v;
}

static const char *
r_str(struct rbuf *r)
{
	size_t n = r_be(r, 2);
	if (r->bad || r->len - r->off < n + 1 || r->p[r->off + n] != 0 ||
	    memchr(r->p + r->off, 0, n) != NULL) {
		r->bad = true;
		return "";
	}
	const char *s = (const char *)r->p + r->off;
	r->off += n + 1;
	return s;
}

/* Times before the epoch cannot be ordered as unsigned keys: clamp. */
static uint64_t
ms_key(int64_t ms)
{
	return ms < 0 ? 0 : (uint64_t)ms;
}

/* rkey - "id \0 be32 idx"; the id part (with its NUL) is the message prefix. */
static size_t
rkey(uint8_t *k, const char *id, uint32_t idx)
{
	size_t n = strlen(id);
	memcpy(k, id, n + 1);
	hk_put_be(k + n + 1, idx, 4);
	return n + 5;
}

/* dqkey - a domain queue entry: "domain \0 be64 next_attempt id \0 be32 idx". */
static size_t
dqkey(uint8_t *k, const char *domain, int64_t when, const char *id, uint32_t idx)
{
	size_t n = strlen(domain);
	memcpy(k, domain, n + 1);
	hk_put_be(k + n + 1, ms_key(when), 8);
	return n + 9 + rkey(k + n + 9, id, idx);
}

/* dnkey - the domain's place in the order of domains: "be64 next domain". */
static size_t
dnkey(uint8_t *k, uint64_t next, const char *domain)
{
	size_t n = strlen(domain);
	hk_put_be(k, next, 8);
	memcpy(k + 8, domain, n);
	return 8 + n;
}

static void
rcpt_encode(struct wbuf *w, const struct sender_qrcpt *r)
{
	w->len = 0;
	w_u8(w, REC_V1);
	w_be(w, ms_key(r->queued_at_ms), 8);
	w_be(w, ms_key(r->first_attempt_ms), 8);
	w_be(w, ms_key(r->last_attempt_ms), 8);
	w_be(w, ms_key(r->next_attempt_ms), 8);
	w_be(w, r->attempts, 4);
	w_be(w, r->shard, 4);
	w_str(w, r->address, strlen(r->address));
	w_str(w, r->domain, strlen(r->domain));
	w_be(w, r->n_params, 2);
	w_be(w, r->params_len, 4);
	w_bytes(w, r->params, r->params_len);
	w_str(w, r->reply, strlen(r->reply));
}

/* rcpt_decode - fill R from a record; strings point into V. 0 or -1. */
static int
rcpt_decode(const uint8_t *v, size_t len, struct sender_qrcpt *r)
{
	struct rbuf b = { v, len, 0, false };

	if (len < 1 || v[0] != REC_V1)
		return -1;
	b.off = 1;
	r->queued_at_ms = (int64_t)r_be(&b, 8);
	r->first_attempt_ms = (int64_t)r_be(&b, 8);
	r->last_attempt_ms = (int64_t)r_be(&b, 8);
	r->next_attempt_ms = (int64_t)r_be(&b, 8);
	r->attempts = (uint32_t)r_be(&b, 4);
	r->shard = (uint32_t)r_be(&b, 4);
	r->address = r_str(&b);
	r->domain = r_str(&b);
	r->n_params = (uint16_t)r_be(&b, 2);
	r->params_len = r_be(&b, 4);
	if (b.bad || b.len - b.off < r->params_len)
		return -1;
	r->params = (const char *)v + b.off;
	/* The params must be exactly n_params NUL-terminated strings. */
	size_t nuls = 0;
	for (size_t i = 0; i < r->params_len; i++)
		nuls += r->params[i] == 0;
	if (nuls != r->n_params || (r->params_len > 0 && r->params[r->params_len - 1] != 0))
		return -1;
	b.off += r->params_len;
	r->reply = r_str(&b);
	return b.bad ? -1 : 0;
}

static MDB_val
mv(const void *p, size_t n)
{
	MDB_val v = { n, (void *)p };
	return v;
}

/* ---- open / close ---- */

static int
mkdir_p(const char *path, char *err, size_t errlen)
{
	char *p = xstrdup(path);
	int rc = 0;

	for (char *s = p + 1; ; s++) {
		if (*s != '/' && *s != '\0')
			continue;
		char c = *s;
		*s = '\0';
		if (mkdir(p, 0700) != 0 && errno != EEXIST) {
			snprintf(err, errlen, "queue %s: mkdir %s: %s", path, p, strerror(errno));
			rc = -1;
			break;
		}
		*s = c;
		if (c == '\0')
			break;
	}
	free(p);
	return rc;
}

static int dom_refresh(sender_queue *q, MDB_txn *txn, const char *domain, int delta);

/*
 * migrate_v1 - format 1 kept one time-ordered "sched" database: drop it and
 * build the domain queues from the recipient records (one transaction: a
 * crash leaves format 1 as it was).
 */
static int
migrate_v1(sender_queue *q, MDB_txn *txn, uint64_t *n)
{
	uint8_t sk[DQKEY_MAX];
	char domain[HK_DOMAIN_MAX], id[SENDER_QUEUE_ID_MAX + 1];
	MDB_dbi sched;
	MDB_cursor *c;
	MDB_val key, val;
	int rc;

	if ((rc = mdb_dbi_open(txn, "sched", 0, &sched)) == 0) {
		if ((rc = mdb_drop(txn, sched, 1)) != 0)
			return rc;
	} else if (rc != MDB_NOTFOUND) {
		return rc;
	}
	if ((rc = mdb_cursor_open(txn, q->rcpt, &c)) != 0)
		return rc;
	for (rc = mdb_cursor_get(c, &key, &val, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(c, &key, &val, MDB_NEXT)) {
		const uint8_t *kp = key.mv_data;
		struct sender_qrcpt r;
		if (key.mv_size < 6 || key.mv_size - 5 > SENDER_QUEUE_ID_MAX ||
		    kp[key.mv_size - 5] != 0 || rcpt_decode(val.mv_data, val.mv_size, &r) != 0 ||
		    strlen(r.domain) >= HK_DOMAIN_MAX) {
			hk_log_error("queue_corrupt", "{s:s}", "what", "recipient record (upgrade)");
			continue;
		}
		memcpy(id, kp, key.mv_size - 4);
		snprintf(domain, sizeof(domain), "%s", r.domain);
		uint32_t idx = (uint32_t)hk_get_be(kp + key.mv_size - 4, 4);
		MDB_val dk = mv(sk, dqkey(sk, domain, r.next_attempt_ms, id, idx));
		MDB_val dv = mv("\1", 1);
		/* Writes to other databases leave this cursor where it is. */
		if ((rc = mdb_put(txn, q->dq, &dk, &dv, 0)) != 0 ||
		    (rc = dom_refresh(q, txn, domain, 1)) != 0)
			break;
		(*n)++;
	}
	mdb_cursor_close(c);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

int
sender_queue_open(sender_queue **out, const char *path, size_t map_size, bool sync,
    char *err, size_t errlen)
{
	sender_queue *q = xcalloc(1, sizeof(*q));
	MDB_txn *txn = NULL;
	const char *step;
	int rc, dead = 0;

	*out = NULL;
	if (path == NULL || *path == '\0') {
		snprintf(err, errlen, "queue: no path");
		free(q);
		return -1;
	}
	if (mkdir_p(path, err, errlen) != 0) {
		free(q);
		return -1;
	}
	q->path = xstrdup(path);
	step = "mdb_env_create";
	if ((rc = mdb_env_create(&q->env)) != 0)
		goto fail;
	mdb_env_set_maxdbs(q->env, 16);
	step = "mdb_env_set_mapsize";
	if ((rc = mdb_env_set_mapsize(q->env, map_size)) != 0)
		goto fail;
	/* NOTLS: write transactions run on a libuv worker thread, and read
	 * transactions on the loop thread, so they must not be tied to threads. */
	step = "mdb_env_open";
	if ((rc = mdb_env_open(q->env, path, MDB_NOTLS | (sync ? 0 : MDB_NOSYNC), 0600)) != 0)
		goto fail;
	/* A killed process leaves its reader slots behind. */
	mdb_reader_check(q->env, &dead);

	step = "mdb_txn_begin";
	if ((rc = mdb_txn_begin(q->env, NULL, 0, &txn)) != 0)
		goto fail;
	step = "mdb_dbi_open";
	if ((rc = mdb_dbi_open(txn, "info", MDB_CREATE, &q->info)) != 0 ||
	    (rc = mdb_dbi_open(txn, "msg", MDB_CREATE, &q->msg)) != 0 ||
	    (rc = mdb_dbi_open(txn, "body", MDB_CREATE, &q->body)) != 0 ||
	    (rc = mdb_dbi_open(txn, "rcpt", MDB_CREATE, &q->rcpt)) != 0 ||
	    (rc = mdb_dbi_open(txn, "dq", MDB_CREATE, &q->dq)) != 0 ||
	    (rc = mdb_dbi_open(txn, "dnext", MDB_CREATE, &q->dnext)) != 0 ||
	    (rc = mdb_dbi_open(txn, "dom", MDB_CREATE, &q->dom)) != 0 ||
	    (rc = mdb_dbi_open(txn, "shard", MDB_CREATE, &q->shard)) != 0 ||
	    (rc = mdb_dbi_open(txn, "origin", MDB_CREATE, &q->origin)) != 0)
		goto fail;

	MDB_val k = mv("format", 6), v;
	rc = mdb_get(txn, q->info, &k, &v);
	if (rc == 0 && v.mv_size == 1 && ((uint8_t *)v.mv_data)[0] == 1) {
		uint64_t n = 0;
		step = "rebuilding the domain queues of format 1";
		if ((rc = migrate_v1(q, txn, &n)) != 0)
			goto fail;
		uint8_t f = QFORMAT;
		v = mv(&f, 1);
		step = "mdb_put(info)";
		if ((rc = mdb_put(txn, q->info, &k, &v, 0)) != 0)
			goto fail;
		hk_log_info("queue_upgraded", "{s:s, s:i, s:i, s:I}", "path", path, "from", 1,
		    "to", QFORMAT, "rcpts", (json_int_t)n);
	} else if (rc == 0) {
		if (v.mv_size < 1 || ((uint8_t *)v.mv_data)[0] != QFORMAT) {
			snprintf(err, errlen, "queue %s: unknown queue format %d", path,
			    v.mv_size ? ((uint8_t *)v.mv_data)[0] : -1);
			mdb_txn_abort(txn);
			mdb_env_close(q->env);
			free(q->path);
			free(q);
			return -1;
		}
	} else if (rc == MDB_NOTFOUND) {
		uint8_t f = QFORMAT;
		v = mv(&f, 1);
		step = "mdb_put(info)";
		if ((rc = mdb_put(txn, q->info, &k, &v, 0)) != 0)
			goto fail;
	} else {
		step = "mdb_get(info)";
		goto fail;
	}
	step = "mdb_txn_commit";
	rc = mdb_txn_commit(txn);
	txn = NULL;
	if (rc != 0)
		goto fail;
	if (dead > 0)
		hk_log_info("queue_stale_readers", "{s:s, s:i}", "path", path, "cleared", dead);
	*out = q;
	return 0;

fail:
	snprintf(err, errlen, "queue %s: %s: %s", path, step, mdb_strerror(rc));
	if (txn)
		mdb_txn_abort(txn);
	if (q->env)
		mdb_env_close(q->env);
	free(q->path);
	free(q);
	return -1;
}

void
sender_queue_close(sender_queue **qp)
{
	sender_queue *q = *qp;

	if (q == NULL)
		return;
	mdb_env_close(q->env);
	free(q->path);
	free(q);
	*qp = NULL;
}

/* ---- write operations (inside the batch's transaction) ---- */

/* first_with_prefix - move C to the first key starting with PFX: 1, 0 if none, or -rc. */
static int
first_with_prefix(MDB_cursor *c, const uint8_t *pfx, size_t n)
{
	MDB_val k = mv(pfx, n), v;
	int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);

	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc != 0)
		return -rc;
	return k.mv_size >= n && memcmp(k.mv_data, pfx, n) == 0;
}

static int
any_with_prefix(MDB_txn *txn, MDB_dbi dbi, const uint8_t *pfx, size_t n)
{
	MDB_cursor *c;
	int rc = mdb_cursor_open(txn, dbi, &c);
	if (rc != 0)
		return -rc;
	rc = first_with_prefix(c, pfx, n);
	mdb_cursor_close(c);
	return rc;
}

static int
del_with_prefix(MDB_txn *txn, MDB_dbi dbi, const uint8_t *pfx, size_t n)
{
	MDB_cursor *c;
	int rc = mdb_cursor_open(txn, dbi, &c);

	if (rc != 0)
		return rc;
	while ((rc = first_with_prefix(c, pfx, n)) == 1)
		if ((rc = mdb_cursor_del(c, 0)) != 0)
			break;
	mdb_cursor_close(c);
	return rc < 0 ? -rc : rc;
}

/*
 * dom_refresh - after DOMAIN's queue changed by DELTA recipients: keep its
 * dom record (earliest next attempt, count) and its place in dnext true.
 * The earliest next attempt is read from the domain queue itself.
 */
static int
dom_refresh(sender_queue *q, MDB_txn *txn, const char *domain, int delta)
{
	size_t dl = strlen(domain);
	uint8_t k[DNKEY_MAX];
	uint64_t next = 0, old_next = 0, count = 0;
	bool has = false, had = false;
	MDB_cursor *c;
	MDB_val key, val;
	int rc;

	if ((rc = mdb_cursor_open(txn, q->dq, &c)) != 0)
		return rc;
	rc = first_with_prefix(c, (const uint8_t *)domain, dl + 1);
	if (rc == 1) {
		MDB_val ck, cv;
		if ((rc = mdb_cursor_get(c, &ck, &cv, MDB_GET_CURRENT)) == 0 && ck.mv_size >= dl + 9) {
			next = hk_get_be((const uint8_t *)ck.mv_data + dl + 1, 8);
			has = true;
		}
	}
	mdb_cursor_close(c);
	if (rc < 0)
		return -rc;

	key = mv(domain, dl);
	rc = mdb_get(txn, q->dom, &key, &val);
	if (rc == 0 && val.mv_size >= 17 && ((uint8_t *)val.mv_data)[0] == REC_V1) {
		had = true;
		old_next = hk_get_be((uint8_t *)val.mv_data + 1, 8);
		count = hk_get_be((uint8_t *)val.mv_data + 9, 8);
	} else if (rc != 0 && rc != MDB_NOTFOUND) {
		return rc;
	}
	if (delta < 0 && count < (uint64_t)-delta)
		count = 0;
	else
		count += (uint64_t)(int64_t)delta;
	if (had && (!has || old_next != next)) {
		key = mv(k, dnkey(k, old_next, domain));
		if ((rc = mdb_del(txn, q->dnext, &key, NULL)) != 0 && rc != MDB_NOTFOUND)
			return rc;
	}
	key = mv(domain, dl);
	if (!has) {
		if (had && (rc = mdb_del(txn, q->dom, &key, NULL)) != 0 && rc != MDB_NOTFOUND)
			return rc;
		return 0;
	}
	uint8_t dv[17] = { REC_V1 };
	hk_put_be(dv + 1, next, 8);
	hk_put_be(dv + 9, count, 8);
	val = mv(dv, sizeof(dv));
	if ((rc = mdb_put(txn, q->dom, &key, &val, 0)) != 0)
		return rc;
	if (!had || old_next != next) {
		key = mv(k, dnkey(k, next, domain));
		val = mv("\1", 1);
		if ((rc = mdb_put(txn, q->dnext, &key, &val, 0)) != 0)
			return rc;
	}
	return 0;
}

static int
op_enqueue(sender_queue *q, MDB_txn *txn, struct sender_qop *op)
{
	const Hk__Submission *m = op->msg;
	const char *id = m ? m->id : NULL;
	size_t idlen = id ? strlen(id) : 0, n;
	uint8_t k[RKEY_MAX], sk[DQKEY_MAX];
	char (*domains)[HK_DOMAIN_MAX] = NULL;
	struct wbuf w = { 0 };
	uint32_t next_idx = 0, stored = 0;
	uint8_t ok[OKEY_MAX];
	bool handoff, *dup = NULL;
	MDB_val key, val;
	int rc = 0;

#define REFUSE(...) do { snprintf(op->why, sizeof(op->why), __VA_ARGS__); \
	op->result = SENDER_QR_INVALID; goto out; } while (0)
	if (idlen == 0 || idlen > SENDER_QUEUE_ID_MAX)
		REFUSE("message id empty or longer than %d bytes", SENDER_QUEUE_ID_MAX);
	if (m->envelope == NULL || m->envelope->n_rcpts == 0)
		REFUSE("no recipients");
	if (op->body_len > 0 && op->body == NULL)
		REFUSE("no body");
	n = m->envelope->n_rcpts;
	handoff = m->envelope->rcpts[0] != NULL && m->envelope->rcpts[0]->handoff != NULL;
	domains = xmalloc(n * sizeof(*domains));
	for (size_t i = 0; i < n; i++) {
		const Hk__Recipient *r = m->envelope->rcpts[i];
		size_t plen = 0;
		if (r == NULL || r->address == NULL || strlen(r->address) > 0xfff0)
			REFUSE("recipient %zu: no address or too long", i);
		if ((r->handoff != NULL) != handoff)
			REFUSE("recipient %zu: handed-on and new recipients mixed", i);
		if (handoff && (r->handoff->from_node == NULL || r->handoff->from_node[0] == '\0' ||
		    strlen(r->handoff->from_node) > SENDER_QUEUE_NODE_MAX))
			REFUSE("recipient %zu: handoff without a valid node name", i);
		if (hk_domain_of(r->address, domains[i]) != 0)
			REFUSE("recipient %zu: no valid domain in '%.60s'", i, r->address);
		if (r->n_params > 0xffff)
			REFUSE("recipient %zu: too many parameters", i);
		for (size_t j = 0; j < r->n_params; j++)
			plen += strlen(r->params[j]) + 1;
		if (plen > 0xffff)
			REFUSE("recipient %zu: parameters too long", i);
	}
#undef REFUSE

	if (handoff) {
		/* Dedup per recipient, by where it comes from: a handoff is not
		 * numbered by shard (two handoffs of one message are different
		 * recipient sets under any shard number). */
		dup = xcalloc(n, sizeof(*dup));
		for (size_t i = 0; i < n; i++) {
			const Hk__Handoff *h = m->envelope->rcpts[i]->handoff;
			key = mv(ok, okey(ok, id, h->from_node, h->from_idx));
			rc = mdb_get(txn, q->origin, &key, &val);
			if (rc == 0)
				dup[i] = true;
			else if (rc != MDB_NOTFOUND)
				goto out;
			else
				stored++;
		}
		rc = 0;
		if (stored == 0) {
			op->result = SENDER_QR_DUPLICATE;
			goto out;
		}
		goto store;
	}
	/* Dedup: a retried enqueue of the same (id, shard) stores nothing. */
	memcpy(k, id, idlen + 1);
	hk_put_be(k + idlen + 1, op->shard, 4);
	key = mv(k, idlen + 5);
	rc = mdb_get(txn, q->shard, &key, &val);
	if (rc == 0) {
		op->result = SENDER_QR_DUPLICATE;
		if (val.mv_size >= 9 && ((uint8_t *)val.mv_data)[0] == REC_V1) {
			op->first_idx = (uint32_t)hk_get_be((uint8_t *)val.mv_data + 1, 4);
			op->n_rcpts = (uint32_t)hk_get_be((uint8_t *)val.mv_data + 5, 4);
		}
		goto out;
	}
	if (rc != MDB_NOTFOUND)
		goto out;

store:
	/* Another shard of a message held already shares its body. */
	key = mv(id, idlen);
	rc = mdb_get(txn, q->msg, &key, &val);
	if (rc == 0) {
		if (val.mv_size < 5 || ((uint8_t *)val.mv_data)[0] != REC_V1) {
			rc = MDB_CORRUPTED;
			goto out;
		}
		next_idx = (uint32_t)hk_get_be((uint8_t *)val.mv_data + 1, 4);
	} else if (rc == MDB_NOTFOUND) {
		val.mv_size = 1 + op->body_len;
		if ((rc = mdb_put(txn, q->body, &key, &val, MDB_RESERVE)) != 0)
			goto out;
		((uint8_t *)val.mv_data)[0] = REC_V1;
		if (op->body_len)
			memcpy((uint8_t *)val.mv_data + 1, op->body, op->body_len);
	} else {
		goto out;
	}

	uint32_t idx = next_idx;
	for (size_t i = 0; i < n; i++) {
		const Hk__Recipient *r = m->envelope->rcpts[i];
		const Hk__Handoff *h = r->handoff;
		struct wbuf pw = { 0 };
		if (dup && dup[i])
			continue;
		for (size_t j = 0; j < r->n_params; j++)
			w_bytes(&pw, r->params[j], strlen(r->params[j]) + 1);
		struct sender_qrcpt st = {
			.shard = op->shard, .address = r->address, .domain = domains[i],
			.params = (const char *)pw.p, .params_len = pw.len,
			.n_params = (uint16_t)r->n_params, .reply = "",
			.queued_at_ms = op->now_ms, .next_attempt_ms = op->now_ms,
		};
		if (h != NULL) {
			/* Go on where the previous owner stopped: retries, expiry. */
			st.attempts = h->attempts;
			st.queued_at_ms = h->queued_at_ms ? h->queued_at_ms : op->now_ms;
			st.first_attempt_ms = h->first_attempt_ms;
			st.last_attempt_ms = h->last_attempt_ms;
			st.next_attempt_ms = h->next_attempt_ms > 0 ? h->next_attempt_ms : op->now_ms;
			st.reply = h->last_reply ? h->last_reply : "";
			if (strlen(st.reply) > SENDER_QUEUE_REPLY_MAX) {
				free(pw.p);
				op->result = SENDER_QR_INVALID;
				snprintf(op->why, sizeof(op->why), "recipient %zu: last reply too long", i);
				goto out;
			}
		}
		rcpt_encode(&w, &st);
		free(pw.p);
		key = mv(k, rkey(k, id, idx));
		val = mv(w.p, w.len);
		if ((rc = mdb_put(txn, q->rcpt, &key, &val, 0)) != 0)
			goto out;
		key = mv(sk, dqkey(sk, domains[i], st.next_attempt_ms, id, idx));
		val = mv("\1", 1);
		if ((rc = mdb_put(txn, q->dq, &key, &val, 0)) != 0)
			goto out;
		if ((rc = dom_refresh(q, txn, domains[i], 1)) != 0)
			goto out;
		if (h != NULL) {
			uint8_t ov[5] = { REC_V1 };
			hk_put_be(ov + 1, idx, 4);
			key = mv(ok, okey(ok, id, h->from_node, h->from_idx));
			val = mv(ov, sizeof(ov));
			if ((rc = mdb_put(txn, q->origin, &key, &val, 0)) != 0)
				goto out;
		}
		idx++;
	}

	/* Meta: the Submission without its recipients (they live in rcpt). */
	Hk__Submission meta = *m;
	Hk__Envelope env = *m->envelope;
	env.n_rcpts = 0;
	env.rcpts = NULL;
	meta.envelope = &env;
	w.len = 0;
	w_u8(&w, REC_V1);
	w_be(&w, idx, 4);
	w_need(&w, hk__submission__get_packed_size(&meta));
	w.len += hk__submission__pack(&meta, w.p + w.len);
	key = mv(id, idlen);
	val = mv(w.p, w.len);
	if ((rc = mdb_put(txn, q->msg, &key, &val, 0)) != 0)
		goto out;
	op->first_idx = next_idx;
	op->n_rcpts = idx - next_idx;
	if (handoff) {
		op->result = SENDER_QR_DONE;
		goto out;
	}

	uint8_t sv[9] = { REC_V1 };
	hk_put_be(sv + 1, next_idx, 4);
	hk_put_be(sv + 5, n, 4);
	memcpy(k, id, idlen + 1);
	hk_put_be(k + idlen + 1, op->shard, 4);
	key = mv(k, idlen + 5);
	val = mv(sv, sizeof(sv));
	if ((rc = mdb_put(txn, q->shard, &key, &val, 0)) != 0)
		goto out;
	op->result = SENDER_QR_DONE;
out:
	free(dup);
	free(domains);
	free(w.p);
	return rc;
}

/* rcpt_get - the record of (id, idx) decoded into R (pointing into LMDB). */
static int
rcpt_get(sender_queue *q, MDB_txn *txn, const char *id, uint32_t idx, struct sender_qrcpt *r)
{
	uint8_t k[RKEY_MAX];
	MDB_val key = mv(k, rkey(k, id, idx)), val;
	int rc = mdb_get(txn, q->rcpt, &key, &val);

	if (rc != 0)
		return rc;
	if (rcpt_decode(val.mv_data, val.mv_size, r) != 0)
		return MDB_CORRUPTED;
	r->id = id;
	r->idx = idx;
	return 0;
}

/* op_remove - delivered or bounced: the recipient leaves the queue, and the
 * message with its last recipient. */
static int
op_remove(sender_queue *q, MDB_txn *txn, struct sender_qop *op)
{
	uint8_t k[RKEY_MAX], sk[DQKEY_MAX];
	char domain[HK_DOMAIN_MAX] = "";
	struct sender_qrcpt r;
	size_t idlen;
	MDB_val key;
	int rc;

	if (op->id == NULL || (idlen = strlen(op->id)) == 0 || idlen > SENDER_QUEUE_ID_MAX) {
		op->result = SENDER_QR_NOTFOUND;
		return 0;
	}
	rc = rcpt_get(q, txn, op->id, op->idx, &r);
	if (rc == MDB_NOTFOUND) {
		op->result = SENDER_QR_NOTFOUND;
		return 0;
	}
	if (rc == MDB_CORRUPTED) {
		/* The schedule key is unknown: leave it; the scan skips orphans. */
		hk_log_error("queue_corrupt", "{s:s, s:i, s:s}", "id", op->id, "idx", (int)op->idx,
		    "what", "recipient record");
	} else if (rc != 0) {
		return rc;
	} else {
		snprintf(domain, sizeof(domain), "%s", r.domain);   /* r dies with the update */
		key = mv(sk, dqkey(sk, domain, r.next_attempt_ms, op->id, op->idx));
		if ((rc = mdb_del(txn, q->dq, &key, NULL)) != 0 && rc != MDB_NOTFOUND)
			return rc;
	}
	key = mv(k, rkey(k, op->id, op->idx));
	if ((rc = mdb_del(txn, q->rcpt, &key, NULL)) != 0)
		return rc;
	if (domain[0] && (rc = dom_refresh(q, txn, domain, -1)) != 0)
		return rc;
	op->result = SENDER_QR_DONE;

	rc = any_with_prefix(txn, q->rcpt, k, idlen + 1);
	if (rc < 0)
		return -rc;
	if (rc == 1)
		return 0;
	key = mv(op->id, idlen);
	if ((rc = mdb_del(txn, q->msg, &key, NULL)) != 0 && rc != MDB_NOTFOUND)
		return rc;
	if ((rc = mdb_del(txn, q->body, &key, NULL)) != 0 && rc != MDB_NOTFOUND)
		return rc;
	if ((rc = del_with_prefix(txn, q->origin, k, idlen + 1)) != 0)
		return rc;
	return del_with_prefix(txn, q->shard, k, idlen + 1);
}

static int
op_defer(sender_queue *q, MDB_txn *txn, struct sender_qop *op)
{
	uint8_t k[RKEY_MAX], sk[DQKEY_MAX];
	char domain[HK_DOMAIN_MAX];
	struct sender_qrcpt r;
	struct wbuf w = { 0 };
	uint8_t *copy;
	char reply[SENDER_QUEUE_REPLY_MAX + 1];
	size_t idlen;
	MDB_val key, val;
	int rc;

	if (op->id == NULL || (idlen = strlen(op->id)) == 0 || idlen > SENDER_QUEUE_ID_MAX) {
		op->result = SENDER_QR_NOTFOUND;
		return 0;
	}
	/* Work on a copy: LMDB's pointers die with the next update. */
	key = mv(k, rkey(k, op->id, op->idx));
	rc = mdb_get(txn, q->rcpt, &key, &val);
	if (rc == MDB_NOTFOUND) {
		op->result = SENDER_QR_NOTFOUND;
		return 0;
	}
	if (rc != 0)
		return rc;
	copy = xmalloc(val.mv_size);
	memcpy(copy, val.mv_data, val.mv_size);
	if (rcpt_decode(copy, val.mv_size, &r) != 0) {
		free(copy);
		return MDB_CORRUPTED;
	}
	snprintf(domain, sizeof(domain), "%s", r.domain);
	key = mv(sk, dqkey(sk, domain, r.next_attempt_ms, op->id, op->idx));
	if ((rc = mdb_del(txn, q->dq, &key, NULL)) != 0 && rc != MDB_NOTFOUND) {
		free(copy);
		return rc;
	}

	snprintf(reply, sizeof(reply), "%s", op->reply ? op->reply : "");
	r.attempts++;
	if (r.first_attempt_ms == 0)
		r.first_attempt_ms = op->attempt_ms;
	r.last_attempt_ms = op->attempt_ms;
	r.next_attempt_ms = op->next_attempt_ms;
	r.reply = reply;
	rcpt_encode(&w, &r);
	free(copy);
	key = mv(k, rkey(k, op->id, op->idx));
	val = mv(w.p, w.len);
	rc = mdb_put(txn, q->rcpt, &key, &val, 0);
	free(w.p);
	if (rc != 0)
		return rc;
	key = mv(sk, dqkey(sk, domain, op->next_attempt_ms, op->id, op->idx));
	val = mv("\1", 1);
	if ((rc = mdb_put(txn, q->dq, &key, &val, 0)) != 0)
		return rc;
	if ((rc = dom_refresh(q, txn, domain, 0)) != 0)
		return rc;
	op->result = SENDER_QR_DONE;
	return 0;
}

static const char *
op_name(enum sender_qop_kind k)
{
	switch (k) {
	case SENDER_QOP_ENQUEUE: return "enqueue";
	case SENDER_QOP_DELIVERED: return "delivered";
	case SENDER_QOP_DEFERRED: return "deferred";
	case SENDER_QOP_BOUNCED: return "bounced";
	case SENDER_QOP_HANDED_OFF: return "handed_off";
	case SENDER_QOP_POSTPONED: return "postponed";
	}
	return "unknown";
}

static int move_next(sender_queue *q, MDB_txn *txn, const char *id, uint32_t idx,
    int64_t next_ms, bool earlier_only, bool *moved);

/* op_postpone - the recipient waits (a budget, not a failure): only its
 * next attempt moves. */
static int
op_postpone(sender_queue *q, MDB_txn *txn, struct sender_qop *op)
{
	bool moved;

	if (op->id == NULL || strlen(op->id) == 0 || strlen(op->id) > SENDER_QUEUE_ID_MAX) {
		op->result = SENDER_QR_NOTFOUND;
		return 0;
	}
	uint8_t k[RKEY_MAX];
	MDB_val key = mv(k, rkey(k, op->id, op->idx)), val;
	int rc = mdb_get(txn, q->rcpt, &key, &val);
	if (rc == MDB_NOTFOUND) {
		op->result = SENDER_QR_NOTFOUND;
		return 0;
	}
	if (rc != 0)
		return rc;
	if ((rc = move_next(q, txn, op->id, op->idx, op->next_attempt_ms, false, &moved)) != 0)
		return rc;
	op->result = SENDER_QR_DONE;
	return 0;
}

static int
op_apply(sender_queue *q, MDB_txn *txn, struct sender_qop *op)
{
	switch (op->kind) {
	case SENDER_QOP_ENQUEUE: return op_enqueue(q, txn, op);
	case SENDER_QOP_DELIVERED:
	case SENDER_QOP_BOUNCED:
	case SENDER_QOP_HANDED_OFF: return op_remove(q, txn, op);
	case SENDER_QOP_DEFERRED: return op_defer(q, txn, op);
	case SENDER_QOP_POSTPONED: return op_postpone(q, txn, op);
	}
	return EINVAL;
}

static const char *
op_id(const struct sender_qop *op)
{
	if (op->kind == SENDER_QOP_ENQUEUE)
		return op->msg && op->msg->id ? op->msg->id : "";
	return op->id ? op->id : "";
}

/*
 * batch_apply - apply OPS in TXN. Not isolated: the first storage error
 * stops (returns it). Isolated: each op runs in a child transaction, so an
 * op that fails (MDB_MAP_FULL for a big body, say) is marked FAILED and
 * rolled back alone while the others go on; only an error of TXN itself
 * stops.
 */
static int
batch_apply(sender_queue *q, MDB_txn *txn, struct sender_qop *const *ops, size_t n,
    bool isolated, size_t *failed_at)
{
	int rc;

	for (size_t i = 0; i < n; i++) {
		struct sender_qop *op = ops[i];
		MDB_txn *child = txn;

		op->result = SENDER_QR_NONE;
		op->why[0] = '\0';
		if (isolated && (rc = mdb_txn_begin(q->env, txn, 0, &child)) != 0) {
			*failed_at = i;
			return rc;
		}
		rc = op_apply(q, child, op);
		if (!isolated) {
			if (rc != 0) {
				*failed_at = i;
				return rc;
			}
			continue;
		}
		if (rc == 0)
			rc = mdb_txn_commit(child);
		else
			mdb_txn_abort(child);
		if (rc != 0) {
			op->result = SENDER_QR_FAILED;
			snprintf(op->why, sizeof(op->why), "queue: %s: %s", op_name(op->kind),
			    mdb_strerror(rc));
		}
	}
	return 0;
}

int
sender_queue_commit(sender_queue *q, struct sender_qop *const *ops, size_t n,
    char *err, size_t errlen)
{
	MDB_txn *txn;
	size_t at = 0;
	int rc;

	/* Fast path: the whole batch in one transaction. If an op fails, redo
	 * the batch with each op isolated, so one op cannot sink the others. */
	for (int isolated = 0; isolated < 2; isolated++) {
		if ((rc = mdb_txn_begin(q->env, NULL, 0, &txn)) != 0) {
			snprintf(err, errlen, "queue: mdb_txn_begin: %s", mdb_strerror(rc));
			break;
		}
		rc = batch_apply(q, txn, ops, n, isolated, &at);
		if (rc == 0) {
			if ((rc = mdb_txn_commit(txn)) == 0)
				return 0;
			snprintf(err, errlen, "queue: commit: %s", mdb_strerror(rc));
			break;
		}
		snprintf(err, errlen, "queue: %s %.40s: %s", op_name(ops[at]->kind), op_id(ops[at]),
		    mdb_strerror(rc));
		mdb_txn_abort(txn);
	}
	for (size_t i = 0; i < n; i++)
		ops[i]->result = SENDER_QR_NONE;
	return -1;
}

/* ---- reads ---- */

static int
read_begin(sender_queue *q, MDB_txn **txn, const char *what)
{
	int rc = mdb_txn_begin(q->env, NULL, MDB_RDONLY, txn);
	if (rc != 0)
		hk_log_error("queue_read_failed", "{s:s, s:s, s:s}", "path", q->path, "what", what,
		    "error", mdb_strerror(rc));
	return rc;
}

/* scan_domain - DOMAIN's queue entries due at or before NOW, in order,
 * through SKIP and CB. SENDER_SCAN_STOP from cb is returned; anything else
 * ends with the domain. */
static int
scan_domain(sender_queue *q, MDB_txn *txn, MDB_cursor *c, const char *domain, uint64_t now,
    sender_queue_skip_fn skip, sender_queue_scan_fn cb, void *arg)
{
	size_t dl = strlen(domain);
	MDB_val key, val;
	int rc, r;

	rc = first_with_prefix(c, (const uint8_t *)domain, dl + 1);
	if (rc != 1)
		return SENDER_SCAN_CONTINUE;
	for (rc = mdb_cursor_get(c, &key, &val, MDB_GET_CURRENT); rc == 0;
	     rc = mdb_cursor_get(c, &key, &val, MDB_NEXT)) {
		const uint8_t *kp = key.mv_data;
		struct sender_qrcpt rc_state;

		if (key.mv_size < dl + 1 || memcmp(kp, domain, dl + 1) != 0)
			break;  /* the next domain */
		/* domain \0 be64 time id \0 be32 idx: the id inside is a C string. */
		if (key.mv_size < dl + 1 + 8 + 2 + 4 || kp[key.mv_size - 5] != 0 ||
		    memchr(kp + dl + 9, 0, key.mv_size - dl - 9 - 5) != NULL) {
			hk_log_error("queue_corrupt", "{s:s, s:s}", "what", "domain queue key",
			    "domain", domain);
			continue;
		}
		if (hk_get_be(kp + dl + 1, 8) > now)
			break;
		const char *id = (const char *)kp + dl + 9;
		uint32_t idx = (uint32_t)hk_get_be(kp + key.mv_size - 4, 4);
		if (skip && skip(id, idx, arg))
			continue;
		int grc = rcpt_get(q, txn, id, idx, &rc_state);
		if (grc == MDB_NOTFOUND)
			continue;       /* an orphan queue key (see op_remove) */
		if (grc != 0) {
			hk_log_error("queue_corrupt", "{s:s, s:i, s:s}", "id", id, "idx", (int)idx,
			    "what", mdb_strerror(grc));
			continue;
		}
		r = cb(&rc_state, arg);
		if (r == SENDER_SCAN_STOP)
			return SENDER_SCAN_STOP;
		if (r == SENDER_SCAN_NEXT_DOMAIN)
			break;
	}
	return SENDER_SCAN_CONTINUE;
}

int
sender_queue_scan_due_domains(sender_queue *q, int64_t now_ms, sender_queue_domain_fn dom,
    sender_queue_skip_fn skip, sender_queue_scan_fn cb, void *arg)
{
	MDB_txn *txn;
	MDB_cursor *dn, *c;
	MDB_val key, val;
	char domain[HK_DOMAIN_MAX];
	uint64_t now = ms_key(now_ms);
	int rc;

	if (read_begin(q, &txn, "scan") != 0)
		return -1;
	if ((rc = mdb_cursor_open(txn, q->dnext, &dn)) != 0) {
		mdb_txn_abort(txn);
		return -1;
	}
	if ((rc = mdb_cursor_open(txn, q->dq, &c)) != 0) {
		mdb_cursor_close(dn);
		mdb_txn_abort(txn);
		return -1;
	}
	for (rc = mdb_cursor_get(dn, &key, &val, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(dn, &key, &val, MDB_NEXT)) {
		const uint8_t *kp = key.mv_data;
		if (key.mv_size <= 8 || key.mv_size - 8 >= HK_DOMAIN_MAX ||
		    memchr(kp + 8, 0, key.mv_size - 8) != NULL) {
			hk_log_error("queue_corrupt", "{s:s}", "what", "domain order key");
			continue;
		}
		uint64_t next = hk_get_be(kp, 8);
		if (next > now)
			break;
		memcpy(domain, kp + 8, key.mv_size - 8);
		domain[key.mv_size - 8] = '\0';
		if (dom) {
			int d = dom(domain, (int64_t)next, arg);
			if (d == SENDER_SCAN_STOP)
				break;
			if (d == SENDER_SCAN_NEXT_DOMAIN)
				continue;
		}
		if (scan_domain(q, txn, c, domain, now, skip, cb, arg) == SENDER_SCAN_STOP)
			break;
	}
	mdb_cursor_close(c);
	mdb_cursor_close(dn);
	mdb_txn_abort(txn);
	return 0;
}

int
sender_queue_scan_due(sender_queue *q, int64_t now_ms, sender_queue_skip_fn skip,
    sender_queue_scan_fn cb, void *arg)
{
	return sender_queue_scan_due_domains(q, now_ms, NULL, skip, cb, arg);
}

int
sender_queue_rcpt_load(sender_queue *q, const char *id, uint32_t idx, struct sender_qrcpt **out)
{
	uint8_t k[RKEY_MAX];
	MDB_txn *txn;
	MDB_val key, val;
	size_t idlen = id ? strlen(id) : 0;
	int rc;

	*out = NULL;
	if (idlen == 0 || idlen > SENDER_QUEUE_ID_MAX)
		return -ENOENT;
	if (read_begin(q, &txn, "rcpt") != 0)
		return -EIO;
	key = mv(k, rkey(k, id, idx));
	rc = mdb_get(txn, q->rcpt, &key, &val);
	if (rc == 0) {
		/* One allocation: the struct, the record, the id. */
		struct sender_qrcpt *r = xmalloc(sizeof(*r) + val.mv_size + idlen + 1);
		uint8_t *rec = (uint8_t *)(r + 1);
		memcpy(rec, val.mv_data, val.mv_size);
		memcpy(rec + val.mv_size, id, idlen + 1);
		if (rcpt_decode(rec, val.mv_size, r) != 0) {
			hk_log_error("queue_corrupt", "{s:s, s:i, s:s}", "id", id, "idx", (int)idx,
			    "what", "recipient record");
			free(r);
			rc = -EIO;
		} else {
			r->id = (const char *)rec + val.mv_size;
			r->idx = idx;
			*out = r;
		}
	} else {
		if (rc != MDB_NOTFOUND)
			hk_log_error("queue_read_failed", "{s:s, s:s}", "what", "rcpt", "error",
			    mdb_strerror(rc));
		rc = rc == MDB_NOTFOUND ? -ENOENT : -EIO;
	}
	mdb_txn_abort(txn);
	return rc;
}

int
sender_queue_msg_load(sender_queue *q, const char *id, Hk__Submission **meta,
    uint8_t **body, size_t *body_len)
{
	size_t idlen = id ? strlen(id) : 0;
	Hk__Submission *m = NULL;
	MDB_txn *txn;
	MDB_val key, val;
	const char *what = "";
	int rc;

	if (meta)
		*meta = NULL;
	if (body)
		*body = NULL;
	if (body_len)
		*body_len = 0;
	if (idlen == 0 || idlen > SENDER_QUEUE_ID_MAX)
		return -ENOENT;
	if (read_begin(q, &txn, "msg") != 0)
		return -EIO;
	key = mv(id, idlen);
	if ((rc = mdb_get(txn, q->msg, &key, &val)) != 0) {
		what = "msg";
		goto out;
	}
	if (meta) {
		const uint8_t *p = val.mv_data;
		if (val.mv_size < 5 || p[0] != REC_V1 ||
		    (m = hk__submission__unpack(NULL, val.mv_size - 5, p + 5)) == NULL) {
			rc = MDB_CORRUPTED;
			what = "message record";
			goto out;
		}
	}
	if (body || body_len) {
		if ((rc = mdb_get(txn, q->body, &key, &val)) != 0 ||
		    val.mv_size < 1 || ((uint8_t *)val.mv_data)[0] != REC_V1) {
			rc = rc ? rc : MDB_CORRUPTED;
			/* A message without its body is damage, not absence. */
			if (rc == MDB_NOTFOUND)
				rc = MDB_CORRUPTED;
			what = "body record";
			goto out;
		}
		if (body) {
			*body = xmalloc(val.mv_size > 1 ? val.mv_size - 1 : 1);
			memcpy(*body, (uint8_t *)val.mv_data + 1, val.mv_size - 1);
		}
		if (body_len)
			*body_len = val.mv_size - 1;
	}
	if (meta)
		*meta = m;
	m = NULL;
out:
	mdb_txn_abort(txn);
	if (m)
		hk__submission__free_unpacked(m, NULL);
	if (rc == 0)
		return 0;
	if (rc == MDB_NOTFOUND)
		return -ENOENT;
	hk_log_error("queue_read_failed", "{s:s, s:s, s:s}", "id", id, "what", what,
	    "error", mdb_strerror(rc));
	return -EIO;
}

int
sender_queue_stats(sender_queue *q, struct sender_queue_stats *st)
{
	MDB_txn *txn;
	MDB_stat s;
	const MDB_dbi dbis[] = { q->msg, q->body, q->rcpt, q->dq, q->shard, q->dom };
	uint64_t *outs[] = { &st->msgs, &st->bodies, &st->rcpts, &st->sched, &st->shards,
	    &st->domains };
	int rc = 0;

	memset(st, 0, sizeof(*st));
	if (read_begin(q, &txn, "stats") != 0)
		return -1;
	for (size_t i = 0; i < sizeof(dbis) / sizeof(dbis[0]); i++) {
		if (mdb_stat(txn, dbis[i], &s) != 0) {
			rc = -1;
			break;
		}
		*outs[i] = s.ms_entries;
	}
	mdb_txn_abort(txn);
	return rc;
}

uint64_t
sender_queue_depth(sender_queue *q)
{
	struct sender_queue_stats st;
	return sender_queue_stats(q, &st) == 0 ? st.rcpts : 0;
}

/* ---- administration (`hikyaku queue`, see sender_queue.h) ---- */

int
sender_queue_scan_all(sender_queue *q, const char *id, const struct sender_qref *after,
    sender_queue_scan_fn cb, void *arg)
{
	uint8_t pfx[SENDER_QUEUE_ID_MAX + 1], ak[RKEY_MAX];
	size_t plen = 0, alen = 0;
	MDB_txn *txn;
	MDB_cursor *c;
	MDB_val key, val;
	MDB_cursor_op first = MDB_FIRST;
	int rc;

	if (id) {
		plen = strlen(id);
		if (plen == 0 || plen > SENDER_QUEUE_ID_MAX)
			return 0;       /* no such message */
		memcpy(pfx, id, ++plen);        /* with its NUL: not a longer id */
		key = mv(pfx, plen);
		first = MDB_SET_RANGE;
	}
	if (after && after->id && strlen(after->id) <= SENDER_QUEUE_ID_MAX) {
		alen = rkey(ak, after->id, after->idx);
		if (!plen || memcmp(ak, pfx, plen < alen ? plen : alen) >= 0) {
			key = mv(ak, alen);
			first = MDB_SET_RANGE;
		} else {
			alen = 0;       /* before the message: start at it */
		}
	}
	if (read_begin(q, &txn, "scan_all") != 0)
		return -1;
	if ((rc = mdb_cursor_open(txn, q->rcpt, &c)) != 0) {
		mdb_txn_abort(txn);
		return -1;
	}
	rc = mdb_cursor_get(c, &key, &val, first);
	/* SET_RANGE finds AFTER itself when it is still there: go past it. */
	if (rc == 0 && alen && key.mv_size == alen && memcmp(key.mv_data, ak, alen) == 0)
		rc = mdb_cursor_get(c, &key, &val, MDB_NEXT);
	for (; rc == 0; rc = mdb_cursor_get(c, &key, &val, MDB_NEXT)) {
		const uint8_t *kp = key.mv_data;
		struct sender_qrcpt r;

		if (plen && (key.mv_size < plen || memcmp(kp, pfx, plen) != 0))
			break;
		/* id, NUL, be32 idx: the id inside is a C string. */
		if (key.mv_size < 2 + 4 || kp[key.mv_size - 5] != 0 ||
		    memchr(kp, 0, key.mv_size - 5) != NULL) {
			hk_log_error("queue_corrupt", "{s:s}", "what", "recipient key");
			continue;
		}
		if (rcpt_decode(val.mv_data, val.mv_size, &r) != 0) {
			hk_log_error("queue_corrupt", "{s:s, s:s}", "id", (const char *)kp, "what",
			    "recipient record");
			continue;
		}
		r.id = (const char *)kp;
		r.idx = (uint32_t)hk_get_be(kp + key.mv_size - 4, 4);
		if (cb(&r, arg) != 0)
			break;
	}
	if (rc != 0 && rc != MDB_NOTFOUND)
		hk_log_error("queue_read_failed", "{s:s, s:s, s:s}", "path", q->path, "what",
		    "scan_all", "error", mdb_strerror(rc));
	mdb_cursor_close(c);
	mdb_txn_abort(txn);
	return rc == 0 || rc == MDB_NOTFOUND ? 0 : -1;
}

/* ref_ok - an id a key can hold. */
static bool
ref_ok(const struct sender_qref *r)
{
	size_t n = r->id ? strlen(r->id) : 0;
	return n > 0 && n <= SENDER_QUEUE_ID_MAX;
}

/* move_next - move (ID, IDX)'s next attempt to NEXT_MS (with EARLIER_ONLY:
 * only if that is earlier), its attempts and last reply untouched. 0 and
 * *moved, or an LMDB error; a recipient not there is not an error. */
static int
move_next(sender_queue *q, MDB_txn *txn, const char *id, uint32_t idx, int64_t next_ms,
    bool earlier_only, bool *moved)
{
	uint8_t k[RKEY_MAX], sk[DQKEY_MAX];
	char domain[HK_DOMAIN_MAX];
	struct sender_qrcpt r;
	struct wbuf w = { 0 };
	MDB_val key, val;
	uint8_t *copy;
	int rc;

	*moved = false;
	key = mv(k, rkey(k, id, idx));
	if ((rc = mdb_get(txn, q->rcpt, &key, &val)) != 0)
		return rc == MDB_NOTFOUND ? 0 : rc;
	/* Work on a copy: LMDB's pointers die with the next update. */
	copy = xmalloc(val.mv_size);
	memcpy(copy, val.mv_data, val.mv_size);
	if (rcpt_decode(copy, val.mv_size, &r) != 0) {
		free(copy);
		return MDB_CORRUPTED;
	}
	if (ms_key(r.next_attempt_ms) == ms_key(next_ms) ||
	    (earlier_only && ms_key(r.next_attempt_ms) < ms_key(next_ms))) {
		free(copy);
		return 0;
	}
	snprintf(domain, sizeof(domain), "%s", r.domain);
	key = mv(sk, dqkey(sk, domain, r.next_attempt_ms, id, idx));
	if ((rc = mdb_del(txn, q->dq, &key, NULL)) != 0 && rc != MDB_NOTFOUND) {
		free(copy);
		return rc;
	}
	r.next_attempt_ms = next_ms;
	rcpt_encode(&w, &r);
	free(copy);
	key = mv(k, rkey(k, id, idx));
	val = mv(w.p, w.len);
	rc = mdb_put(txn, q->rcpt, &key, &val, 0);
	free(w.p);
	if (rc != 0)
		return rc;
	key = mv(sk, dqkey(sk, domain, next_ms, id, idx));
	val = mv("\1", 1);
	if ((rc = mdb_put(txn, q->dq, &key, &val, 0)) != 0)
		return rc;
	if ((rc = dom_refresh(q, txn, domain, 0)) != 0)
		return rc;
	*moved = true;
	return 0;
}

/* resched_one - move REF's next attempt to NEXT_MS if that is earlier. */
static int
resched_one(sender_queue *q, MDB_txn *txn, const struct sender_qref *ref, int64_t next_ms,
    bool *moved)
{
	return move_next(q, txn, ref->id, ref->idx, next_ms, true, moved);
}

/* admin_write - delete (RESCHED false) or reschedule REFS, in batches. */
static int
admin_write(sender_queue *q, const struct sender_qref *refs, size_t n, bool resched,
    int64_t next_ms, size_t *done, char *err, size_t errlen)
{
	const char *what = resched ? "reschedule" : "delete";

	*done = 0;
	for (size_t at = 0; at < n; ) {
		size_t end = at + SENDER_QUEUE_ADMIN_BATCH < n ? at + SENDER_QUEUE_ADMIN_BATCH : n;
		size_t batch_done = 0;
		MDB_txn *txn;
		int rc;

		if ((rc = mdb_txn_begin(q->env, NULL, 0, &txn)) != 0) {
			snprintf(err, errlen, "queue: %s: mdb_txn_begin: %s", what, mdb_strerror(rc));
			return -1;
		}
		for (size_t i = at; i < end && rc == 0; i++) {
			if (!ref_ok(&refs[i]))
				continue;
			if (resched) {
				bool moved;
				if ((rc = resched_one(q, txn, &refs[i], next_ms, &moved)) == 0 && moved)
					batch_done++;
			} else {
				struct sender_qop op = { .kind = SENDER_QOP_BOUNCED, .id = refs[i].id,
				    .idx = refs[i].idx };
				if ((rc = op_remove(q, txn, &op)) == 0 && op.result == SENDER_QR_DONE)
					batch_done++;
			}
			if (rc != 0)
				snprintf(err, errlen, "queue: %s %.40s/%u: %s", what, refs[i].id,
				    refs[i].idx, mdb_strerror(rc));
		}
		if (rc != 0) {
			mdb_txn_abort(txn);
			return -1;
		}
		if ((rc = mdb_txn_commit(txn)) != 0) {
			snprintf(err, errlen, "queue: %s: commit: %s", what, mdb_strerror(rc));
			return -1;
		}
		*done += batch_done;
		at = end;
	}
	return 0;
}

int
sender_queue_delete(sender_queue *q, const struct sender_qref *refs, size_t n,
    size_t *done, char *err, size_t errlen)
{
	return admin_write(q, refs, n, false, 0, done, err, errlen);
}

int
sender_queue_reschedule(sender_queue *q, const struct sender_qref *refs, size_t n,
    int64_t next_ms, size_t *done, char *err, size_t errlen)
{
	return admin_write(q, refs, n, true, next_ms, done, err, errlen);
}

int
sender_queue_commit_all(sender_queue *q, struct sender_qop *const *ops, size_t n,
    char *err, size_t errlen)
{
	MDB_txn *txn;
	size_t at = 0;
	int rc;

	if ((rc = mdb_txn_begin(q->env, NULL, 0, &txn)) != 0) {
		snprintf(err, errlen, "queue: mdb_txn_begin: %s", mdb_strerror(rc));
		return -1;
	}
	if ((rc = batch_apply(q, txn, ops, n, false, &at)) != 0) {
		snprintf(err, errlen, "queue: %s %.40s: %s", op_name(ops[at]->kind), op_id(ops[at]),
		    mdb_strerror(rc));
		mdb_txn_abort(txn);
		for (size_t i = 0; i < n; i++)
			ops[i]->result = SENDER_QR_NONE;
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		if (ops[i]->result != SENDER_QR_DONE) {
			snprintf(err, errlen, "queue: %s %.40s: not done (result %d%s%s)",
			    op_name(ops[i]->kind), op_id(ops[i]), (int)ops[i]->result,
			    ops[i]->why[0] ? ": " : "", ops[i]->why);
			mdb_txn_abort(txn);
			return -1;
		}
	}
	if ((rc = mdb_txn_commit(txn)) != 0) {
		snprintf(err, errlen, "queue: commit: %s", mdb_strerror(rc));
		for (size_t i = 0; i < n; i++)
			ops[i]->result = SENDER_QR_NONE;
		return -1;
	}
	return 0;
}
