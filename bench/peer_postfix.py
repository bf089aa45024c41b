#!/usr/bin/python3
"""A private Postfix instance run as a plain relay: the benchmark peer for Hikyaku.

Everything (configuration, queue, data, log) lives under a caller-given work
directory; the system instance and /etc/postfix are never touched (only read:
Postfix's own meta files and binaries). Standard library only.

    relay = PostfixRelay("/tmp/x/pf", 2600, "127.0.0.13", 2699, sessions=100)
    relay.start(); ...; relay.stop()

Self-test (`/usr/bin/python3 bench/peer_postfix.py`): smtp-source -> this relay
-> smtp-sink, printing injection and end-to-end rates.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

POSTFIX = "/usr/sbin/postfix"
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"

# Queues that hold mail still to be delivered. "hold" is excluded on purpose:
# nothing here puts mail on hold, and held mail would never drain anyway.
_LIVE_QUEUES = ("maildrop", "incoming", "active", "deferred")


class PostfixError(RuntimeError):
    pass


def _proc_stat(pid):
    """(state, ppid, pgid, sid) of a live process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def _all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


class PostfixRelay:
    def __init__(self, workdir, listen_port, relay_to_host, relay_to_port, sessions=100,
                 overrides=None):
        """workdir: absolute empty dir. listen: 127.0.0.1:listen_port. Relays everything
        to relay_to_host:relay_to_port (e.g. 127.0.0.13:2699, an smtp-sink) without DNS.
        overrides: optional {main.cf parameter: value}, appended last (later wins)."""
        if not os.path.isabs(workdir):
            raise ValueError(f"workdir must be absolute (postfix -c needs it): {workdir!r}")
        if not os.path.isdir(workdir):
            raise ValueError(f"workdir does not exist: {workdir!r}")
        if os.listdir(workdir):
            raise ValueError(f"workdir is not empty: {workdir!r}")
        if sessions < 1:
            raise ValueError(f"sessions must be >= 1, got {sessions}")
        self.workdir = os.path.realpath(workdir)
        self.listen_port = int(listen_port)
        self.relay_to_host = relay_to_host
        self.relay_to_port = int(relay_to_port)
        self.sessions = int(sessions)
        self.overrides = dict(overrides or {})
        self.config_dir = os.path.join(self.workdir, "etc")
        self.queue_dir = os.path.join(self.workdir, "spool")
        self.data_dir = os.path.join(self.workdir, "data")
        self.maillog = os.path.join(self.workdir, "maillog")
        self._master_pid = None
        self._written = False

    # -- configuration -------------------------------------------------------

    def _main_cf(self):
        s = self.sessions
        procs = s + 50
        return f"""\
# Private benchmark instance written by bench/peer_postfix.py. Not the system Postfix.
compatibility_level = 3.6
config_directory = {self.config_dir}
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-peer
# No syslog here: log to a file (postlogd); the prefix list must allow the path.
maillog_file = {self.maillog}
maillog_file_prefixes = {self.workdir}

myhostname = postfix-peer.bench.test
mydomain = bench.test
myorigin = $myhostname
append_dot_mydomain = no
biff = no

# Listen on 127.0.0.1 only (the port is set by the master.cf service name).
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8

# A pure relay: nothing is local, everything goes to the sink, no DNS at all
# (the relayhost is a bracketed IP literal; lookups, if any, use /etc/hosts).
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
relayhost = [{self.relay_to_host}]:{self.relay_to_port}
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =

# Remove throttles that would cap a benchmark rather than measure Postfix.
default_process_limit = {procs}
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
in_flow_delay = 0
initial_destination_concurrency = {s}
default_destination_concurrency_limit = {s}
smtp_destination_concurrency_limit = {s}
relay_destination_concurrency_limit = {s}
default_destination_rate_delay = 0
smtp_connection_cache_on_demand = yes
qmgr_message_active_limit = 200000
qmgr_message_recipient_limit = 200000

# Durability as shipped: Postfix fsyncs each queue file before it answers 250
# (and Hikyaku's senders sync LMDB before acking), so the comparison is fair.
# Do not turn that off here.
"""

    def _master_cf(self):
        procs = self.sessions + 50
        # chroot column ("n") off everywhere: a temp instance has no chroot jail.
        return f"""\
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:{self.listen_port} inet n - n - {procs} smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

    def _make_traversable(self):
        """Postfix opens data_directory files (master.lock) and the maillog as the
        postfix user, so workdir and every ancestor need o+x. A tempfile.mkdtemp()
        parent is 0700: add o+x (search only, no listing) to the ones we own."""
        path = self.workdir
        while True:
            st = os.stat(path)
            if not st.st_mode & 0o001:
                if st.st_uid != os.geteuid():
                    raise PostfixError(f"{path} is not searchable by the postfix user "
                                       f"(mode {st.st_mode & 0o7777:o}) and not ours to chmod")
                os.chmod(path, (st.st_mode & 0o7777) | 0o011)
            parent = os.path.dirname(path)
            if parent == path:
                return
            path = parent

    def _write_config(self):
        self._make_traversable()
        os.makedirs(self.config_dir, mode=0o755)
        with open(os.path.join(self.config_dir, "main.cf"), "w") as f:
            f.write(self._main_cf())
            if self.overrides:
                f.write("\n# Overrides given by the caller.\n")
                f.writelines(f"{k} = {v}\n" for k, v in self.overrides.items())
        with open(os.path.join(self.config_dir, "master.cf"), "w") as f:
            f.write(self._master_cf())
        # Root-owned like the real /var/spool/postfix; `postfix start` runs
        # post-install create-missing, which creates the queue subdirectories
        # and data_directory with the right owners (postfix, postdrop).
        os.makedirs(self.queue_dir, mode=0o755)
        open(self.maillog, "a").close()
        self._written = True

    def _postfix(self, *args, timeout=60):
        env = dict(os.environ)
        env.pop("MAIL_CONFIG", None)
        return subprocess.run(
            [POSTFIX, "-c", self.config_dir, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, timeout=timeout, start_new_session=True)

    # -- lifecycle -----------------------------------------------------------

    def start(self, timeout=30.0):
        if not self._written:
            self._write_config()
        if self._master_alive():
            raise PostfixError(f"postfix instance in {self.workdir} is already running")
        r = self._postfix("start")
        if r.returncode != 0:
            raise PostfixError(
                f"postfix -c {self.config_dir} start failed (exit {r.returncode}):\n"
                f"{r.stdout.decode(errors='replace')}\n--- maillog ---\n{self.log_tail()}")
        self._master_pid = self._read_master_pid()
        deadline = time.monotonic() + timeout
        last_err = None
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.listen_port), timeout=2) as c:
                    c.settimeout(5)
                    greeting = c.recv(512)
                    if greeting.startswith(b"220"):
                        c.sendall(b"QUIT\r\n")
                        return
                    last_err = f"unexpected greeting {greeting!r}"
            except OSError as e:
                last_err = str(e)
            if not self._master_alive():
                break
            time.sleep(0.05)
        self.stop()
        raise PostfixError(
            f"postfix in {self.workdir} does not answer SMTP on 127.0.0.1:{self.listen_port}"
            f" ({last_err})\n--- maillog ---\n{self.log_tail()}")

    def stop(self, timeout=15.0):
        """postfix stop, then kill (by pid) whatever of this instance is left."""
        if self._master_pid is None:
            self._master_pid = self._read_master_pid()
        if self._master_alive():
            try:
                self._postfix("stop", timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + timeout
        while True:
            left = self.pids()
            if not left:
                break
            if time.monotonic() >= deadline:
                raise PostfixError(f"postfix processes of {self.workdir} survive SIGKILL: {left}")
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        self._master_pid = None

    # -- inspection ----------------------------------------------------------

    def _read_master_pid(self):
        try:
            with open(os.path.join(self.queue_dir, "pid", "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _master_alive(self):
        pid = self._master_pid or self._read_master_pid()
        if pid is None:
            return False
        st = _proc_stat(pid)
        if st is None or st[0] in ("Z", "X"):
            return False
        # Guard against a recycled pid: the master leads its own session.
        return st[3] == pid and self._ours(pid)

    def _ours(self, pid):
        """Every Postfix daemon chdirs into queue_directory: that tells this
        instance's processes apart from an unrelated process that reused a pid."""
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return False
        return cwd == self.queue_dir or cwd.startswith(self.queue_dir + "/")

    def pids(self):
        """Master and every process of its session (zombies excluded), plus their
        descendants."""
        master = self._master_pid or self._read_master_pid()
        if master is None:
            return []
        stats = {}
        for pid in _all_pids():
            st = _proc_stat(pid)
            if st is not None and st[0] not in ("Z", "X"):
                stats[pid] = st
        found = {p for p, st in stats.items()
                 if (p == master or st[3] == master or st[2] == master) and self._ours(p)}
        grew = True
        while grew:
            grew = False
            for p, st in stats.items():
                if p not in found and st[1] in found:
                    found.add(p)
                    grew = True
        return sorted(found)

    def queue_empty(self):
        for q in _LIVE_QUEUES:
            for _root, _dirs, files in os.walk(os.path.join(self.queue_dir, q)):
                if files:
                    return False
        return True

    def log_tail(self, n=40):
        try:
            with open(self.maillog, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 512 * n))
                data = f.read()
        except OSError as e:
            return f"(no maillog: {e})"
        return "\n".join(data.decode(errors="replace").splitlines()[-n:])


# -- self-test ---------------------------------------------------------------

def free_port(host):
    """A port nobody listens on at host. Binding without SO_REUSEPORT fails if an
    smtp-sink (which sets SO_REUSEPORT) already holds it, so this also catches that."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Sink:
    """smtp-sink -c, reading its running `mesg=N` counter from stdout."""

    def __init__(self, host, port, backlog=1000):
        self.host, self.port = host, port
        self.count = 0
        self._cv = threading.Condition()
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-u", "nobody", "-c", f"{host}:{port}", str(backlog)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise PostfixError(f"smtp-sink on {host}:{port} did not start: "
                                       f"{self.proc.stderr.read().decode(errors='replace')}")
                time.sleep(0.05)

    def _read(self):
        buf = b""
        pat = re.compile(rb"mesg=(\d+)")
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                break
            buf = (buf + chunk)[-256:]
            m = pat.findall(buf)
            if m:
                with self._cv:
                    self.count = int(m[-1])
                    self._cv.notify_all()

    def wait_for(self, n, stall_timeout=60.0):
        """Wait until count >= n; give up after stall_timeout without progress."""
        with self._cv:
            last, since = self.count, time.monotonic()
            while self.count < n:
                self._cv.wait(1.0)
                if self.count != last:
                    last, since = self.count, time.monotonic()
                elif time.monotonic() - since > stall_timeout:
                    return False
            return True

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)


def _cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]  # total, idle + iowait


def run_round(base, messages, size, source_sessions, sessions, label, overrides=None):
    workdir = os.path.join(base, label)
    os.mkdir(workdir)
    sink = Sink("127.0.0.13", free_port("127.0.0.13"))
    relay = None
    try:
        listen = free_port("127.0.0.1")
        relay = PostfixRelay(workdir, listen, sink.host, sink.port, sessions=sessions,
                              overrides=overrides)
        relay.start()
        cmd = [SMTP_SOURCE, "-s", str(source_sessions), "-m", str(messages), "-d",
               "-l", str(size), "-f", "a@b.test", "-t", "u@d.test", f"127.0.0.1:{listen}"]
        print(f"[{label}] relay pids={len(relay.pids())} sink={sink.host}:{sink.port}")
        print(f"[{label}] $ {' '.join(cmd)}")
        c0 = _cpu_times()
        t0 = time.monotonic()
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
        t_inj = time.monotonic() - t0
        if r.returncode != 0:
            raise PostfixError(f"smtp-source exit {r.returncode}: "
                               f"{r.stderr.decode(errors='replace')}\n{relay.log_tail()}")
        if not sink.wait_for(messages):
            raise PostfixError(f"sink stalled at {sink.count}/{messages}\n{relay.log_tail()}")
        t_e2e = time.monotonic() - t0
        c1 = _cpu_times()
        busy = 1 - (c1[1] - c0[1]) / max(1, c1[0] - c0[0])
        # The sink counts the final dot before Postfix removes the queue file.
        deadline = time.monotonic() + 30
        while not relay.queue_empty() and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"[{label}] injected {messages} x {size} B in {t_inj:.2f}s = "
              f"{messages / t_inj:.0f} msg/s; delivered {sink.count} in {t_e2e:.2f}s = "
              f"{messages / t_e2e:.0f} msg/s end-to-end; queue empty: {relay.queue_empty()}; "
              f"machine CPU busy {busy:.0%} (all processes, {os.cpu_count()} cores)")
        if sink.count != messages:
            raise PostfixError(f"sink counted {sink.count}, expected {messages}")
        return messages / t_inj, messages / t_e2e
    finally:
        if relay is not None:
            relay.stop()
            if relay.pids():
                raise PostfixError(f"leftover postfix processes: {relay.pids()}")
        sink.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--source-sessions", type=int, default=50)
    ap.add_argument("--sessions", type=int, default=100, help="PostfixRelay sessions")
    ap.add_argument("--check-messages", type=int, default=500,
                    help="messages through a second instance (restart/cleanup check); 0 = skip")
    ap.add_argument("-o", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                    help="extra main.cf setting (repeatable)")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    a = ap.parse_args()
    overrides = dict(o.split("=", 1) for o in a.overrides)
    if os.geteuid() != 0:
        sys.exit("run as root (postfix start, smtp-sink -u nobody)")
    base = tempfile.mkdtemp(prefix="peer_postfix.")
    try:
        run_round(base, a.messages, a.size, a.source_sessions, a.sessions, "run1",
                  overrides)
        if a.check_messages:
            run_round(base, a.check_messages, a.size, a.source_sessions, a.sessions, "run2",
                      overrides)
    finally:
        if a.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
