"""IP pools: a tenant's mail leaves only from its pool's addresses, each with
its own EHLO name, spread by weight; the MX hosts record the peer address.

Two ingress nodes whose network tenants have different pools: `shared`
(127.0.0.2 weight 1, 127.0.0.3 weight 3) and `acme-dedicated` (127.0.0.4).
"""
import uuid

import harness

POOLS = {
    "shared": {"addresses": [
        {"address": "127.0.0.2", "hostname": "mta2.hikyaku.test", "weight": 1},
        {"address": "127.0.0.3", "hostname": "mta3.hikyaku.test", "weight": 3}]},
    "acme-dedicated": {"addresses": [
        {"address": "127.0.0.4", "hostname": "acme.hikyaku.test"}]},
}
HELO = {a["address"]: a["hostname"] for p in POOLS.values() for a in p["addresses"]}


def test_tenant_mail_leaves_from_its_pool(make_cluster, mx):
    c = make_cluster()
    c.tenants = {"local": {}, "acme": {"pool": "acme-dedicated"}}
    c.add_router()
    c.add_sender(pools=POOLS, connection_cache_time="0s")   # a connection per message
    c.add_ingress("ingress-1", network_tenant="local")
    c.add_ingress("ingress-2", network_tenant="acme")
    c.start_all()

    sent = {"ingress-1": [], "ingress-2": []}
    for ing in sent:
        for i in range(40):
            tok = "%s-%d-%s" % (ing, i, uuid.uuid4().hex[:8])
            rcpt = "u%d@%s" % (i, ("a.test", "b.test", "c.test")[i % 3])
            r = harness.submit(c.port(ing), "from@client.test", [rcpt],
                               harness.make_message(tok, rcpts=[rcpt], lines=1))
            assert r["data"][0] == 250, r
            sent[ing].append(tok)
    for toks in sent.values():
        for t in toks:
            mx.wait_token(t)

    def peers(toks):
        out = []
        for t in toks:
            (m,) = mx.with_token(t)
            assert m.helo == HELO[m.peer], m       # the address's own EHLO name
            out.append(m.peer)
        return out

    local = peers(sent["ingress-1"])
    acme = peers(sent["ingress-2"])
    assert set(acme) == {"127.0.0.4"}
    assert set(local) == {"127.0.0.2", "127.0.0.3"}
    # Smooth weighted round robin: exactly 1 in 4 from the weight-1 address.
    assert local.count("127.0.0.2") == 10, local
    for e in c.find_events("delivered", "sender-1"):
        assert e["source"] in HELO, e
