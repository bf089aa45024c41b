#!/bin/sh
# install-deps.sh - install the Debian 12 packages Hikyaku builds and tests
# with, only those missing. Needs root (or sudo) when something is missing.
set -e
PKGS="build-essential cmake pkg-config
libzmq3-dev libprotobuf-c-dev protobuf-c-compiler liblmdb-dev lmdb-utils libuv1-dev
libc-ares-dev libyaml-dev libjansson-dev libidn2-dev libssl-dev libcrypt-dev libcmocka-dev
libmicrohttpd-dev libcurl4-openssl-dev
dnsmasq-base postfix libsasl2-modules swaks libnet-ssleay-perl python3 python3-pytest python3-aiosmtpd python3-dnspython python3-zmq openssl"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "install-deps: installing:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
# Postfix is only a test peer: never let its package start the system service.
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
	$SUDO chmod +x /usr/sbin/policy-rc.d
	trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing
