#!/usr/bin/python3
"""smtp_peer - a scriptable SMTP server for test_sender_smtp.

Usage: /usr/bin/python3 smtp_peer.py CONFIG_JSON

CONFIG_JSON (a JSON string, or @path to a file holding one):
  {
    "record": "/path/file.jsonl",   # JSON lines appended as things happen
    "rcpt": {"addr": "reply", ...},  # RCPT replies by address (default 250)
    "listeners": [
      {"host": "127.0.0.11", "port": 2525,
       "greeting": "220 peer ESMTP",      # or a raw string with CRLFs inside
       "ehlo": ["PIPELINING", "SIZE 10485760", "8BITMIME"],
       "ehlo_reply": null,                # e.g. "502 5.5.2 no EHLO" to reject EHLO
       "mail": "250 2.1.0 ok",
       "data": "354 go ahead",
       "final": "250 2.0.0 queued",       # may hold CRLFs for a multi-line reply
       "stall": null,                     # "GREETING", "MAIL", "RCPT", "DATA", "EOD": stop replying there
       "drop_after": null,                # close after this many bytes of message data
       "data_always": false,              # answer DATA with 354 even without recipients
       "close_after_message": false,      # close right after each final reply to the data
       "stale_after": null,               # N: on the MAIL of the session's transaction N+1...
       "stale_how": "close",              # ..."close" (no reply), "reset" (RST), "421" (then
                                          #   close), "stall" (no reply, keep it open)
       "tls": false,                      # STARTTLS works (put "STARTTLS" in "ehlo" to offer it);
                                          #   the certificate is made at start (below)
       "starttls_reply": "220 2.0.0 go",  # e.g. "454 4.7.0 no TLS", or a 220 with more behind it
       "tls_broken": false,               # after the 220 and the ClientHello: garbage, close
       "ehlo_tls": null}                  # the EHLO extensions under TLS (default: "ehlo"
                                          #   without STARTTLS)
    ]
  }

With a "tls" listener, a self-signed certificate for mx.tls.test (EC P-256,
subjectAltName DNS:mx.tls.test) is made with the openssl CLI next to the
record file: peer-cert.pem (also the CA a client can check it against) and
peer-key.pem.

Records (one JSON object per line, flushed before the reply that follows):
  {"event": "connect", "listener": host, "client_port": port}
                                                              -- at the first command
  {"event": "message", "listener": host, "client": peer ip, "client_port": port,
   "n": transaction number in the session (1, 2, ...), "helo": ..., "mail": ...,
   "rcpts": [accepted...], "data_hex": <the un-stuffed message data, hex>,
   "tls": "TLSv1.3" or null, "sni": server name the client sent or null}
                                                              -- before the final reply
  {"event": "session", "listener": host, "client_port": port, "commands": [verbs],
   "violation": bool}                                         -- on QUIT, before 221
"violation" is true when a client sent a command before the previous reply while
PIPELINING was not offered. Lines end in CRLF only (as a strict server does).
A connection that sends nothing (a readiness probe) leaves no record.
"""

import asyncio
import json
import os
import socket
import ssl
import struct
import subprocess
import sys


class Peer:
    def __init__(self, conf, lconf):
        self.conf = conf
        self.l = lconf
        self.record = conf["record"]

    def write_record(self, obj):
        with open(self.record, "a") as f:
            f.write(json.dumps(obj) + "\n")
            f.flush()

    def ehlo_list(self, tls):
        l = self.l
        if tls:
            if l.get("ehlo_tls") is not None:
                return l["ehlo_tls"]
            return [e for e in l.get("ehlo", DEFAULT_EHLO) if e.upper() != "STARTTLS"]
        return l.get("ehlo", DEFAULT_EHLO)

    async def handle(self, reader, writer):
        l = self.l
        tls = {"version": None, "sni": None}

        def offers_pipelining():
            return "PIPELINING" in [e.split(" ")[0].upper()
                                    for e in self.ehlo_list(tls["version"] is not None)]

        buf = bytearray()
        pos = [0]                       # start of unread bytes in buf
        state = {"helo": None, "mail": None, "mail_ok": False, "rcpts": [], "commands": [],
                 "violation": False, "mails": 0}
        stalled = False
        client_port = writer.get_extra_info("peername")[1]

        async def send(text):
            if stalled:
                return
            if not text.endswith("\r\n"):
                text += "\r\n"
            writer.write(text.encode())
            await writer.drain()

        async def readline():
            while True:
                i = buf.find(b"\r\n", pos[0])
                if i >= 0:
                    line = bytes(buf[pos[0]: i + 2])
                    pos[0] = i + 2
                    return line
                # Compact only when reading more, so lines cost O(length).
                del buf[: pos[0]]
                pos[0] = 0
                chunk = await reader.read(65536)
                if not chunk:
                    return None
                buf.extend(chunk)

        def pending():
            return len(buf) > pos[0]

        try:
            if l.get("stall") == "GREETING":
                stalled = True
            await send(l.get("greeting", "220 peer ESMTP"))
            while True:
                line = await readline()
                if line is None:
                    return
                if pending() and not offers_pipelining():
                    state["violation"] = True
                cmd = line[:-2].decode("latin-1")
                verb = cmd.split(" ")[0].split(":")[0].upper()
                if not state["commands"]:
                    self.write_record({"event": "connect", "listener": l["host"],
                                       "client_port": client_port})
                state["commands"].append(verb)
                if verb == "EHLO":
                    state["helo"] = cmd[5:]
                    if l.get("ehlo_reply"):
                        await send(l["ehlo_reply"])
                        continue
                    exts = self.ehlo_list(tls["version"] is not None)
                    lines = ["peer"] + exts
                    out = "".join("250%s%s\r\n" % ("-" if i < len(lines) - 1 else " ", t)
                                  for i, t in enumerate(lines))
                    await send(out)
                elif verb == "STARTTLS" and l.get("tls") and tls["version"] is None:
                    reply = l.get("starttls_reply", "220 2.0.0 go")
                    await send(reply)
                    if not reply.startswith("220"):
                        continue
                    if l.get("tls_broken"):
                        # Wait for the ClientHello, then answer garbage.
                        await reader.read(65536)
                        writer.write(b"this is not a TLS record\r\n" * 4)
                        await writer.drain()
                        return
                    # RFC 3207: whatever the client sent behind STARTTLS is void.
                    del buf[:]
                    pos[0] = 0
                    sni = []
                    ctx = self.tls_context(sni)
                    try:
                        await writer.start_tls(ctx)
                    except (ssl.SSLError, ConnectionError, OSError):
                        return
                    tls["version"] = writer.get_extra_info("ssl_object").version()
                    tls["sni"] = sni[0] if sni else None
                    state["helo"] = None
                elif verb == "HELO":
                    state["helo"] = cmd[5:]
                    await send("250 peer")
                elif verb == "MAIL":
                    state["mails"] += 1
                    if l.get("stale_after") is not None and state["mails"] > l["stale_after"]:
                        # A server that gave up on the idle session just now.
                        how = l.get("stale_how", "close")
                        if how == "stall":
                            stalled = True
                            continue
                        if how == "421":
                            await send("421 4.4.2 peer idle timeout")
                        if how == "reset":
                            # Linger 0: close() sends a RST, not a FIN.
                            sock = writer.get_extra_info("socket")
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                            struct.pack("ii", 1, 0))
                            writer.transport.abort()
                        return
                    state["mail"] = cmd
                    state["rcpts"] = []
                    reply = l.get("mail", "250 2.1.0 ok")
                    state["mail_ok"] = reply.startswith("2")
                    if l.get("stall") == "MAIL":
                        stalled = True
                    await send(reply)
                elif verb == "RCPT":
                    addr = cmd[cmd.find("<") + 1: cmd.rfind(">")]
                    reply = self.conf.get("rcpt", {}).get(addr, "250 2.1.5 ok")
                    if not state["mail_ok"]:
                        reply = "503 5.5.1 need MAIL first"
                    if reply.startswith("2"):
                        state["rcpts"].append(addr)
                    if l.get("stall") == "RCPT":
                        stalled = True
                    await send(reply)
                elif verb == "DATA":
                    if not state["rcpts"] and not l.get("data_always"):
                        await send("554 5.5.1 no valid recipients")
                        continue
                    if l.get("stall") == "DATA":
                        stalled = True
                    reply = l.get("data", "354 go ahead")
                    await send(reply)
                    if not reply.startswith("3"):
                        continue
                    data = bytearray()
                    received = 0
                    while True:
                        dl = await readline()
                        if dl is None:
                            return
                        received += len(dl)
                        if l.get("drop_after") is not None and received >= l["drop_after"]:
                            writer.transport.abort()
                            return
                        if dl == b".\r\n":
                            break
                        if dl.startswith(b"."):
                            dl = dl[1:]
                        data.extend(dl)
                    if not state["rcpts"]:
                        await send("554 5.5.1 no valid recipients")
                        continue
                    self.write_record({"event": "message", "listener": l["host"],
                                       "client": writer.get_extra_info("peername")[0],
                                       "client_port": client_port, "n": state["mails"],
                                       "helo": state["helo"], "mail": state["mail"],
                                       "rcpts": state["rcpts"], "data_hex": data.hex(),
                                       "tls": tls["version"], "sni": tls["sni"]})
                    if l.get("stall") == "EOD":
                        stalled = True
                    await send(l.get("final", "250 2.0.0 queued"))
                    if l.get("close_after_message"):
                        return
                elif verb == "RSET":
                    state["mail"] = None
                    state["rcpts"] = []
                    await send("250 2.0.0 ok")
                elif verb == "QUIT":
                    self.write_record({"event": "session", "listener": l["host"],
                                       "client_port": client_port,
                                       "commands": state["commands"],
                                       "violation": state["violation"]})
                    await send("221 2.0.0 bye")
                    return
                else:
                    await send("502 5.5.2 command not recognized")
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            try:
                writer.close()
            except Exception:
                pass


    def tls_context(self, sni):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.conf["_cert"], self.conf["_key"])

        def on_sni(sslobj, name, _ctx):
            sni.append(name)
        ctx.sni_callback = on_sni
        return ctx


DEFAULT_EHLO = ["PIPELINING", "SIZE 10485760", "8BITMIME"]


def make_certificate(conf):
    """A self-signed certificate for mx.tls.test next to the record file."""
    d = os.path.dirname(os.path.abspath(conf["record"]))
    conf["_cert"] = os.path.join(d, "peer-cert.pem")
    conf["_key"] = os.path.join(d, "peer-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", "/CN=mx.tls.test", "-addext", "subjectAltName=DNS:mx.tls.test",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-keyout", conf["_key"], "-out", conf["_cert"]],
                   check=True, capture_output=True, timeout=60)


async def main():
    arg = sys.argv[1]
    if arg.startswith("@"):
        with open(arg[1:]) as f:
            arg = f.read()
    conf = json.loads(arg)
    if any(l.get("tls") for l in conf["listeners"]):
        make_certificate(conf)
    servers = []
    for lconf in conf["listeners"]:
        peer = Peer(conf, lconf)
        servers.append(await asyncio.start_server(peer.handle, lconf["host"], lconf["port"],
                                                  reuse_address=True))
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
