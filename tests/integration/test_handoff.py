"""Queue handoff when a domain's owner changes, with separate processes over
tcp:// (2 routers, senders with their own source addresses, 1 ingress).

- Scale-out: three senders queue mail for 40 domains while the MX hosts are
  down; a fourth sender joins under load. The old owners hand what they hold
  for the domains the fourth now owns over to it (through a router,
  committed there before removed here). Once every such recipient is queued
  at the new owner the MX hosts come up: every acknowledged recipient
  arrives exactly once, and each domain's mail comes only from the source
  address of its owner among four (the owner recomputed here).
- Drain: SIGUSR1 to one of two senders while the MX hosts are down: it hands
  its whole queue to the other and exits 0 before any delivery; everything
  then arrives once, from the other sender.
"""
import signal
import uuid

import pytest

import harness
from conftest import cluster_factory, dns_for_domains

N_DOMAINS = 40
N_MESSAGES = 240
N_THREADS = 4
DOMAINS = ["h%02d.test" % i for i in range(N_DOMAINS)]
SENDERS = {"sender-1": "127.0.0.2", "sender-2": "127.0.0.3", "sender-3": "127.0.0.4",
           "sender-4": "127.0.0.5"}
ROUTERS = ("router-1", "router-2")


@pytest.fixture(scope="module")
def dns_many(tmp_path_factory):
    """dnsmasq for the test domains, plus a.test, b.test, c.test."""
    yield from dns_for_domains(tmp_path_factory, "dns-handoff", DOMAINS)


@pytest.fixture
def cluster_of(tmp_path, dns_many, mx_port):
    yield from cluster_factory(tmp_path, dns_many, mx_port)


def _domain(rcpt):
    return rcpt.rsplit("@", 1)[1].lower()


def _arrivals(mx):
    """(Message-ID token, recipient) -> the peer addresses it arrived from."""
    out = {}
    for m in mx.messages():
        hit = harness.MSGID_RE.search(m.data)
        if not hit:
            continue
        tok = hit.group(1).decode().split("@", 1)[0]
        for r in m.rcpt_tos:
            out.setdefault((tok, r.lower()), []).append(m.peer)
    return out


def _queued(c, node, handed=None):
    """(message id, recipient) pairs NODE logged as queued; HANDED: only
    those handed over by that sender (None: only new ones, "*": all)."""
    out = set()
    for e in c.find_events("queued", node):
        src = e.get("handed_from")
        if handed != "*" and src != handed:
            continue
        for r in e.get("recipients", []):
            out.add((e["id"], r["rcpt"].lower()))
    return out


def _cluster(c, senders, **sender_kw):
    for r in ROUTERS:
        c.add_router(r, heartbeat_timeout="1s", enqueue_timeout="3s", resend_window="3s")
    for name in senders:
        c.add_sender(name, source_address=SENDERS[name], **sender_kw)
    c.add_ingress(submit_timeout="5s", max_sessions=100, max_sessions_per_ip=100)
    c.write_config()
    for r in ROUTERS:
        c.start_node(r)


def _messages():
    msgs = []
    for i in range(N_MESSAGES):
        rc = ["u%d@%s" % (i, DOMAINS[i % N_DOMAINS])]
        if i % 3 == 0:      # a second domain: a message split over owners
            rc.append("v%d@%s" % (i, DOMAINS[(i * 7 + 5) % N_DOMAINS]))
        msgs.append(("ho%04d-%s" % (i, uuid.uuid4().hex[:10]), rc))
    return msgs


def test_fourth_sender_joins_under_load(cluster_of, mx):
    c = cluster_of()
    _cluster(c, SENDERS)                    # sender-4 in the config, not running
    old = ["sender-1", "sender-2", "sender-3"]
    for s in old:
        c.start_node(s)
    c.start_node("ingress-1")
    mx.stop()

    load = harness.ClientLoad(c.port, _messages(), threads=N_THREADS, lines=2).start()
    harness.wait_until(lambda: load.done >= N_MESSAGES // 3, 120, "a third of the messages acked")
    c.start_node("sender-4")                # seen by both routers (member_up)
    load.join(180)
    acked = load.acked
    assert len(acked) == N_MESSAGES

    four = {s: 1 for s in SENDERS}
    owner = {d: harness.hrw_owner(d, four) for d in DOMAINS}
    assert "sender-4" in owner.values()

    # The handoff ends when every recipient an old sender queued for a
    # domain it no longer owns is queued, handed over by it, at the new
    # owner: sender-4 (a sender that joins takes domains only for itself).
    def handed_over():
        for s in old:
            foreign = {(i, r) for i, r in _queued(c, s) if owner[_domain(r)] != s}
            if not foreign <= _queued(c, "sender-4", handed=s):
                return False
        return True

    harness.wait_until(handed_over, 60, "the old owners' foreign recipients at sender-4",
                       interval=0.5)
    moved = _queued(c, "sender-4", handed="*") - _queued(c, "sender-4")
    assert moved, "nothing was handed over"
    for s in old:
        for e in c.find_events("handed_off", s):
            assert e["rcpts"] >= 1, e

    mx.start()
    want = {(tok, r.lower()) for tok, rc in acked.items() for r in rc}
    harness.wait_until(lambda: want <= set(_arrivals(mx)), 90,
                       "every acknowledged recipient at the MX hosts", interval=0.5)
    arr = _arrivals(mx)
    dups = {k: v for k, v in arr.items() if len(v) != 1}
    assert not dups, "arrived more than once: %r" % list(dups.items())[:10]
    assert set(arr) == want, sorted(set(arr) - want)[:10]
    wrong = {k: v for k, v in arr.items() if v[0] != SENDERS[owner[_domain(k[1])]]}
    assert not wrong, "not from the domain's owner: %r" % list(wrong.items())[:10]
    for s in old:
        # Every old sender ends its handoff and keeps serving.
        assert c.running(s)
        c.wait_event("handoff_complete", node=s, timeout=30)


def test_drain_hands_queue_over(cluster_of, mx):
    c = cluster_of()
    senders = ["sender-1", "sender-2"]
    _cluster(c, senders)
    for s in senders:
        c.start_node(s)
    c.start_node("ingress-1")
    mx.stop()

    msgs = _messages()[:80]
    load = harness.ClientLoad(c.port, msgs, threads=N_THREADS, lines=2).start()
    load.join(120)
    acked = load.acked
    assert len(acked) == len(msgs)
    drainer, other = senders
    held = _queued(c, drainer)
    assert held, "the drainer holds nothing to hand over"

    c.signal(drainer, signal.SIGUSR1)
    c.wait_event("sender_draining", node=drainer)
    p = c.proc_of(drainer)
    # With the MX hosts still down, its queue can only leave by handoff.
    harness.wait_until(lambda: not p.alive(), 30, "%s exited after handing its queue over"
                       % drainer, interval=0.1)
    assert p.returncode() == 0, p.tail()
    assert c.find_events("sender_drained", drainer), p.tail()
    assert not c.find_events("delivered", drainer)
    assert held <= _queued(c, other, handed=drainer)

    mx.start()
    want = {(tok, r.lower()) for tok, rc in acked.items() for r in rc}
    harness.wait_until(lambda: want <= set(_arrivals(mx)), 60,
                       "every acknowledged recipient at the MX hosts", interval=0.5)
    arr = _arrivals(mx)
    assert all(len(v) == 1 for v in arr.values()), [k for k, v in arr.items() if len(v) != 1]
    assert {v[0] for v in arr.values()} == {SENDERS[other]}
    for r in ROUTERS:
        assert c.running(r)
