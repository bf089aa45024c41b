"""
harness - real peers for Hikyaku's integration tests.

Everything here runs real programs on loopback addresses:
  - free_port(): a TCP (and optionally UDP) port free on every given address;
  - DnsServer: dnsmasq answering MX/A records for the test zone `test`, every
    other name under it NXDOMAIN;
  - ScriptedMx / MxPool: aiosmtpd servers (one thread each, in this process)
    that record every transaction and answer RCPT and DATA from a script
    (or stall, or drop the connection: STALL, DROP, DROP_IN_DATA);
  - ServfailStub: a UDP DNS server answering SERVFAIL to everything (dnsmasq
    forwards a zone to it);
  - SmtpSink: Postfix's smtp-sink as a counting MX;
  - Cluster: writes a Hikyaku YAML config and runs `hikyaku all` or single
    nodes, each process's JSON-lines stdout in its own file, with waits on
    log events;
  - RawSmtp and submit(): SMTP clients (raw socket, and smtplib);
  - TestPki: a test CA (root and intermediate) and server certificates made
    with the openssl CLI, and client SSL contexts that trust it.
Every process is started by pid in a ProcessGroup and stopped by pid.
"""
import asyncio
import atexit
import datetime
import json
import math
import os
import random
import re
import signal
import smtplib
import socket
import subprocess
import threading
import time

import dns.exception
import dns.resolver
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSmtp

HIKYAKU_BIN = os.environ.get("HIKYAKU_BIN", "/work/main/build/hikyaku")

# The test zone: each MX host lives on its own loopback address.
MX_HOSTS = {
    "127.0.0.10": "mx.a.test",
    "127.0.0.11": "mx.b.test",
    "127.0.0.12": "mx.c.test",
}
SINK_ADDR = "127.0.0.13"        # smtp-sink, MX of sink.test
SINK_HOST = "mx.sink.test"
# Destination domain -> address of its MX host.
DOMAIN_MX = {"a.test": "127.0.0.10", "b.test": "127.0.0.11", "c.test": "127.0.0.12",
             "sink.test": SINK_ADDR}
CLUSTER_DOMAINS = ["d%02d.test" % i for i in range(1, 13)]
for _i, _d in enumerate(CLUSTER_DOMAINS):
    DOMAIN_MX[_d] = sorted(MX_HOSTS)[_i % len(MX_HOSTS)]

QUEUED_RE = re.compile(r"^2\.0\.0 Ok: queued as ([0-9A-HJKMNP-TV-Z]{26})$")


class Timeout(AssertionError):
    pass


def wait_until(pred, timeout, what, interval=0.02):
    """Poll pred() until it returns a true value (returned) or fail naming WHAT."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise Timeout("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---------------------------------------------------------------- ports

_taken_ports = set()


def _bindable(addr, port, kind):
    s = socket.socket(socket.AF_INET, kind)
    try:
        # No SO_REUSEADDR/SO_REUSEPORT: fail on any listener, sink or TIME_WAIT.
        s.bind((addr, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def port_is_free(port, addrs=("127.0.0.1",), udp=False):
    kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if udp else [])
    return all(_bindable(a, port, k) for a in addrs for k in kinds)


def nothing_listens(port, addr):
    """No socket listens on ADDR:PORT, not even one with SO_REUSEPORT
    (connections in TIME_WAIT do not count)."""
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port(addrs=("127.0.0.1",), udp=False):
    """A port free on every address of ADDRS (TCP, and UDP if asked), picked at
    random below the kernel's ephemeral range so that outgoing connections
    cannot take it between the check and the use, never handed out twice."""
    for _ in range(500):
        port = random.randrange(20000, 32000)
        if port in _taken_ports:
            continue
        if port_is_free(port, addrs, udp):
            _taken_ports.add(port)
            return port
    raise RuntimeError("no free port found on %s" % (addrs,))


# ---------------------------------------------------------------- processes

_all_procs = []


class Proc:
    """A child process started by this harness, stdout/stderr to files."""

    def __init__(self, name, argv, log_path, cwd=None, env=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.err_path = log_path + ".err"
        with open(log_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=err, cwd=cwd, env=env,
                                          start_new_session=True)
        self.pid = self.popen.pid
        self.log = JsonLog(log_path)
        _all_procs.append(self)

    def alive(self):
        return self.popen.poll() is None

    def returncode(self):
        return self.popen.poll()

    def stop(self, timeout=10.0):
        """SIGTERM, then SIGKILL after TIMEOUT. Returns the exit status
        (negative: killed by that signal) and whether SIGKILL was needed."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                return self.popen.returncode, True
        return self.popen.returncode, False

    def kill9(self):
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def sanitizer_report(self):
        """Lines of an AddressSanitizer/LeakSanitizer/UBSan report on stderr."""
        try:
            with open(self.err_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []
        for i, line in enumerate(lines):
            if ("ERROR: AddressSanitizer" in line or "ERROR: LeakSanitizer" in line
                    or "runtime error:" in line):
                return lines[i:i + 30]
        return []

    def tail(self, n=40):
        out = []
        for path in (self.log_path, self.err_path):
            try:
                with open(path, "rb") as f:
                    lines = f.read().decode("utf-8", "replace").splitlines()
            except OSError:
                continue
            if lines:
                out.append("--- %s (last %d lines)" % (path, min(n, len(lines))))
                out.extend(lines[-n:])
        return "\n".join(out)


class ProcessGroup:
    """Owns the processes one fixture started; close() stops them all."""

    def __init__(self):
        self.procs = []

    def start(self, name, argv, log_path, **kw):
        p = Proc(name, argv, log_path, **kw)
        self.procs.append(p)
        return p

    def close(self):
        """Stop every process still running; returns [(proc, status,
        needed_sigkill)] for those."""
        out = []
        for p in reversed(self.procs):
            if p.alive():
                out.append((p,) + p.stop(timeout=5))
        self.procs = []
        return out


@atexit.register
def _kill_leftovers():
    for p in _all_procs:
        if p.popen.poll() is None:
            p.popen.kill()
            p.popen.wait()


class JsonLog:
    """The JSON-lines stdout of a process, read incrementally."""

    def __init__(self, path):
        self.path = path
        self._pos = 0
        self._partial = b""
        self.events = []
        self._lock = threading.Lock()

    def poll(self):
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    f.seek(self._pos)
                    data = f.read()
            except OSError:
                return self.events
            self._pos += len(data)
            data = self._partial + data
            lines = data.split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                if not line.strip():
                    continue
                try:
                    ev = json.loads(line)
                    if not isinstance(ev, dict):
                        raise ValueError
                except ValueError:
                    ev = {"event": None, "raw": line.decode("utf-8", "replace")}
                self.events.append(ev)
            return self.events

    def mark(self):
        """Index of the next event: pass as since= to see only later ones."""
        return len(self.poll())

    def find(self, event, since=0, pred=None, **fields):
        return [e for e in self.poll()[since:] if event_matches(e, event, pred, fields)]

    def wait(self, event, timeout=10.0, since=0, pred=None, **fields):
        try:
            return wait_until(lambda: (self.find(event, since, pred, **fields) or [None])[0],
                              timeout, "event %r %s in %s" % (event, fields, self.path))
        except Timeout as e:
            raise Timeout("%s\n%s" % (e, self.tail())) from None

    def tail(self, n=30):
        evs = self.poll()
        return "\n".join(json.dumps(e) for e in evs[-n:])


def mentions(ev, value):
    """Does any field of the event hold VALUE (as a string, or in a list)?"""
    for v in ev.values():
        if v == value or (isinstance(v, list) and value in v):
            return True
    return False


def event_matches(ev, event, pred=None, fields=None):
    if event is not None and ev.get("event") != event:
        return False
    for k, v in (fields or {}).items():
        if ev.get(k) != v:
            return False
    return pred is None or bool(pred(ev))


# ---------------------------------------------------------------- DNS

class DnsServer:
    """dnsmasq serving the `test` zone on 127.0.0.1:port."""

    def __init__(self, group, workdir, domain_mx=None, extra_args=()):
        self.group = group
        self.workdir = workdir
        self.domain_mx = dict(domain_mx or DOMAIN_MX)
        self.extra_args = list(extra_args)
        self.port = free_port(udp=True)
        self.proc = None

    def args(self):
        a = ["dnsmasq", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
             "--listen-address=127.0.0.1", "--port=%d" % self.port, "--bind-interfaces",
             "--keep-in-foreground", "--pid-file=%s/dnsmasq.pid" % self.workdir,
             "--cache-size=0", "--log-facility=-", "--local=/test/"]
        if os.geteuid() == 0:
            a.append("--user=root")
        hosts = {}
        for dom, addr in sorted(self.domain_mx.items()):
            host = MX_HOSTS.get(addr) or (SINK_HOST if addr == SINK_ADDR else "mx." + dom)
            hosts[host] = addr
            a.append("--mx-host=%s,%s,10" % (dom, host))
        for host, addr in sorted(hosts.items()):
            a.append("--host-record=%s,%s" % (host, addr))
        return a + self.extra_args

    def start(self):
        self.proc = self.group.start("dnsmasq", self.args(),
                                     os.path.join(self.workdir, "dnsmasq.log"))
        wait_until(lambda: self._answers() or not self.proc.alive(), 10, "dnsmasq to answer")
        if not self.proc.alive():
            raise RuntimeError("dnsmasq exited:\n" + self.proc.tail())
        return self

    def resolver(self):
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = self.port
        r.lifetime = 1.0
        return r

    def _answers(self):
        try:
            self.resolver().resolve("a.test", "MX")
            return True
        except dns.exception.DNSException:
            return False

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def stop(self):
        if self.proc:
            self.proc.stop()


class ServfailStub:
    """A DNS server on 127.0.0.1:port (UDP) that answers every query with
    SERVFAIL, in a thread of this process. dnsmasq cannot make a SERVFAIL
    itself: forward a zone here (DnsServer extra_args
    "--server=/zone/127.0.0.1#PORT") and dnsmasq relays the rcode."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.port = None
        for _ in range(500):
            port = random.randrange(20000, 32000)
            if port in _taken_ports:
                continue
            try:
                self.sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _taken_ports.add(port)
            self.port = port
            break
        if self.port is None:
            raise RuntimeError("no free UDP port for the SERVFAIL stub")
        self.sock.settimeout(0.2)
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self):
        self._thread.start()
        return self

    @staticmethod
    def _question_end(q):
        i = 12
        while i < len(q) and q[i] != 0:
            if q[i] & 0xC0:
                return None
            i += 1 + q[i]
        return i + 5 if i + 5 <= len(q) else None

    def _serve(self):
        while not self._stop.is_set():
            try:
                q, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            end = self._question_end(q) if len(q) >= 12 else None
            if end is None:
                continue
            self.queries += 1
            # Same id; QR, the query's opcode and RD; RA and rcode 2; the
            # question only.
            flags = bytes([0x80 | (q[2] & 0x79), 0x80 | 2])
            self.sock.sendto(q[:2] + flags + q[4:6] + b"\0\0\0\0\0\0" + q[12:end], peer)

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


# ---------------------------------------------------------------- MX servers

# Script entries that are not replies: STALL never answers (the connection
# stays open until the client gives up), DROP closes the connection instead
# of answering (for DATA: after the final dot), DROP_IN_DATA (DATA only)
# answers 354, reads one line of the message and closes the connection.
STALL = "<stall>"
DROP = "<drop>"
DROP_IN_DATA = "<drop-in-data>"

class MxMessage:
    """One transaction an MX accepted (DATA answered 2xx), or rejected."""

    def __init__(self, mx, session, envelope, reply):
        self.mx = mx                            # address of the MX that got it
        self.peer = session.peer[0]             # client (sender) address
        self.peer_port = session.peer[1]        # ... and port: one per connection
        self.helo = session.host_name           # its EHLO/HELO name
        self.mail_from = envelope.mail_from
        self.mail_options = list(envelope.mail_options)
        self.rcpt_tos = list(envelope.rcpt_tos)
        # recipient -> its RCPT parameters (DSN ones as written, others upper-cased)
        self.rcpt_options = dict(getattr(envelope, "rcpt_params", {}))
        self.smtputf8 = bool(getattr(envelope, "smtp_utf8", False))
        self.bdat = bool(getattr(envelope, "bdat", False))
        self.data = bytes(envelope.original_content)
        # After STARTTLS: the TLS version ("TLSv1.3") and cipher, else None.
        ssl_object = (session.ssl or {}).get("ssl_object")
        self.tls = ssl_object.version() if ssl_object else None
        self.tls_cipher = ssl_object.cipher()[0] if ssl_object else None
        self.reply = reply
        self.accepted = reply.startswith("2")
        self.at = time.monotonic()

    def __repr__(self):
        return "<MxMessage mx=%s peer=%s helo=%s from=%s to=%s %d bytes %s>" % (
            self.mx, self.peer, self.helo, self.mail_from, self.rcpt_tos,
            len(self.data), self.reply)


class _MxHandler:
    def __init__(self, mx):
        self.mx = mx

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        extra = [name for name, on in (("DSN", self.mx.dsn), ("CHUNKING", self.mx.chunking),
                                       ("BINARYMIME", self.mx.chunking)) if on]
        return responses[:-1] + ["250-" + e for e in extra] + responses[-1:]

    async def _act(self, server, kind, reply):
        """STALL or DROP: record it, then wait to be cancelled (aiosmtpd
        cancels the handler when the connection is lost)."""
        with self.mx._cond:
            self.mx.actions.append((kind, reply, time.monotonic()))
            self.mx._cond.notify_all()
        if reply == DROP and server.transport is not None:
            server.transport.close()
        await asyncio.sleep(3600)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.mx._next_reply("rcpt", address.lower())
        with self.mx._cond:
            self.mx.rcpt_attempts.append((address, reply, session.peer[0], time.monotonic()))
            self.mx._cond.notify_all()
        if reply in (STALL, DROP):
            await self._act(server, "rcpt", reply)
        if reply.startswith("2"):
            opts = list(rcpt_options) + getattr(server, "dsn_taken", [])
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(opts)
            if not hasattr(envelope, "rcpt_params"):
                envelope.rcpt_params = {}
            envelope.rcpt_params[address] = opts
        return reply

    async def handle_DATA(self, server, session, envelope):
        reply = self.mx._next_reply("data", None)
        if reply in (STALL, DROP):
            await self._act(server, "data", reply)
        msg = MxMessage(self.mx.addr, session, envelope, reply)
        with self.mx._cond:
            self.mx.transactions.append(msg)
            self.mx._cond.notify_all()
        return reply


class _FeatureSmtp(AioSmtp):
    """aiosmtpd plus what it lacks, just enough to see it used: DSN (RFC 3461:
    RET/ENVID on MAIL and NOTIFY/ORCPT on RCPT are taken off and recorded as
    written) and CHUNKING with BINARYMIME (RFC 3030: BDAT, the chunks kept
    byte for byte)."""

    def __init__(self, handler, mx, **kw):
        super().__init__(handler, **kw)
        self.mx = mx
        self.dsn_taken = []
        self.chunks = []

    def connection_made(self, transport):
        with self.mx._cond:
            self.mx.connections += 1
            self.mx.sessions_now += 1
            self.mx.max_sessions = max(self.mx.max_sessions, self.mx.sessions_now)
        super().connection_made(transport)

    def connection_lost(self, exc):
        with self.mx._cond:
            self.mx.sessions_now -= 1
        super().connection_lost(exc)

    @staticmethod
    def _take(arg, keys):
        kept, taken = [], []
        for tok in (arg or "").split(" "):
            (taken if tok.split("=", 1)[0].upper() in keys and "=" in tok else kept).append(tok)
        return " ".join(kept), taken

    async def smtp_MAIL(self, arg):
        keys = ({"RET", "ENVID"} if self.mx.dsn else set())
        arg, taken = self._take(arg, keys)
        if self.mx.chunking and "BODY=BINARYMIME" in [t.upper() for t in arg.split(" ")]:
            arg = " ".join(t for t in arg.split(" ") if t.upper() != "BODY=BINARYMIME")
            taken.append("BODY=BINARYMIME")
        await super().smtp_MAIL(arg)
        if self.envelope.mail_from is not None:
            self.envelope.mail_options.extend(taken)
        self.chunks = []

    async def smtp_RCPT(self, arg):
        arg, self.dsn_taken = self._take(arg, {"NOTIFY", "ORCPT"} if self.mx.dsn else set())
        try:
            await super().smtp_RCPT(arg)
        finally:
            self.dsn_taken = []

    async def smtp_DATA(self, arg):
        if self.envelope.rcpt_tos and self.mx._take("data", None, DROP_IN_DATA):
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readuntil(b"\r\n")
            with self.mx._cond:
                self.mx.actions.append(("data", DROP_IN_DATA, time.monotonic()))
                self.mx._cond.notify_all()
            self.transport.close()
            return
        await super().smtp_DATA(arg)

    async def smtp_BDAT(self, arg):
        if not self.mx.chunking:
            return await self.push('500 Error: command "BDAT" not recognized')
        parts = (arg or "").split()
        size = int(parts[0])
        last = len(parts) > 1 and parts[1].upper() == "LAST"
        self.chunks.append(await self._reader.readexactly(size))
        if not self.envelope.rcpt_tos:
            self.chunks = []
            return await self.push("503 5.5.1 Error: no valid recipients")
        if not last:
            return await self.push("250 2.0.0 %d octets received" % size)
        data, self.chunks = b"".join(self.chunks), []
        self.envelope.original_content = self.envelope.content = data
        self.envelope.bdat = True
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)


class _FeatureController(Controller):
    def __init__(self, mx, *a, **kw):
        self.mx = mx
        super().__init__(*a, **kw)

    def factory(self):
        return _FeatureSmtp(self.handler, self.mx, **self.SMTP_kwargs)


class ScriptedMx:
    """An aiosmtpd MX on ADDR:PORT. Unscripted RCPT and DATA get 250.
    script_rcpt(addr, r1, r2, ...) answers that recipient's successive RCPTs
    with r1, r2, ... then 250; script_data(...) does the same for DATA. A
    reply may be several lines (lines joined by CRLF), or STALL, DROP,
    DROP_IN_DATA (recorded in .actions as (kind, action, time)).
    smtputf8, dsn and chunking (CHUNKING and BINARYMIME) add those
    extensions to its EHLO; tls_context (an ssl.SSLContext) offers STARTTLS
    with it; data_size_limit is the SIZE it announces and enforces."""

    RCPT_OK = "250 2.1.5 Ok"
    DATA_OK = "250 2.0.0 Ok: accepted"

    def __init__(self, addr, port, hostname=None, smtputf8=False, dsn=False, chunking=False,
                 tls_context=None, data_size_limit=None):
        self.addr = addr
        self.port = port
        self.smtputf8 = smtputf8
        self.dsn = dsn
        self.chunking = chunking
        self.tls_context = tls_context
        self.data_size_limit = data_size_limit
        self.hostname = hostname or MX_HOSTS.get(addr, "mx.test")
        self._controller = None
        self._cond = threading.Condition()
        self._scripts = {}
        self.transactions = []
        self.rcpt_attempts = []
        self.connections = 0        # sessions opened, ever
        self.sessions_now = 0       # open now
        self.max_sessions = 0       # most open at once
        self.actions = []

    def start(self):
        assert self._controller is None, "MX %s already running" % self.addr
        extra = {}
        if self.tls_context is not None:
            extra["tls_context"] = self.tls_context
        if self.data_size_limit is not None:
            extra["data_size_limit"] = self.data_size_limit
        c = _FeatureController(self, _MxHandler(self), hostname=self.addr, port=self.port,
                               server_hostname=self.hostname, decode_data=False,
                               ready_timeout=10, enable_SMTPUTF8=self.smtputf8, **extra)
        c.start()
        self._controller = c
        return self

    def stop(self):
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def running(self):
        return self._controller is not None

    def script_rcpt(self, address, *replies):
        with self._cond:
            self._scripts[("rcpt", address.lower())] = list(replies)

    def script_data(self, *replies):
        with self._cond:
            self._scripts[("data", None)] = list(replies)

    def _take(self, kind, key, action):
        """Pop the next scripted reply of (KIND, KEY) if it is ACTION."""
        with self._cond:
            q = self._scripts.get((kind, key))
            if q and q[0] == action:
                q.pop(0)
                return True
        return False

    def _next_reply(self, kind, key):
        with self._cond:
            q = self._scripts.get((kind, key))
            if q:
                return q.pop(0)
        return self.RCPT_OK if kind == "rcpt" else self.DATA_OK

    @property
    def messages(self):
        """Accepted transactions so far."""
        with self._cond:
            return [m for m in self.transactions if m.accepted]

    def wait_action(self, count=1, timeout=10.0):
        """Wait until COUNT scripted STALL/DROP actions happened; returns them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.actions) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout("MX %s: timed out after %.1fs waiting for %d action(s); has %r"
                                  % (self.addr, timeout, count, self.actions))
                self._cond.wait(left)
            return list(self.actions)

    def wait_for(self, pred, timeout=10.0, what="a message"):
        """Wait until pred(accepted messages) is true; returns its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                v = pred([m for m in self.transactions if m.accepted])
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout("MX %s: timed out after %.1fs waiting for %s; has %r" % (
                        self.addr, timeout, what, self.transactions))
                self._cond.wait(left)


class MxPool:
    """One ScriptedMx per MX host address, all on the same port."""

    def __init__(self, port, addrs=None, features=None):
        """FEATURES: address -> ScriptedMx keyword arguments (smtputf8,
        tls_context, ...)."""
        self.port = port
        features = features or {}
        self.servers = {a: ScriptedMx(a, port, **features.get(a, {}))
                        for a in (addrs or sorted(MX_HOSTS))}

    def __getitem__(self, addr):
        return self.servers[addr]

    def for_domain(self, domain):
        return self.servers[DOMAIN_MX[domain.lower()]]

    def start(self, addr=None):
        for a, s in self.servers.items():
            if addr in (None, a) and not s.running:
                s.start()
        return self

    def stop(self, addr=None):
        for a, s in self.servers.items():
            if addr in (None, a):
                s.stop()

    def restart(self, addr):
        """Stop and start again on the same address and port (a fresh server
        object keeps the recorded transactions and scripts)."""
        self.servers[addr].stop()
        self.servers[addr].start()

    def messages(self):
        return [m for s in self.servers.values() for m in s.messages]

    def with_token(self, token):
        t = token.encode() if isinstance(token, str) else token
        return [m for m in self.messages() if t in m.data]

    def wait_token(self, token, count=1, timeout=15.0):
        """Wait until COUNT accepted messages (over all servers) hold TOKEN."""
        return wait_until(lambda: len(self.with_token(token)) >= count and self.with_token(token),
                          timeout, "%d message(s) with token %r at the MX hosts" % (count, token))


class SmtpSink:
    """Postfix's smtp-sink on ADDR:PORT, counting messages (-c)."""

    def __init__(self, group, workdir, addr=SINK_ADDR, port=None):
        self.group, self.workdir, self.addr, self.port = group, workdir, addr, port
        self.proc = None

    def start(self):
        # smtp-sink sets SO_REUSEPORT: a second sink would bind silently.
        if not nothing_listens(self.port, self.addr):
            raise RuntimeError("port %s:%d is already in use" % (self.addr, self.port))
        argv = ["smtp-sink"] + (["-u", "nobody"] if os.geteuid() == 0 else []) + [
            "-c", "%s:%d" % (self.addr, self.port), "1000"]
        self.proc = self.group.start("smtp-sink", argv,
                                     os.path.join(self.workdir, "smtp-sink.log"))
        wait_until(lambda: self._greets() or not self.proc.alive(), 10, "smtp-sink to listen")
        if not self.proc.alive():
            raise RuntimeError("smtp-sink exited:\n" + self.proc.tail())
        return self

    def _greets(self):
        try:
            with socket.create_connection((self.addr, self.port), timeout=1) as s:
                return s.recv(100).startswith(b"220")
        except OSError:
            return False

    def count(self):
        """Messages received so far (the last mesg=N of its -c counter; our
        own readiness probes count as sessions, not messages)."""
        with open(self.proc.log_path, "rb") as f:
            found = re.findall(rb"mesg=(\d+)", f.read())
        return int(found[-1]) if found else 0

    def stop(self):
        if self.proc:
            self.proc.stop()


# ---------------------------------------------------------------- Hikyaku

def _yaml_scalar(v):
    if isinstance(v, dict) or (isinstance(v, (list, tuple)) and any(isinstance(x, dict) for x in v)):
        return json.dumps(v)       # JSON is YAML flow style
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml_scalar(x) for x in v) + "]"
    return json.dumps(str(v))      # a JSON string is a YAML double-quoted scalar


class Cluster:
    """A Hikyaku cluster description (one YAML file) and its processes.

    add_router/add_sender/add_ingress describe nodes (with test defaults);
    start_all() runs `hikyaku all`, start_node(name) runs one node. Each
    process logs to <workdir>/<name>.<n>.log."""

    def __init__(self, workdir, dns, mx_port, group=None):
        self.workdir = workdir
        self.dns = dns
        self.mx_port = mx_port
        self.group = group or ProcessGroup()
        self.nodes = {}             # name -> dict of settings (with "role")
        self.tenants = None         # the top-level tenants: map, if any
        self.hot_domains = None     # the top-level hot_domains: map, if any
        self.curve = None           # the top-level curve: map (node -> keys), if any
        self.procs = {}             # node name (or "all") -> current Proc
        self._runs = {}
        self.config_path = os.path.join(workdir, "hikyaku.yaml")
        if not os.access(HIKYAKU_BIN, os.X_OK):
            raise RuntimeError("HIKYAKU_BIN %s is not an executable (build it first)" % HIKYAKU_BIN)

    def add_router(self, name="router-1", **kw):
        conf = dict(role="router",
                    front="tcp://127.0.0.1:%d" % free_port(),
                    back="tcp://127.0.0.1:%d" % free_port(),
                    heartbeat_timeout="1s", enqueue_timeout="2s")
        conf.update(kw)
        self.nodes[name] = conf
        return conf

    def add_sender(self, name="sender-1", routers=None, **kw):
        conf = dict(role="sender", routers=routers or self.router_names(),
                    queue=os.path.join(self.workdir, "queue-" + name),
                    queue_map_size="64M", queue_sync=True,
                    hostname="%s.hikyaku.test" % name, weight=1,
                    dns=self.dns.address, delivery_port=self.mx_port,
                    max_deliveries=10, connect_timeout="2s", command_timeout="10s",
                    retry_min="1s", retry_max="2s", max_lifetime="1h",
                    heartbeat_interval="200ms", shaping_file=self.test_shaping_file())
        conf.update(kw)
        self.nodes[name] = conf
        return conf

    # Test time: a throttling reply suspends a destination for a second, not
    # the built-in minutes (as retry_min is 1s here, not 5m).
    # The scripted MX hosts offer no STARTTLS: Gmail's rule must not require it.
    TEST_SHAPING = ("rules:\n  default:\n    backoff: 1s\n    backoff_max: 2s\n"
                    "    recovery_interval: 1s\n  gmail:\n    tls_required: false\n")

    def test_shaping_file(self):
        path = os.path.join(self.workdir, "shaping-test.yaml")
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(self.TEST_SHAPING)
        return path

    def add_ingress(self, name="ingress-1", routers=None, **kw):
        conf = dict(role="ingress", listen="127.0.0.1:%d" % free_port(),
                    hostname="relay.hikyaku.test", relay_networks=["127.0.0.0/8"],
                    network_tenant="default", routers=routers or self.router_names(),
                    submit_timeout="3s", command_timeout="30s", data_timeout="30s",
                    max_message_size="10M", max_recipients=100, max_sessions=100)
        if "listeners" in kw:
            del conf["listen"]
        conf.update(kw)
        self.nodes[name] = conf
        return conf

    def enable_curve(self, **files):
        """Give every node described so far a new CURVE keypair (from `hikyaku
        keygen`) in the curve: section; a node named in FILES gets its secret
        key as secret_key_file (written at that path) instead of inline."""
        self.curve = {}
        for name in self.nodes:
            pub, sec = curve_keypair()
            entry = {"public_key": pub}
            if name in files:
                with open(files[name], "w") as f:
                    f.write(sec + "\n")
                entry["secret_key_file"] = files[name]
            else:
                entry["secret_key"] = sec
            self.curve[name] = entry
        return self.curve

    def names(self, role):
        return [n for n, c in self.nodes.items() if c["role"] == role]

    def router_names(self):
        return self.names("router")

    def listen_addresses(self, ingress="ingress-1"):
        conf = self.nodes[ingress]
        if "listeners" in conf:
            return [l["address"] for l in conf["listeners"]]
        return [conf["listen"]]

    def port(self, ingress="ingress-1", mode=None):
        """The port of the ingress's `listen`, or of its first listener of
        MODE (relay, submission, smtps) under `listeners`."""
        conf = self.nodes[ingress]
        if "listeners" in conf:
            addr = next(l["address"] for l in conf["listeners"]
                        if mode is None or l.get("mode", "relay") == mode)
        else:
            assert mode in (None, "relay"), "ingress %s has only a relay listener" % ingress
            addr = conf["listen"]
        return int(addr.rsplit(":", 1)[1])

    def write_config(self):
        lines = []
        if self.tenants is not None:
            lines.append("tenants: " + json.dumps(self.tenants))
        if self.hot_domains is not None:
            lines.append("hot_domains: " + json.dumps(self.hot_domains))
        if self.curve is not None:
            lines.append("curve: " + json.dumps(self.curve))
        lines.append("nodes:")
        for name, conf in self.nodes.items():
            lines.append("  %s:" % name)
            lines.append("    role: %s" % conf["role"])
            for k, v in conf.items():
                if k != "role":
                    lines.append("    %s: %s" % (k, _yaml_scalar(v)))
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return self.config_path

    def _start(self, key, argv):
        self._runs[key] = self._runs.get(key, 0) + 1
        log = os.path.join(self.workdir, "%s.%d.log" % (key, self._runs[key]))
        p = self.group.start(key, [HIKYAKU_BIN] + argv, log, cwd=self.workdir)
        self.procs[key] = p
        return p

    def start_all(self, wait=True):
        self.write_config()
        p = self._start("all", ["all", "--config", self.config_path])
        if wait:
            self.wait_ready()
        return p

    def start_node(self, name, wait=True):
        """Run one node; with wait, until it is listening (router, ingress)
        or it has been seen by every running router (sender)."""
        if not os.path.exists(self.config_path):
            self.write_config()
        role = self.nodes[name]["role"]
        marks = {r: self.log_of(r).mark() for r in self.router_names() if self.running(r)}
        p = self._start(name, [role, "--config", self.config_path, "--node", name])
        if wait:
            if role == "router":
                # Bound before anyone connects: a node that connects first
                # is refused and retries only after ZeroMQ's reconnect interval.
                self.wait_event("router_listening", node=name, timeout=10)
            elif role == "ingress":
                for addr in self.listen_addresses(name):
                    self.wait_event("ingress_listening", node=name, timeout=10, listen=addr)
            elif role == "sender":
                for r, m in marks.items():
                    self.wait_event("member_up", node=r, timeout=10, since=m, member=name)
        return p

    def proc_of(self, node):
        return self.procs.get(node) or self.procs.get("all")

    def running(self, node):
        p = self.proc_of(node)
        return p is not None and p.alive()

    def log_of(self, node):
        p = self.proc_of(node)
        assert p is not None, "node %s was never started" % node
        return p.log

    def wait_event(self, event, node, timeout=10.0, since=0, pred=None, **fields):
        """Wait for EVENT logged by NODE (in `all` mode: lines whose "node" is
        NODE) since event index SINCE of that node's process log."""
        p = self.proc_of(node)
        if "all" in self.procs and p is self.procs["all"]:
            fields = dict(fields, node=node)
        try:
            return p.log.wait(event, timeout=timeout, since=since, pred=pred, **fields)
        except Timeout as e:
            if not p.alive():
                raise Timeout("%s\n(process %s exited with %s)\n%s" % (
                    e, p.name, p.returncode(), p.tail())) from None
            raise

    def find_events(self, event, node, since=0, pred=None, **fields):
        p = self.proc_of(node)
        if "all" in self.procs and p is self.procs["all"]:
            fields = dict(fields, node=node)
        return p.log.find(event, since=since, pred=pred, **fields)

    def wait_ready(self, timeout=15.0):
        for i in self.names("ingress"):
            for addr in self.listen_addresses(i):
                self.wait_event("ingress_listening", node=i, timeout=timeout, listen=addr)
        for r in self.router_names():
            for s in self.names("sender"):
                self.wait_event("member_up", node=r, timeout=timeout, member=s)

    def signal(self, node, sig):
        """Send SIG to the process running NODE (`all` in embedded mode)."""
        self.proc_of(node).popen.send_signal(sig)

    def stop(self, node, timeout=10.0):
        p = self.procs.get(node)
        return p.stop(timeout) if p else (None, False)

    def kill9(self, node):
        self.procs[node].kill9()

    def close(self):
        """Stop everything; returns the problems seen: a node that did not
        exit 0 promptly on SIGTERM, or any sanitizer report of any run."""
        started = list(self.group.procs)
        problems = []
        for p, status, killed in self.group.close():
            if killed:
                problems.append("%s (pid %d) did not exit within 5s of SIGTERM" % (p.name, p.pid))
            elif status != 0:
                problems.append("%s (pid %d) exited with %s on SIGTERM:\n%s" % (
                    p.name, p.pid, status, p.tail(15)))
        for p in started:
            rep = p.sanitizer_report()
            if rep:
                problems.append("%s (pid %d) sanitizer report:\n%s" % (p.name, p.pid, "\n".join(rep)))
        return problems

    def tails(self):
        return "\n".join(p.tail() for p in self.group.procs)


def domain_mx_spread(domains):
    """DOMAIN_MX plus DOMAINS, each MX on one of the MX host addresses in
    turn (for a DnsServer of a test that needs many domains)."""
    mx = dict(DOMAIN_MX)
    hosts = sorted(MX_HOSTS)
    for i, d in enumerate(domains):
        mx[d] = hosts[i % len(hosts)]
    return mx


def parse_ts(ts):
    """A log line's "ts" (RFC 3339, UTC, milliseconds) as epoch seconds."""
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


_M64 = (1 << 64) - 1


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & _M64
    return h


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & _M64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def hrw_owner(domain, senders):
    """The owner of DOMAIN by weighted rendezvous hashing, recomputed here
    independently of the C code (router_hrw.h). senders: {name: weight} of
    the live, non-draining senders."""
    domain = domain.lower()
    best = None
    for name, w in senders.items():
        h = splitmix64(fnv1a64((name + "\0" + domain).encode("utf-8")))
        u = ((h >> 11) + 0.5) / float(1 << 53)
        score = w / -math.log(u)
        if best is None or score > best[0] or (score == best[0] and name < best[1]):
            best = (score, name)
    return best[1]


MSGID_RE = re.compile(rb"^Message-ID: <([^>]+)>", re.M | re.I)


def arrivals_by_message_id(mx):
    """(Message-ID token, recipient) -> how many accepted transactions
    carried it, over every MX of the pool (<TOKEN@client.test>)."""
    out = {}
    for m in mx.messages():
        if not m.accepted:
            continue
        hit = MSGID_RE.search(m.data)
        if not hit:
            continue
        mid = hit.group(1).decode().split("@", 1)[0]
        for r in m.rcpt_tos:
            key = (mid, r.lower())
            out[key] = out.get(key, 0) + 1
    return out


def curve_keypair():
    """(public, secret) Z85 keys, as `hikyaku keygen` prints them."""
    out = subprocess.run([HIKYAKU_BIN, "keygen", "n"], check=True, capture_output=True,
                         text=True).stdout
    keys = dict(re.findall(r'^\s+(public_key|secret_key): "(.{40})"$', out, re.M))
    return keys["public_key"], keys["secret_key"]


# ---------------------------------------------------------------- SMTP clients

def make_message(token, sender="sender@client.test", rcpts=("rcpt@a.test",), lines=300):
    """A CRLF, 7-bit message with a unique TOKEN (also in its Message-ID):
    headers, lines starting with '.', a line that is only '.', '..', long
    lines near the 998 limit, and trailing spaces."""
    head = [
        "From: <%s>" % sender,
        "To: %s" % ", ".join("<%s>" % r for r in rcpts),
        "Subject: test %s" % token,
        "Message-ID: <%s@client.test>" % token,
        "Date: Thu, 01 Jan 2026 00:00:00 +0000",
        "X-Folded: first part",
        "\tsecond part",
        "",
    ]
    body = ["token %s" % token, ".", "..", ".starts with a dot", "...three", ". ",
            "trailing spaces   ", ""]
    for i in range(lines):
        if i % 50 == 0:
            body.append("." + ("x%d" % i) * 5)
        elif i % 37 == 0:
            body.append(("%04d" % i) + "y" * 990)
        else:
            body.append("line %04d %s the quick brown fox jumps over the lazy dog" % (i, token))
    body.append("end %s" % token)
    return ("\r\n".join(head + body) + "\r\n").encode("ascii")


def dot_stuff(data):
    """DATA transparency (RFC 5321 4.5.2): a '.' starting a line is doubled."""
    out = data.replace(b"\r\n.", b"\r\n..")
    return b"." + out if out.startswith(b".") else out


def strip_received(data):
    """Split DATA into (the leading Received header with its continuation
    lines, the rest). The header is b"" if DATA does not start with one."""
    if not data.lower().startswith(b"received:"):
        return b"", data
    end = data.index(b"\r\n") + 2
    while data[end:end + 1] in (b" ", b"\t"):
        end = data.index(b"\r\n", end) + 2
    return data[:end], data[end:]


def submit(port, mail_from, rcpts, data, host="127.0.0.1", timeout=30.0, source=None):
    """One transaction with smtplib. Returns a dict: greeting, ehlo, mail,
    rcpt (list), data -- each a (code, text) tuple; data is None when no
    recipient was accepted -- and queue_id when the data reply says queued."""
    out = {}
    s = smtplib.SMTP(timeout=timeout, source_address=(source, 0) if source else None)
    try:
        out["greeting"] = s.connect(host, port)
        out["ehlo"] = s.ehlo("client.test")
        out["mail"] = s.mail(mail_from)
        out["rcpt"] = [s.rcpt(r) for r in rcpts]
        out["data"] = None
        if any(200 <= c < 300 for c, _ in out["rcpt"]):
            code, text = s.data(data)
            out["data"] = (code, text.decode("utf-8", "replace"))
            m = QUEUED_RE.match(out["data"][1])
            out["queue_id"] = m.group(1) if m and code == 250 else None
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass
    finally:
        s.close()
    return out


def reply_of(r):
    """(code, text) that decided a submit() result: the DATA reply, else the
    first refused RCPT's, else (0, "")."""
    if r.get("data"):
        return r["data"]
    return next(((c, t.decode() if isinstance(t, bytes) else t) for c, t in r.get("rcpt", [])
                 if c != 250), (0, ""))


class ClientLoad:
    """Client threads handing MSGS [(token, rcpts)] to an ingress (PORT_FN()
    gives its port), as a customer's MTA does: a message refused with 4xx or
    cut off is tried again after 0.2 s, for at most WITHIN s, until 250.
    acked (token -> rcpts), retried (tokens refused at least once), failed
    (token -> last result, never 250), replies (reply code -> count)."""

    def __init__(self, port_fn, msgs, threads=4, lines=3, within=60.0):
        self.port_fn, self.lines, self.within = port_fn, lines, within
        self.lock = threading.Lock()
        self.acked, self.retried, self.failed, self.replies = {}, set(), {}, {}
        self.threads = [threading.Thread(target=self._client, args=(msgs[k::threads],),
                                         daemon=True) for k in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout):
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "client threads still running"

    @property
    def done(self):
        return len(self.acked)

    def _client(self, part):
        for tok, rc in part:
            data = make_message(tok, rcpts=rc, lines=self.lines)
            deadline = time.monotonic() + self.within
            while True:
                try:
                    r = submit(self.port_fn(), "from@client.test", rc, data, timeout=20)
                    code, _ = reply_of(r)
                except (OSError, smtplib.SMTPException) as e:
                    r, code = {"error": repr(e)}, 0
                with self.lock:
                    self.replies[code] = self.replies.get(code, 0) + 1
                    if code == 250:
                        self.acked[tok] = rc
                        break
                assert code == 0 or 400 <= code < 500, (tok, r)
                with self.lock:
                    self.retried.add(tok)
                if time.monotonic() > deadline:
                    with self.lock:
                        self.failed[tok] = r
                    break
                time.sleep(0.2)     # a client's retry pacing


def submit_retrying(port, mail_from, rcpts, data, within=5.0, pause=0.2):
    """submit() as a client would after a 451 4.3.0 (e.g. while the ingress
    reconnects to a router that just came up): try again after PAUSE, for at
    most WITHIN seconds. Every refusal must be exactly 451 4.3.0. Returns
    (result, list of refusals)."""
    deadline = time.monotonic() + within
    refusals = []
    while True:
        r = submit(port, mail_from, rcpts, data)
        if r["data"] is None or r["data"][0] != 451:
            return r, refusals
        assert r["data"][1].startswith("4.3.0"), r
        refusals.append(r["data"])
        if time.monotonic() >= deadline:
            return r, refusals
        time.sleep(pause)   # client retry pacing, not synchronisation


class RawSmtp:
    """A raw SMTP client socket: send bytes, read whole (multi-line) replies."""

    def __init__(self, port, host="127.0.0.1", timeout=15.0, source=None):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def send_data(self, message, end=True):
        """Send MESSAGE (CRLF lines) dot-stuffed, then the final dot."""
        self.send(dot_stuff(message) + (b".\r\n" if end else b""))

    def cmd(self, line):
        self.send(line + ("\r\n" if isinstance(line, str) else b"\r\n"))
        return self.reply()

    def reply(self):
        """(code, [text lines]) of the next reply, or (None, []) on EOF."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return (None, lines)
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            line = line.decode("utf-8", "replace")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return (int(line[:3]), lines)

    def closed_by_peer(self, timeout=5.0):
        """True if the server closes the connection (EOF) within TIMEOUT."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def bdat(self, chunk, last=False):
        """BDAT with CHUNK (bytes) in the same write; returns the reply."""
        self.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk)
        return self.reply()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------- AUTH

def passwd_hash(password, rounds=5000):
    """A password hash made by `hikyaku passwd` (few rounds: tests only)."""
    r = subprocess.run([HIKYAKU_BIN, "passwd", "--rounds", str(rounds)], input=password,
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("hikyaku passwd: %s" % r.stderr)
    return r.stdout.strip()


def sasl_plain(user, password, authzid=""):
    """The base64 AUTH PLAIN response (RFC 4616)."""
    import base64
    return base64.b64encode(("%s\0%s\0%s" % (authzid, user, password)).encode()).decode()


# ---------------------------------------------------------------- TLS

class TestPki:
    """A root CA, an intermediate CA under it and server certificates under
    the intermediate, made with the openssl CLI in WORKDIR (EC P-256 keys,
    fast to make). A server's certificate file is its leaf followed by the
    intermediate, so a client that trusts only the root verifies it only if
    the server sends the chain."""

    __test__ = False    # not a pytest class

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "pki")
        os.makedirs(self.dir, exist_ok=True)
        self.ca = self._path("root.pem")
        self._req("root", "/CN=Hikyaku Test Root CA", ca=True)
        self._openssl("x509", "-req", "-in", self._path("root.csr"), "-signkey",
                      self._path("root.key"), "-days", "3", "-out", self.ca,
                      "-extfile", self._ext("root", "basicConstraints=critical,CA:TRUE\n"
                                            "keyUsage=critical,keyCertSign,cRLSign\n"))
        self._req("inter", "/CN=Hikyaku Test Intermediate CA")
        self._sign("inter", self.ca, self._path("root.key"), 2,
                   "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n")

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _openssl(self, *args):
        r = subprocess.run(["openssl"] + list(args), capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError("openssl %s: %s" % (" ".join(args), r.stderr))

    def _ext(self, name, text):
        path = self._path(name + ".ext")
        with open(path, "w") as f:
            f.write(text)
        return path

    def _req(self, name, subject, ca=False):
        self._openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                      "-nodes", "-keyout", self._path(name + ".key"), "-out",
                      self._path(name + ".csr"), "-subj", subject)

    def _sign(self, name, ca_cert, ca_key, serial, ext):
        self._openssl("x509", "-req", "-in", self._path(name + ".csr"), "-CA", ca_cert,
                      "-CAkey", ca_key, "-set_serial", str(serial), "-days", "3",
                      "-out", self._path(name + ".pem"), "-extfile", self._ext(name, ext))

    def server(self, name, serial, cn="relay.hikyaku.test"):
        """A server certificate (leaf + intermediate in one file) and its key;
        returns (certificate path, key path)."""
        self._req(name, "/CN=%s/O=Hikyaku test %s" % (cn, name))
        self._sign(name, self._path("inter.pem"), self._path("inter.key"), serial,
                   "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                   "subjectAltName=DNS:%s,IP:127.0.0.1\n" % cn)
        chain = self._path(name + ".chain.pem")
        with open(chain, "w") as out:
            for part in (name + ".pem", "inter.pem"):
                with open(self._path(part)) as f:
                    out.write(f.read())
        return chain, self._path(name + ".key")

    def server_context(self, name, serial, cn):
        """An ssl.SSLContext for a server (an MX offering STARTTLS) with a
        new certificate for CN (leaf and intermediate)."""
        import ssl
        cert, key = self.server(name, serial, cn=cn)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        return ctx

    def client_context(self, **kw):
        """An ssl.SSLContext that trusts only the test root and checks the
        server name (relay.hikyaku.test, or 127.0.0.1 by its IP SAN)."""
        import ssl
        ctx = ssl.create_default_context(cafile=self.ca)
        for k, v in kw.items():
            setattr(ctx, k, v)
        return ctx
