"""The delivery engine against scripted MX hosts: what each kind of reply,
failure and DNS answer becomes (the delivered/deferred/bounced/expired
events, with the reply's classification), that a deferral is retried, and
that a retried message arrives exactly once (counted by Message-ID).

Every wait polls the cluster's log events or the MX hosts' records with a
timeout; nothing sleeps to synchronise."""
import uuid

import pytest

import harness
from conftest import cluster_factory

MX_A = "127.0.0.10"             # a.test
MX_B = "127.0.0.11"             # b.test
MX_C = "127.0.0.12"             # c.test
MX_PLAIN = "127.0.0.14"         # plain.test: no MX, its own A record
MX_GOOGLE = "127.0.0.15"        # gm.test: MX gmail-smtp-in.l.google.com
GOOGLE_MX = "gmail-smtp-in.l.google.com"
ADDRS = [MX_A, MX_B, MX_C, MX_PLAIN, MX_GOOGLE]

GMAIL_421 = ("421-4.7.28 [127.0.0.1      15] Our system has detected an unusual rate of\r\n"
             "421-4.7.28 unsolicited mail originating from your IP address. To protect our\r\n"
             "421-4.7.28 users from spam, mail sent from your IP address has been temporarily\r\n"
             "421-4.7.28 rate limited. Please visit\r\n"
             "421 4.7.28  https://support.google.com/mail/?p=UnsolicitedRateLimitError x1si - gsmtp")
# The same as the sender keeps it: one line, the line prefixes dropped.
GMAIL_421_JOINED = "421 " + " ".join(l[4:] for l in GMAIL_421.split("\r\n"))


@pytest.fixture(scope="module")
def delivery_port():
    return harness.free_port(tuple(ADDRS) + ("127.0.0.1",))


@pytest.fixture(scope="module")
def servfail():
    stub = harness.ServfailStub().start()
    try:
        yield stub
    finally:
        stub.stop()


@pytest.fixture(scope="module")
def dns(tmp_path_factory, servfail):
    """dnsmasq with the usual a/b/c.test, and: nullmx.test (RFC 7505 null
    MX), plain.test (no MX, an A record), gm.test (MX under google.com),
    *.servfail.test (SERVFAIL)."""
    group = harness.ProcessGroup()
    d = harness.DnsServer(group, str(tmp_path_factory.mktemp("dns-delivery")), extra_args=[
        "--mx-host=nullmx.test,.,0",
        "--host-record=plain.test,%s" % MX_PLAIN,
        "--local=/google.com/",
        "--mx-host=gm.test,%s,10" % GOOGLE_MX,
        "--host-record=%s,%s" % (GOOGLE_MX, MX_GOOGLE),
        "--server=/servfail.test/127.0.0.1#%d" % servfail.port,
    ])
    try:
        d.start()
        yield d
    finally:
        group.close()


@pytest.fixture
def mx(delivery_port):
    pool = harness.MxPool(delivery_port, addrs=ADDRS)
    try:
        yield pool.start()
    finally:
        pool.stop()


@pytest.fixture
def make_cluster(tmp_path, dns, delivery_port):
    yield from cluster_factory(tmp_path, dns, delivery_port)


@pytest.fixture
def cluster(make_cluster):
    """start(**sender settings) -> a running `hikyaku all` cluster."""
    def start(**sender):
        c = make_cluster()
        c.add_router()
        c.add_sender(**sender)
        c.add_ingress()
        c.start_all()
        return c
    return start


def send(c, rcpts, token=None, lines=20, mail_from="from@client.test"):
    """Submit one message to RCPTS; returns (queue id, Message-ID token).
    Tests of bounces send from <>, so that no DSN is queued (its delivery is
    tested elsewhere, tests/integration/test_dsn.py)."""
    token = token or uuid.uuid4().hex
    r = harness.submit(c.port(), mail_from, rcpts,
                       harness.make_message(token, rcpts=rcpts, lines=lines))
    assert r["data"] and r["data"][0] == 250, r
    return r["queue_id"], token


def wait_ev(c, event, qid, rcpt, timeout=15, **fields):
    return c.wait_event(event, node="sender-1", timeout=timeout,
                        pred=lambda e: e.get("id") == qid and e.get("rcpt") == rcpt, **fields)


def events(c, event, qid, rcpt):
    return c.find_events(event, node="sender-1",
                         pred=lambda e: e.get("id") == qid and e.get("rcpt") == rcpt)


def arrivals(mx, token):
    return {r: n for (t, r), n in harness.arrivals_by_message_id(mx).items() if t == token}


def test_delivered_event_fields(cluster, mx):
    c = cluster()
    rcpt = "ok@a.test"
    qid, token = send(c, [rcpt])
    ev = wait_ev(c, "delivered", qid, rcpt)
    want = {"id": qid, "tenant": "default", "rcpt": rcpt, "domain": "a.test",
            "mx": "mx.a.test", "mx_addr": MX_A, "attempts": 1,
            "reply": harness.ScriptedMx.DATA_OK, "status": "2.0.0", "reason": "none",
            "throttled": False, "provider": ""}
    assert {k: ev.get(k) for k in want} == want, ev
    assert "next_attempt_ms" not in ev
    (m,) = mx[MX_A].wait_for(lambda ms: [m for m in ms if token.encode() in m.data])
    # The source address of the session, as the MX saw it.
    assert ev["source"] == m.peer, (ev, m.peer)
    assert arrivals(mx, token) == {rcpt: 1}


def test_421_then_250(cluster, mx):
    c = cluster(retry_min="1s", retry_max="2s")
    rcpt = "later@b.test"
    mx[MX_B].script_rcpt(rcpt, "421 4.7.0 Try again later, closing connection")
    qid, token = send(c, [rcpt])
    d = wait_ev(c, "deferred", qid, rcpt)
    assert (d["attempts"], d["reply"], d["status"], d["reason"], d["throttled"]) == (
        1, "421 4.7.0 Try again later, closing connection", "4.7.0", "throttle", True), d
    assert d["next_attempt_ms"] > 0
    ev = wait_ev(c, "delivered", qid, rcpt)
    assert (ev["attempts"], ev["status"], ev["reason"]) == (2, "2.0.0", "none"), ev
    assert arrivals(mx, token) == {rcpt: 1}
    assert [r for a, r, *_ in mx[MX_B].rcpt_attempts if a == rcpt] == [
        "421 4.7.0 Try again later, closing connection", harness.ScriptedMx.RCPT_OK]


def test_450_for_one_recipient_of_two(cluster, mx):
    c = cluster()
    ok, busy = "first@b.test", "second@b.test"
    mx[MX_B].script_rcpt(busy, "450 4.2.1 Mailbox busy, try again")
    qid, token = send(c, [ok, busy])
    first = wait_ev(c, "delivered", qid, ok)
    d = wait_ev(c, "deferred", qid, busy)
    assert first["attempts"] == 1 and d["attempts"] == 1
    assert (d["status"], d["reason"], d["throttled"]) == ("4.2.1", "mailbox", False), d
    second = wait_ev(c, "delivered", qid, busy)
    assert second["attempts"] == 2
    assert events(c, "deferred", qid, ok) == []
    # Two transactions, one recipient each: each arrives once.
    got = sorted(m.rcpt_tos for m in mx.with_token(token))
    assert got == [[ok], [busy]], got
    assert arrivals(mx, token) == {ok: 1, busy: 1}


def test_550_user_unknown_bounces(cluster, mx):
    c = cluster()
    gone = "gone@c.test"
    mx[MX_C].script_rcpt(gone, "550 5.1.1 <gone@c.test>: Recipient address rejected: "
                               "User unknown in local recipient table")
    qid, token = send(c, [gone], mail_from="")
    b = wait_ev(c, "bounced", qid, gone)
    assert (b["attempts"], b["status"], b["reason"], b["throttled"], b["mx"]) == (
        1, "5.1.1", "mailbox", False, "mx.c.test"), b
    assert b["reply"].startswith("550 5.1.1 <gone@c.test>"), b
    assert events(c, "deferred", qid, gone) == []
    assert mx.with_token(token) == []


def test_mixed_replies_in_one_transaction(cluster, mx):
    c = cluster()
    ok, tmp, perm, full = ("ok@c.test", "tmp@c.test", "perm@c.test", "full@c.test")
    m = mx[MX_C]
    m.script_rcpt(tmp, "451 4.3.0 Temporary lookup failure")
    m.script_rcpt(perm, "550 5.1.1 No such user")
    m.script_rcpt(full, "452-4.2.2 The email account that you tried to reach is over quota.\r\n"
                        "452 4.2.2 Please direct the recipient to the help page. - gsmtp")
    qid, token = send(c, [ok, tmp, perm, full], mail_from="")
    got = {r: wait_ev(c, ev, qid, r) for r, ev in
           ((ok, "delivered"), (tmp, "deferred"), (perm, "bounced"), (full, "deferred"))}
    # One session: every first outcome is attempt 1, and the one message
    # the MX accepted carried only the recipient it took.
    assert {r: e["attempts"] for r, e in got.items()} == {ok: 1, tmp: 1, perm: 1, full: 1}
    first = m.wait_for(lambda ms: [x for x in ms if token.encode() in x.data])[0]
    assert first.rcpt_tos == [ok]
    assert {r: (e["status"], e["reason"], e["throttled"]) for r, e in got.items()} == {
        ok: ("2.0.0", "none", False), tmp: ("4.3.0", "other", False),
        perm: ("5.1.1", "mailbox", False), full: ("4.2.2", "quota", False)}
    assert got[full]["reply"].startswith("452 4.2.2 The email account"), got[full]
    # The two deferred ones are retried together; the bounce is not.
    for r in (tmp, full):
        assert wait_ev(c, "delivered", qid, r)["attempts"] == 2
    assert arrivals(mx, token) == {ok: 1, tmp: 1, full: 1}
    assert [a for a, *_ in m.rcpt_attempts].count(perm) == 1


@pytest.mark.parametrize("drop", [harness.DROP_IN_DATA, harness.DROP],
                         ids=["in-data", "before-data-reply"])
def test_connection_dropped_during_data(cluster, mx, drop):
    c = cluster()
    rcpt = "dropped@a.test"
    mx[MX_A].script_data(drop)
    # In DATA: a message (about 7 MB) larger than what the socket buffers
    # hold (4 MB to send here), so that the server closes while the sender
    # is still writing the body.
    in_data = drop == harness.DROP_IN_DATA
    qid, token = send(c, [rcpt], lines=80000 if in_data else 20)
    d = wait_ev(c, "deferred", qid, rcpt)
    assert (d["status"], d["reason"], d["throttled"]) == ("4.4.2", "network", False), d
    phase = "while sending message body" if in_data else "after end of data"
    assert "connection lost %s" % phase in d["reply"], d
    assert [a for _, a, _ in mx[MX_A].wait_action()] == [drop]
    ev = wait_ev(c, "delivered", qid, rcpt)
    assert ev["attempts"] == 2
    assert arrivals(mx, token) == {rcpt: 1}


def test_stalled_server_times_out_then_delivers(cluster, mx):
    c = cluster(command_timeout="2s")
    rcpt = "slow@a.test"
    mx[MX_A].script_data(harness.STALL)
    qid, token = send(c, [rcpt])
    d = wait_ev(c, "deferred", qid, rcpt, timeout=20)
    assert (d["status"], d["reason"], d["throttled"]) == ("4.4.2", "network", False), d
    assert "timeout" in d["reply"], d
    assert [a for _, a, _ in mx[MX_A].actions] == [harness.STALL]
    ev = wait_ev(c, "delivered", qid, rcpt, timeout=20)
    assert ev["attempts"] == 2
    assert arrivals(mx, token) == {rcpt: 1}


def test_null_mx_bounces_at_once(cluster, mx):
    c = cluster()
    rcpt = "nobody@nullmx.test"
    qid, _ = send(c, [rcpt], mail_from="")
    b = wait_ev(c, "bounced", qid, rcpt)
    assert (b["attempts"], b["status"], b["reason"], b["mx"], b["mx_addr"]) == (
        1, "5.1.10", "dns", "", ""), b
    assert "null MX" in b["reply"], b
    assert events(c, "deferred", qid, rcpt) == []


def test_no_mx_falls_back_to_a(cluster, mx):
    c = cluster()
    rcpt = "direct@plain.test"
    qid, token = send(c, [rcpt])
    ev = wait_ev(c, "delivered", qid, rcpt)
    assert (ev["mx"], ev["mx_addr"], ev["attempts"]) == ("plain.test", MX_PLAIN, 1), ev
    (m,) = mx[MX_PLAIN].wait_for(lambda ms: [x for x in ms if token.encode() in x.data])
    assert m.rcpt_tos == [rcpt]


def test_servfail_defers_with_4_4_3(cluster, mx, servfail):
    c = cluster(retry_min="1s", retry_max="1s")
    rcpt = "someone@mx.servfail.test"
    before = servfail.queries
    qid, _ = send(c, [rcpt])
    d = wait_ev(c, "deferred", qid, rcpt)
    assert (d["attempts"], d["status"], d["reason"], d["throttled"], d["mx"]) == (
        1, "4.4.3", "dns", False, ""), d
    assert d["reply"].startswith("451 4.4.3 DNS lookup for mx.servfail.test failed"), d
    # Retried (a failed lookup is not cached): the second attempt asks again.
    d2 = wait_ev(c, "deferred", qid, rcpt, attempts=2)
    assert d2["status"] == "4.4.3"
    assert servfail.queries >= before + 2


def test_gmail_rate_limit_is_throttled(cluster, mx):
    c = cluster()
    rcpt = "user@gm.test"
    mx[MX_GOOGLE].script_rcpt(rcpt, GMAIL_421)
    qid, token = send(c, [rcpt])
    d = wait_ev(c, "deferred", qid, rcpt)
    assert (d["mx"], d["mx_addr"], d["status"], d["reason"], d["throttled"], d["provider"]) == (
        GOOGLE_MX, MX_GOOGLE, "4.7.28", "throttle", True, "gmail"), d
    assert d["reply"] == GMAIL_421_JOINED[:511], d
    ev = wait_ev(c, "delivered", qid, rcpt)
    assert (ev["attempts"], ev["provider"], ev["throttled"]) == (2, "gmail", False), ev
    assert arrivals(mx, token) == {rcpt: 1}


def test_soft_bounce_until_expiry_is_expired(cluster, mx):
    """A 4xx that repeats until max_lifetime ends as `expired` (a bounce),
    with the last reply and its classification, and is not tried again."""
    c = cluster(retry_min="500ms", retry_max="1s", max_lifetime="3s")
    rcpt = "busy@b.test"
    reply = "450 4.2.1 The user you are trying to contact is receiving mail at a rate that"
    mx[MX_B].script_rcpt(rcpt, *[reply] * 50)
    qid, token = send(c, [rcpt], mail_from="")
    ex = wait_ev(c, "expired", qid, rcpt, timeout=20)
    assert (ex["reply"], ex["status"], ex["reason"], ex["throttled"]) == (
        reply, "4.2.1", "throttle", True), ex
    deferred = events(c, "deferred", qid, rcpt)
    assert len(deferred) >= 1 and ex["attempts"] == len(deferred) + 1, (deferred, ex)
    assert [e["attempts"] for e in deferred] == list(range(1, len(deferred) + 1))
    assert events(c, "delivered", qid, rcpt) == []
    assert mx.with_token(token) == []
    # Removed from the queue: after a restart nothing is left to send.
    assert c.stop("all") == (0, False)
    c.start_all()
    assert c.wait_event("sender_ready", node="sender-1")["queue_depth"] == 0


def test_max_lifetime_counts_from_queueing(cluster, mx):
    """A recipient that waited in the queue for a free delivery slot longer
    than max_lifetime expires at its first failed attempt: the lifetime is
    time in the queue, not time since the first attempt."""
    c = cluster(max_deliveries=1, command_timeout="3s", max_lifetime="2s",
                retry_min="500ms", retry_max="500ms")
    slow, busy = "slow@a.test", "busy@b.test"
    mx[MX_A].script_data(harness.STALL)
    mx[MX_B].script_rcpt(busy, *["450 4.2.1 Mailbox busy, try again"] * 20)
    q1, _ = send(c, [slow], mail_from="")
    mx[MX_A].wait_action()          # the only delivery slot is taken
    q2, _ = send(c, [busy], mail_from="")
    ex = wait_ev(c, "expired", q2, busy, timeout=20)
    assert (ex["attempts"], ex["status"], ex["reason"]) == (1, "4.2.1", "mailbox"), ex
    assert events(c, "deferred", q2, busy) == []
    # The stalled one timed out after 3 s, past its 2 s too.
    ex1 = wait_ev(c, "expired", q1, slow, timeout=20)
    assert (ex1["attempts"], ex1["status"], ex1["reason"]) == (1, "4.4.2", "network"), ex1
