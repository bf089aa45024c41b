"""The operations endpoint of every node (`http:`): /healthz, /readyz,
/metrics (Prometheus text, parsed here), a router's /cluster, and
`hikyaku cluster status` reading every router of the file."""
import http.client
import json
import re
import subprocess
import uuid

import pytest

import harness
from test_cluster_tcp import owner

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def http_addr():
    return "127.0.0.1:%d" % harness.free_port()


def request(addr, path, method="GET"):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type"), r.read()
    finally:
        c.close()


def get_json(addr, path):
    status, ctype, body = request(addr, path)
    assert ctype == "application/json", (path, ctype)
    return status, json.loads(body)


def parse_metrics(text):
    """{(name, frozenset(labels)): value}, checking the format on the way:
    every sample's family has # TYPE before it, every sample has node=."""
    types, samples = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram"), line
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        m = SAMPLE_RE.match(line)
        assert m, "not a sample line: %r" % line
        name, labels = m.group(1), dict(LABEL_RE.findall(m.group(3) or ""))
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, "sample %s before its # TYPE" % name
        assert "node" in labels, line
        samples[(name, frozenset(labels.items()))] = float(m.group(4))
    return samples


def metric(samples, name, **labels):
    """The sum of NAME's samples whose labels include LABELS."""
    want = set(labels.items())
    vals = [v for (n, ls), v in samples.items() if n == name and want <= set(ls)]
    assert vals, "no sample %s%s" % (name, labels)
    return sum(vals)


def metrics(addr):
    status, ctype, body = request(addr, "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    return parse_metrics(body.decode())


@pytest.fixture
def all_cluster(make_cluster, mx):
    c = make_cluster()
    c.add_router(http=http_addr())
    c.add_sender(http=http_addr())
    c.add_ingress(http=http_addr())
    c.start_all()
    for n in ("router-1", "sender-1", "ingress-1"):
        c.wait_event("http_listening", node=n)
    return c


def test_every_role_healthz_readyz_and_metrics(all_cluster, mx):
    c = all_cluster
    addr = {n: c.nodes[n]["http"] for n in ("router-1", "sender-1", "ingress-1")}
    for n, a in addr.items():
        assert get_json(a, "/healthz") == (200, {"status": "ok"}), n
        # Ready once the links are up (published every second).
        harness.wait_until(lambda: get_json(a, "/readyz")[0] == 200, 5, "%s ready" % n)
        assert get_json(a, "/readyz")[1] == {"status": "ready"}
        s = metrics(a)
        assert metric(s, "hikyaku_up", node=n) == 1

    before = {n: metrics(a) for n, a in addr.items()}
    assert metric(before["ingress-1"], "hikyaku_ingress_messages_accepted_total") == 0
    token = uuid.uuid4().hex
    rcpts = ["x@a.test", "y@b.test"]
    r = harness.submit(c.port(), "from@client.test", rcpts, harness.make_message(token, rcpts=rcpts, lines=5))
    assert r["data"][0] == 250, r
    harness.wait_until(lambda: len(mx.with_token(token)) >= 2, 15, "delivery")

    ing = metrics(addr["ingress-1"])
    assert metric(ing, "hikyaku_ingress_messages_accepted_total", node="ingress-1") == 1
    assert metric(ing, "hikyaku_ingress_messages_refused_total") == 0
    assert metric(ing, "hikyaku_ingress_submit_latency_seconds_count") == 1
    assert metric(ing, "hikyaku_ingress_submit_latency_seconds_bucket", le="+Inf") == 1
    assert metric(ing, "hikyaku_ingress_submit_latency_seconds_sum") > 0
    assert metric(ing, "hikyaku_ingress_router_connected") == 1
    rt = metrics(addr["router-1"])
    assert metric(rt, "hikyaku_router_submissions_total") == 1
    assert metric(rt, "hikyaku_router_acks_total") == 1
    assert metric(rt, "hikyaku_router_nacks_total") == 0
    assert metric(rt, "hikyaku_router_enqueues_total") == 1     # one owner
    assert metric(rt, "hikyaku_router_ack_latency_seconds_count") == 1
    assert metric(rt, "hikyaku_router_members_live") == 1
    assert metric(rt, "hikyaku_router_enqueues_in_flight", sender="sender-1") == 0
    assert metric(rt, "hikyaku_router_domains_seen") == 2
    # The sender's counters: the delivered outcomes are committed just after
    # the MX's 250, so wait for them.
    harness.wait_until(lambda: metric(metrics(addr["sender-1"]), "hikyaku_sender_delivered_total") == 2,
                       10, "sender's delivered counter")
    sd = metrics(addr["sender-1"])
    assert metric(sd, "hikyaku_sender_enqueues_total") == 1
    assert metric(sd, "hikyaku_sender_enqueues_stored_total") == 1
    assert metric(sd, "hikyaku_sender_bounced_total") == 0
    harness.wait_until(lambda: metric(metrics(addr["sender-1"]), "hikyaku_sender_queue_depth") == 0,
                       5, "queue depth back to 0")


def test_unknown_path_and_methods(all_cluster):
    a = all_cluster.nodes["router-1"]["http"]
    status, body = get_json(a, "/nope")
    assert status == 404 and body["status"] == "not found"
    for method in ("POST", "PUT", "DELETE"):
        status, _, _ = request(a, "/metrics", method=method)
        assert status == 405, method
    status, _, body = request(a, "/healthz", method="HEAD")
    assert status == 200 and body == b""
    # /cluster is the router's only: another role says 404.
    assert get_json(all_cluster.nodes["sender-1"]["http"], "/cluster")[0] == 404


def test_readyz_follows_the_links(make_cluster, mx):
    """Separate processes: the router is not ready before a sender joins,
    the ingress not before a router is up."""
    c = make_cluster()
    c.add_router(http=http_addr())
    c.add_sender(http=http_addr())
    c.add_ingress(http=http_addr())
    c.write_config()
    rh, sh, ih = (c.nodes[n]["http"] for n in ("router-1", "sender-1", "ingress-1"))

    c.start_node("ingress-1")
    c.wait_event("http_listening", node="ingress-1")
    status, body = get_json(ih, "/readyz")
    assert status == 503 and body == {"status": "not ready", "reason": "no router connected"}
    assert get_json(ih, "/healthz")[0] == 200

    c.start_node("router-1")
    c.wait_event("http_listening", node="router-1")
    status, body = get_json(rh, "/readyz")
    assert status == 503 and body["reason"] == "no sender has joined", body
    assert get_json(rh, "/cluster")[1]["members"] == []
    harness.wait_until(lambda: get_json(ih, "/readyz")[0] == 200, 5, "ingress ready once the router is up")

    c.start_node("sender-1")        # waits for the router's member_up
    harness.wait_until(lambda: get_json(rh, "/readyz")[0] == 200, 5, "router ready with a sender")
    harness.wait_until(lambda: get_json(sh, "/readyz")[0] == 200, 5, "sender ready")
    members = get_json(rh, "/cluster")[1]["members"]
    assert [m["id"] for m in members] == ["sender-1"]
    assert members[0]["live"] is True and members[0]["draining"] is False
    assert members[0]["weight"] == 1 and members[0]["heartbeat_age_ms"] < 2000

    # The router goes: the sender's heartbeats find no one, it is not ready.
    assert c.stop("router-1")[0] == 0
    harness.wait_until(lambda: get_json(sh, "/readyz")[0] == 503, 8, "sender not ready without a router")
    harness.wait_until(lambda: get_json(ih, "/readyz")[0] == 503, 15, "ingress not ready without a router")


SENDERS = {"sender-1": ("127.0.0.2", 1), "sender-2": ("127.0.0.3", 2)}
DOMAINS = harness.CLUSTER_DOMAINS[:10]


def test_cluster_and_cluster_status(make_cluster, mx):
    c = make_cluster()
    c.add_router("router-1", http=http_addr())
    c.add_router("router-2", http=http_addr())
    for name, (src, w) in SENDERS.items():
        c.add_sender(name, source_address=src, weight=w)
    c.add_ingress(routers=["router-1"])
    c.hot_domains = {DOMAINS[0]: 2}     # shared by both senders: counted for each
    c.start_all()
    rh = c.nodes["router-1"]["http"]

    token = uuid.uuid4().hex
    rcpts = ["u%d@%s" % (i, d) for i, d in enumerate(DOMAINS)] + ["again@" + DOMAINS[0].upper()]
    r = harness.submit(c.port(), "from@client.test", rcpts, harness.make_message(token, rcpts=rcpts, lines=5))
    assert r["data"][0] == 250, r

    weights = {n: w for n, (_, w) in SENDERS.items()}
    want = {n: 1 + sum(1 for d in DOMAINS[1:] if owner(d, weights) == n) for n in SENDERS}
    assert all(w > 1 for w in want.values()), "the test domains must exercise both senders"
    status, doc = get_json(rh, "/cluster")
    assert status == 200
    assert doc["node"] == "router-1"
    assert doc["domains_seen"] == len(DOMAINS) and doc["domains_unowned"] == 0
    got = {m["id"]: m for m in doc["members"]}
    assert set(got) == set(SENDERS)
    for n, (_, w) in SENDERS.items():
        assert got[n]["weight"] == w and got[n]["live"] and not got[n]["draining"]
        assert got[n]["domains"] == want[n], (n, got[n], want)
        assert isinstance(got[n]["queue_depth"], int) and "endpoint" in got[n]
    # router-2 routed nothing: it sees the senders, no domains.
    doc2 = get_json(c.nodes["router-2"]["http"], "/cluster")[1]
    assert {m["id"] for m in doc2["members"]} == set(SENDERS) and doc2["domains_seen"] == 0

    out = subprocess.run([harness.HIKYAKU_BIN, "cluster", "status", "--config", c.config_path],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out
    blocks = out.stdout.split("router ")[1:]
    assert [b.split(" ", 1)[0] for b in blocks] == ["router-1", "router-2"], out.stdout
    assert "10 domains seen" in blocks[0] and "0 domains seen" in blocks[1]
    for n in SENDERS:
        line = next(l for l in blocks[0].splitlines() if l.split()[:1] == [n])
        cols = line.split()
        assert cols[1] == "yes" and cols[2] == "no"       # LIVE, DRAINING
        assert int(cols[7]) == want[n], line              # DOMAINS
        line2 = next(l for l in blocks[1].splitlines() if l.split()[:1] == [n])
        assert int(line2.split()[7]) == 0

    # An unreachable router: named, exit 1; the others still printed.
    del c.nodes["router-2"]["http"]
    c.nodes["router-3"] = dict(c.nodes["router-2"], http=http_addr())  # nothing listens there
    c.write_config()
    out = subprocess.run([harness.HIKYAKU_BIN, "cluster", "status", "--config", c.config_path],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 1, out
    assert "router router-2: unreachable: no http: address" in out.stderr, out.stderr
    assert re.search(r"router router-3 \(http://127\.0\.0\.1:\d+/cluster\): unreachable", out.stderr), out.stderr
    assert "router router-1 (" in out.stdout and "sender-2" in out.stdout


def test_cluster_status_usage():
    out = subprocess.run([harness.HIKYAKU_BIN, "cluster", "status"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage: hikyaku cluster status --config FILE" in out.stderr
