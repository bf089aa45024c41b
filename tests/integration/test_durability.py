"""An acknowledged message survives kill -9 and is delivered exactly once.

The MX is down while the processes die, so there is no crash window between
the MX's 250 and the sender's commit: any second copy is a bug."""
import uuid

import pytest

import harness

MX_A = "127.0.0.10"


@pytest.fixture
def cluster(make_cluster, mx):
    c = make_cluster()
    c.add_router()
    c.add_sender()
    c.add_ingress()
    c.write_config()
    c.start_node("router-1")
    c.start_node("sender-1")
    c.start_node("ingress-1")
    return c


def _submit_while_mx_down(cluster, mx, token, rcpt="durable@a.test"):
    mx.stop(MX_A)
    r = harness.submit(cluster.port(), "from@client.test", [rcpt],
                       harness.make_message(token, rcpts=[rcpt], lines=40))
    assert r["data"][0] == 250, r
    qid = r["queue_id"]
    cluster.wait_event("deferred", node="sender-1", timeout=15,
                       pred=lambda e: harness.mentions(e, qid))
    return qid


def restart_sender(cluster):
    """Stop sender-1 cleanly, start it again; its queue depth at start."""
    code, killed = cluster.stop("sender-1")
    assert (code, killed) == (0, False), "sender-1 did not exit 0 on SIGTERM"
    cluster.start_node("sender-1", wait=False)
    return cluster.wait_event("sender_ready", node="sender-1")["queue_depth"]


def _exactly_once_after_delivery(cluster, mx, token, qid):
    cluster.wait_event("delivered", node="sender-1", timeout=20,
                       pred=lambda e: harness.mentions(e, qid))
    (m,) = mx.wait_token(token)
    assert m.rcpt_tos == ["durable@a.test"]
    # Nothing of it may remain queued: stopped now, any second copy has
    # already reached the MX, and after a restart there is nothing to send.
    depth = restart_sender(cluster)
    assert len(mx.with_token(token)) == 1, "message %s delivered more than once" % qid
    assert depth == 0, "sender-1 restarted with %d queued after the delivery" % depth


def test_kill9_sender_with_deferred_message(cluster, mx):
    token = uuid.uuid4().hex
    qid = _submit_while_mx_down(cluster, mx, token)

    cluster.kill9("sender-1")
    cluster.start_node("sender-1", wait=False)
    assert cluster.wait_event("sender_ready", node="sender-1")["queue_depth"] == 1
    # The reloaded queue still holds it: the new process tries and defers.
    cluster.wait_event("deferred", node="sender-1", timeout=15,
                       pred=lambda e: harness.mentions(e, qid))
    assert mx.with_token(token) == []
    mx.start(MX_A)
    _exactly_once_after_delivery(cluster, mx, token, qid)


def test_kill9_every_process_after_ack(cluster, mx):
    token = uuid.uuid4().hex
    qid = _submit_while_mx_down(cluster, mx, token)
    for node in ("ingress-1", "router-1", "sender-1"):
        cluster.kill9(node)
    cluster.start_node("router-1")
    cluster.start_node("sender-1")
    assert cluster.wait_event("sender_ready", node="sender-1")["queue_depth"] == 1
    cluster.start_node("ingress-1")
    mx.start(MX_A)
    _exactly_once_after_delivery(cluster, mx, token, qid)
    # and the restarted cluster takes new mail
    t2 = uuid.uuid4().hex
    r = harness.submit(cluster.port(), "from@client.test", ["next@a.test"],
                       harness.make_message(t2, rcpts=["next@a.test"], lines=3))
    assert r["data"][0] == 250, r
    mx.wait_token(t2)


def test_temporary_replies_then_success(cluster, mx):
    """421 on RCPT, then 450, then 250: one delivery, after two deferrals."""
    token = uuid.uuid4().hex
    rcpt = "flaky@b.test"
    mx["127.0.0.11"].script_rcpt(rcpt, "421 4.3.0 not now", "450 4.2.1 mailbox busy")
    r = harness.submit(cluster.port(), "from@client.test", [rcpt],
                       harness.make_message(token, rcpts=[rcpt], lines=5))
    assert r["data"][0] == 250, r
    qid = r["queue_id"]
    ev = cluster.wait_event("delivered", node="sender-1", timeout=20,
                            pred=lambda e: harness.mentions(e, qid))
    deferred = cluster.find_events("deferred", node="sender-1",
                                   pred=lambda e: harness.mentions(e, qid))
    assert [e["reply"] for e in deferred] == ["421 4.3.0 not now", "450 4.2.1 mailbox busy"], deferred
    tries = [(c, t) for a, c, _, t in mx["127.0.0.11"].rcpt_attempts if a == rcpt]
    assert [c for c, _ in tries] == ["421 4.3.0 not now", "450 4.2.1 mailbox busy", "250 2.1.5 Ok"]
    assert len(mx.with_token(token)) == 1, ev
    # Backoff: retry_min (1s) after the first failure, doubled (2s = retry_max)
    # after the second; the sender may spread retries by +-10%.
    gaps = [tries[1][1] - tries[0][1], tries[2][1] - tries[1][1]]
    # Lower bounds are the contract; the upper bound only shows the delay
    # stopped doubling at retry_max, with room for a loaded machine.
    assert gaps[0] >= 0.85 and 1.7 <= gaps[1] <= 4.0, gaps


def test_permanent_failure_not_retried(cluster, mx):
    token = uuid.uuid4().hex
    mx["127.0.0.12"].script_rcpt("gone@c.test", "550 5.1.1 no such user")
    rc = ["gone@c.test", "here@c.test"]
    # null sender: no DSN is queued for the bounce
    r = harness.submit(cluster.port(), "", rc, harness.make_message(token, rcpts=rc, lines=5))
    assert r["data"][0] == 250, r
    qid = r["queue_id"]
    cluster.wait_event("delivered", node="sender-1", timeout=15,
                       pred=lambda e: harness.mentions(e, qid) and harness.mentions(e, "here@c.test"))
    ev = cluster.wait_event("bounced", node="sender-1", timeout=15,
                            pred=lambda e: harness.mentions(e, qid) and harness.mentions(e, "gone@c.test"))
    assert ev["reply"].startswith("550 5.1.1"), ev
    (m,) = mx.wait_token(token)
    assert m.rcpt_tos == ["here@c.test"]
    assert not cluster.find_events("deferred", node="sender-1", pred=lambda e: harness.mentions(e, qid))
    assert restart_sender(cluster) == 0
    assert [a for a, *_ in mx["127.0.0.12"].rcpt_attempts].count("gone@c.test") == 1
