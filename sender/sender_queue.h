/*
 * sender_queue - the sender's durable queue, in LMDB.
 *
 * One environment directory, named databases (every value starts with a
 * format version byte; keys and values are permanent formats):
 *
 *   info   "format"                      -> [1]           queue format version
 *   msg    id                            -> [1][u32 next_idx][Submission, no rcpts]
 *          (protobuf: fields added to Submission, e.g. pool = 8, are stored
 *          with no format change; older records read them as empty)
 *   body   id                            -> [1][raw body]  stored once per message
 *   rcpt   id \0 be32 idx                -> [1][recipient state, see sender_queue.c]
 *   dq     domain \0 be64 next_attempt_ms id \0 be32 idx -> [1]
 *          one ready queue per destination domain, in next-attempt order
 *   dnext  be64 next_ms domain           -> [1]   domains by their earliest
 *          next attempt (one entry per domain with recipients)
 *   dom    domain                        -> [1][be64 next_ms][be64 n_rcpts]
 *   shard  id \0 be32 shard              -> [1][be32 first_idx][be32 n_rcpts]
 *   origin id \0 from_node \0 be32 from_idx -> [1][be32 idx]  handed-on recipients
 *
 * An enqueue whose recipients carry a Handoff (another sender hands them on)
 * is deduplicated per recipient by (id, from_node, from_idx) in origin, not
 * by shard, and keeps the recipient's attempts, times and last reply. The
 * origin and shard entries of a message go with its last recipient.
 *
 * Writes come as a batch of operations committed in ONE write transaction
 * (group commit): sender_queue_commit() may run on any thread (MDB_NOTLS),
 * but only one commit at a time. Reads (scan, loads, counts) use their own
 * read transactions and may run on another thread while a commit runs.
 * All times are Unix epoch milliseconds given by the caller.
 */
#ifndef SENDER_QUEUE_H
#define SENDER_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "hikyaku.pb-c.h"

#define SENDER_QUEUE_ID_MAX 128         /* longest message id accepted (bytes) */
#define SENDER_QUEUE_REPLY_MAX 1024     /* replies are truncated to this */
#define SENDER_QUEUE_NODE_MAX 200       /* longest handing node name accepted */

typedef struct sender_queue sender_queue;

enum sender_qop_kind {
	SENDER_QOP_ENQUEUE = 1,
	SENDER_QOP_DELIVERED,
	SENDER_QOP_DEFERRED,
	SENDER_QOP_BOUNCED,
	SENDER_QOP_HANDED_OFF,  /* committed at the new owner: remove here */
	SENDER_QOP_POSTPONED,   /* waits (no budget): next_attempt_ms moves, no attempt counted */
};

enum sender_qresult {
	SENDER_QR_NONE = 0,     /* not applied (the commit failed) */
	SENDER_QR_DONE,         /* applied */
	SENDER_QR_DUPLICATE,    /* enqueue: (id, shard) already held, nothing stored
	                         * (a handoff: every recipient already held) */
	SENDER_QR_NOTFOUND,     /* delivered/deferred/bounced: no such recipient */
	SENDER_QR_INVALID,      /* enqueue: refused, see why */
	SENDER_QR_FAILED,       /* a storage error for this op alone (e.g. map
	                         * full), see why; nothing of it stored */
};

/* One operation of a batch. The caller owns everything it points to; the
 * commit only reads the inputs and fills the outputs. */
struct sender_qop {
	enum sender_qop_kind kind;
	/* ENQUEUE */
	const Hk__Submission *msg;      /* id, envelope with recipients, ... */
	uint32_t shard;
	const uint8_t *body;
	size_t body_len;
	int64_t now_ms;                 /* queued at; first attempt due at */
	/* DELIVERED, DEFERRED, BOUNCED, HANDED_OFF */
	const char *id;
	uint32_t idx;
	/* DEFERRED (and POSTPONED: next_attempt_ms) */
	int64_t attempt_ms;             /* when the attempt ended */
	int64_t next_attempt_ms;
	/* DEFERRED, BOUNCED: the reply that decided it (kept in the record) */
	const char *reply;
	/* out */
	enum sender_qresult result;
	uint32_t first_idx, n_rcpts;    /* ENQUEUE done: the recipients stored */
	char why[128];                  /* INVALID, FAILED: what was wrong */
};

/* A recipient's state. Strings are NUL-terminated; params holds n_params
 * NUL-terminated strings back to back (params_len bytes). */
struct sender_qrcpt {
	const char *id;
	uint32_t idx;
	uint32_t shard;
	const char *address;
	const char *domain;             /* canonical (hk_domain_of) */
	const char *params;
	size_t params_len;
	uint16_t n_params;
	const char *reply;              /* last reply, "" before any attempt */
	uint32_t attempts;              /* attempts made so far */
	int64_t queued_at_ms;
	int64_t first_attempt_ms;       /* 0 before any attempt */
	int64_t last_attempt_ms;
	int64_t next_attempt_ms;
};

struct sender_queue_stats {
	uint64_t msgs, bodies, rcpts, sched, shards, domains; /* sched: dq entries */
};

/* sender_queue_open - create PATH (mkdir -p) and open the queue in it.
 * sync=false trades durability for speed (MDB_NOSYNC). Returns 0 and *out,
 * or -1 with the reason in err. */
int sender_queue_open(sender_queue **out, const char *path, size_t map_size, bool sync,
    char *err, size_t errlen);

/* sender_queue_close - close and free; NULLs the caller's pointer. No commit
 * may be running. */
void sender_queue_close(sender_queue **q);

/* sender_queue_commit - apply OPS in order in one write transaction and
 * commit it (synced unless opened with sync=false). Each op's result says what
 * happened to it; neither refusals (INVALID, NOTFOUND, DUPLICATE) nor an
 * op's own storage error (FAILED: it is rolled back alone) fail the batch.
 * Returns 0, or -1 with the reason in err: then nothing was stored. */
int sender_queue_commit(sender_queue *q, struct sender_qop *const *ops, size_t n,
    char *err, size_t errlen);

/*
 * sender_queue_scan_due_domains - every recipient due at or before NOW,
 * domain by domain: domains in the order of their earliest next attempt,
 * and within a domain in next-attempt order. dom (may be NULL) is asked
 * first for each domain with something due; skip (may be NULL) for each
 * (id, idx), true skips it without loading it; cb gets the loaded state
 * (valid during the call). dom and cb return SENDER_SCAN_CONTINUE,
 * SENDER_SCAN_NEXT_DOMAIN (the rest of this domain is passed by) or
 * SENDER_SCAN_STOP. Returns 0 or -1 (logged). A walk of the recipients of
 * INT64_MAX visits every recipient.
 *
 * sender_queue_scan_due - the same without dom; any nonzero from cb other
 * than SENDER_SCAN_NEXT_DOMAIN stops.
 */
enum { SENDER_SCAN_CONTINUE = 0, SENDER_SCAN_STOP = 1, SENDER_SCAN_NEXT_DOMAIN = 2 };
typedef int (*sender_queue_domain_fn)(const char *domain, int64_t next_ms, void *arg);
typedef bool (*sender_queue_skip_fn)(const char *id, uint32_t idx, void *arg);
typedef int (*sender_queue_scan_fn)(const struct sender_qrcpt *r, void *arg);
int sender_queue_scan_due_domains(sender_queue *q, int64_t now_ms, sender_queue_domain_fn dom,
    sender_queue_skip_fn skip, sender_queue_scan_fn cb, void *arg);
int sender_queue_scan_due(sender_queue *q, int64_t now_ms, sender_queue_skip_fn skip,
    sender_queue_scan_fn cb, void *arg);

/* sender_queue_rcpt_load - a copy of one recipient's state in *out (one
 * allocation: free(*out)). 0, -ENOENT, or -EIO (logged). */
int sender_queue_rcpt_load(sender_queue *q, const char *id, uint32_t idx,
    struct sender_qrcpt **out);

/* sender_queue_msg_load - copies of a message's meta (the Submission without
 * recipients; free with hk__submission__free_unpacked(m, NULL)) and body
 * (free()). Either out pointer may be NULL. 0, -ENOENT, or -EIO (logged). */
int sender_queue_msg_load(sender_queue *q, const char *id, Hk__Submission **meta,
    uint8_t **body, size_t *body_len);

/* sender_queue_depth - recipients queued (0 on error). */
uint64_t sender_queue_depth(sender_queue *q);

/* sender_queue_stats - entry counts of every database. 0 or -1. */
int sender_queue_stats(sender_queue *q, struct sender_queue_stats *st);

/* ---- administration (`hikyaku queue`): may run in another process while
 * the sender runs (LMDB is multi-process: reads never block, writes wait
 * for the sender's commit and it for them). ---- */

#define SENDER_QUEUE_ADMIN_BATCH 1000   /* recipients per admin write transaction */

/* A recipient named by its key. */
struct sender_qref {
	const char *id;
	uint32_t idx;
};

/*
 * sender_queue_scan_all - every recipient in key order (message id, then
 * idx: ULIDs sort by time, so oldest first), in one read transaction (one
 * consistent snapshot); with ID non-NULL only that message's; with AFTER
 * non-NULL only those whose key comes after it (to go on where an earlier
 * scan stopped, in a new transaction: a long walk in pieces keeps no read
 * transaction open for long, so LMDB can reuse freed pages meanwhile). cb
 * as for sender_queue_scan_due (R valid during the call; nonzero stops).
 * Returns 0, or -1 (logged). Read-only.
 */
int sender_queue_scan_all(sender_queue *q, const char *id, const struct sender_qref *after,
    sender_queue_scan_fn cb, void *arg);

/*
 * sender_queue_delete - remove the N recipients REFS from the queue (and a
 * message with its last recipient), as a bounce or delivery commit does but
 * with no outcome: in write transactions of at most SENDER_QUEUE_ADMIN_BATCH
 * recipients. One that is not there (any more) is skipped. *done counts
 * those removed. Returns 0, or -1 with the reason in err: what was committed
 * before stays committed (and counted). A running sender that was delivering
 * one of them finds nothing at its outcome (SENDER_QR_NOTFOUND).
 */
int sender_queue_delete(sender_queue *q, const struct sender_qref *refs, size_t n,
    size_t *done, char *err, size_t errlen);

/*
 * sender_queue_reschedule - move the next attempt of each of the N
 * recipients REFS to NEXT_MS, if it is later than that (`retry`: due now).
 * Attempts, last reply and first attempt stay as they are (so max_lifetime
 * still counts from the first attempt). Batched as sender_queue_delete;
 * *done counts the recipients moved. Returns 0, or -1 with the reason.
 */
int sender_queue_reschedule(sender_queue *q, const struct sender_qref *refs, size_t n,
    int64_t next_ms, size_t *done, char *err, size_t errlen);

/*
 * sender_queue_commit_all - sender_queue_commit, all or nothing: unless
 * every op ends SENDER_QR_DONE, nothing is stored and -1 is returned with
 * the first op that was not done named in err (the results say what each
 * op would have been). For a DSN queued together with the removal of the
 * recipients it reports on.
 */
int sender_queue_commit_all(sender_queue *q, struct sender_qop *const *ops, size_t n,
    char *err, size_t errlen);

#endif
