"""Self-tests of the harness: the peers answer as the other tests assume."""
import smtplib
import socket
import sys

import dns.resolver
import pytest

import harness


def test_dnsmasq_answers_mx_a_and_nxdomain(dns_server):
    r = dns_server.resolver()
    for dom, addr in harness.DOMAIN_MX.items():
        mx = r.resolve(dom, "MX")
        assert [(x.preference, str(x.exchange).rstrip(".")) for x in mx] == [
            (10, harness.MX_HOSTS.get(addr, harness.SINK_HOST))]
        a = r.resolve(str(mx[0].exchange), "A")
        assert [x.address for x in a] == [addr]
    # case-insensitive, like the sender's lookups of mixed-case domains
    assert r.resolve("D03.Test", "MX")
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("nosuch.test", "MX")
    with pytest.raises(dns.resolver.NoAnswer):
        r.resolve("mx.a.test", "MX")


def test_free_port_is_free_and_unique():
    addrs = ("127.0.0.1", "127.0.0.10")
    ports = {harness.free_port(addrs, udp=True) for _ in range(20)}
    assert len(ports) == 20
    for p in ports:
        assert harness.port_is_free(p, addrs, udp=True)
    s = socket.socket()
    s.bind(("127.0.0.10", ports.pop()))
    s.listen()
    try:
        assert not harness.port_is_free(s.getsockname()[1], addrs)
    finally:
        s.close()


def test_scripted_mx_records_and_scripts(mx):
    a = mx["127.0.0.10"]
    a.script_rcpt("x@a.test", "450 4.2.0 busy", "550 5.1.1 no such user")
    a.script_data("421 4.3.0 try later")
    data = harness.make_message("tok1", rcpts=["x@a.test", "y@a.test"])
    s = smtplib.SMTP("127.0.0.10", mx.port, local_hostname="helo.client.test",
                     source_address=("127.0.0.2", 0))
    s.ehlo("helo.client.test")
    s.mail("from@client.test")
    assert s.rcpt("x@a.test") == (450, b"4.2.0 busy")
    assert s.rcpt("y@a.test")[0] == 250
    assert s.data(data)[0] == 421           # scripted DATA reply, recorded as rejected
    s.rset()
    s.mail("from@client.test")
    assert s.rcpt("X@A.test")[0] == 550     # scripts match case-insensitively
    assert s.rcpt("y@a.test")[0] == 250
    assert s.data(data)[0] == 250
    s.quit()
    (m,) = a.wait_for(lambda ms: ms, what="the accepted message")
    assert (m.mx, m.peer, m.helo, m.mail_from, m.rcpt_tos) == (
        "127.0.0.10", "127.0.0.2", "helo.client.test", "from@client.test", ["y@a.test"])
    assert m.data == data                   # dot-unstuffed by aiosmtpd, CRLF kept
    assert len(a.transactions) == 2 and not a.transactions[0].accepted
    assert [r for r, *_ in a.rcpt_attempts] == ["x@a.test", "y@a.test", "X@A.test", "y@a.test"]
    assert mx.with_token("tok1") == [m]


def test_mx_stop_and_restart_same_address(mx):
    b = mx["127.0.0.11"]
    mx.stop("127.0.0.11")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.11", mx.port), timeout=2).close()
    mx.start("127.0.0.11")
    s = smtplib.SMTP("127.0.0.11", mx.port)
    s.sendmail("f@client.test", ["z@b.test"], harness.make_message("tok2", lines=3))
    s.quit()
    assert b.wait_for(lambda ms: [m for m in ms if b"tok2" in m.data])


def test_smtp_sink_counts(tmp_path, mx_port):
    group = harness.ProcessGroup()
    try:
        sink = harness.SmtpSink(group, str(tmp_path), port=mx_port).start()
        with pytest.raises(RuntimeError):   # a second sink would share the port
            harness.SmtpSink(group, str(tmp_path), port=mx_port).start()
        for i in range(3):
            s = smtplib.SMTP(harness.SINK_ADDR, mx_port)
            s.sendmail("f@client.test", ["r@sink.test"], harness.make_message("s%d" % i, lines=2))
            s.quit()
        harness.wait_until(lambda: sink.count() == 3, 5, "smtp-sink to count 3")
    finally:
        group.close()
    assert not sink.proc.alive()


def test_process_group_stops_everything(tmp_path):
    group = harness.ProcessGroup()
    ignores_term = group.start("stubborn", [sys.executable, "-c",
                               "import signal,time;signal.signal(signal.SIGTERM,signal.SIG_IGN);"
                               "print('{\"event\":\"up\",\"n\":1}',flush=True);time.sleep(60)"],
                               str(tmp_path / "a.log"))
    polite = group.start("polite", ["sleep", "60"], str(tmp_path / "b.log"))
    ev = ignores_term.log.wait("up", timeout=10, n=1)
    assert ev == {"event": "up", "n": 1}
    assert ignores_term.stop(timeout=0.5) == (-9, True)
    group.close()
    assert not polite.alive() and polite.returncode() == -15


def test_strip_received():
    body = b"Subject: x\r\n\r\nhi\r\n"
    hdr = b"Received: from a\r\n\tby b;\r\n (comment)\r\n"
    assert harness.strip_received(hdr + body) == (hdr, body)
    assert harness.strip_received(body) == (b"", body)


def test_dot_stuff():
    assert harness.dot_stuff(b".a\r\n.\r\nb\r\n..c\r\n") == b"..a\r\n..\r\nb\r\n...c\r\n"
    assert harness.dot_stuff(b"a.\r\n") == b"a.\r\n"


def test_cluster_close_reports_bad_exit_and_sanitizer(tmp_path, monkeypatch, dns_server, mx_port):
    fake = tmp_path / "fake-hikyaku"
    fake.write_text("#!/bin/sh\n"
                    "echo '==1==ERROR: LeakSanitizer: detected memory leaks' >&2\n"
                    "trap 'exit 3' TERM\n"
                    "echo '{\"event\":\"ingress_listening\",\"node\":\"ingress-1\"}'\n"
                    "while :; do sleep 0.05; done\n")
    fake.chmod(0o755)
    monkeypatch.setattr(harness, "HIKYAKU_BIN", str(fake))
    c = harness.Cluster(str(tmp_path), dns_server, mx_port)
    c.add_router()
    c.add_ingress()
    p = c.start_all(wait=False)
    c.wait_event("ingress_listening", node="ingress-1")
    problems = c.close()
    assert not p.alive()
    assert len(problems) == 2, problems
    assert "exited with 3 on SIGTERM" in problems[0]
    assert "LeakSanitizer" in problems[1]
    text = open(c.config_path).read()
    assert "  ingress-1:\n    role: ingress\n" in text and '    submit_timeout: "3s"\n' in text
