"""SMTP AUTH, tenants and relay control at the ingress, end to end: PLAIN and
LOGIN (smtplib, swaks, raw), only over TLS unless a listener allows
plaintext, submission and smtps requiring AUTH, relay networks, sender
domains per tenant, the credentials file (a Kubernetes Secret), the tenant
reaching the sender, and the RFC 4954 error replies."""
import base64
import re
import smtplib
import subprocess
import uuid

import pytest

import harness

ACME_USER, ACME_PW = "acme-relay", "correct horse battery staple"
BETA_USER, BETA_PW = "beta@beta.test", "s3cr3t:with:colons"
OPEN_USER, OPEN_PW = "plain-user", "plaintext-ok"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return harness.TestPki(str(tmp_path_factory.mktemp("pki")))


def auth_cluster(c, pki, workdir):
    cert, key = pki.server("auth", 77)
    # beta's credentials come from a file, as a Kubernetes Secret would be mounted.
    creds = "%s/beta-credentials" % workdir
    with open(creds, "w") as f:
        f.write("# user:hash\n%s:%s\n" % (BETA_USER, harness.passwd_hash(BETA_PW)))
    c.tenants = {
        "acme": {"credentials": [{"user": ACME_USER, "password_hash": harness.passwd_hash(ACME_PW)}],
                 "sender_domains": ["acme.test"], "pool": "acme-dedicated", "rate_limit": "100/s"},
        "beta": {"credentials_file": creds, "sender_domains": ["beta.test"]},
        "open": {"credentials": [{"user": OPEN_USER, "password_hash": harness.passwd_hash(OPEN_PW)}]},
        "local": {},
        "slow": {"credentials": [{"user": "slow", "password_hash": harness.passwd_hash("slow-pw")}],
                 "rate_limit": "2/h"},
    }
    c.add_router()
    c.add_sender()
    listeners = [{"address": "127.0.0.1:%d" % harness.free_port(), "mode": "relay"},
                 {"address": "127.0.0.1:%d" % harness.free_port(), "mode": "submission"},
                 {"address": "127.0.0.1:%d" % harness.free_port(), "mode": "smtps"},
                 {"address": "127.0.0.1:%d" % harness.free_port(), "mode": "submission",
                  "allow_plaintext_auth": True}]
    # These tests fail AUTH from 127.0.0.1 many times on purpose; the limit
    # across sessions has its own test (test_limits.py).
    c.add_ingress(listeners=listeners, relay_networks=["127.0.0.1/32"], network_tenant="local",
                  tls={"certificate": cert, "key": key}, auth_failure_limit=1000)


@pytest.fixture(scope="module")
def cluster(make_module_cluster, mxm, pki, tmp_path_factory):
    c = make_module_cluster()
    auth_cluster(c, pki, str(tmp_path_factory.mktemp("creds")))
    c.start_all()
    return c


def plaintext_port(c):
    return int(c.nodes["ingress-1"]["listeners"][3]["address"].rsplit(":", 1)[1])


def starttls(c, pki, mode="submission", source=None):
    s = smtplib.SMTP("127.0.0.1", c.port(mode=mode), timeout=15,
                     source_address=(source, 0) if source else None)
    s.ehlo("client.test")
    s.starttls(context=pki.client_context())
    s.ehlo("client.test")
    return s


def send(s, mail_from, rcpt, token):
    data = harness.make_message(token, sender=mail_from, rcpts=[rcpt], lines=10)
    s.sendmail(mail_from, [rcpt], data)
    return data


def test_auth_plain_after_starttls_delivers_as_tenant(cluster, mxm, pki):
    token = uuid.uuid4().hex
    with starttls(cluster, pki) as s:
        assert s.has_extn("auth") and "PLAIN" in s.esmtp_features["auth"].split()
        mark = cluster.log_of("ingress-1").mark()
        code, text = s.auth("PLAIN", lambda challenge=None: "\0%s\0%s" % (ACME_USER, ACME_PW),
                            initial_response_ok=True)
        assert (code, text) == (235, b"2.7.0 Authentication successful")
        data = send(s, "news@acme.test", "reader@a.test", token)
    (m,) = mxm.wait_token(token)
    assert harness.strip_received(m.data)[1] == data
    received = harness.strip_received(m.data)[0].decode()
    assert "with ESMTPSA id" in received, received
    assert ACME_USER not in received and "acme" not in received.split(" id ")[0], received
    ev = cluster.wait_event("accepted", node="ingress-1", since=mark,
                            pred=lambda e: e["from"] == "news@acme.test")
    assert (ev["tenant"], ev["user"], ev["tls"]) == ("acme", ACME_USER, "TLSv1.3"), ev
    # The tenant travels with the message to the sender.
    cluster.wait_event("queued", node="sender-1", pred=lambda e: e["id"] == ev["id"] and e["tenant"] == "acme")


def test_auth_login_on_smtps_with_credentials_file(cluster, mxm, pki):
    token = uuid.uuid4().hex
    with smtplib.SMTP_SSL("127.0.0.1", cluster.port(mode="smtps"), timeout=15,
                          context=pki.client_context()) as s:
        s.ehlo("client.test")
        assert "LOGIN" in s.esmtp_features["auth"].split()
        s.user, s.password = BETA_USER, BETA_PW
        code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        assert code == 235
        send(s, "bob@mail.beta.test", "reader@b.test", token)   # a subdomain of beta.test
    (m,) = mxm.wait_token(token)
    assert "with ESMTPSA id" in harness.strip_received(m.data)[0].decode()


def test_auth_not_offered_without_tls(cluster):
    for mode in ("relay", "submission"):
        raw = harness.RawSmtp(cluster.port(mode=mode))
        try:
            raw.reply()
            code, lines = raw.cmd("EHLO client.test")
            assert code == 250 and not any("AUTH" in l for l in lines), lines
            assert any("STARTTLS" in l for l in lines), lines
            code, lines = raw.cmd("AUTH PLAIN " + harness.sasl_plain(ACME_USER, ACME_PW))
            assert lines == ["538 5.7.11 Encryption required for requested authentication mechanism"]
        finally:
            raw.close()


def test_plaintext_auth_where_allowed(cluster, mxm):
    token = uuid.uuid4().hex
    with smtplib.SMTP("127.0.0.1", plaintext_port(cluster), timeout=15) as s:
        s.ehlo("client.test")
        assert s.has_extn("auth") and s.has_extn("starttls")
        s.login(OPEN_USER, OPEN_PW)
        send(s, "any@any-domain.test", "x@c.test", token)   # no sender_domains: any
    (m,) = mxm.wait_token(token)
    assert "with ESMTPA id" in harness.strip_received(m.data)[0].decode()


def test_wrong_password_and_unknown_user(cluster, pki):
    with starttls(cluster, pki) as s:
        for user, pw in ((ACME_USER, "wrong"), ("nobody", ACME_PW)):
            with pytest.raises(smtplib.SMTPAuthenticationError) as e:
                s.auth("PLAIN", lambda challenge=None, u=user, p=pw: "\0%s\0%s" % (u, p))
            assert (e.value.smtp_code, e.value.smtp_error) == (535, b"5.7.8 Error: authentication failed")
        # Still unauthenticated: submission wants AUTH before MAIL.
        assert s.mail("news@acme.test") == (530, b"5.7.0 Authentication required")


def test_three_failures_disconnect(cluster, pki):
    s = starttls(cluster, pki)
    for i in range(3):
        code, text = s.docmd("AUTH", "PLAIN " + harness.sasl_plain(ACME_USER, "bad%d" % i))
        assert code == 535, (code, text)
    # The 421 follows the third 535; then the server closes.
    assert s.getreply()[0] == 421
    with pytest.raises(smtplib.SMTPServerDisconnected):
        s.noop()
    s.close()


def test_submission_requires_auth_even_from_relay_network(cluster, pki):
    with starttls(cluster, pki) as s:
        assert s.mail("x@local.test") == (530, b"5.7.0 Authentication required")


def test_relay_control(cluster, mxm, pki):
    port = cluster.port(mode="relay")
    # 127.0.0.5 is not in relay_networks: no relaying without AUTH.
    r = harness.submit(port, "x@client.test", ["y@a.test"], b"Subject: x\r\n\r\nx\r\n", source="127.0.0.5")
    assert r["rcpt"] == [(554, b"5.7.1 Relay access denied")] and r["data"] is None, r
    # From 127.0.0.1 (relay_networks), as network_tenant, any sender domain.
    token = uuid.uuid4().hex
    r = harness.submit(port, "x@client.test", ["y@a.test"], harness.make_message(token, lines=3))
    assert r["data"][0] == 250, r
    ev = cluster.wait_event("accepted", node="ingress-1", pred=lambda e: e["id"] == r["queue_id"])
    assert (ev["tenant"], ev["user"]) == ("local", ""), ev
    # From 127.0.0.5 after AUTH on the relay listener: allowed, as the tenant.
    token = uuid.uuid4().hex
    with starttls(cluster, pki, mode="relay", source="127.0.0.5") as s:
        s.login(ACME_USER, ACME_PW)
        send(s, "a@acme.test", "z@b.test", token)
    (m,) = mxm.wait_token(token)
    assert m.rcpt_tos == ["z@b.test"]


def test_sender_domains(cluster, pki):
    with starttls(cluster, pki) as s:
        s.login(ACME_USER, ACME_PW)
        assert s.mail("ceo@other.test") == (553, b"5.7.1 Sender address not owned by tenant acme")
        assert s.mail("x@notacme.test") == (553, b"5.7.1 Sender address not owned by tenant acme")
        assert s.mail("x@evil.acme.test.example")[0] == 553
        assert s.mail("x@Mail.ACME.test")[0] == 250     # subdomain, any case
        s.rset()
        assert s.mail("")[0] == 250                       # the null sender: bounces, DSNs


def raw_tls(cluster, pki, mode="submission"):
    raw = harness.RawSmtp(cluster.port(mode=mode))
    raw.reply()
    raw.cmd("EHLO client.test")
    assert raw.cmd("STARTTLS")[0] == 220
    raw.sock = pki.client_context().wrap_socket(raw.sock, server_hostname="127.0.0.1")
    assert raw.cmd("EHLO client.test")[0] == 250
    return raw


def test_auth_protocol_errors(cluster, pki):
    raw = raw_tls(cluster, pki)
    try:
        assert raw.cmd("AUTH CRAM-MD5")[1] == ["504 5.5.4 Unrecognized authentication type"]
        assert raw.cmd("AUTH")[1][0].startswith("501 5.5.4")
        assert raw.cmd("AUTH PLAIN not*base64")[1] == ["501 5.5.2 Invalid base64 data"]
        # The three-step form, cancelled.
        assert raw.cmd("AUTH PLAIN") == (334, ["334 "])
        assert raw.cmd("*") == (501, ["501 5.0.0 Authentication cancelled"])
        assert raw.cmd("AUTH LOGIN") == (334, ["334 VXNlcm5hbWU6"])
        assert raw.cmd(base64.b64encode(ACME_USER.encode()).decode()) == (334, ["334 UGFzc3dvcmQ6"])
        assert raw.cmd("*")[0] == 501
        # An authorization identity other than the user: refused.
        assert raw.cmd("AUTH PLAIN " + harness.sasl_plain(ACME_USER, ACME_PW, authzid="admin"))[0] == 535
        # The same, as its own user: fine; then a second AUTH is refused.
        assert raw.cmd("AUTH PLAIN")[0] == 334
        assert raw.cmd(harness.sasl_plain(ACME_USER, ACME_PW, authzid=ACME_USER))[0] == 235
        assert raw.cmd("AUTH PLAIN " + harness.sasl_plain(ACME_USER, ACME_PW)) == (
            503, ["503 5.5.1 Error: already authenticated"])
    finally:
        raw.close()
    raw = raw_tls(cluster, pki, mode="relay")
    try:
        assert raw.cmd("MAIL FROM:<x@client.test>")[0] == 250   # relay network, no AUTH
        assert raw.cmd("AUTH PLAIN " + harness.sasl_plain(ACME_USER, ACME_PW))[1] == [
            "503 5.5.1 Error: MAIL transaction in progress"]
    finally:
        raw.close()


def test_pipelined_commands_wait_for_the_check(cluster, pki):
    """Commands sent behind AUTH run only after the check, in order, and see
    its outcome."""
    raw = raw_tls(cluster, pki)
    try:
        raw.send("AUTH PLAIN %s\r\nMAIL FROM:<p@acme.test>\r\nRCPT TO:<q@a.test>\r\nRSET\r\n"
                 % harness.sasl_plain(ACME_USER, ACME_PW))
        assert raw.reply() == (235, ["235 2.7.0 Authentication successful"])
        assert raw.reply()[0] == 250
        assert raw.reply()[0] == 250
        assert raw.reply()[0] == 250
    finally:
        raw.close()
    raw = raw_tls(cluster, pki)
    try:
        raw.send("AUTH PLAIN %s\r\nMAIL FROM:<p@acme.test>\r\n" % harness.sasl_plain(ACME_USER, "nope"))
        assert raw.reply()[0] == 535
        assert raw.reply() == (530, ["530 5.7.0 Authentication required"])
    finally:
        raw.close()


def test_successful_check_is_cached(cluster, pki):
    user, pw = OPEN_USER, OPEN_PW
    results = []
    for _ in range(3):
        mark = cluster.log_of("ingress-1").mark()
        with starttls(cluster, pki) as s:
            s.login(user, pw)
        ev = cluster.wait_event("auth_success", node="ingress-1", since=mark, user=user)
        results.append(ev["cached"])
    # The first may be cached from an earlier test; from the second on, always.
    assert results[1:] == [True, True], results
    # A wrong password is never answered from the cache.
    mark = cluster.log_of("ingress-1").mark()
    with starttls(cluster, pki) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(user, pw + "x")
    cluster.wait_event("auth_failed", node="ingress-1", since=mark, user=user)


def test_client_leaves_while_check_runs(cluster, pki):
    mark = cluster.log_of("ingress-1").mark()
    for _ in range(5):
        raw = raw_tls(cluster, pki)
        raw.send("AUTH PLAIN %s\r\n" % harness.sasl_plain(BETA_USER, "wrong-%s" % uuid.uuid4().hex))
        raw.close()
    # At least one left while its password was being checked (the session
    # cancels the check; the node must not touch the freed session after).
    cluster.wait_event("smtp_disconnect", node="ingress-1", since=mark, state="AUTH_PENDING")
    # The node is fine and answers the next client.
    with starttls(cluster, pki) as s:
        s.login(ACME_USER, ACME_PW)
    assert cluster.running("ingress-1")


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_auth(cluster, mxm, mech):
    token = uuid.uuid4().hex
    out = subprocess.run(
        ["swaks", "--server", "127.0.0.1:%d" % cluster.port(mode="submission"), "--tls",
         "--auth", mech, "--auth-user", ACME_USER, "--auth-password", ACME_PW,
         "--from", "swaks@acme.test", "--to", "swaks-%s@c.test" % mech.lower(),
         "--helo", "swaks.client.test", "--header", "Subject: swaks %s" % token,
         "--body", "swaks auth %s" % token],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "<~  235 2.7.0 Authentication successful" in out.stdout, out.stdout
    assert re.search(r"^<~  250 2\.0\.0 Ok: queued as ", out.stdout, re.M), out.stdout
    (m,) = mxm.wait_token(token)
    assert m.mail_from == "swaks@acme.test"


def test_unknown_network_tenant_is_a_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tenants:\n  acme: {}\nnodes:\n  r:\n    role: router\n    front: tcp://127.0.0.1:1\n"
                    "    back: tcp://127.0.0.1:2\n  i:\n    role: ingress\n    listen: 127.0.0.1:1\n"
                    "    routers: [r]\n    network_tenant: ghost\n")
    r = subprocess.run([harness.HIKYAKU_BIN, "ingress", "--config", str(path), "--node", "i"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1
    assert "%s:8: key 'network_tenant': node 'i' names tenant 'ghost'" % path in r.stdout, r.stdout


def test_tenant_rate_limit(cluster, pki):
    with starttls(cluster, pki) as s:
        s.login("slow", "slow-pw")
        for _ in range(2):
            assert s.mail("a@slow.test")[0] == 250
            s.rset()
        code, text = s.mail("a@slow.test")
        assert code == 451 and re.match(rb"4\.7\.1 Message rate limit exceeded for tenant slow, "
                                        rb"try again in (\d+) s$", text), (code, text)
        assert 1700 <= int(text.split()[-2]) <= 1800   # half an hour for one of 2/h
    # Another tenant is not affected.
    with starttls(cluster, pki) as s:
        s.login(ACME_USER, ACME_PW)
        assert s.mail("a@acme.test")[0] == 250


def test_passwords_never_logged(cluster):
    with open(cluster.log_of("ingress-1").path, "rb") as f:
        log = f.read()
    for pw in (ACME_PW, BETA_PW, OPEN_PW):
        assert pw.encode() not in log
        assert harness.sasl_plain(ACME_USER, pw).encode() not in log


def test_postfix_customer_relays_through_submission(cluster, mxm, pki, tmp_path):
    """A customer's Postfix, configured as an ESP tells its customers to:
    relayhost = our submission port, SASL PLAIN over mandatory STARTTLS.
    A message handed to that Postfix arrives at the recipient's MX."""
    import os
    import shutil
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
    from peer_postfix import PostfixRelay

    class CustomerPostfix(PostfixRelay):
        """The benchmark relay, plus tlsmgr: its SMTP client does TLS here."""

        def _master_cf(self):
            return super()._master_cf() + "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n"

    work = tmp_path / "postfix"
    work.mkdir()
    conf = tmp_path / "postfix-files"
    conf.mkdir()
    sub_port = cluster.port(mode="submission")
    shutil.copy(pki.ca, conf / "ca.pem")
    (conf / "relay_password").write_text("[127.0.0.1]:%d %s:%s\n" % (sub_port, ACME_USER, ACME_PW))
    listen = harness.free_port()
    relay = CustomerPostfix(str(work), listen, "127.0.0.1", sub_port, sessions=5, overrides={
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": "hash:%s/relay_password" % conf,
        "smtp_sasl_security_options": "noanonymous",
        "smtp_sasl_tls_security_options": "noanonymous",
        "smtp_tls_security_level": "encrypt",
        "smtp_tls_CAfile": "%s/ca.pem" % conf,
        "smtp_tls_loglevel": "1",
    })
    relay._write_config()     # postmap needs the instance's main.cf
    r = subprocess.run(["postmap", "-c", relay.config_dir, "hash:%s/relay_password" % conf],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for f in conf.iterdir():
        f.chmod(0o644)
    conf.chmod(0o755)
    token = uuid.uuid4().hex
    mark = cluster.log_of("ingress-1").mark()
    relay.start()
    try:
        data = harness.make_message(token, sender="orders@shop.acme.test", rcpts=["buyer@a.test"], lines=30)
        r = harness.submit(listen, "orders@shop.acme.test", ["buyer@a.test"], data)
        assert r["data"][0] == 250, r
        (m,) = mxm.wait_token(token, timeout=30)
        assert m.mail_from == "orders@shop.acme.test" and m.rcpt_tos == ["buyer@a.test"]
        ours, rest = harness.strip_received(m.data)
        ours = ours.decode()
        assert "with ESMTPSA id" in ours and "(using TLSv1.3 with cipher" in ours, ours
        assert b"postfix-peer.bench.test" in rest      # Postfix's own Received header below ours
        ev = cluster.wait_event("auth_success", node="ingress-1", since=mark, user=ACME_USER)
        assert (ev["tenant"], ev["mechanism"]) == ("acme", "PLAIN"), ev
        harness.wait_until(lambda: "status=sent" in relay.log_tail(200), 10, "postfix to log status=sent")
        log = relay.log_tail(200)
        # Trusted: Postfix checked our chain up to the test root it was given.
        assert re.search(r"Trusted TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:%d: "
                         r"TLSv1\.3" % sub_port, log), log
        assert re.search(r"to=<buyer@a\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:%d, .*status=sent "
                         r"\(250 2\.0\.0 Ok: queued as [0-9A-Z]{26}\)" % sub_port, log), log
    finally:
        relay.stop()
