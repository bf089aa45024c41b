"""Fixtures for the integration tests: one dnsmasq for the session, scripted
MX hosts and Hikyaku clusters per test (or per module), all stopped at
teardown even when a test fails. Logs of a failed test are printed."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402


@pytest.fixture(scope="session")
def dns_server(tmp_path_factory):
    group = harness.ProcessGroup()
    d = harness.DnsServer(group, str(tmp_path_factory.mktemp("dns")))
    try:
        d.start()
        yield d
    finally:
        group.close()


@pytest.fixture(scope="session")
def mx_port():
    """The delivery port shared by every MX host address."""
    return harness.free_port(tuple(harness.MX_HOSTS) + (harness.SINK_ADDR, "127.0.0.1"))


@pytest.fixture
def mx(mx_port):
    """The three MX hosts (a.test, b.test, c.test, and the dNN.test domains
    spread over them), running and answering 250 unless scripted."""
    pool = harness.MxPool(mx_port)
    try:
        yield pool.start()
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def mxm(mx_port):
    """The MX hosts, shared by the tests of one module (as mx, per module)."""
    pool = harness.MxPool(mx_port)
    try:
        yield pool.start()
    finally:
        pool.stop()


def cluster_factory(tmp_path, dns, mx_port):
    """Yields make() -> a harness.Cluster in its own directory under
    TMP_PATH, resolving through DNS; at the end prints their logs (pytest
    shows them only for a failed test), stops every process they started
    and fails the test on a teardown problem."""
    clusters = []

    def make():
        d = tmp_path / ("cluster%d" % len(clusters))
        d.mkdir()
        c = harness.Cluster(str(d), dns, mx_port)
        clusters.append(c)
        return c

    yield make
    for c in clusters:
        print("==== cluster %s" % c.workdir)
        print(c.tails())
    problems = [x for c in clusters for x in c.close()]
    if problems:
        pytest.fail("teardown: " + "\n".join(problems), pytrace=False)


def dns_for_domains(tmp_path_factory, name, domains):
    """Yields a dnsmasq for DOMAINS (MX spread over the MX host addresses)
    plus the usual a.test, b.test, c.test: the body of a module's DNS
    fixture when its tests need many domains."""
    group = harness.ProcessGroup()
    d = harness.DnsServer(group, str(tmp_path_factory.mktemp(name)),
                          domain_mx=harness.domain_mx_spread(domains))
    try:
        d.start()
        yield d
    finally:
        group.close()


@pytest.fixture
def make_cluster(tmp_path, dns_server, mx_port):
    """make_cluster() -> a harness.Cluster; every process it starts is
    stopped after the test."""
    yield from cluster_factory(tmp_path, dns_server, mx_port)


@pytest.fixture(scope="module")
def make_module_cluster(tmp_path_factory, dns_server, mx_port):
    clusters = []

    def make():
        c = harness.Cluster(str(tmp_path_factory.mktemp("cluster")), dns_server, mx_port)
        clusters.append(c)
        return c

    yield make
    problems = [x for c in clusters for x in c.close()]
    if problems:
        pytest.fail("teardown: " + "\n".join(problems), pytrace=False)
