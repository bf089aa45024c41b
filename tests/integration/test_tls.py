"""TLS at the ingress: STARTTLS on relay and submission listeners, implicit
TLS on smtps, TLS 1.2 as the floor, the STARTTLS command-injection defence,
and certificate reload on SIGHUP. Clients are Python's ssl/smtplib and
swaks; certificates come from a test CA made with the openssl CLI, the
server sending its intermediate so that the client, trusting only the root,
checks the whole chain."""
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import uuid

import pytest

import harness

HOST = "relay.hikyaku.test"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return harness.TestPki(str(tmp_path_factory.mktemp("pki")))


def tls_ingress(c, pki, name="server", serial=1001, **kw):
    cert, key = pki.server(name, serial)
    c.add_router()
    c.add_sender()
    listeners = [{"address": "127.0.0.1:%d" % harness.free_port(), "mode": "relay"},
                 {"address": "127.0.0.1:%d" % harness.free_port(), "mode": "submission"},
                 {"address": "127.0.0.1:%d" % harness.free_port(), "mode": "smtps"}]
    conf = dict(listeners=listeners, relay_networks=["127.0.0.1/32"],
                tls={"certificate": cert, "key": key})
    conf.update(kw)
    c.add_ingress(**conf)
    return cert, key


@pytest.fixture(scope="module")
def cluster(make_module_cluster, mxm, pki):
    c = make_module_cluster()
    tls_ingress(c, pki)
    c.start_all()
    return c


def received_of(m):
    received, _ = harness.strip_received(m.data)
    assert received, m.data[:300]
    return received.decode()


def test_starttls_relay_message_delivered(cluster, mxm, pki):
    token = uuid.uuid4().hex
    data = harness.make_message(token, rcpts=["tls@a.test"], lines=20)
    with smtplib.SMTP("127.0.0.1", cluster.port(mode="relay"), timeout=15) as s:
        code, text = s.ehlo("client.test")
        assert code == 250 and s.has_extn("starttls"), text
        code, text = s.starttls(context=pki.client_context())
        assert (code, text) == (220, b"2.0.0 Ready to start TLS")
        # The certificate is the configured one, verified through the chain.
        cert = s.sock.getpeercert()
        assert int(cert["serialNumber"], 16) == 1001, cert
        code, text = s.ehlo("client.test")
        assert code == 250 and not s.has_extn("starttls"), text   # not offered twice
        # No tenant has credentials in this cluster: AUTH is not offered at all.
        assert not s.has_extn("auth"), text
        assert s.docmd("AUTH", "PLAIN " + harness.sasl_plain("u", "p")) == (
            503, b"5.5.1 Error: authentication not enabled")
        s.sendmail("tls@client.test", ["tls@a.test"], data)
    (m,) = mxm.wait_token(token)
    received = received_of(m)
    assert re.search(r"\(using TLSv1\.3 with cipher TLS_[A-Z0-9_]+ \(\d+/\d+ bits\)\)", received), received
    assert "with ESMTPS id " in received, received
    assert harness.strip_received(m.data)[1] == data


def test_plaintext_relay_still_works(cluster, mxm):
    token = uuid.uuid4().hex
    data = harness.make_message(token, rcpts=["plain@b.test"], lines=5)
    r = harness.submit(cluster.port(mode="relay"), "p@client.test", ["plain@b.test"], data)
    assert r["data"][0] == 250, r
    (m,) = mxm.wait_token(token)
    received = received_of(m)
    assert "with ESMTP id " in received and "using TLS" not in received, received


def test_implicit_tls_greeting_after_handshake(cluster, pki):
    with smtplib.SMTP_SSL("127.0.0.1", cluster.port(mode="smtps"), timeout=15,
                          context=pki.client_context()) as s:
        # smtplib read the greeting through TLS: it came after the handshake.
        assert int(s.sock.getpeercert()["serialNumber"], 16) == 1001
        assert s.sock.version() in ("TLSv1.2", "TLSv1.3")
        code, text = s.ehlo("client.test")
        assert code == 250 and not s.has_extn("starttls"), text
        assert s.noop()[0] == 250


def test_plaintext_on_smtps_port_gets_no_greeting(cluster):
    """An smtps port speaks TLS first: a plaintext client gets no 220."""
    raw = socket.create_connection(("127.0.0.1", cluster.port(mode="smtps")), timeout=5)
    try:
        raw.settimeout(1.0)
        with pytest.raises(socket.timeout):
            raw.recv(100)       # nothing arrives: the server waits for a ClientHello
        raw.sendall(b"EHLO client.test\r\n")
        raw.settimeout(5.0)
        try:
            data = raw.recv(100)
        except ConnectionResetError:
            data = b""
        assert not data.startswith(b"220") and not data.startswith(b"250"), data
    finally:
        raw.close()


def test_starttls_on_submission(cluster, pki):
    with smtplib.SMTP("127.0.0.1", cluster.port(mode="submission"), timeout=15) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
        s.starttls(context=pki.client_context())
        s.ehlo("client.test")
        assert s.sock.version() == "TLSv1.3"


def test_tls12_accepted_tls11_refused(cluster, pki):
    port = cluster.port(mode="smtps")
    ctx = pki.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=15, context=ctx) as s:
        assert s.sock.version() == "TLSv1.2"
        assert s.noop()[0] == 250
    # A TLS 1.1 client: our own OpenSSL only offers 1.1 at security level 0.
    old = pki.client_context(minimum_version=ssl.TLSVersion.TLSv1_1,
                             maximum_version=ssl.TLSVersion.TLSv1_1)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    mark = cluster.log_of("ingress-1").mark()
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        smtplib.SMTP_SSL("127.0.0.1", port, timeout=15, context=old)
    ev = cluster.wait_event("tls_failed", node="ingress-1", since=mark)
    assert "unsupported protocol" in ev["error"], ev


def test_starttls_drops_pipelined_plaintext(cluster, pki):
    """RFC 3207 5: a command sent behind STARTTLS in the same packet is not
    executed after the handshake."""
    port = cluster.port(mode="relay")
    raw = harness.RawSmtp(port)
    try:
        assert raw.reply()[0] == 220
        assert raw.cmd("EHLO client.test")[0] == 250
        mark = cluster.log_of("ingress-1").mark()
        raw.send("STARTTLS\r\nRSET\r\n")
        assert raw.reply() == (220, ["220 2.0.0 Ready to start TLS"])
        assert raw.buf == b""
        tls = pki.client_context().wrap_socket(raw.sock, server_hostname="127.0.0.1")
        tls.settimeout(10)
        # If RSET had run, its 250 would come before the reply to NOOP;
        # EHLO then MAIL: the session was reset, so MAIL needs EHLO again.
        tls.sendall(b"MAIL FROM:<x@client.test>\r\n")
        first = tls.recv(4096)
        assert first.startswith(b"503 5.5.1 Error: send HELO/EHLO first"), first
        tls.sendall(b"NOOP\r\n")
        assert tls.recv(4096) == b"250 2.0.0 Ok\r\n"
        ev = cluster.wait_event("starttls_input_dropped", node="ingress-1", since=mark)
        assert ev["bytes"] == len(b"RSET\r\n")
        tls.sendall(b"QUIT\r\n")
        assert tls.recv(4096).startswith(b"221")
        tls.close()
    finally:
        raw.close()


def test_starttls_errors(cluster, pki):
    raw = harness.RawSmtp(cluster.port(mode="relay"))
    try:
        raw.reply()
        assert raw.cmd("STARTTLS")[0] == 503                 # before EHLO
        raw.cmd("EHLO client.test")
        assert raw.cmd("STARTTLS now")[1][-1].startswith("501 5.5.4")
    finally:
        raw.close()
    with smtplib.SMTP_SSL("127.0.0.1", cluster.port(mode="smtps"), timeout=15,
                          context=pki.client_context()) as s:
        s.ehlo("client.test")
        code, text = s.docmd("STARTTLS")
        assert (code, text) == (503, b"5.5.1 Error: TLS already active")


def test_swaks_starttls(cluster, mxm):
    token = uuid.uuid4().hex
    out = subprocess.run(
        ["swaks", "--server", "127.0.0.1:%d" % cluster.port(mode="relay"), "--tls",
         "--from", "swaks@client.test", "--to", "swaks-tls@c.test", "--helo", "swaks.client.test",
         "--header", "Subject: swaks %s" % token, "--body", "swaks tls %s" % token],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "<-  220 2.0.0 Ready to start TLS" in out.stdout, out.stdout
    assert re.search(r"^<~  250 2\.0\.0 Ok: queued as ", out.stdout, re.M), out.stdout
    (m,) = mxm.wait_token(token)
    assert "with ESMTPS id" in received_of(m)


def _peer_serial(port, pki):
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=15, context=pki.client_context()) as s:
        return int(s.sock.getpeercert()["serialNumber"], 16)


def test_sighup_reloads_certificate(make_cluster, mxm, pki):
    c = make_cluster()
    cert, key = tls_ingress(c, pki, name="reload-a", serial=0xA1)
    c.start_all()
    port = c.port(mode="smtps")
    assert _peer_serial(port, pki) == 0xA1

    # A session in TLS before the reload keeps working after it.
    old = smtplib.SMTP_SSL("127.0.0.1", port, timeout=15, context=pki.client_context())
    old.ehlo("client.test")

    new_cert, new_key = pki.server("reload-b", 0xB2)
    for src, dst in ((new_cert, cert), (new_key, key)):
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read())
    mark = c.log_of("ingress-1").mark()
    c.signal("all", signal.SIGHUP)
    ev = c.wait_event("tls_reloaded", node="ingress-1", since=mark)
    assert ev["serial"] == "B2" and "reload-b" in ev["subject"], ev
    assert _peer_serial(port, pki) == 0xB2
    assert old.noop()[0] == 250
    assert int(old.sock.getpeercert()["serialNumber"], 16) == 0xA1
    old.quit()

    # A broken certificate is refused and the current one stays.
    with open(cert, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    mark = c.log_of("ingress-1").mark()
    c.signal("all", signal.SIGHUP)
    ev = c.wait_event("tls_reload_failed", node="ingress-1", since=mark)
    assert cert in ev["error"], ev
    assert _peer_serial(port, pki) == 0xB2
    assert c.running("all")
