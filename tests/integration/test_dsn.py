"""Delivery status notifications for the sender's own outcomes (RFC 3464),
read back at the envelope sender's MX with Python's email parser.

- 550 5.1.1 for one recipient: a failure DSN reaches the sender's domain,
  from <>, a multipart/report naming that recipient only (Action failed,
  Status 5.1.1, the remote reply), with ENVID and ORCPT carried back.
- NOTIFY=NEVER and the null sender <>: no DSN.
- NOTIFY=DELAY with delay_warning_time 0: one delay DSN at the first
  deferral, none at the next; then the recipient is delivered.
- A recipient deferred until max_lifetime: expired, a failure DSN with
  Status 5.4.7.
"""
import email
import email.policy
import smtplib
import uuid

import pytest

import harness

SENDER = "owner@b.test"         # b.test's MX gets the DSNs


@pytest.fixture
def cluster(make_cluster, mx):
    def make(**sender_kw):
        c = make_cluster()
        c.add_router()
        kw = dict(retry_min="1s", retry_max="1s")
        kw.update(sender_kw)
        c.add_sender(**kw)
        c.add_ingress()
        c.start_all()
        return c
    return make


def _submit(c, rcpts, mail_from=SENDER, mail_options=(), rcpt_options=()):
    tok = uuid.uuid4().hex[:16]
    s = smtplib.SMTP("127.0.0.1", c.port(), timeout=30)
    try:
        s.ehlo("client.test")
        s.sendmail(mail_from, rcpts, harness.make_message(tok, rcpts=rcpts, lines=3),
                   mail_options=list(mail_options), rcpt_options=list(rcpt_options))
    finally:
        s.quit()
    return tok


def _dsns(mx):
    """The DSNs that reached b.test's MX, parsed."""
    out = []
    for m in mx.for_domain("b.test").messages:
        if m.mail_from in ("", "<>") and m.rcpt_tos == [SENDER]:
            out.append(email.message_from_bytes(m.data, policy=email.policy.default))
    return out


def _report(msg):
    """(per-message fields, [per-recipient fields]) of a DSN."""
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert parts[0].get_content_type() == "text/plain"
    assert parts[1].get_content_type() == "message/delivery-status"
    blocks = [dict(b.items()) for b in parts[1].get_payload()]
    return blocks[0], blocks[1:]


def test_failure_dsn_for_the_bounced_recipient_only(cluster, mx):
    c = cluster()
    mx.for_domain("a.test").script_rcpt("gone@a.test", "550 5.1.1 <gone@a.test>: no such user")
    tok = _submit(c, ["gone@a.test", "here@a.test"], mail_options=["RET=HDRS", "ENVID=env-42"],
                  rcpt_options=["NOTIFY=FAILURE"])
    mx.wait_token(tok)
    harness.wait_until(lambda: _dsns(mx), 15, "a DSN at b.test's MX")
    (dsn,) = _dsns(mx)
    assert dsn["To"] == SENDER and dsn["Auto-Submitted"] == "auto-replied"
    per_msg, rcpts = _report(dsn)
    assert per_msg["Original-Envelope-Id"] == "env-42"
    assert per_msg["Reporting-MTA"] == "dns; sender-1.hikyaku.test"
    assert len(rcpts) == 1, rcpts
    r = rcpts[0]
    assert r["Final-Recipient"] == "rfc822; gone@a.test"
    assert r["Action"] == "failed" and r["Status"] == "5.1.1"
    assert "no such user" in r["Diagnostic-Code"] and r["Diagnostic-Code"].startswith("smtp;")
    assert list(dsn.iter_parts())[2].get_content_type() == "text/rfc822-headers"
    ev = c.wait_event("dsn_queued", node="sender-1")
    assert ev["to"] == SENDER and ev["rcpts"] == 1


def test_no_dsn_for_notify_never_or_the_null_sender(cluster, mx):
    c = cluster()
    a = mx.for_domain("a.test")
    a.script_rcpt("never@a.test", "550 5.1.1 no such user")
    a.script_rcpt("null@a.test", "550 5.1.1 no such user")
    _submit(c, ["never@a.test"], rcpt_options=["NOTIFY=NEVER"])
    _submit(c, ["null@a.test"], mail_from="")
    harness.wait_until(lambda: len(c.find_events("bounced", "sender-1")) >= 2, 15, "two bounces")
    # A DSN that is due goes into the commit of the bounce itself: by now it
    # would have been queued.
    assert not c.find_events("dsn_queued", "sender-1")
    # And a bounce that does want one, after them, is the only DSN.
    a.script_rcpt("want@a.test", "550 5.1.1 no such user")
    _submit(c, ["want@a.test"])
    harness.wait_until(lambda: _dsns(mx), 15, "a DSN at b.test's MX")
    (dsn,) = _dsns(mx)
    assert _report(dsn)[1][0]["Final-Recipient"] == "rfc822; want@a.test"


def test_delay_dsn_once_when_asked(cluster, mx):
    c = cluster(delay_warning_time="0s")
    mx.for_domain("a.test").script_rcpt("slow@a.test", "451 4.2.0 try later", "452 4.2.2 full")
    tok = _submit(c, ["slow@a.test"], rcpt_options=["NOTIFY=DELAY,FAILURE"])
    # Delivered after two deferrals (the DSN carries the token too).
    harness.wait_until(lambda: [m for m in mx.for_domain("a.test").messages
                                if tok.encode() in m.data], 20, "slow@a.test delivered")
    harness.wait_until(lambda: _dsns(mx), 15, "a delay DSN")
    dsns = _dsns(mx)
    assert len(dsns) == 1, [d["Subject"] for d in dsns]
    assert len(c.find_events("deferred", "sender-1")) == 2
    _, rcpts = _report(dsns[0])
    assert rcpts[0]["Action"] == "delayed" and rcpts[0]["Status"] == "4.2.0", rcpts
    assert "Will-Retry-Until" in rcpts[0]


def test_expiry_dsn(cluster, mx):
    c = cluster(max_lifetime="2s")
    mx.for_domain("a.test").script_rcpt("late@a.test", *(["451 4.3.0 later"] * 20))
    _submit(c, ["late@a.test"])
    c.wait_event("expired", node="sender-1", timeout=20, rcpt="late@a.test")
    harness.wait_until(lambda: _dsns(mx), 15, "an expiry DSN")
    (dsn,) = _dsns(mx)
    _, rcpts = _report(dsn)
    assert rcpts[0]["Action"] == "failed" and rcpts[0]["Status"] == "5.4.7", rcpts
    assert "later" in rcpts[0]["Diagnostic-Code"]
