"""ESMTP extensions end to end (issue 4): PIPELINING at scale, CHUNKING and
BINARYMIME (BDAT), SMTPUTF8, DSN parameters, AUTH= on MAIL, the headers the
ingress adds (Message-ID, Date), the tenant's From: domain, and the tenant's
pool reaching the sender. Outcomes are checked at the real MX (aiosmtpd,
with the extensions each test needs) and in the sender's events."""
import uuid

import pytest

import harness

ACME_USER, ACME_PW = "acme-user", "acme-pw"
FULL = dict(smtputf8=True, dsn=True, chunking=True)
# a.test and b.test: SMTPUTF8, DSN, CHUNKING+BINARYMIME; c.test: none of them.
FEATURES = {"127.0.0.10": FULL, "127.0.0.11": FULL, "127.0.0.12": {}}
MAX_SIZE = 100 * 1024


@pytest.fixture(scope="module")
def mxe(mx_port):
    pool = harness.MxPool(mx_port, features=FEATURES)
    try:
        yield pool.start()
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def cluster(make_module_cluster, mxe):
    c = make_module_cluster()
    c.tenants = {
        "acme": {"credentials": [{"user": ACME_USER, "password_hash": harness.passwd_hash(ACME_PW)}],
                 "sender_domains": ["acme.test"], "pool": "acme-dedicated"},
        "local": {"pool": "local-pool"},
    }
    c.add_router()
    c.add_sender()
    listeners = [{"address": "127.0.0.1:%d" % harness.free_port(), "mode": "relay"},
                 {"address": "127.0.0.1:%d" % harness.free_port(), "mode": "submission",
                  "allow_plaintext_auth": True}]
    c.add_ingress(listeners=listeners, network_tenant="local", max_message_size="100K")
    c.start_all()
    return c


def session(cluster, mode="relay"):
    raw = harness.RawSmtp(cluster.port(mode=mode))
    assert raw.reply()[0] == 220
    code, lines = raw.cmd("EHLO client.test")
    assert code == 250
    return raw, [l[4:] for l in lines]


def queued_id(reply):
    code, lines = reply
    assert code == 250, lines
    m = harness.QUEUED_RE.match(lines[-1][4:])
    assert m, lines
    return m.group(1)


def after_received(data):
    return harness.strip_received(data)[1]


def queued_event(cluster, qid):
    return cluster.wait_event("queued", node="sender-1", id=qid)


def test_ehlo_offers_the_extensions(cluster):
    raw, ext = session(cluster)
    raw.close()
    for e in ("PIPELINING", "8BITMIME", "SMTPUTF8", "DSN", "CHUNKING", "BINARYMIME",
              "ENHANCEDSTATUSCODES"):
        assert e in ext


def test_pipelined_100_recipients_over_3_domains(cluster, mxe):
    token = uuid.uuid4().hex
    rcpts = ["r%03d@%s" % (i, ("a.test", "b.test", "c.test")[i % 3]) for i in range(100)]
    raw, _ = session(cluster)
    # The whole envelope and DATA in one write (RFC 2920).
    raw.send("MAIL FROM:<p@client.test>\r\n" + "".join("RCPT TO:<%s>\r\n" % r for r in rcpts)
             + "DATA\r\n")
    assert raw.reply()[0] == 250
    assert [raw.reply()[0] for _ in rcpts] == [250] * 100
    assert raw.reply()[0] == 354
    raw.send_data(harness.make_message(token, lines=20))
    queued_id(raw.reply())
    raw.close()
    msgs = mxe.wait_token(token, count=3)
    wait = lambda: sum(len(m.rcpt_tos) for m in mxe.with_token(token)) >= 100
    harness.wait_until(wait, 15, "100 recipients at the MX hosts")
    got = [r for m in mxe.with_token(token) for r in m.rcpt_tos]
    assert sorted(got) == sorted(rcpts)     # each exactly once
    assert {m.mx for m in msgs} == set(FEATURES)


def bdat_transaction(cluster, chunks, rcpt="bdat@a.test", body=None, pipelined=False):
    raw, _ = session(cluster)
    assert raw.cmd("MAIL FROM:<b@client.test>%s" % (" BODY=" + body if body else ""))[0] == 250
    assert raw.cmd("RCPT TO:<%s>" % rcpt)[0] == 250
    if pipelined:
        raw.send(b"".join(b"BDAT %d%s\r\n" % (len(c), b" LAST" if i == len(chunks) - 1 else b"") + c
                          for i, c in enumerate(chunks)))
        replies = [raw.reply() for _ in chunks]
    else:
        replies = [raw.bdat(c, last=(i == len(chunks) - 1)) for i, c in enumerate(chunks)]
    raw.close()
    for (code, lines), c in zip(replies[:-1], chunks):
        assert (code, lines) == (250, ["250 2.0.0 %d octets received" % len(c)])
    return queued_id(replies[-1])


@pytest.mark.parametrize("how", ["single", "several", "pipelined", "empty_last"])
def test_bdat_arrives_byte_identical(cluster, mxe, how):
    token = uuid.uuid4().hex
    msg = harness.make_message(token, lines=200)
    n = len(msg)
    chunks = {"single": [msg],
              "several": [msg[:1000], msg[1000:n // 2], msg[n // 2:]],
              "pipelined": [msg[:7], msg[7:5000], msg[5000:]],
              "empty_last": [msg[:n // 3], msg[n // 3:], b""]}[how]
    bdat_transaction(cluster, chunks, pipelined=(how == "pipelined"))
    (m,) = mxe.wait_token(token)
    assert after_received(m.data) == msg
    assert not m.bdat       # a text body goes on with DATA


def test_binarymime_needs_chunking_at_the_mx(cluster, mxe):
    token = uuid.uuid4().hex
    head = ("From: <b@client.test>\r\nSubject: binary %s\r\nMessage-ID: <%s@client.test>\r\n"
            "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
            % (token, token)).encode()
    payload = bytes(range(256)) * 8 + b"\n.\n\r.\r\n\x00" + token.encode()
    msg = head + payload
    qid = bdat_transaction(cluster, [msg[:300], msg[300:]], body="BINARYMIME")
    (m,) = mxe.wait_token(token)
    assert after_received(m.data) == msg       # not a byte changed
    assert m.bdat and "BODY=BINARYMIME" in m.mail_options
    # To an MX without CHUNKING/BINARYMIME: a permanent failure.
    qid = bdat_transaction(cluster, [msg], rcpt="bin@c.test", body="BINARYMIME")
    ev = cluster.wait_event("bounced", node="sender-1", id=qid)
    assert ev["reply"].startswith("554 5.6.3"), ev


def test_bdat_protocol_errors(cluster):
    raw, _ = session(cluster)
    try:
        # Without a transaction: 503, and the chunk is read and dropped (a
        # QUIT inside it is not executed).
        assert raw.bdat(b"QUIT\r\n") == (503, ["503 5.5.1 Error: need MAIL command"])
        assert raw.cmd("NOOP")[0] == 250
        assert raw.cmd("MAIL FROM:<e@client.test>")[0] == 250
        assert raw.bdat(b"QUIT\r\n", last=True) == (503, ["503 5.5.1 Error: need RCPT command"])
        assert raw.cmd("RCPT TO:<e@a.test>")[0] == 250
        assert raw.bdat(b"Subject: x\r\n")[0] == 250
        assert raw.cmd("DATA") == (503, ["503 5.5.1 Error: DATA after BDAT"])
        assert raw.cmd("RCPT TO:<f@a.test>")[0] == 503
        assert raw.cmd("RSET")[0] == 250
        # BINARYMIME only with BDAT (RFC 3030 3).
        assert raw.cmd("MAIL FROM:<e@client.test> BODY=BINARYMIME")[0] == 250
        assert raw.cmd("RCPT TO:<e@a.test>")[0] == 250
        assert raw.cmd("DATA") == (503, ["503 5.6.1 Error: BODY=BINARYMIME requires BDAT"])
        assert raw.cmd("RSET")[0] == 250
        # Over the size limit: 552, whichever chunk crosses it.
        assert raw.cmd("MAIL FROM:<e@client.test>")[0] == 250
        assert raw.cmd("RCPT TO:<e@a.test>")[0] == 250
        assert raw.bdat(b"x" * (MAX_SIZE // 2))[0] == 250
        code, lines = raw.bdat(b"y" * (MAX_SIZE // 2 + 10))
        assert code == 552 and lines[0].startswith("552 5.3.4"), lines
        # The transaction is over: a further chunk finds none.
        assert raw.bdat(b"z" * 10, last=True)[0] == 503
        assert raw.cmd("NOOP")[0] == 250
    finally:
        raw.close()


def test_smtputf8_recipients(cluster, mxe):
    token = uuid.uuid4().hex
    msg = ("From: <s@client.test>\r\nTo: <用户@a.test>, <josé@b.test>\r\nSubject: ✓ %s\r\n"
           "\r\nこんにちは %s\r\n" % (token, token)).encode("utf-8")
    raw, _ = session(cluster)
    try:
        # Without SMTPUTF8 a UTF-8 local part is refused (RFC 6531 3.5).
        assert raw.cmd("MAIL FROM:<s@client.test>")[0] == 250
        code, lines = raw.cmd("RCPT TO:<josé@b.test>")
        assert code == 553 and lines[0].startswith("553 5.6.7"), lines
        assert raw.cmd("RSET")[0] == 250
        assert raw.cmd("MAIL FROM:<s@client.test> SMTPUTF8")[0] == 250
        for r in ("用户@a.test", "josé@b.test", "ünï@c.test"):
            assert raw.cmd("RCPT TO:<%s>" % r)[0] == 250, r
        assert raw.cmd("DATA")[0] == 354
        raw.send_data(msg)
        qid = queued_id(raw.reply())
    finally:
        raw.close()
    msgs = mxe.wait_token(token, count=2)
    assert sorted(r for m in msgs for r in m.rcpt_tos) == sorted(["用户@a.test", "josé@b.test"])
    for m in msgs:
        assert m.smtputf8 and "SMTPUTF8" in m.mail_options
        assert token.encode() in m.data and "こんにちは".encode() in m.data
    # c.test's MX has no SMTPUTF8: bounced, permanently.
    ev = cluster.wait_event("bounced", node="sender-1", id=qid, rcpt="ünï@c.test")
    assert ev["reply"].startswith("550 5.6.7"), ev


def test_dsn_parameters_reach_the_sender_and_a_dsn_mx(cluster, mxe):
    token = uuid.uuid4().hex
    raw, _ = session(cluster)
    try:
        assert raw.cmd("MAIL FROM:<d@client.test> RET=HDRS ENVID=abc")[0] == 250
        assert raw.cmd("RCPT TO:<dsn@a.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@y")[0] == 250
        assert raw.cmd("RCPT TO:<nodsn@c.test> NOTIFY=NEVER")[0] == 250
        assert raw.cmd("DATA")[0] == 354
        raw.send_data(harness.make_message(token, lines=5))
        qid = queued_id(raw.reply())
    finally:
        raw.close()
    ev = queued_event(cluster, qid)
    assert ev["envid"] == "abc" and ev["ret"] == "HDRS"
    by_rcpt = {r["rcpt"]: r for r in ev["recipients"]}
    assert by_rcpt["dsn@a.test"] == {"rcpt": "dsn@a.test", "notify": "SUCCESS,FAILURE",
                                     "orcpt": "rfc822;x@y"}
    assert by_rcpt["nodsn@c.test"] == {"rcpt": "nodsn@c.test", "notify": "NEVER"}
    msgs = mxe.wait_token(token, count=2)
    (a,) = [m for m in msgs if m.mx == "127.0.0.10"]
    assert "RET=HDRS" in a.mail_options and "ENVID=abc" in a.mail_options
    assert a.rcpt_options["dsn@a.test"] == ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;x@y"]
    # No DSN at c.test's MX: the parameters are dropped (it would refuse them).
    (c,) = [m for m in msgs if m.mx == "127.0.0.12"]
    assert not [o for o in c.mail_options if o.startswith(("RET=", "ENVID="))]
    assert c.rcpt_options["nodsn@c.test"] == []


def test_mail_auth_parameter_is_accepted_and_dropped(cluster, mxe):
    token = uuid.uuid4().hex
    raw, _ = session(cluster)
    try:
        assert raw.cmd("MAIL FROM:<au@client.test> AUTH=<>")[0] == 250
        assert raw.cmd("RCPT TO:<au@a.test>")[0] == 250
        assert raw.cmd("DATA")[0] == 354
        raw.send_data(harness.make_message(token, lines=5))
        queued_id(raw.reply())
    finally:
        raw.close()
    (m,) = mxe.wait_token(token)
    assert not [o for o in m.mail_options if o.upper().startswith("AUTH")]


def test_message_id_and_date_added_when_missing(cluster, mxe):
    token = uuid.uuid4().hex
    bare = ("From: <h@client.test>\r\nSubject: %s\r\n\r\nbody %s\r\n" % (token, token)).encode()
    r = harness.submit(cluster.port(mode="relay"), "h@client.test", ["h@a.test"], bare)
    qid = r["queue_id"]
    (m,) = mxe.wait_token(token)
    rest = after_received(m.data)
    lines = rest.split(b"\r\n")
    assert lines[0] == b"Message-ID: <%s@relay.hikyaku.test>" % qid.encode()
    assert lines[1].startswith(b"Date: ") and lines[1][6:9] in (
        b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
    assert b"\r\n".join(lines[2:]) == bare
    # Present: kept as they are, nothing added.
    token = uuid.uuid4().hex
    full = harness.make_message(token, lines=5)
    harness.submit(cluster.port(mode="relay"), "h@client.test", ["h@a.test"], full)
    (m,) = mxe.wait_token(token)
    assert after_received(m.data) == full


def acme_send(cluster, header_from, token, mail_from="news@acme.test"):
    import smtplib
    data = ("From: %s\r\nSubject: %s\r\nMessage-ID: <%s@acme.test>\r\n"
            "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\nhi %s\r\n"
            % (header_from, token, token, token)).encode()
    with smtplib.SMTP("127.0.0.1", cluster.port(mode="submission"), timeout=15) as s:
        s.ehlo("client.test")
        s.login(ACME_USER, ACME_PW)
        s.mail(mail_from)
        s.rcpt("h@b.test")
        return s.data(data)


def test_header_from_must_be_the_tenants(cluster, mxe):
    code, text = acme_send(cluster, "CEO <ceo@other.test>", uuid.uuid4().hex)
    assert (code, text) == (550, b"5.7.1 From header domain not owned by tenant acme")
    code, text = acme_send(cluster, "a@acme.test, b@evil.test", uuid.uuid4().hex)
    assert code == 550 and text.startswith(b"5.7.1") and b"more than one mailbox" in text
    code, text = acme_send(cluster, "\"x@acme.test\" <broken", uuid.uuid4().hex)
    assert code == 550 and text.startswith(b"5.7.1") and b"unambiguously" in text
    token = uuid.uuid4().hex
    code, text = acme_send(cluster, "News <news@Mail.ACME.test>", token)
    assert code == 250, text
    qid = harness.QUEUED_RE.match(text.decode()).group(1)
    (m,) = mxe.wait_token(token)
    assert m.rcpt_tos == ["h@b.test"]
    # The tenant's pool travels with the message to the sender.
    ev = queued_event(cluster, qid)
    assert ev["tenant"] == "acme" and ev["pool"] == "acme-dedicated"


def test_pool_of_the_network_tenant(cluster, mxe):
    token = uuid.uuid4().hex
    r = harness.submit(cluster.port(mode="relay"), "p@client.test", ["p@a.test"],
                       harness.make_message(token, lines=5))
    ev = queued_event(cluster, r["queue_id"])
    assert ev["tenant"] == "local" and ev["pool"] == "local-pool"
