"""A cluster of separate processes over tcp://: ingress, one router, two
senders. Each domain's mail must leave through the sender that the weighted
rendezvous hash (recomputed here, independently of the C code) names."""
import uuid

import pytest

import harness

owner = harness.hrw_owner
SENDERS = {  # name -> (source address, weight)
    "sender-1": ("127.0.0.2", 1),
    "sender-2": ("127.0.0.3", 2),
}
DOMAINS = harness.CLUSTER_DOMAINS[:10]


def test_owner_function_reference_values():
    fnv1a64, splitmix64 = harness.fnv1a64, harness.splitmix64
    # splitmix64(0) is the first output of the reference SplitMix64 seeded 0.
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    assert fnv1a64(b"") == 0xcbf29ce484222325
    assert fnv1a64(b"a") == 0xaf63dc4c8601ec8c
    # One sender owns everything; a zero-weight-free map is total.
    assert {owner(d, {"only": 1}) for d in DOMAINS} == {"only"}


@pytest.fixture
def cluster(make_cluster, mx):
    c = make_cluster()
    c.add_router()
    for name, (addr, weight) in SENDERS.items():
        c.add_sender(name, source_address=addr, weight=weight)
    c.add_ingress()
    c.write_config()
    c.start_node("router-1")
    for name in SENDERS:
        c.start_node(name)          # waits for the router's member_up
    c.start_node("ingress-1")
    return c


def _rcpt(domain, i=0):
    # Mixed case on purpose: ownership is decided on the canonical domain.
    return "user%d@%s" % (i, domain.upper() if i % 2 else domain)


def _key(rcpt):
    # A domain may be sent in canonical (lower-case) form; local parts as given.
    lp, dom = rcpt.rsplit("@", 1)
    return lp + "@" + dom.lower()


def _deliveries(mx, token):
    """recipient -> list of (helo, peer address) it arrived with."""
    out = {}
    for m in mx.with_token(token):
        for r in m.rcpt_tos:
            out.setdefault(_key(r), []).append((m.helo, m.peer))
    return out


def _expect_via(mx, token, rcpts, weights):
    want = {}
    for r in rcpts:
        name = owner(r.rsplit("@", 1)[1], weights)
        want[_key(r)] = [("%s.hikyaku.test" % name, SENDERS[name][0])]
    harness.wait_until(lambda: len(_deliveries(mx, token)) >= len(rcpts), 20,
                       "delivery of %d recipients with token %s" % (len(rcpts), token))
    assert _deliveries(mx, token) == want


def test_domains_leave_through_their_owner(cluster, mx):
    weights = {n: w for n, (_, w) in SENDERS.items()}
    owners = {d: owner(d, weights) for d in DOMAINS}
    assert set(owners.values()) == set(SENDERS), "test domains must exercise both senders"

    # One message to all ten domains: the router splits it per owner.
    token = uuid.uuid4().hex
    rcpts = [_rcpt(d, i) for i, d in enumerate(DOMAINS)]
    r = harness.submit(cluster.port(), "from@client.test", rcpts,
                       harness.make_message(token, rcpts=rcpts, lines=30))
    assert r["data"][0] == 250, r
    _expect_via(mx, token, rcpts, weights)

    # One message per domain, two recipients each.
    tokens = {}
    for d in DOMAINS:
        t = uuid.uuid4().hex
        rc = [_rcpt(d, 0), _rcpt(d, 1)]
        r = harness.submit(cluster.port(), "from@client.test", rc, harness.make_message(t, rcpts=rc, lines=5))
        assert r["data"][0] == 250, (d, r)
        tokens[t] = rc
    for t, rc in tokens.items():
        _expect_via(mx, t, rc, weights)


def test_dead_sender_domains_move_to_the_survivor(cluster, mx):
    weights = {n: w for n, (_, w) in SENDERS.items()}
    moved = [d for d in DOMAINS if owner(d, weights) == "sender-2"]
    kept = [d for d in DOMAINS if owner(d, weights) == "sender-1"]
    assert moved and kept

    mark = cluster.log_of("router-1").mark()
    code, _ = cluster.stop("sender-2")
    assert code == 0
    cluster.wait_event("member_down", node="router-1", since=mark, member="sender-2")

    token = uuid.uuid4().hex
    rcpts = [_rcpt(d, 0) for d in DOMAINS]
    r = harness.submit(cluster.port(), "from@client.test", rcpts,
                       harness.make_message(token, rcpts=rcpts, lines=10))
    assert r["data"][0] == 250, r
    _expect_via(mx, token, rcpts, {"sender-1": 1})

    # sender-2 comes back: its domains go back to it.
    mark = cluster.log_of("router-1").mark()
    cluster.start_node("sender-2", wait=False)
    cluster.wait_event("member_up", node="router-1", since=mark, member="sender-2")
    token = uuid.uuid4().hex
    r = harness.submit(cluster.port(), "from@client.test", rcpts,
                       harness.make_message(token, rcpts=rcpts, lines=10))
    assert r["data"][0] == 250, r
    _expect_via(mx, token, rcpts, weights)
