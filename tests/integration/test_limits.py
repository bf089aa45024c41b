"""Limits at the ingress (issue 4): each one tripped on purpose, with its
standard reply and its `limit_exceeded` log line naming the limit and the
client, and each time another client completes a whole transaction on the
same node (250, then the mail at the MX) while or after the first one is
limited. Small limits keep the file fast.

Every limited client connects from its own loopback address, so that the
per-IP counts of one test never leak into another; the served-meanwhile
clients come from 127.0.0.1."""
import re
import time
import uuid

import pytest

import harness

HOST = "relay.hikyaku.test"
MAX_RCPTS = 5
MAX_SIZE = 100 * 1024
MAX_ERRORS = 5
MAX_HDR = 200
PER_IP = 3
AUTH_LIMIT = 2
AUTH_WINDOW_S = 4
ACME_USER, ACME_PW = "acme-relay", "acme-password"
SLOW_USER, SLOW_PW = "slow-user", "slow-password"


@pytest.fixture(scope="module")
def cluster(make_module_cluster, mxm):
    """ingress-1: most limits, small; a relay and a plaintext-AUTH submission
    listener. ingress-2: 1 s timeouts, bare LF normalised. ingress-3: two
    sessions in all."""
    c = make_module_cluster()
    c.tenants = {
        "local": {},
        "acme": {"credentials": [{"user": ACME_USER, "password_hash": harness.passwd_hash(ACME_PW)}]},
        "slow": {"credentials": [{"user": SLOW_USER, "password_hash": harness.passwd_hash(SLOW_PW)}],
                 "rate_limit": "2/h"},
    }
    c.add_router()
    c.add_sender()
    common = dict(relay_networks=["127.0.0.0/8"], network_tenant="local")
    c.add_ingress("ingress-1", listeners=[
        {"address": "127.0.0.1:%d" % harness.free_port(), "mode": "relay"},
        {"address": "127.0.0.1:%d" % harness.free_port(), "mode": "submission",
         "allow_plaintext_auth": True}],
        max_recipients=MAX_RCPTS, max_message_size="100K", max_errors=MAX_ERRORS,
        max_header_line_length=MAX_HDR, max_sessions_per_ip=PER_IP,
        auth_failure_limit=AUTH_LIMIT, auth_failure_window="%ds" % AUTH_WINDOW_S, **common)
    c.add_ingress("ingress-2", command_timeout="1s", data_timeout="1s", bare_lf="normalize", **common)
    c.add_ingress("ingress-3", max_sessions=2, **common)
    c.start_all()
    return c


def relay_port(cluster, node="ingress-1"):
    return cluster.port(node, mode="relay") if node == "ingress-1" else cluster.port(node)


def served(cluster, mxm, node="ingress-1"):
    """Another client, from 127.0.0.1, completes a message on NODE: 250, and
    it arrives at the MX."""
    token = uuid.uuid4().hex
    rc = ["served-%s@b.test" % token[:8]]
    r = harness.submit(relay_port(cluster, node), "ok@client.test", rc,
                       harness.make_message(token, rcpts=rc, lines=5))
    assert r["data"] and r["data"][0] == 250 and r["queue_id"], r
    (m,) = mxm.wait_token(token)
    assert m.rcpt_tos == rc


def connect(cluster, source, node="ingress-1", mode="relay"):
    port = cluster.port(node, mode=mode) if node == "ingress-1" else cluster.port(node)
    return harness.RawSmtp(port, source=source)


def greeted(cluster, source, **kw):
    s = connect(cluster, source, **kw)
    assert s.reply() == (220, ["220 %s ESMTP Hikyaku" % HOST])
    assert s.cmd("EHLO client.test")[0] == 250
    return s


def expect(reply, code, text):
    c, lines = reply
    assert c == code and lines[-1].startswith("%d %s" % (code, text)), reply


def logged(cluster, limit, client, node="ingress-1", since=0):
    return cluster.wait_event("limit_exceeded", node=node, since=since, limit=limit, client=client)


def test_message_size(cluster, mxm):
    src = "127.0.0.41"
    s = greeted(cluster, src)
    try:
        expect(s.cmd("MAIL FROM:<a@client.test> SIZE=%d" % (MAX_SIZE + 1)), 552, "5.3.4 Message size exceeds fixed limit")
        logged(cluster, "max_message_size", src)
        # SIZE within the limit, the data not: refused at the end of data.
        token = uuid.uuid4().hex
        assert s.cmd("MAIL FROM:<a@client.test> SIZE=1000")[0] == 250
        assert s.cmd("RCPT TO:<big@a.test>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        big = harness.dot_stuff(harness.make_message(token, rcpts=["big@a.test"], lines=2000))
        assert len(big) > MAX_SIZE
        s.send(big[:len(big) // 2])
        served(cluster, mxm)                    # while the big message is half sent
        s.send(big[len(big) // 2:] + b".\r\n")
        expect(s.reply(), 552, "5.3.4 Message size exceeds fixed limit")
        assert s.cmd("NOOP")[0] == 250          # the session goes on
        served(cluster, mxm)
        assert mxm.with_token(token) == []
    finally:
        s.close()


def test_recipients(cluster, mxm):
    src = "127.0.0.42"
    token = uuid.uuid4().hex
    s = greeted(cluster, src)
    try:
        assert s.cmd("MAIL FROM:<a@client.test>")[0] == 250
        rcpts = ["r%d@c.test" % i for i in range(MAX_RCPTS)]
        for r in rcpts:
            assert s.cmd("RCPT TO:<%s>" % r)[0] == 250
        expect(s.cmd("RCPT TO:<one-too-many@c.test>"), 452, "4.5.3 Too many recipients")
        logged(cluster, "max_recipients", src)
        served(cluster, mxm)
        # The transaction goes on with the recipients accepted so far.
        assert s.cmd("DATA")[0] == 354
        s.send_data(harness.make_message(token, rcpts=rcpts, lines=3))
        assert s.reply()[0] == 250
        got = mxm.wait_token(token)
        assert sorted(r for m in got for r in m.rcpt_tos) == sorted(rcpts)
    finally:
        s.close()


def test_command_line_length(cluster, mxm):
    src = "127.0.0.43"
    s = greeted(cluster, src)
    try:
        # 512 octets with the CRLF is the longest command line (RFC 5321 4.5.3.1.4).
        assert s.cmd("NOOP " + "x" * (512 - 7))[0] == 250
        expect(s.cmd("NOOP " + "x" * (512 - 6)), 500, "5.5.2 Line too long")
        logged(cluster, "command_line_length", src)
        served(cluster, mxm)
        assert s.cmd("NOOP")[0] == 250
    finally:
        s.close()


def message_with(token, extra_header="", body_line=""):
    head = "From: <a@client.test>\r\nTo: <x@a.test>\r\nSubject: %s\r\n%s\r\n" % (token, extra_header)
    return (head + "token %s\r\n%s\r\n" % (token, body_line)).encode()


def one_message(s, data, rcpt="x@a.test"):
    """MAIL, RCPT, DATA and the raw DATA bytes (already stuffed, with the
    final dot): the reply to the end of data."""
    assert s.cmd("MAIL FROM:<a@client.test>")[0] == 250
    assert s.cmd("RCPT TO:<%s>" % rcpt)[0] == 250
    assert s.cmd("DATA")[0] == 354
    s.send(data)
    return s.reply()


def test_header_line_length(cluster, mxm):
    src = "127.0.0.44"
    s = greeted(cluster, src)
    try:
        ok, bad = uuid.uuid4().hex, uuid.uuid4().hex
        hdr = "X-Long: "
        assert one_message(s, message_with(ok, hdr + "a" * (MAX_HDR - len(hdr)) + "\r\n") + b".\r\n")[0] == 250
        expect(one_message(s, message_with(bad, hdr + "a" * (MAX_HDR + 1 - len(hdr)) + "\r\n") + b".\r\n"),
               554, "5.6.0 Message rejected: header line too long (more than %d characters)" % MAX_HDR)
        logged(cluster, "max_header_line_length", src)
        served(cluster, mxm)
        mxm.wait_token(ok)
        assert mxm.with_token(bad) == []
    finally:
        s.close()


def test_body_line_length(cluster, mxm):
    src = "127.0.0.45"
    s = greeted(cluster, src)
    try:
        ok, bad = uuid.uuid4().hex, uuid.uuid4().hex
        assert one_message(s, message_with(ok, body_line="b" * 998) + b".\r\n")[0] == 250
        expect(one_message(s, message_with(bad, body_line="b" * 999) + b".\r\n"),
               550, "5.6.0 Message rejected: line too long (more than 998 characters)")
        logged(cluster, "text_line_length", src)
        served(cluster, mxm)
        mxm.wait_token(ok)
        assert mxm.with_token(bad) == []
    finally:
        s.close()


SMUGGLE = "MAIL FROM:<smuggler@evil.test>\r\nRCPT TO:<victim@c.test>\r\nDATA\r\n"


def smuggling_data(token):
    """A message with a bare-LF line, and "<LF>.<LF>" followed by commands:
    a server that took that for the end of data would run them."""
    return (message_with(token)[:-2] + b"bare\nline\n.\n" + SMUGGLE.encode() +
            b"Subject: smuggled\r\n\r\nsmuggled " + token.encode() + b"\r\n.\r\n")


def test_bare_lf_rejected(cluster, mxm):
    src = "127.0.0.46"
    token = uuid.uuid4().hex
    s = greeted(cluster, src)
    try:
        expect(one_message(s, smuggling_data(token)), 550, "5.5.2 Error: bare <LF> received")
        logged(cluster, "bare_lf", src)
        # The "commands" were data: the next reply is the NOOP's.
        assert s.cmd("NOOP") == (250, ["250 2.0.0 Ok"])
        # NUL in data: its own refusal.
        expect(one_message(s, message_with(uuid.uuid4().hex, body_line="a\0b") + b".\r\n"),
               554, "5.6.0 Message rejected: NUL character in data")
        served(cluster, mxm)
        assert mxm.with_token(token) == []
    finally:
        s.close()


def test_bare_lf_normalized(cluster, mxm):
    """bare_lf: normalize: stored as CRLF, and still "<LF>.<LF>" is not the end."""
    token = uuid.uuid4().hex
    s = greeted(cluster, "127.0.0.47", node="ingress-2")
    try:
        assert one_message(s, smuggling_data(token))[0] == 250
        (m,) = mxm.wait_token(token)
        assert b"bare\r\nline\r\n.\r\n" + SMUGGLE.encode() in m.data
        assert [m for m in mxm.messages() if m.mail_from == "smuggler@evil.test"] == []
    finally:
        s.close()


def test_command_and_data_timeouts(cluster, mxm):
    idle = greeted(cluster, "127.0.0.48", node="ingress-2")
    in_data = greeted(cluster, "127.0.0.49", node="ingress-2")
    token = uuid.uuid4().hex
    try:
        mark = cluster.log_of("ingress-2").mark()
        assert in_data.cmd("MAIL FROM:<a@client.test>")[0] == 250
        assert in_data.cmd("RCPT TO:<t@a.test>")[0] == 250
        assert in_data.cmd("DATA")[0] == 354
        in_data.send(message_with(token))       # no final dot: the client stalls
        served(cluster, mxm, node="ingress-2")  # while both idle
        for s, limit in ((idle, "command_timeout"), (in_data, "data_timeout")):
            assert s.reply() == (421, ["421 4.4.2 %s Error: timeout exceeded" % HOST])
            assert s.closed_by_peer()
        logged(cluster, "command_timeout", "127.0.0.48", node="ingress-2", since=mark)
        logged(cluster, "data_timeout", "127.0.0.49", node="ingress-2", since=mark)
        served(cluster, mxm, node="ingress-2")
        assert mxm.with_token(token) == []
    finally:
        idle.close()
        in_data.close()


def test_sessions_per_ip(cluster, mxm):
    src = "127.0.0.50"
    held = [greeted(cluster, src) for _ in range(PER_IP)]
    try:
        extra = connect(cluster, src)
        assert extra.reply() == (421, ["421 4.7.0 %s Error: too many connections from %s" % (HOST, src)])
        assert extra.closed_by_peer()
        extra.close()
        logged(cluster, "max_sessions_per_ip", src)
        # The submission listener counts against the same client IP.
        extra = connect(cluster, src, mode="submission")
        assert extra.reply()[0] == 421
        extra.close()
        served(cluster, mxm)                    # another IP, meanwhile
        # A held session is not disturbed: a whole transaction on it.
        token = uuid.uuid4().hex
        assert one_message(held[0], message_with(token) + b".\r\n")[0] == 250
        mxm.wait_token(token)
        # One leaves: the IP may connect again (once the node saw the close).
        assert held[0].cmd("QUIT")[0] == 221
        held.pop(0).close()

        def admitted():
            s = connect(cluster, src)
            code = s.reply()[0]
            if code == 220:
                held.append(s)
                return True
            s.close()
            return False
        harness.wait_until(admitted, 5, "a new session from %s to be admitted" % src, interval=0.05)
    finally:
        for s in held:
            s.close()


def test_max_sessions(cluster, mxm):
    held = [greeted(cluster, "127.0.0.%d" % (52 + i), node="ingress-3") for i in range(2)]
    try:
        extra = connect(cluster, "127.0.0.54", node="ingress-3")
        assert extra.reply() == (421, ["421 4.3.2 Too many connections"])
        assert extra.closed_by_peer()
        extra.close()
        logged(cluster, "max_sessions", "127.0.0.54", node="ingress-3")
        token = uuid.uuid4().hex
        assert one_message(held[0], message_with(token) + b".\r\n")[0] == 250
        mxm.wait_token(token)
        assert held[0].cmd("QUIT")[0] == 221
        held.pop(0).close()
        # A slot is free again: another client is served (retrying while
        # the node has not yet seen the close).
        harness.wait_until(lambda: served_or_refused(cluster, mxm, "ingress-3"), 5,
                           "a transaction on ingress-3", interval=0.05)
    finally:
        for s in held:
            s.close()


def served_or_refused(cluster, mxm, node):
    try:
        served(cluster, mxm, node=node)
        return True
    except smtplib_disconnected():
        return False


def smtplib_disconnected():
    import smtplib
    return (smtplib.SMTPConnectError, smtplib.SMTPServerDisconnected)


def auth_plain(s, user, pw):
    return s.cmd("AUTH PLAIN " + harness.sasl_plain(user, pw))


def test_auth_failures_per_ip(cluster, mxm):
    src, other = "127.0.0.60", "127.0.0.61"
    a = greeted(cluster, src, mode="submission")
    b = greeted(cluster, src, mode="submission")
    watcher = greeted(cluster, other, mode="submission")
    try:
        assert auth_plain(a, ACME_USER, "wrong-1")[0] == 535
        # The failure that reaches the limit: answered late, then 421.
        t0 = time.monotonic()
        b.send("AUTH PLAIN %s\r\n" % harness.sasl_plain(ACME_USER, "wrong-2"))
        assert watcher.cmd("NOOP")[0] == 250    # the loop is not blocked meanwhile
        t_noop = time.monotonic()
        assert b.reply() == (535, ["535 5.7.8 Error: authentication failed"])
        t_535 = time.monotonic()
        assert b.reply() == (421, ["421 4.7.0 %s Error: too many failed authentications from %s" % (HOST, src)])
        assert b.closed_by_peer()
        assert t_535 - t0 >= 0.9 and t_noop < t_535, (t0, t_noop, t_535)
        logged(cluster, "auth_failure_limit", src)
        # A new session from that IP: refused at connect.
        c = connect(cluster, src, mode="submission")
        assert c.reply() == (421, ["421 4.7.0 %s Error: too many failed authentications from %s" % (HOST, src)])
        assert c.closed_by_peer()
        c.close()
        # A session already open: its next AUTH is tarpitted too, even with
        # the right password.
        a.send("AUTH PLAIN %s\r\n" % harness.sasl_plain(ACME_USER, ACME_PW))
        assert a.reply()[0] == 535 and a.reply()[0] == 421
        # Another IP authenticates and sends meanwhile.
        token = uuid.uuid4().hex
        assert auth_plain(watcher, ACME_USER, ACME_PW)[0] == 235
        assert one_message(watcher, message_with(token) + b".\r\n")[0] == 250
        mxm.wait_token(token)
        # The bucket refills (AUTH_LIMIT per AUTH_WINDOW_S): let in again.
        def admitted():
            s = connect(cluster, src, mode="submission")
            try:
                return s.reply()[0] == 220
            finally:
                s.close()
        harness.wait_until(admitted, AUTH_WINDOW_S + 2, "%s to be let in again" % src, interval=0.1)
    finally:
        for s in (a, b, watcher):
            s.close()


def test_tenant_rate_limit(cluster, mxm):
    s = greeted(cluster, "127.0.0.62", mode="submission")
    try:
        assert auth_plain(s, SLOW_USER, SLOW_PW)[0] == 235
        for _ in range(2):
            assert s.cmd("MAIL FROM:<a@slow.test>")[0] == 250
            assert s.cmd("RSET")[0] == 250
        code, lines = s.cmd("MAIL FROM:<a@slow.test>")
        assert code == 451 and re.match(r"451 4\.7\.1 Message rate limit exceeded for tenant slow, "
                                        r"try again in \d+ s$", lines[-1]), lines
        cluster.wait_event("limit_exceeded", node="ingress-1", limit="rate_limit", tenant="slow")
        served(cluster, mxm)
    finally:
        s.close()
    # Another tenant, meanwhile: not affected.
    token = uuid.uuid4().hex
    s = greeted(cluster, "127.0.0.63", mode="submission")
    try:
        assert auth_plain(s, ACME_USER, ACME_PW)[0] == 235
        assert one_message(s, message_with(token) + b".\r\n")[0] == 250
        mxm.wait_token(token)
    finally:
        s.close()


def test_too_many_errors(cluster, mxm):
    src = "127.0.0.64"
    s = greeted(cluster, src)
    try:
        for i in range(MAX_ERRORS - 1):
            expect(s.cmd("XYZZY %d" % i), 500, "5.5.1")
        s.send("XYZZY last\r\n")
        expect(s.reply(), 500, "5.5.1")
        assert s.reply() == (421, ["421 4.7.0 %s Error: too many errors" % HOST])
        assert s.closed_by_peer()
        logged(cluster, "max_errors", src)
        served(cluster, mxm)
    finally:
        s.close()
