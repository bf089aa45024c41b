#!/bin/sh
# demo-peers.sh - the receiving side of the README walkthrough, on loopback:
# a DNS server (dnsmasq, 127.0.0.1:5354) saying that demo.test and
# example.test receive mail at 127.0.0.20, and an SMTP server there
# (aiosmtpd, 127.0.0.20:2526) that prints every message it receives.
# Ctrl-C stops both.
set -e
dir=$(mktemp -d)
dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --listen-address=127.0.0.1 \
	--port=5354 --bind-interfaces --keep-in-foreground --cache-size=0 \
	--pid-file="$dir/dnsmasq.pid" --user="$(id -un)" --local=/test/ \
	--mx-host=demo.test,mx.demo.test,10 --mx-host=example.test,mx.demo.test,10 \
	--host-record=mx.demo.test,127.0.0.20 &
dns=$!
trap 'kill $dns 2>/dev/null; rm -rf "$dir"' EXIT INT TERM
echo "demo-peers: DNS on 127.0.0.1:5354, MX for demo.test and example.test -> 127.0.0.20:2526"
/usr/bin/python3 -m aiosmtpd -n -l 127.0.0.20:2526 -c aiosmtpd.handlers.Debugging stdout
