"""Draining a sender (SIGUSR1), with separate processes over tcp://.

Two senders, one router, one ingress; the MX hosts are down at first, so
both senders hold a queue. SIGUSR1 to the sender that owns a chosen domain:
the router sees its heartbeats say draining (member_draining) and new mail
for that domain is queued by the other sender. The draining sender hands its
queue over to the other one (with the MX hosts still down, that is the only
way out), logs sender_drained and exits 0; once the MX hosts are up every
message arrives exactly once, from the other sender.
"""
import signal
import uuid

import harness

DOMAINS = harness.CLUSTER_DOMAINS   # d01.test .. d12.test, over the 3 MX hosts
SENDERS = ("sender-1", "sender-2")


def _queued_domains(c, sender):
    """Domains of the recipients SENDER has logged as queued."""
    out = set()
    for e in c.find_events("queued", sender):
        for r in e.get("recipients", []):
            out.add(r["rcpt"].split("@", 1)[1].lower())
    return out


def _queued_ids(c, sender):
    """Messages SENDER queued from an ingress (not handed over)."""
    return {e["id"] for e in c.find_events("queued", sender) if not e.get("handed_from")}


def test_drain_sender(make_cluster, mx):
    c = make_cluster()
    c.add_router("router-1", heartbeat_timeout="2s", enqueue_timeout="3s")
    c.add_sender("sender-1", source_address="127.0.0.2")
    c.add_sender("sender-2", source_address="127.0.0.3")
    c.add_ingress()
    c.write_config()
    c.start_node("router-1")
    for s in SENDERS:
        c.start_node(s)
    c.start_node("ingress-1")

    mx.stop()
    tokens = {}                 # token -> recipient
    for i, d in enumerate(DOMAINS):
        tok = "dr%02d-%s" % (i, uuid.uuid4().hex[:12])
        rcpt = "u%d@%s" % (i, d)
        r, _ = harness.submit_retrying(c.port(), "from@client.test", [rcpt],
                                       harness.make_message(tok, rcpts=[rcpt], lines=2))
        assert r["data"][0] == 250, r
        tokens[tok] = rcpt
    harness.wait_until(lambda: len(c.find_events("queued", "sender-1"))
                       + len(c.find_events("queued", "sender-2")) >= len(DOMAINS),
                       10, "every message queued")
    owned = {s: _queued_domains(c, s) for s in SENDERS}
    assert owned["sender-1"] and owned["sender-2"], owned
    assert not owned["sender-1"] & owned["sender-2"], owned

    drainer, other = SENDERS
    domain = sorted(owned[drainer])[0]
    held = len(owned[drainer])
    rmark = c.log_of("router-1").mark()
    c.signal(drainer, signal.SIGUSR1)
    ev = c.wait_event("sender_draining", node=drainer)
    assert ev["queue_depth"] == held, ev
    ev = c.wait_event("member_draining", node="router-1", since=rmark, member=drainer)
    assert ev["draining"] is True, ev

    # New mail for the draining sender's domain goes to the next owner.
    before = _queued_ids(c, other)
    tok = "dr-new-%s" % uuid.uuid4().hex[:12]
    rcpt = "late@%s" % domain
    r, _ = harness.submit_retrying(c.port(), "from@client.test", [rcpt],
                                   harness.make_message(tok, rcpts=[rcpt], lines=2))
    assert r["data"][0] == 250, r
    tokens[tok] = rcpt
    harness.wait_until(lambda: _queued_ids(c, other) - before, 10,
                       "the new message queued by %s" % other)
    (new,) = [e for e in c.find_events("queued", other)
              if e["id"] not in before and not e.get("handed_from")]
    assert [x["rcpt"] for x in new["recipients"]] == [rcpt], new
    assert not [e for e in c.find_events("queued", drainer) if e["id"] == new["id"]]

    # The MX hosts down: the draining sender hands its queue over and stops.
    p = c.proc_of(drainer)
    harness.wait_until(lambda: not p.alive(), 30, "%s exited after draining" % drainer,
                       interval=0.1)
    assert p.returncode() == 0, p.tail()
    assert c.find_events("sender_drained", drainer), p.tail()
    assert not c.find_events("delivered", drainer)
    handed = {e["id"] for e in c.find_events("queued", other) if e.get("handed_from") == drainer}
    assert handed == _queued_ids(c, drainer), (handed, _queued_ids(c, drainer))

    mx.start()
    for tok in tokens:
        mx.wait_token(tok, timeout=20)
    for tok, rcpt in tokens.items():
        got = mx.with_token(tok)
        assert len(got) == 1, "%s (%s) arrived %d times" % (tok, rcpt, len(got))
        assert got[0].rcpt_tos == [rcpt], got[0]
        assert got[0].peer == "127.0.0.3", got[0]
    assert c.running(other) and c.running("router-1")


def test_drain_all_mode(make_cluster, mx):
    """`hikyaku all`: SIGUSR1 drains the sender roles; with their queues
    empty the whole process stops cleanly (exit 0)."""
    c = make_cluster()
    c.add_router()
    c.add_sender()
    c.add_ingress()
    p = c.start_all()
    tok = uuid.uuid4().hex
    r, _ = harness.submit_retrying(c.port(), "from@client.test", ["x@a.test"],
                                   harness.make_message(tok, rcpts=["x@a.test"], lines=2))
    assert r["data"][0] == 250, r
    mx.wait_token(tok)
    c.signal("sender-1", signal.SIGUSR1)
    c.wait_event("member_draining", node="router-1", member="sender-1", draining=True)
    harness.wait_until(lambda: not p.alive(), 15, "hikyaku all exited after draining")
    assert p.returncode() == 0, p.tail()
    assert c.find_events("sender_drained", "sender-1")
    assert len(mx.with_token(tok)) == 1
