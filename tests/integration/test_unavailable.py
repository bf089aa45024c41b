"""Nothing is acknowledged that is not queued: with no router, or no sender,
the client gets 451 4.3.0 within submit_timeout, and its retry succeeds once
the cluster is back. A refused attempt is never delivered."""
import time
import uuid

import pytest

import harness

SUBMIT_TIMEOUT = 3.0
MARGIN = 1.5


@pytest.fixture
def cluster(make_cluster, mx):
    c = make_cluster()
    c.add_router()
    c.add_sender()
    c.add_ingress(submit_timeout="%ds" % SUBMIT_TIMEOUT)
    c.write_config()
    return c


def _timed_submit(port, rcpts, data):
    t0 = time.monotonic()
    r = harness.submit(port, "from@client.test", rcpts, data)
    return r, time.monotonic() - t0


def _assert_451(r, elapsed):
    # The ingress may refuse at RCPT (it knows no router is there) or,
    # having accepted the data, when the router's ack does not come.
    replies = [c for c, _ in r["rcpt"]] + ([r["data"][0]] if r["data"] else [])
    assert 451 in replies, r
    final = r["data"] or next((c, t) for c, t in r["rcpt"] if c == 451)
    text = final[1].decode() if isinstance(final[1], bytes) else final[1]
    assert final[0] == 451 and text.startswith("4.3.0"), r
    assert elapsed <= SUBMIT_TIMEOUT + MARGIN, "451 took %.1fs" % elapsed


def test_ingress_alone_then_cluster_comes_up(cluster, mx):
    cluster.start_node("ingress-1")
    token = uuid.uuid4().hex
    rcpts = ["later@a.test"]
    data = harness.make_message(token, rcpts=rcpts, lines=10)
    r, elapsed = _timed_submit(cluster.port(), rcpts, data)
    _assert_451(r, elapsed)
    # the ingress is still serving
    r2, elapsed = _timed_submit(cluster.port(), rcpts, data)
    _assert_451(r2, elapsed)

    cluster.start_node("router-1")
    cluster.start_node("sender-1")
    # The ingress reconnects to the router on its own schedule (ZeroMQ's
    # reconnect interval), so the client may need a few retries.
    r, refusals = harness.submit_retrying(cluster.port(), "from@client.test", rcpts, data)
    assert r["data"][0] == 250 and r["queue_id"], (r, refusals)
    qid = r["queue_id"]
    cluster.wait_event("delivered", node="sender-1", timeout=15,
                       pred=lambda e: harness.mentions(e, qid))
    (m,) = mx.wait_token(token)
    assert m.rcpt_tos == rcpts
    _no_more_copies(cluster, mx, qid)


def test_router_without_sender(cluster, mx):
    cluster.start_node("router-1")
    cluster.start_node("ingress-1")
    token = uuid.uuid4().hex
    rcpts = ["nobody-home@b.test"]
    data = harness.make_message(token, rcpts=rcpts, lines=10)
    r, elapsed = _timed_submit(cluster.port(), rcpts, data)
    _assert_451(r, elapsed)

    cluster.start_node("sender-1")      # waits for the router's member_up
    r, _ = _timed_submit(cluster.port(), rcpts, data)
    assert r["data"][0] == 250, r
    (m,) = mx.wait_token(token)
    assert m.rcpt_tos == rcpts
    _no_more_copies(cluster, mx, r["queue_id"])


def test_sender_killed_means_451_not_loss(cluster, mx):
    """A sender gone silent (kill -9): until the router drops it, its domains
    get 451 (enqueue timeout), never a 250 for mail nobody stored."""
    for n in ("router-1", "sender-1", "ingress-1"):
        cluster.start_node(n)
    cluster.kill9("sender-1")
    token = uuid.uuid4().hex
    rcpts = ["orphan@c.test"]
    r, elapsed = _timed_submit(cluster.port(), rcpts, harness.make_message(token, rcpts=rcpts, lines=5))
    _assert_451(r, elapsed)
    assert mx.with_token(token) == []


def _no_more_copies(cluster, mx, qid):
    """The refused attempts must not be queued too (e.g. a request that
    waited in a socket queue until the router appeared). Such a request would
    travel ahead of the successful retry on the same sockets, so by the time
    the retry is queued at the sender, it would have been queued as well."""
    queued = cluster.find_events("queued", node="sender-1")
    assert [harness.mentions(e, qid) for e in queued] == [True], queued
