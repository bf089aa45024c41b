"""Hostile and broken SMTP clients, on raw sockets: each gets the exact reply
the ingress promises, nothing of theirs is queued, and meanwhile a second
session completes a normal message (250 and delivered)."""
import threading
import uuid

import pytest

import harness

HOST = "relay.hikyaku.test"
GREETING = (220, ["220 %s ESMTP Hikyaku" % HOST])
MAX_RCPTS = 5
MAX_SIZE = 100 * 1024


@pytest.fixture(scope="module")
def cluster(make_module_cluster, mxm):
    c = make_module_cluster()
    c.add_router()
    c.add_sender()
    c.add_ingress(relay_networks=["127.0.0.1/32"], max_recipients=MAX_RCPTS,
                  max_message_size="100K")
    c.start_all()
    return c


@pytest.fixture
def session(cluster):
    """A raw session past the greeting; closed after the test. After the
    test the cluster must still be running."""
    s = harness.RawSmtp(cluster.port())
    assert s.reply() == GREETING
    yield s
    s.close()
    assert cluster.running("ingress-1"), cluster.tails()


def good_message(cluster, mx):
    """A normal message on its own session: 250, then delivered. Returns its
    queue id."""
    token = uuid.uuid4().hex
    rc = ["good-%s@b.test" % token[:8]]
    r = harness.submit(cluster.port(), "ok@client.test", rc, harness.make_message(token, rcpts=rc, lines=20))
    assert r["data"][0] == 250 and r["queue_id"], r
    (m,) = mx.wait_token(token)
    assert m.rcpt_tos == rc
    return r["queue_id"]


def ehlo(s):
    code, lines = s.cmd("EHLO client.test")
    assert code == 250 and lines[0].startswith("250-%s" % HOST) or lines == ["250 %s" % HOST], lines


def expect(reply, code, enhanced):
    c, lines = reply
    assert c == code and lines[-1].startswith("%d %s" % (code, enhanced)), reply


def usable_or_closed(s):
    """After an error the session either goes on (NOOP 250) or was closed
    cleanly by the server -- never hangs."""
    try:
        s.send("NOOP\r\n")
        code, lines = s.reply()
    except (ConnectionResetError, BrokenPipeError):
        pytest.fail("connection reset instead of a clean close")
    assert code in (250, None), lines


@pytest.mark.parametrize("setup,bad", [
    ([], "MAIL FROM:<a@client.test>"),                                  # before EHLO
    (["EHLO client.test"], "RCPT TO:<x@a.test>"),                      # before MAIL
    (["EHLO client.test", "MAIL FROM:<a@client.test>"], "DATA"),       # before RCPT
    (["EHLO client.test", "MAIL FROM:<a@client.test>"], "MAIL FROM:<b@client.test>"),  # nested MAIL
], ids=["mail-before-ehlo", "rcpt-before-mail", "data-before-rcpt", "nested-mail"])
def test_out_of_order(cluster, mxm, session, setup, bad):
    for line in setup:
        assert session.cmd(line)[0] == 250
    expect(session.cmd(bad), 503, "5.5.1")
    good_message(cluster, mxm)
    # the session is still in its state and usable
    assert session.cmd("RSET")[0] == 250
    usable_or_closed(session)


def test_unknown_command(cluster, mxm, session):
    ehlo(session)
    expect(session.cmd("FROB the gizmo"), 500, "5.5.1")
    expect(session.cmd("XYZZY"), 500, "5.5.1")
    good_message(cluster, mxm)
    assert session.cmd("NOOP")[0] == 250


def test_one_megabyte_line(cluster, mxm, session):
    ehlo(session)
    errors = []

    def blast():
        try:
            session.send(b"MAIL FROM:<" + b"a" * (1024 * 1024) + b"@client.test>\r\n")
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=blast)
    t.start()
    good_message(cluster, mxm)          # while the long line is being sent
    t.join(30)
    assert not t.is_alive() and not errors, errors
    expect(session.reply(), 500, "5.5.2")
    usable_or_closed(session)


def test_nul_bytes(cluster, mxm, session):
    ehlo(session)
    expect(session.cmd(b"MAIL FROM:<a\x00b@client.test>"), 500, "5.5.2")
    good_message(cluster, mxm)
    usable_or_closed(session)


def test_disconnect_mid_data(cluster, mxm, session):
    token = uuid.uuid4().hex
    mark = cluster.log_of("sender-1").mark()
    ehlo(session)
    assert session.cmd("MAIL FROM:<a@client.test>")[0] == 250
    assert session.cmd("RCPT TO:<cut@a.test>")[0] == 250
    assert session.cmd("DATA")[0] == 354
    session.send_data(harness.make_message(token, rcpts=["cut@a.test"])[:5000], end=False)
    good = good_message(cluster, mxm)
    session.close()
    # A message submitted after the disconnect is delivered after anything the
    # cut session could have queued.
    marker = good_message(cluster, mxm)
    queued = cluster.find_events("queued", node="sender-1", since=mark)
    assert [q for q in queued if not (harness.mentions(q, good) or harness.mentions(q, marker))] == [], queued
    assert len(queued) == 2, queued
    assert mxm.with_token(token) == []


@pytest.mark.parametrize("rcpt,code,enhanced", [
    # Relay tricks are refused as policy and named (553 5.7.1) ...
    ("<user%c.test@a.test>", 553, "5.7.1"),
    ("<c.test!user@a.test>", 553, "5.7.1"),
    ("<@a.test:user@c.test>", 553, "5.7.1"),
    ("<@a.test,@b.test:user@c.test>", 553, "5.7.1"),
    ('<"user@c.test"@a.test>', 553, "5.7.1"),
    ("<user@[192.0.2.1]>", 553, "5.7.1"),
    # ... broken addresses are syntax errors.
    ("<user@>", 501, "5.1.3"),
    ("<user@c.test@a.test>", 501, "5.1.3"),
])
def test_relay_tricks_rejected(cluster, mxm, session, rcpt, code, enhanced):
    ehlo(session)
    assert session.cmd("MAIL FROM:<a@client.test>")[0] == 250
    expect(session.cmd("RCPT TO:%s" % rcpt), code, enhanced)
    good_message(cluster, mxm)
    # the transaction goes on with a proper recipient
    token = uuid.uuid4().hex
    assert session.cmd("RCPT TO:<proper@c.test>")[0] == 250
    assert session.cmd("DATA")[0] == 354
    session.send_data(harness.make_message(token, rcpts=["proper@c.test"], lines=3))
    assert session.reply()[0] == 250
    (m,) = mxm.wait_token(token)
    assert m.rcpt_tos == ["proper@c.test"]


@pytest.mark.parametrize("sender", ["<a@>", "<a@b@client.test>", "<a@client..test>"])
def test_bad_mail_from(cluster, mxm, session, sender):
    ehlo(session)
    expect(session.cmd("MAIL FROM:%s" % sender), 501, "5.1.7")
    good_message(cluster, mxm)
    assert session.cmd("MAIL FROM:<fine@client.test>")[0] == 250


def test_relay_denied_outside_relay_networks(cluster, mxm):
    s = harness.RawSmtp(cluster.port(), source="127.0.0.5")
    try:
        assert s.reply() == GREETING
        ehlo(s)
        assert s.cmd("MAIL FROM:<a@client.test>")[0] == 250
        expect(s.cmd("RCPT TO:<x@a.test>"), 554, "5.7.1")
        good_message(cluster, mxm)
        usable_or_closed(s)
    finally:
        s.close()


def test_too_many_recipients(cluster, mxm, session):
    token = uuid.uuid4().hex
    ehlo(session)
    assert session.cmd("MAIL FROM:<a@client.test>")[0] == 250
    rcpts = ["r%d@c.test" % i for i in range(MAX_RCPTS)]
    for r in rcpts:
        assert session.cmd("RCPT TO:<%s>" % r)[0] == 250
    expect(session.cmd("RCPT TO:<one-too-many@c.test>"), 452, "4.5.3")
    good_message(cluster, mxm)
    assert session.cmd("DATA")[0] == 354
    session.send_data(harness.make_message(token, rcpts=rcpts, lines=3))
    code, lines = session.reply()
    assert code == 250 and harness.QUEUED_RE.match(lines[-1][4:]), lines
    got = mxm.wait_token(token)
    assert sorted(r for m in got for r in m.rcpt_tos) == sorted(rcpts)


def test_message_size_limits(cluster, mxm, session):
    ehlo(session)
    expect(session.cmd("MAIL FROM:<a@client.test> SIZE=%d" % (MAX_SIZE + 1)), 552, "5.3.4")
    # SIZE within the limit, but the data is larger
    token = uuid.uuid4().hex
    assert session.cmd("MAIL FROM:<a@client.test> SIZE=1000")[0] == 250
    assert session.cmd("RCPT TO:<big@a.test>")[0] == 250
    assert session.cmd("DATA")[0] == 354
    big = harness.make_message(token, rcpts=["big@a.test"], lines=2000)
    assert len(big) > MAX_SIZE
    session.send_data(big)
    expect(session.reply(), 552, "5.3.4")
    good_message(cluster, mxm)
    assert mxm.with_token(token) == []
    usable_or_closed(session)
