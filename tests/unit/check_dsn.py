#!/usr/bin/python3
"""check_dsn - DSNs built by sender_dsn, read by Python's email package.

Usage: check_dsn.py PATH/TO/test_sender_dsn

Runs `test_sender_dsn --emit DIR` (sample DSNs, one .eml file each) and
parses every file with the email package under the default policy (from
text decoded as UTF-8, which RFC 6532 header fields need), as a mail client
would: the message must be multipart/report with the right
report-type, parse without defects, and its delivery-status part must have a
per-message block and one block per recipient with the expected fields.
Exit status 0 when every check passes (CTest runs it as a test).
"""
import email
import email.parser
import email.policy
import os
import subprocess
import sys
import tempfile


def fail(name, why):
    print("FAIL %s: %s" % (name, why))
    sys.exit(1)


def check(cond, name, why):
    if not cond:
        fail(name, why)


def status_blocks(msg, raw, index=1):
    """The blocks of the delivery-status part (part INDEX of MSG, whose text
    is RAW) as lists of (field, value). message/delivery-status is parsed by
    the email package itself (a list of header blocks); it takes
    message/global-delivery-status (RFC 6533 is newer) for an encapsulated
    message, so that one is cut out of RAW at the boundaries and its blocks
    parsed here the same way."""
    part = msg.get_payload()[index]
    if part.get_content_type() == "message/delivery-status":
        return [list(b.items()) for b in part.get_payload()]
    delim = "\r\n--" + msg.get_boundary()
    text = raw.split(delim)[index + 1]
    text = text.split("\r\n\r\n", 1)[1]         # after the part's own header
    blocks = [b for b in text.split("\r\n\r\n") if b.strip()]
    out = []
    for b in blocks:
        m = email.parser.Parser(policy=email.policy.default).parsestr(b + "\r\n", headersonly=True)
        out.append(list(m.items()))
    return out


def field(block, key):
    vals = [str(v) for k, v in block if k.lower() == key.lower()]
    return vals[0] if vals else None


def walk_defects(msg):
    found = []
    for p in msg.walk():
        found += [(p.get_content_type(), d) for d in p.defects]
    return found


def check_common(name, msg, report_type, status_type, third_type):
    check(msg.get_content_type() == "multipart/report", name,
          "content type %s" % msg.get_content_type())
    check(msg.get_param("report-type") == report_type, name,
          "report-type %r" % msg.get_param("report-type"))
    check(msg["Auto-Submitted"] == "auto-replied", name, "Auto-Submitted")
    check(msg["Message-ID"] and msg["Date"] and msg["From"] and msg["To"], name,
          "a header field is missing")
    check(not walk_defects(msg), name, "defects: %r" % walk_defects(msg))
    parts = msg.get_payload()
    types = [p.get_content_type() for p in parts]
    want = ["text/plain", status_type] + ([third_type] if third_type else [])
    check(types == want, name, "parts %r, want %r" % (types, want))
    return parts


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.argv[1], "--emit", d], check=True)
        msgs, raws = {}, {}
        for f in sorted(os.listdir(d)):
            with open(os.path.join(d, f), "rb") as fh:
                raw = fh.read()
            check(b"\n" not in raw.replace(b"\r\n", b""), f, "a bare LF")
            # RFC 6532: header fields in UTF-8. The email package reads them
            # from text (bytes would be taken as ASCII with escapes).
            raws[f[:-4]] = raw.decode("utf-8")
            msgs[f[:-4]] = email.parser.Parser(policy=email.policy.default).parsestr(
                raws[f[:-4]])
    check(set(msgs) == {"failed_hdrs", "failed_full", "delayed", "utf8"}, "emit",
          "files %r" % sorted(msgs))

    # A failure with headers returned: two recipient blocks.
    name = "failed_hdrs"
    m = msgs[name]
    check(m["Subject"] == "Undelivered Mail Returned to Sender", name, "subject")
    parts = check_common(name, m, "delivery-status", "message/delivery-status",
                         "text/rfc822-headers")
    blocks = status_blocks(m, raws[name])
    check(len(blocks) == 3, name, "%d blocks" % len(blocks))
    per_msg, r1, r2 = blocks
    check(field(per_msg, "Reporting-MTA") == "dns; sender-1.hikyaku.test", name, "Reporting-MTA")
    check(field(per_msg, "Original-Envelope-Id") == "env+id=42", name, "Original-Envelope-Id")
    check(field(per_msg, "Arrival-Date").startswith("Thu, 01 Jan 2026 00:00:00"), name, "Arrival-Date")
    check(field(r1, "Final-Recipient") == "rfc822; bob@a.test", name, "Final-Recipient 1")
    check(field(r1, "Original-Recipient") == "rfc822;bob+x@a.test", name, "Original-Recipient")
    check(field(r1, "Action") == "failed", name, "Action 1")
    check(field(r1, "Status") == "5.1.1", name, "Status 1")
    check(field(r1, "Remote-MTA") == "dns; mx.a.test", name, "Remote-MTA")
    check(field(r1, "Diagnostic-Code") ==
          "smtp; 550 5.1.1 <bob@a.test>: Recipient address rejected: User unknown",
          name, "Diagnostic-Code %r" % field(r1, "Diagnostic-Code"))
    check(field(r1, "Last-Attempt-Date") is not None, name, "Last-Attempt-Date")
    check(field(r2, "Final-Recipient") == "rfc822; carol@b.test", name, "Final-Recipient 2")
    check(field(r2, "Status") == "5.4.7", name, "Status 2")
    check(field(r2, "Original-Recipient") is None, name, "Original-Recipient 2")
    hdrs = parts[2].get_payload()
    check("Subject: hello" in hdrs and "SECRET-BODY" not in hdrs, name, "returned headers")

    # RET=FULL: the original as message/rfc822, itself a parsed message.
    name = "failed_full"
    m = msgs[name]
    parts = check_common(name, m, "delivery-status", "message/delivery-status",
                         "message/rfc822")
    inner = parts[2].get_payload()[0]
    check(inner["Subject"] == "hello" and "SECRET-BODY" in inner.get_content(), name,
          "returned message")

    # A delay: Will-Retry-Until, headers only.
    name = "delayed"
    m = msgs[name]
    check(m["Subject"] == "Delayed Mail (still being retried)", name, "subject")
    parts = check_common(name, m, "delivery-status", "message/delivery-status",
                         "text/rfc822-headers")
    blocks = status_blocks(m, raws[name])
    check(len(blocks) == 2, name, "%d blocks" % len(blocks))
    r1 = blocks[1]
    check(field(r1, "Action") == "delayed" and field(r1, "Status") == "4.7.1", name, "action/status")
    check(field(r1, "Will-Retry-Until").startswith("Tue, 06 Jan 2026"), name, "Will-Retry-Until")

    # SMTPUTF8: RFC 6533 types, UTF-8 in the To: and the report.
    name = "utf8"
    m = msgs[name]
    to = m["To"].addresses
    check(len(to) == 1 and to[0].addr_spec == "j\u00f6rg@client.test", name, "To: %r" % str(m["To"]))
    parts = check_common(name, m, "global-delivery-status", "message/global-delivery-status",
                         "message/global-headers")
    blocks = status_blocks(m, raws[name])
    check(len(blocks) == 3, name, "%d blocks" % len(blocks))
    check(field(blocks[1], "Final-Recipient") == "utf-8; b\u00f6b@a.test", name, "Final-Recipient")
    check(field(blocks[2], "Final-Recipient") == "rfc822; carol@b.test", name, "Final-Recipient 2")
    # (the raw text: get_content() of an 8bit part read from text re-encodes
    # it as Latin-1, a quirk of the email package)
    text = parts[0].get_payload()
    check(parts[0].get_content_charset() == "utf-8", name, "charset")
    check("<b\u00f6b@a.test>: failed" in text, name, "text part")
    print("ok: %d DSNs parsed as multipart/report" % len(msgs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
