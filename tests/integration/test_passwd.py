"""`hikyaku passwd`, the real binary: its hashes verify with Python's crypt
module (another caller of the system's crypt(3)), salts differ, one line is
read from a pipe, a terminal gets no echo, and bad input exits 1 with nothing
on stdout. Needs no cluster and no peers."""
import os
import pty
import select
import subprocess
import time
import warnings

import pytest

import harness

with warnings.catch_warnings():
    # Deprecated (gone in Python 3.13) but present in Debian 12's 3.11.
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt


def passwd(stdin, *args):
    return subprocess.run([harness.HIKYAKU_BIN, "passwd", *args], input=stdin,
                          capture_output=True, timeout=60)


def hash_of(stdin, *args):
    r = passwd(stdin, *args)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert out.endswith("\n") and out.count("\n") == 1, out
    return out[:-1]


def test_hash_verifies_with_crypt():
    h = hash_of(b"s3cret")              # as `echo -n s3cret | hikyaku passwd`
    assert h.startswith("$6$rounds=100000$")
    assert crypt.crypt("s3cret", h) == h
    assert crypt.crypt("s3cret ", h) != h
    assert crypt.crypt("s3cre", h) != h


@pytest.mark.parametrize("data", [b"pw with spaces\n", b"pw with spaces\r\n",
                                  b"pw with spaces\nnext line\n"])
def test_one_line_is_read(data):
    h = hash_of(data, "--rounds", "1000")
    assert crypt.crypt("pw with spaces", h) == h


def test_utf8_password():
    h = hash_of("pässwörd 飛脚".encode(), "--rounds", "1000")
    assert crypt.crypt("pässwörd 飛脚", h) == h


def test_rounds_and_salts():
    a = hash_of(b"same", "--rounds", "5000")
    b = hash_of(b"same", "--rounds", "5000")
    assert a.startswith("$6$rounds=5000$") and b.startswith("$6$rounds=5000$")
    assert a != b
    assert a.split("$")[3] != b.split("$")[3]          # the salts
    assert crypt.crypt("same", a) == a and crypt.crypt("same", b) == b


@pytest.mark.parametrize("data", [b"", b"\n", b"\r\n"])
def test_empty_password_exits_1(data):
    r = passwd(data)
    assert r.returncode == 1
    assert r.stdout == b""
    assert b"empty password" in r.stderr


@pytest.mark.parametrize("data,args,code,err", [
    (b"x" * 512, [], 1, b"too long"),
    (b"a\0b\n", [], 1, b"NUL"),
    (b"pw\n", ["--rounds", "999"], 1, b"--rounds"),
    (b"pw\n", ["--rounds", "lots"], 1, b"--rounds"),
    (b"pw\n", ["--bogus"], 2, b"usage"),
    (b"pw\n", ["extra"], 2, b"usage"),
])
def test_bad_input(data, args, code, err):
    r = passwd(data, *args)
    assert r.returncode == code
    assert r.stdout == b""
    assert err in r.stderr


def test_longest_password():
    h = hash_of(b"y" * 511 + b"\n", "--rounds", "1000")
    assert crypt.crypt("y" * 511, h) == h


def _read_until(fd, want, timeout=30):
    """Read the pty master until WANT has been seen; return all read."""
    seen = b""
    deadline = time.monotonic() + timeout
    while want not in seen:
        left = deadline - time.monotonic()
        assert left > 0, "no %r from hikyaku passwd, got %r" % (want, seen)
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 1024)
            except OSError:             # EIO: the child closed its side
                chunk = b""
            assert chunk, "hikyaku passwd ended before %r, got %r" % (want, seen)
            seen += chunk
    return seen


def _on_terminal(first, second):
    """Run `hikyaku passwd` on a pseudo-terminal, answer both prompts;
    return (exit code, stdout, everything the terminal showed)."""
    master, slave = pty.openpty()
    # A new session: the pty is stdin but not our controlling terminal, so
    # turning echo off is not a background job's tcsetattr (SIGTTOU).
    p = subprocess.Popen([harness.HIKYAKU_BIN, "passwd", "--rounds", "1000"],
                         stdin=slave, stdout=subprocess.PIPE, stderr=slave,
                         start_new_session=True)
    os.close(slave)
    try:
        # Echo is off before each prompt appears, so typing after it is safe.
        shown = _read_until(master, b"Password: ")
        os.write(master, first + b"\n")
        shown += _read_until(master, b"Retype password: ")
        os.write(master, second + b"\n")
        out, _ = p.communicate(timeout=60)
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 1024)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
        return p.returncode, out, shown
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)


def test_terminal_without_echo():
    code, out, shown = _on_terminal(b"tty secret", b"tty secret")
    assert code == 0, shown
    h = out.decode().strip()
    assert crypt.crypt("tty secret", h) == h
    assert b"tty secret" not in shown


def test_terminal_retype_must_match():
    code, out, shown = _on_terminal(b"first try", b"first tyr")
    assert code == 1
    assert out == b""
    assert b"do not match" in shown
    assert b"first" not in shown
