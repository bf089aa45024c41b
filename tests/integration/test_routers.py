"""Several routers, and hot domains, with separate processes over tcp://.

- Two routers, three senders, one ingress connected to both routers. Client
  threads send 1,000 messages to 200 domains while one router is killed with
  SIGKILL. Every message that got 250 must reach the MX hosts (counted by
  Message-ID and recipient); a message refused with 4xx is retried by its
  client, as an MTA would, and must arrive too. Duplicates are allowed only
  for messages that were retried after a 4xx (at-least-once).
- A hot domain (hot_domains: {a.test: 3}) with three senders: its recipients
  are queued and delivered by all three.
"""
import time
import uuid

import pytest

import harness
from conftest import cluster_factory, dns_for_domains

N_DOMAINS = 200
N_MESSAGES = 1000
N_THREADS = 8
DOMAINS = ["h%03d.test" % i for i in range(N_DOMAINS)]


@pytest.fixture(scope="module")
def dns_many(tmp_path_factory):
    """dnsmasq for the test domains, plus a.test, b.test, c.test."""
    yield from dns_for_domains(tmp_path_factory, "dns-many", DOMAINS)


@pytest.fixture
def cluster_of(tmp_path, dns_many, mx_port):
    yield from cluster_factory(tmp_path, dns_many, mx_port)


_arrivals = harness.arrivals_by_message_id


def test_router_killed_mid_stream(cluster_of, mx):
    c = cluster_of()
    c.add_router("router-1")
    c.add_router("router-2")
    for i, addr in enumerate(("127.0.0.2", "127.0.0.3", "127.0.0.4")):
        c.add_sender("sender-%d" % (i + 1), source_address=addr)
    c.add_ingress(submit_timeout="3s", max_sessions=200, max_sessions_per_ip=200)
    c.write_config()
    # Routers at debug level: their submit_acked lines show who carried what.
    for r in ("router-1", "router-2"):
        c._start(r, ["router", "--config", c.config_path, "--node", r, "--log-level", "debug"])
        c.wait_event("router_listening", node=r)
    for s in c.names("sender"):
        c.start_node(s)
    c.start_node("ingress-1")
    # The ingress is connected to both routers once each has answered a submit.
    for _ in range(6):
        t = uuid.uuid4().hex
        r, _ = harness.submit_retrying(c.port(), "from@client.test", ["warm@a.test"],
                                       harness.make_message(t, rcpts=["warm@a.test"], lines=1))
        assert r["data"][0] == 250, r

    # Messages: token -> recipients; every 5th has two domains (two owners).
    msgs = []
    for i in range(N_MESSAGES):
        rc = ["u%d@%s" % (i, DOMAINS[i % N_DOMAINS])]
        if i % 5 == 0:
            rc.append("v%d@%s" % (i, DOMAINS[(i * 7 + 3) % N_DOMAINS]))
        msgs.append(("m%04d-%s" % (i, uuid.uuid4().hex[:12]), rc))

    kill_at = N_MESSAGES // 3
    t0 = time.monotonic()
    load = harness.ClientLoad(c.port, msgs, threads=N_THREADS).start()
    harness.wait_until(lambda: load.done >= kill_at, 120, "%d messages acked" % kill_at)
    c.kill9("router-1")
    acked_by_r1 = len(c.find_events("submit_acked", "router-1"))
    load.join(180)
    elapsed = time.monotonic() - t0
    acked, retried, failed, replies = load.acked, load.retried, load.failed, load.replies

    assert not failed, "never accepted within 60 s: %r" % list(failed.items())[:5]
    assert len(acked) == N_MESSAGES

    want = {(tok, r.lower()) for tok, rc in acked.items() for r in rc}
    try:
        harness.wait_until(lambda: want <= set(_arrivals(mx)), 120,
                           "every acknowledged recipient at the MX hosts", interval=0.5)
    except harness.Timeout:
        pass    # reported below, with what is missing
    arr = _arrivals(mx)
    missing = want - set(arr)
    assert not missing, "acknowledged but not delivered: %r" % sorted(missing)[:10]
    dups = {k: n for k, n in arr.items() if n > 1 and k in want}
    bad_dups = {k: n for k, n in dups.items() if k[0] not in retried}
    assert not bad_dups, "duplicates of messages never retried: %r" % sorted(bad_dups)[:10]

    # The ingress must stop sending to the dead router quickly: count the
    # submissions that timed out after the kill.
    ing = c.log_of("ingress-1")
    acked_by_r2 = len(c.find_events("submit_acked", "router-2"))
    print("router-1 acked %d before its kill, router-2 %d in all" % (acked_by_r1, acked_by_r2))
    assert acked_by_r1 >= kill_at // 4, "router-1 carried too little to matter"
    print("routers test: %d messages, %.1f s, replies %r, retried %d, duplicate (msg, rcpt) %d"
          % (N_MESSAGES, elapsed, replies, len(retried), len(dups)))
    timed_out = ing.find("rejected", pred=lambda e: "timed out" in e.get("reason", ""))
    print("ingress: %d submissions timed out, %d other 451s" % (
        len(timed_out), len(ing.find("rejected", pred=lambda e: "timed out" not in e.get("reason", "")))))
    # After the kill, submissions must not keep going to the dead router for
    # long: at most a few seconds' worth of 4xx.
    assert replies.get(451, 0) + replies.get(0, 0) <= 200, replies


def test_hot_domain_spread_over_three_senders(cluster_of, mx):
    c = cluster_of()
    c.hot_domains = {"a.test": 3}
    c.add_router("router-1")
    addrs = {"sender-1": "127.0.0.2", "sender-2": "127.0.0.3", "sender-3": "127.0.0.4"}
    for name, addr in addrs.items():
        c.add_sender(name, source_address=addr)
    c.add_ingress()
    c.write_config()
    c.start_node("router-1")
    for s in addrs:
        c.start_node(s)
    c.start_node("ingress-1")

    token = uuid.uuid4().hex
    rcpts = ["user%03d@a.test" % i for i in range(300)]
    for k in range(3):      # max_recipients is 100 per message
        part = rcpts[k * 100:(k + 1) * 100]
        r = harness.submit(c.port(), "from@client.test", part,
                           harness.make_message(token, rcpts=part[:3], lines=3))
        assert r["data"][0] == 250, r

    queued = {}
    for s in addrs:
        for e in c.find_events("queued", s):
            queued[s] = queued.get(s, 0) + e["rcpts"]
    assert sum(queued.values()) == 300, queued
    assert set(queued) == set(addrs), "a.test queued by %r only" % queued
    for s, n in queued.items():
        assert 50 <= n <= 150, queued

    harness.wait_until(lambda: sum(len(m.rcpt_tos) for m in mx.with_token(token)) >= 300, 30,
                       "300 recipients of a.test at its MX")
    by_sender = {}
    for m in mx.with_token(token):
        by_sender[m.helo] = by_sender.get(m.helo, 0) + len(m.rcpt_tos)
    assert by_sender == {"%s.hikyaku.test" % s: n for s, n in queued.items()}, (by_sender, queued)
    # The MX records a transaction before its 250 reaches the sender.
    for s in addrs:
        harness.wait_until(lambda: len(c.find_events("delivered", s)) >= queued[s], 10,
                           "%d delivered events from %s" % (queued[s], s))
        assert len(c.find_events("delivered", s)) == queued[s]

    # Submitted again, every recipient goes to the same sender as before.
    t2 = uuid.uuid4().hex
    r = harness.submit(c.port(), "from@client.test", rcpts[:100],
                       harness.make_message(t2, rcpts=rcpts[:3], lines=3))
    assert r["data"][0] == 250, r
    first = {}
    for s in addrs:
        for e in c.find_events("queued", s):
            if e["id"] and e.get("recipients"):
                for x in e["recipients"]:
                    first.setdefault(x["rcpt"], set()).add(s)
    assert all(len(v) == 1 for v in first.values()), \
        [k for k, v in first.items() if len(v) > 1][:5]


def test_hung_router_is_avoided(cluster_of, mx):
    """A router that hangs (SIGSTOP) keeps its TCP connection, so plain
    DEALER round-robin would give it every other submission, each answered
    451 only after submit_timeout. The ingress makes a router that timed out
    suspect and prefers the others: one 451, then all 250; once the router
    answers again it gets traffic again."""
    import signal
    c = cluster_of()
    c.add_router("router-1")
    c.add_router("router-2")
    c.add_sender("sender-1", source_address="127.0.0.2")
    c.add_ingress(submit_timeout="1s")
    c.write_config()
    c.start_node("router-1")
    c.start_node("router-2")
    c.start_node("sender-1")
    c.start_node("ingress-1")
    for _ in range(4):
        r, _ = harness.submit_retrying(c.port(), "f@client.test", ["w@a.test"],
                                       harness.make_message(uuid.uuid4().hex, lines=1))
        assert r["data"][0] == 250
    c.signal("router-1", signal.SIGSTOP)
    try:
        codes = []
        for i in range(10):
            r = harness.submit(c.port(), "f@client.test", ["x%d@a.test" % i],
                               harness.make_message(uuid.uuid4().hex, lines=1))
            codes.append(r["data"][0])
    finally:
        c.signal("router-1", signal.SIGCONT)
    print("hung router: replies to 10 sequential submissions: %r" % codes)
    assert codes.count(451) <= 1 and codes.count(250) >= 9, codes
    c.wait_event("router_suspect", node="ingress-1", router="router-1")
    # SIGCONT: router-1 answers its stale request late (or not), and is used
    # again after the suspect period or its first answer; all still 250.
    for i in range(4):
        r, _ = harness.submit_retrying(c.port(), "f@client.test", ["y%d@a.test" % i],
                                       harness.make_message(uuid.uuid4().hex, lines=1))
        assert r["data"][0] == 250, r
