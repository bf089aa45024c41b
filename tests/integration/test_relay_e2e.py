"""End to end through `hikyaku all`: what a client submits is what each
destination's MX receives, envelope split by domain, body byte-identical
apart from the one Received header the ingress prepends."""
import re
import subprocess
import uuid

import pytest

import harness

FROM = "Sender.Name@client.test"
RCPTS = ["alice@a.test", "bob@a.test", "carol@b.test", "dave@c.test", "erin@c.test"]


@pytest.fixture
def cluster(make_cluster, mx):
    c = make_cluster()
    c.add_router()
    c.add_sender()
    c.add_ingress()
    c.start_all()
    return c


def _check_delivery(m, token, sent, mail_from, mx_addr, qid):
    assert m.mx == mx_addr
    assert m.mail_from == mail_from
    received, rest = harness.strip_received(m.data)
    assert received, "no Received header first in %r" % m.data[:200]
    # RFC 5321 4.4: names the receiving host; the queue id traces the message.
    assert b"by relay.hikyaku.test" in received, received
    assert b"id " + qid.encode() in received, received
    assert rest == sent, "body differs from what was submitted (token %s)" % token


def test_three_domains_envelope_and_body_intact(cluster, mx):
    token = uuid.uuid4().hex
    data = harness.make_message(token, sender=FROM, rcpts=RCPTS)
    r = harness.submit(cluster.port(), FROM, RCPTS, data)
    assert r["greeting"] == (220, b"relay.hikyaku.test ESMTP Hikyaku")
    assert all(code == 250 for code, _ in r["rcpt"]), r["rcpt"]
    assert r["data"][0] == 250 and r["queue_id"], r["data"]
    qid = r["queue_id"]

    by_domain = {"a.test": RCPTS[0:2], "b.test": RCPTS[2:3], "c.test": RCPTS[3:5]}
    for dom, rcpts in by_domain.items():
        server = mx.for_domain(dom)
        got = server.wait_for(
            lambda ms: sorted(x for m in ms if token.encode() in m.data for x in m.rcpt_tos) == sorted(rcpts)
            and [m for m in ms if token.encode() in m.data], timeout=15,
            what="%s's recipients %s" % (dom, rcpts))
        # A domain's recipients may come in one transaction or several; each
        # transaction carries only that domain's recipients.
        for m in got:
            _check_delivery(m, token, data, FROM, harness.DOMAIN_MX[dom], qid)
            assert set(m.rcpt_tos) <= set(rcpts)
    # Exactly one copy per recipient, nowhere else.
    delivered = sorted(x for m in mx.with_token(token) for x in m.rcpt_tos)
    assert delivered == sorted(RCPTS)
    for rc in RCPTS:
        cluster.wait_event("delivered", node="sender-1", pred=lambda e, rc=rc: harness.mentions(e, qid)
                           and harness.mentions(e, rc))
    assert len(cluster.find_events("queued", node="sender-1", pred=lambda e: harness.mentions(e, qid))) == 1


def test_mixed_case_recipient_domains_and_queue_ids_unique(cluster, mx):
    ids = set()
    tokens = []
    for i in range(3):
        token = uuid.uuid4().hex
        tokens.append(token)
        rcpt = ["Upper%d@A.TEST" % i, "mixed%d@b.Test" % i]
        r = harness.submit(cluster.port(), FROM, rcpt, harness.make_message(token, rcpts=rcpt, lines=20))
        assert r["data"][0] == 250, r
        ids.add(r["queue_id"])
    assert len(ids) == 3 and None not in ids
    for i, token in enumerate(tokens):
        got = mx.wait_token(token, count=2)
        dests = sorted((m.mx, tuple(m.rcpt_tos)) for m in got)
        # Local parts are case-sensitive and travel unchanged; the domain may
        # be sent in its canonical (lower-case) form.
        want = [("127.0.0.10", "Upper%d@A.TEST" % i), ("127.0.0.11", "mixed%d@b.Test" % i)]
        assert [(a, len(r)) for a, r in dests] == [(a, 1) for a, _ in want], dests
        for (_, (got_rcpt,)), (_, w) in zip(dests, want):
            lp, dom = got_rcpt.rsplit("@", 1)
            wlp, wdom = w.rsplit("@", 1)
            assert lp == wlp and dom.lower() == wdom.lower(), (got_rcpt, w)


def test_swaks_message_delivered(cluster, mx):
    token = uuid.uuid4().hex
    out = subprocess.run(
        ["swaks", "--server", "127.0.0.1:%d" % cluster.port(), "--from", "swaks@client.test",
         "--to", "zed@b.test", "--helo", "swaks.client.test",
         "--header", "Subject: swaks %s" % token, "--body", "swaks body %s" % token],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^<-  250 2\.0\.0 Ok: queued as [0-9A-HJKMNP-TV-Z]{26}$", out.stdout, re.M), out.stdout
    (m,) = mx.wait_token(token)
    assert (m.mx, m.mail_from, m.rcpt_tos) == ("127.0.0.11", "swaks@client.test", ["zed@b.test"])
    received, rest = harness.strip_received(m.data)
    assert received and b"swaks body %s\r\n" % token.encode() in rest
    assert b"Subject: swaks %s\r\n" % token.encode() in rest


def test_null_sender_and_smtp_sink_mx(make_cluster, mx, tmp_path, mx_port):
    """Bounce-style <> sender, delivered to a Postfix smtp-sink MX."""
    sink = harness.SmtpSink(harness.ProcessGroup(), str(tmp_path), port=mx_port)
    try:
        sink.start()
        c = make_cluster()
        c.add_router()
        c.add_sender()
        c.add_ingress()
        c.start_all()
        r = harness.submit(c.port(), "", ["postmaster@sink.test", "x@sink.test"],
                           harness.make_message(uuid.uuid4().hex, lines=50))
        assert r["data"][0] == 250, r
        qid = r["queue_id"]
        for rc in ("postmaster@sink.test", "x@sink.test"):
            c.wait_event("delivered", node="sender-1", timeout=15,
                         pred=lambda e, rc=rc: harness.mentions(e, qid) and harness.mentions(e, rc))
        assert 1 <= sink.count() <= 2       # one transaction, or one per recipient
    finally:
        sink.group.close()


def test_sigterm_stops_cleanly(cluster, mx):
    token = uuid.uuid4().hex
    r = harness.submit(cluster.port(), FROM, ["last@c.test"], harness.make_message(token, lines=5))
    assert r["data"][0] == 250
    mx.wait_token(token)
    code, killed = cluster.stop("all", timeout=10)
    assert (code, killed) == (0, False), "hikyaku all did not exit 0 on SIGTERM"
