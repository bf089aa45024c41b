"""`hikyaku queue`: the admin command on a running sender's LMDB queue.

One `hikyaku all` cluster whose MX hosts defer chosen recipients once with a
scripted 451; the retry delay is an hour, so a deferred recipient waits in
the queue until the CLI acts. While the sender runs, the CLI (another
process on the same LMDB environment):
  - counts by domain and state, lists by domain and recipient, shows a
    message (text and --json);
  - retry: the recipient becomes due now and is delivered (the MX accepts
    the second RCPT);
  - delete: the recipient is gone and never delivered, even after a retry
    of everything;
  - bounce: the recipient is gone, and a DSN from <> reaches the original
    sender's MX, a multipart/report that Python's email package reads with
    the expected delivery-status fields (ENVID, ORCPT, action, status);
  - refuses bad usage (exit 2) and a missing queue or message (exit 1).
"""
import email
import email.policy
import json
import smtplib
import subprocess
import time
import uuid

import pytest

import harness

FROM = "owner@a.test"           # a.test's MX (127.0.0.10) takes the DSNs


@pytest.fixture
def cluster(make_cluster, mx):
    c = make_cluster()
    c.add_router()
    # A deferred recipient waits an hour: only the CLI moves it.
    c.add_sender(retry_min="1h", retry_max="1h")
    c.add_ingress()
    c.start_all()
    return c


def cli(c, *args, expect=0, json_out=False):
    """Run `hikyaku queue --config C.yaml --node sender-1 ARGS`; its stdout
    (parsed when json_out)."""
    argv = [harness.HIKYAKU_BIN, "queue", "--config", c.config_path, "--node", "sender-1"]
    argv += (["--json"] if json_out else []) + list(args)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=c.workdir)
    assert p.returncode == expect, "%r: exit %d\nstdout:\n%s\nstderr:\n%s" % (
        args, p.returncode, p.stdout, p.stderr)
    return json.loads(p.stdout) if json_out else p.stdout


def submit_deferred(c, mx, rcpt, token, mail_opts=(), rcpt_opts=()):
    """Submit one message to RCPT, whose MX answers its first RCPT with 451;
    wait until the sender has deferred it. Returns the queue id."""
    mx.for_domain(rcpt.split("@")[1]).script_rcpt(rcpt, "451 4.7.1 Try again later")
    s = smtplib.SMTP("127.0.0.1", c.port(), timeout=30)
    try:
        s.ehlo("client.test")
        assert s.mail(FROM, list(mail_opts))[0] == 250
        assert s.rcpt(rcpt, list(rcpt_opts))[0] == 250
        code, text = s.data(harness.make_message(token, sender=FROM, rcpts=[rcpt], lines=5))
        assert code == 250, text
        qid = harness.QUEUED_RE.match(text.decode()).group(1)
    finally:
        s.quit()
    c.wait_event("deferred", node="sender-1", timeout=15, id=qid, rcpt=rcpt)
    return qid


def rcpt_attempts(mx, rcpt):
    return [a for s in mx.servers.values() for a in s.rcpt_attempts if a[0].lower() == rcpt]


def test_counts_list_show_retry(cluster, mx):
    c = cluster
    tok1, tok2 = uuid.uuid4().hex, uuid.uuid4().hex
    q1 = submit_deferred(c, mx, "r1@b.test", tok1)
    q2 = submit_deferred(c, mx, "r2@c.test", tok2)

    counts = cli(c, "counts", json_out=True)
    by_domain = {d["domain"]: d for d in counts["domains"]}
    assert by_domain["b.test"] == {"domain": "b.test", "due": 0, "waiting": 1, "total": 1}
    assert by_domain["c.test"]["waiting"] == 1
    assert (counts["total"], counts["waiting"], counts["due"], counts["messages"]) == (2, 2, 0, 2)
    text = cli(c, "counts")
    assert "b.test" in text and "total" in text and "(2 messages)" in text

    listed = cli(c, "list", "--domain", "B.TEST", json_out=True)
    assert listed["count"] == 1 and not listed["truncated"]
    (r,) = listed["recipients"]
    assert (r["id"], r["idx"], r["rcpt"], r["domain"]) == (q1, 0, "r1@b.test", "b.test")
    assert r["attempts"] == 1 and r["state"] == "waiting"
    assert r["last_reply"].startswith("451 4.7.1"), r
    assert r["next_attempt_ms"] > time.time() * 1000 + 30 * 60 * 1000
    assert cli(c, "list", "--rcpt", "R2@c.test", json_out=True)["recipients"][0]["id"] == q2
    assert cli(c, "list", "--limit", "1", json_out=True)["truncated"] is True
    text = cli(c, "list", "--id", q2)
    assert q2 in text and "r2@c.test" in text and "451 4.7.1" in text and q1 not in text

    shown = cli(c, "show", q1, json_out=True)
    assert (shown["id"], shown["tenant"], shown["mail_from"]) == (q1, "default", FROM)
    assert shown["size"] > 0 and shown["received_at_ms"] > 0
    assert [x["rcpt"] for x in shown["recipients"]] == ["r1@b.test"]
    text = cli(c, "show", q1)
    assert "mail from:   <%s>" % FROM in text and "waiting for retry" in text

    # retry: due now, delivered at the sender's next scan (the MX accepts now).
    out = cli(c, "retry", "--domain", "b.test")
    assert out.startswith("retry: 1 recipient made due now"), out
    (m,) = mx.wait_token(tok1, timeout=15)
    assert m.rcpt_tos == ["r1@b.test"]
    c.wait_event("delivered", node="sender-1", timeout=10, id=q1)
    counts = cli(c, "counts", json_out=True)
    assert counts["total"] == 1 and [d["domain"] for d in counts["domains"]] == ["c.test"]
    # The other one was not touched.
    assert not mx.with_token(tok2)
    assert cli(c, "retry", "--id", "NO-SUCH-ID", json_out=True)["touched"] == 0


def test_delete(cluster, mx):
    c = cluster
    tok = uuid.uuid4().hex
    qid = submit_deferred(c, mx, "gone@c.test", tok)
    before = len(rcpt_attempts(mx, "gone@c.test"))

    out = cli(c, "delete", "--rcpt", "gone@c.test", json_out=True)
    assert (out["matched"], out["touched"]) == (1, 1), out
    assert cli(c, "list", json_out=True)["count"] == 0
    cli(c, "show", qid, expect=1)
    assert cli(c, "delete", "--id", qid) == "delete: 0 recipients deleted (0 matched)\n"

    # Nothing left to deliver, even when everything is made due.
    assert cli(c, "retry", "--all", json_out=True)["touched"] == 0
    time.sleep(1.0)     # five scans of the sender
    assert not mx.with_token(tok)
    assert len(rcpt_attempts(mx, "gone@c.test")) == before
    assert not c.find_events("delivered", "sender-1", id=qid)


def test_bounce_queues_a_dsn(cluster, mx):
    c = cluster
    tok = uuid.uuid4().hex
    qid = submit_deferred(c, mx, "busy@c.test", tok,
                          mail_opts=["RET=HDRS", "ENVID=env+2Bq"],
                          rcpt_opts=["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;first+2Bbusy@c.test"])

    out = cli(c, "bounce", "--id", qid, json_out=True)
    assert (out["matched"], out["touched"], out["failed"]) == (1, 1, 0), out
    (dsn,) = out["dsns"]
    assert (dsn["to"], dsn["about"], dsn["recipients"]) == (FROM, qid, 1)

    # The DSN goes out from <> to the sender, at a.test's MX.
    a = mx.for_domain("a.test")
    (m,) = a.wait_for(lambda ms: [x for x in ms if x.rcpt_tos == [FROM]], timeout=15,
                      what="the DSN at a.test")
    assert m.mail_from in ("", "<>"), m.mail_from
    c.wait_event("delivered", node="sender-1", timeout=10, id=dsn["id"])
    msg = email.message_from_bytes(m.data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    per_msg, per_rcpt = parts[1].get_payload()
    assert per_msg["Reporting-MTA"] == "dns; sender-1.hikyaku.test"
    assert per_msg["Original-Envelope-Id"] == "env+q"
    assert per_msg["X-Hikyaku-Queue-ID"] == qid
    assert per_rcpt["Final-Recipient"] == "rfc822; busy@c.test"
    assert per_rcpt["Original-Recipient"] == "rfc822;first+busy@c.test"
    assert per_rcpt["Action"] == "failed" and per_rcpt["Status"] == "5.0.0"
    assert "451 4.7.1" in per_rcpt["Diagnostic-Code"]
    assert ("Subject: test %s" % tok) in parts[2].get_payload()
    assert tok not in parts[0].get_payload()

    # The bounced recipient is gone and never delivered (only the DSN, which
    # returns the headers, holds the token).
    assert cli(c, "list", "--id", qid, json_out=True)["count"] == 0
    cli(c, "retry", "--all")
    time.sleep(1.0)
    assert mx.with_token(tok) == [m]


def test_bounce_without_dsn_and_usage(cluster, mx):
    c = cluster
    tok = uuid.uuid4().hex
    qid = submit_deferred(c, mx, "quiet@b.test", tok, rcpt_opts=["NOTIFY=NEVER"])
    out = cli(c, "bounce", "--rcpt", "quiet@b.test")
    assert "no DSN (no recipient asked for one (NOTIFY))" in out and "1 recipient bounced (1 matched), 0 DSNs queued" in out
    assert cli(c, "counts", json_out=True)["total"] == 0
    time.sleep(0.5)
    assert not [m for m in mx.messages() if m.mail_from in ("", "<>")]

    # Usage errors: 2; no queue, no message: 1.
    cli(c, "retry", expect=2)                           # no selector
    cli(c, "delete", "--all", "--domain", "a.test", expect=2)
    cli(c, "frobnicate", expect=2)
    cli(c, "counts", "--domain", "a.test", expect=2)
    cli(c, "show", expect=2)
    cli(c, "show", qid, expect=1)                       # bounced: gone
    p = subprocess.run([harness.HIKYAKU_BIN, "queue", "--queue", c.workdir + "/nope", "counts"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "no queue at" in p.stderr
    p = subprocess.run([harness.HIKYAKU_BIN, "queue", "--queue", c.nodes["sender-1"]["queue"],
                        "--json", "counts"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and json.loads(p.stdout)["total"] == 0
    assert "usage: hikyaku queue" in cli(c, "--help")
