"""Per-destination limits of the sender, seen from real MX hosts.

- 1,000 messages to one domain travel over at most max_connections_per_domain
  sessions at once (the MX counts open sessions), reusing them.
- A domain whose MX does not answer is backed off as a whole: after the
  first failures one probe at a time, not every queued message trying in
  turn; once the MX answers, everything queued for it is delivered.
"""
import smtplib
import uuid

import harness

LIMIT = 3


def _send_many(port, rcpt, n, tag):
    """N messages to RCPT over few client sessions (50 per session)."""
    toks = []
    s = None
    for i in range(n):
        if i % 50 == 0:
            if s is not None:
                s.quit()
            s = smtplib.SMTP("127.0.0.1", port, timeout=30)
            s.ehlo("client.test")
        tok = "%s%04d-%s" % (tag, i, uuid.uuid4().hex[:8])
        s.sendmail("from@client.test", [rcpt], harness.make_message(tok, rcpts=[rcpt], lines=1))
        toks.append(tok)
    s.quit()
    return toks


def test_thousand_messages_within_the_connection_limit(make_cluster, mx):
    c = make_cluster()
    c.add_router()
    c.add_sender(max_deliveries=50, max_connections_per_domain=LIMIT,
                 connection_cache_time="5s", connection_reuse_limit=100)
    c.add_ingress()
    c.start_all()
    server = mx.for_domain("a.test")

    toks = _send_many(c.port(), "many@a.test", 1000, "lim")
    harness.wait_until(lambda: len(server.messages) >= 1000, 120,
                       "1,000 messages at the MX of a.test", interval=0.5)
    got = harness.arrivals_by_message_id(mx)
    assert all(got.get((t, "many@a.test")) == 1 for t in toks)
    assert server.max_sessions <= LIMIT, "%d sessions at once, limit %d" % (
        server.max_sessions, LIMIT)
    # Reused, not one connection per message.
    assert server.connections < 100, server.connections
    print("1,000 messages: %d connections, at most %d at once" % (
        server.connections, server.max_sessions))


def test_failing_domain_is_backed_off_as_a_whole(make_cluster, mx):
    c = make_cluster()
    c.add_router()
    c.add_sender(max_connections_per_domain=2, connect_timeout="1s",
                 retry_min="1s", retry_max="2s")
    c.add_ingress()
    c.start_all()
    addr = harness.DOMAIN_MX["c.test"]
    mx.stop(addr)

    toks = _send_many(c.port(), "down@c.test", 20, "bo")
    c.wait_event("domain_backoff", node="sender-1", timeout=20, domain="c.test", failures=3)
    # Two jobs at first (the limit), then one probe per back-off period.
    deferred = c.find_events("deferred", "sender-1", domain="c.test")
    assert len(deferred) <= 4, deferred
    queued = sum(e["rcpts"] for e in c.find_events("queued", "sender-1"))
    assert queued == 20

    mx.start(addr)
    for t in toks:
        mx.wait_token(t, timeout=30)
    c.wait_event("domain_backoff_end", node="sender-1", domain="c.test")
    got = harness.arrivals_by_message_id(mx)
    assert all(got.get((t, "down@c.test")) == 1 for t in toks)
