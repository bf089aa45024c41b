"""Failover and backpressure at the router, with separate processes over tcp://.

- A sender killed with SIGKILL under load (3 senders, 1 router, 1 ingress,
  300 messages to 60 domains from several client threads): every message
  that got 250 reaches the MX hosts (by Message-ID and recipient); what the
  dead sender had queued arrives once it is restarted. 4xx are allowed and
  retried by the client.
- A sender hung (SIGSTOP) with enqueues in flight: once the router declares
  it dead, those parts are resent to the other senders and the clients get
  250 within submit_timeout; after SIGCONT its late acks change nothing.
- Backpressure: with max_inflight_per_sender: 1 and max_pending: 2 and the
  senders hung, concurrent clients get 451 4.3.2 at once, and once the
  senders run again new mail gets 250.
"""
import signal
import threading
import time
import uuid

import pytest

import harness
from conftest import cluster_factory, dns_for_domains

N_DOMAINS = 60
N_MESSAGES = 300
N_THREADS = 6
DOMAINS = ["f%02d.test" % i for i in range(N_DOMAINS)]
SENDERS = {"sender-1": "127.0.0.2", "sender-2": "127.0.0.3", "sender-3": "127.0.0.4"}


@pytest.fixture(scope="module")
def dns_many(tmp_path_factory):
    """dnsmasq for the test domains, plus a.test, b.test, c.test."""
    yield from dns_for_domains(tmp_path_factory, "dns-failover", DOMAINS)


@pytest.fixture
def cluster_of(tmp_path, dns_many, mx_port):
    yield from cluster_factory(tmp_path, dns_many, mx_port)


_arrivals = harness.arrivals_by_message_id


_code = harness.reply_of


def _start(c, debug_router=True):
    c._start("router-1", ["router", "--config", c.config_path, "--node", "router-1",
                          "--log-level", "debug" if debug_router else "info"])
    c.wait_event("router_listening", node="router-1")
    for s in c.names("sender"):
        c.start_node(s)
    c.start_node("ingress-1")


def test_sender_killed_under_load(cluster_of, mx):
    c = cluster_of()
    c.add_router("router-1", heartbeat_timeout="1s", enqueue_timeout="2s", resend_window="2500ms")
    for name, addr in SENDERS.items():
        c.add_sender(name, source_address=addr)
    c.add_ingress(submit_timeout="3s", max_sessions=100, max_sessions_per_ip=100)
    c.write_config()
    _start(c)

    msgs = []
    for i in range(N_MESSAGES):
        rc = ["u%d@%s" % (i, DOMAINS[i % N_DOMAINS])]
        if i % 4 == 0:
            rc.append("v%d@%s" % (i, DOMAINS[(i * 7 + 3) % N_DOMAINS]))
        msgs.append(("k%04d-%s" % (i, uuid.uuid4().hex[:12]), rc))

    load = harness.ClientLoad(c.port, msgs, threads=N_THREADS).start()
    harness.wait_until(lambda: load.done >= N_MESSAGES // 3, 120, "a third of the messages acked")
    c.kill9("sender-2")
    load.join(180)
    acked, replies = load.acked, load.replies
    assert not load.failed, "never accepted within 60 s: %r" % list(load.failed.items())[:5]
    assert len(acked) == N_MESSAGES

    # What sender-2 queued before it died is in its LMDB: restart it (once
    # the router has noticed it is gone, so that it comes back as member_up).
    c.wait_event("member_down", node="router-1", member="sender-2", timeout=10)
    c.start_node("sender-2")
    want = {(tok, r.lower()) for tok, rc in acked.items() for r in rc}
    try:
        harness.wait_until(lambda: want <= set(_arrivals(mx)), 120,
                           "every acknowledged recipient at the MX hosts", interval=0.5)
    except harness.Timeout:
        pass
    arr = _arrivals(mx)
    missing = want - set(arr)
    assert not missing, "acknowledged but not delivered: %r" % sorted(missing)[:10]
    resent = c.find_events("submit_resent", "router-1")
    n451 = replies.get(451, 0)
    dups = sum(1 for k, n in arr.items() if n > 1 and k in want)
    print("sender killed: replies %r, 451s %d, resent %d, duplicate (msg, rcpt) %d"
          % (replies, n451, len(resent), dups))


def test_hung_sender_parts_resent(cluster_of, mx):
    c = cluster_of()
    # The hung sender is declared dead after 1 s, well before the enqueue
    # timeout: its parts are resent on member_down.
    c.add_router("router-1", heartbeat_timeout="1s", enqueue_timeout="10s", resend_window="4s")
    for name, addr in SENDERS.items():
        c.add_sender(name, source_address=addr)
    c.add_ingress(submit_timeout="5s", max_sessions=100, max_sessions_per_ip=100)
    c.write_config()
    _start(c)
    r = harness.submit(c.port(), "from@client.test", ["warm@f00.test"],
                       harness.make_message(uuid.uuid4().hex, rcpts=["warm@f00.test"], lines=1))
    assert r["data"][0] == 250, r

    msgs = [("h%02d-%s" % (i, uuid.uuid4().hex[:12]), ["u%d@%s" % (i, DOMAINS[i])])
            for i in range(30)]
    results = {}

    def one(tok, rc):
        t0 = time.monotonic()
        r = harness.submit(c.port(), "from@client.test", rc,
                           harness.make_message(tok, rcpts=rc, lines=2), timeout=20)
        results[tok] = (_code(r), time.monotonic() - t0)

    c.signal("sender-2", signal.SIGSTOP)
    try:
        threads = [threading.Thread(target=one, args=m, daemon=True) for m in msgs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        c.signal("sender-2", signal.SIGCONT)
    print("hung sender: %r" % sorted((k, v) for k, v in results.items()))
    assert len(results) == len(msgs)
    bad = {k: v for k, v in results.items() if v[0][0] != 250}
    assert not bad, bad
    assert all(v[1] < 5.0 for v in results.values()), results
    resent = c.find_events("submit_resent", "router-1")
    assert resent, "no part was resent (did sender-2 own none of the domains?)"
    c.wait_event("member_down", node="router-1", member="sender-2")

    # After SIGCONT sender-2 commits and acks its stale parts late: ignored.
    harness.wait_until(lambda: len(c.find_events("member_up", "router-1", member="sender-2")) >= 2,
                       10, "sender-2 up again at the router")
    # Its stale enqueues are answered once it runs again, and ignored.
    c.wait_event("late_reply", node="router-1", member="sender-2", timeout=10)
    want = {(tok, r.lower()) for tok, rc in msgs for r in rc}
    harness.wait_until(lambda: want <= set(_arrivals(mx)), 60,
                       "every acknowledged recipient at the MX hosts", interval=0.5)
    assert c.running("router-1")
    for i in range(5):
        rc = ["after%d@%s" % (i, DOMAINS[i])]
        r, _ = harness.submit_retrying(c.port(), "from@client.test", rc,
                                       harness.make_message(uuid.uuid4().hex, rcpts=rc, lines=1))
        assert r["data"][0] == 250, r


def test_backpressure_busy(cluster_of, mx):
    c = cluster_of()
    # Long timeouts: the hung senders stay members and their enqueues stay
    # in flight, holding both caps.
    c.add_router("router-1", heartbeat_timeout="30s", enqueue_timeout="20s",
                 max_inflight_per_sender=1, max_pending=2)
    c.add_sender("sender-1", source_address="127.0.0.2")
    c.add_sender("sender-2", source_address="127.0.0.3")
    c.add_ingress(submit_timeout="3s", max_sessions=100, max_sessions_per_ip=100)
    c.write_config()
    _start(c)

    c.signal("sender-1", signal.SIGSTOP)
    c.signal("sender-2", signal.SIGSTOP)
    results = []
    lock = threading.Lock()

    def one(i):
        rc = ["u%d@%s" % (i, DOMAINS[i % N_DOMAINS])]
        t0 = time.monotonic()
        r = harness.submit(c.port(), "from@client.test", rc,
                           harness.make_message(uuid.uuid4().hex, rcpts=rc, lines=1), timeout=20)
        with lock:
            results.append((_code(r), time.monotonic() - t0))

    try:
        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        c.signal("sender-1", signal.SIGCONT)
        c.signal("sender-2", signal.SIGCONT)
    print("backpressure: %r" % results)
    busy = [(code, el) for code, el in results if code[0] == 451 and code[1].startswith("4.3.2")]
    assert len(results) == 12
    # At most one submission in flight per sender; everything else is busy.
    assert len(busy) >= 10, results
    assert all(el < 1.5 for _, el in busy), busy
    assert all(code[1] == "4.3.2 System busy, try again later" for code, _ in busy), busy
    others = [x for x in results if x not in busy]
    assert all(code[0] in (250, 451) for code, _ in others), others
    reasons = [e.get("reason", "") for e in c.find_events("submit_nacked", "router-1")]
    assert any("max_inflight_per_sender" in x for x in reasons) or \
        any("max_pending" in x for x in reasons), reasons

    # The node keeps serving: new mail gets 250 once the senders run.
    for i in range(4):
        rc = ["after%d@%s" % (i, DOMAINS[i])]
        deadline = time.monotonic() + 15
        while True:
            r = harness.submit(c.port(), "from@client.test", rc,
                               harness.make_message(uuid.uuid4().hex, rcpts=rc, lines=1))
            if r["data"][0] == 250 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert r["data"][0] == 250, r


def test_max_pending_busy(cluster_of, mx):
    """max_pending alone: one hung sender, a high per-sender cap; the third
    concurrent submission is busy."""
    c = cluster_of()
    c.add_router("router-1", heartbeat_timeout="30s", enqueue_timeout="20s",
                 max_inflight_per_sender=100, max_pending=2)
    c.add_sender("sender-1", source_address="127.0.0.2")
    c.add_ingress(submit_timeout="3s", max_sessions=100, max_sessions_per_ip=100)
    c.write_config()
    _start(c)
    c.signal("sender-1", signal.SIGSTOP)
    results = []
    try:
        threads = []
        for i in range(6):
            rc = ["p%d@%s" % (i, DOMAINS[i])]

            def one(rc=rc):
                t0 = time.monotonic()
                r = harness.submit(c.port(), "from@client.test", rc,
                                   harness.make_message(uuid.uuid4().hex, rcpts=rc, lines=1))
                results.append((_code(r), time.monotonic() - t0))
            threads.append(threading.Thread(target=one, daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        c.signal("sender-1", signal.SIGCONT)
    busy = [x for x in results if x[0][1].startswith("4.3.2")]
    assert len(busy) >= 4 and all(el < 1.5 for _, el in busy), results
    reasons = [e.get("reason", "") for e in c.find_events("submit_nacked", "router-1")]
    assert any("max_pending" in x for x in reasons), reasons
