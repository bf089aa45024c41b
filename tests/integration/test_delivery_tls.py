"""TLS from the sender to the MX hosts, against real aiosmtpd MX servers
offering STARTTLS with certificates from a test CA: opportunistic STARTTLS
(the MX sees a TLS session, the delivered event says which version),
tls_required_domains (a required destination whose MX offers no STARTTLS is
deferred and never sent anything in plaintext; one whose MX offers it is
delivered over TLS), several messages over one reused TLS connection, and
a message over the MX's SIZE bounced with 552 5.3.4 before MAIL.

The MX hosts of this module (harness.DOMAIN_MX):
  127.0.0.10  mx.a.test  STARTTLS, CHUNKING and BINARYMIME (a.test, d01.test, ...)
  127.0.0.11  mx.b.test  no STARTTLS (b.test, d02.test, ...)
  127.0.0.12  mx.c.test  STARTTLS, SIZE 40000 (c.test, d03.test, ...)
The sender trusts the test CA (tls_ca_file) and requires TLS for b.test and
d01.test."""
import uuid

import pytest

import harness

TLS_MX = "127.0.0.10"
PLAIN_MX = "127.0.0.11"
SMALL_MX = "127.0.0.12"
SIZE_LIMIT = 40000


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return harness.TestPki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def tls_mx(mx_port, pki):
    pool = harness.MxPool(mx_port, features={
        TLS_MX: {"tls_context": pki.server_context("mx-a", 2001, "mx.a.test"),
                 "chunking": True},
        SMALL_MX: {"tls_context": pki.server_context("mx-c", 2003, "mx.c.test"),
                   "data_size_limit": SIZE_LIMIT},
    })
    try:
        yield pool.start()
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def cluster(make_module_cluster, tls_mx, pki):
    c = make_module_cluster()
    c.add_router()
    c.add_sender(tls_required_domains=["B.test", "d01.test"], tls_ca_file=pki.ca,
                 connection_cache_time="30s")
    c.add_ingress()
    c.start_all()
    yield c
    print(c.tails())


def send(cluster, rcpt, lines=20):
    """Submit one message with a fresh token to RCPT; returns (token, queue id)."""
    token = uuid.uuid4().hex
    r = harness.submit(cluster.port(), "tls@client.test", [rcpt],
                       harness.make_message(token, rcpts=[rcpt], lines=lines))
    assert r["data"] and r["data"][0] == 250, r
    return token, r["queue_id"]


def outcome(cluster, event, qid, rcpt, since=0, timeout=15):
    return cluster.wait_event(event, node="sender-1", timeout=timeout, since=since,
                              pred=lambda e: e.get("id") == qid and e.get("rcpt") == rcpt)


def test_starttls_offered_is_used(cluster, tls_mx):
    mark = cluster.log_of("sender-1").mark()
    token, qid = send(cluster, "alice@a.test")
    (m,) = tls_mx.wait_token(token)
    assert m.mx == TLS_MX
    assert m.tls in ("TLSv1.2", "TLSv1.3"), m.tls
    assert m.tls_cipher
    ev = outcome(cluster, "delivered", qid, "alice@a.test")
    assert ev["tls"] == m.tls, ev
    assert ev["mx"] == "mx.a.test" and ev["mx_addr"] == TLS_MX, ev
    # The certificate chains to the configured CA and names the MX host.
    est = cluster.wait_event("smtp_tls_established", node="sender-1", since=mark,
                             pred=lambda e: e.get("peer", "").startswith(TLS_MX + ":"))
    assert est["mx"] == "mx.a.test" and est["verified"] is True and est["verify"] == "ok", est
    assert est["version"] == m.tls and est["cipher"] == m.tls_cipher, est


def test_large_body_over_tls_byte_identical(cluster, tls_mx):
    """A body of several 256 KB writes, each encrypted on its own, with
    lines to dot-stuff: what the MX gets is what was submitted."""
    rcpt = "big@a.test"
    token = uuid.uuid4().hex
    data = harness.make_message(token, rcpts=[rcpt], lines=12000)
    assert len(data) > 3 * 256 * 1024
    r = harness.submit(cluster.port(), "tls@client.test", [rcpt], data)
    assert r["data"][0] == 250, r
    (m,) = tls_mx.wait_token(token, timeout=30)
    assert m.tls in ("TLSv1.2", "TLSv1.3")
    assert harness.strip_received(m.data)[1] == data
    assert outcome(cluster, "delivered", r["queue_id"], rcpt)["tls"] == m.tls


def test_binarymime_bdat_over_tls(cluster, tls_mx):
    """BODY=BINARYMIME goes as one BDAT chunk, encrypted like the rest."""
    rcpt = "bin@a.test"
    token = uuid.uuid4().hex
    msg = ("From: <b@client.test>\r\nSubject: binary %s\r\nMessage-ID: <%s@client.test>\r\n"
           "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMIME-Version: 1.0\r\n"
           "Content-Type: application/octet-stream\r\n"
           "Content-Transfer-Encoding: binary\r\n\r\n" % (token, token)).encode()
    msg += bytes(range(256)) * 64 + b"\n.\n\r.\r\n\x00" + token.encode()
    raw = harness.RawSmtp(cluster.port())
    try:
        assert raw.reply()[0] == 220
        assert raw.cmd("EHLO client.test")[0] == 250
        assert raw.cmd("MAIL FROM:<b@client.test> BODY=BINARYMIME")[0] == 250
        assert raw.cmd("RCPT TO:<%s>" % rcpt)[0] == 250
        code, lines = raw.bdat(msg, last=True)
    finally:
        raw.close()
    assert code == 250, lines
    (m,) = tls_mx.wait_token(token)
    assert m.tls in ("TLSv1.2", "TLSv1.3") and m.bdat, m
    assert harness.strip_received(m.data)[1] == msg


def test_plaintext_mx_still_gets_mail(cluster, tls_mx):
    token, qid = send(cluster, "bob@d02.test")
    (m,) = tls_mx.wait_token(token)
    assert m.mx == PLAIN_MX and m.tls is None
    ev = outcome(cluster, "delivered", qid, "bob@d02.test")
    assert ev["tls"] == "", ev


def test_required_without_starttls_is_deferred(cluster, tls_mx):
    rcpt = "carol@b.test"
    token, qid = send(cluster, rcpt)
    ev = outcome(cluster, "deferred", qid, rcpt)
    assert ev["reply"].startswith("451 4.7.4 TLS is required, but was not offered by mx.b.test"), ev
    assert ev["tls"] == "" and ev["mx"] == "", ev
    # The retry (retry_min 1s) is deferred the same way.
    ev2 = outcome(cluster, "deferred", qid, rcpt, since=cluster.log_of("sender-1").mark())
    assert ev2["attempts"] >= 2 and ev2["reply"].startswith("451 4.7.4"), ev2
    # Nothing was sent in plaintext: no RCPT (hence no MAIL) and no message.
    assert not [a for a in tls_mx[PLAIN_MX].rcpt_attempts if a[0] == rcpt]
    assert not tls_mx.with_token(token)
    assert not cluster.find_events("delivered", node="sender-1", pred=lambda e: e.get("id") == qid)


def test_required_and_offered_is_delivered_over_tls(cluster, tls_mx):
    rcpt = "dave@d01.test"              # required; its MX is mx.a.test
    token, qid = send(cluster, rcpt)
    (m,) = tls_mx.wait_token(token)
    assert m.mx == TLS_MX and m.tls in ("TLSv1.2", "TLSv1.3"), m
    ev = outcome(cluster, "delivered", qid, rcpt)
    assert ev["tls"] == m.tls, ev


def test_tls_connection_reused(cluster, tls_mx):
    """Several messages one after the other to one MX: one TLS connection
    (one handshake), every transaction on it."""
    mark = cluster.log_of("sender-1").mark()
    got = []
    for i in range(4):
        rcpt = "reuse%d@d03.test" % i      # mx.c.test
        token, qid = send(cluster, rcpt)
        (m,) = tls_mx.wait_token(token)
        ev = outcome(cluster, "delivered", qid, rcpt)
        assert ev["tls"] == m.tls and m.tls in ("TLSv1.2", "TLSv1.3"), (ev, m)
        got.append(m)
    assert all(m.mx == SMALL_MX for m in got)
    assert len({m.peer_port for m in got}) == 1, [m.peer_port for m in got]
    handshakes = cluster.find_events("smtp_tls_established", node="sender-1", since=mark,
                                     pred=lambda e: e.get("peer", "").startswith(SMALL_MX + ":"))
    assert len(handshakes) == 1, handshakes


def test_size_over_limit_bounces_before_mail(cluster, tls_mx):
    rcpt = "erin@c.test"                # mx.c.test: SIZE 40000, announced after STARTTLS
    token, qid = send(cluster, rcpt, lines=2000)
    ev = outcome(cluster, "bounced", qid, rcpt)
    assert ev["reply"].startswith("552 5.3.4 message size "), ev
    assert ("exceeds size limit %d" % SIZE_LIMIT) in ev["reply"], ev
    assert ev["tls"] in ("TLSv1.2", "TLSv1.3"), ev
    # Refused before MAIL: the MX never saw a RCPT for it.
    assert not [a for a in tls_mx[SMALL_MX].rcpt_attempts if a[0] == rcpt]
    assert not tls_mx.with_token(token)
