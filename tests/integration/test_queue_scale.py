"""100,000 queued messages survive kill -9 of the sender and are all
delivered exactly once after its restart.

hk-blast (the C load generator in bench/) hands 100,000 messages to the
ingress while the destination (Postfix's smtp-sink) is down, so everything
stays queued; the sender is killed with SIGKILL, smtp-sink comes up, the
sender is started again on the same queue. Exactly once: every message id
queued is delivered once (the sender's events), and smtp-sink counts exactly
100,000 messages. The time from exec to sender_ready is printed (the
benchmark, bench/run --restart, records it in docs/PERFORMANCE.md).
"""
import json
import os
import subprocess
import time

import harness

N = 100000
BLAST = os.path.join(os.path.dirname(harness.HIKYAKU_BIN), "hk-blast")


def test_hundred_thousand_survive_kill9(make_cluster, tmp_path, mx_port):
    c = make_cluster()
    c.add_router("router-1", max_pending=20000)
    c.add_sender("sender-1", queue_map_size="1G", max_deliveries=100,
                 max_connections_per_domain=50, retry_min="1s", retry_max="1s",
                 connect_timeout="1s")
    c.add_ingress(max_sessions=200, max_sessions_per_ip=200, max_message_size="1M")
    c.write_config()
    for n in ("router-1", "sender-1", "ingress-1"):
        c.start_node(n)

    out = subprocess.run([BLAST, "--server", "127.0.0.1:%d" % c.port(), "--sessions", "40",
                          "--messages", str(N), "--per-session", "500", "--size", "600",
                          "--domains", "1",
                          # index 0 with precision 0 prints nothing: sink.test
                          "--domain-fmt", "sink%.0d.test", "--pipelining",
                          "--json"], capture_output=True, text=True, timeout=600)
    res = json.loads(out.stdout)
    assert out.returncode == 0, (res, out.stderr[-2000:])
    queued = set()
    harness.wait_until(lambda: len(c.find_events("queued", "sender-1")) >= N, 60,
                       "%d queued events" % N, interval=1)
    for e in c.find_events("queued", "sender-1"):
        queued.add(e["id"])
    assert len(queued) == N
    assert not c.find_events("delivered", "sender-1")

    c.kill9("sender-1")
    sink = harness.SmtpSink(harness.ProcessGroup(), str(tmp_path), port=mx_port)
    try:
        _restart_and_count(c, sink, queued, res)
    finally:
        sink.group.close()


def _restart_and_count(c, sink, queued, res):
    sink.start()
    t0 = time.monotonic()
    c.start_node("sender-1", wait=False)
    ev = c.wait_event("sender_ready", node="sender-1", timeout=60)
    ready_s = time.monotonic() - t0
    assert ev["queue_depth"] == N, ev

    harness.wait_until(lambda: sink.count() >= N, 300, "%d messages at smtp-sink" % N,
                       interval=1)
    harness.wait_until(lambda: len(c.find_events("delivered", "sender-1")) >= N, 60,
                       "%d delivered events" % N, interval=1)
    delivered = [e["id"] for e in c.find_events("delivered", "sender-1")]
    assert len(delivered) == N and set(delivered) == queued
    assert sink.count() == N
    print("100k: injected at %.0f msg/s; sender ready %.3f s after exec with %d queued" % (
        res.get("rate", 0), ready_s, N))
