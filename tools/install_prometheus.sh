#!/bin/sh
# promtool and prometheus from Debian's `prometheus` package, for tests/monitoring (idempotent).
# Needs root (CI and the dev machines run the tests as root) or passwordless sudo.
set -eu
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo -n"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# the package's post-install would start a system Prometheus on :9090; nothing should start here
printf '#!/bin/sh\nexit 101\n' > /tmp/marketbus-policy-rc.d
$SUDO sh -c 'if [ ! -e /usr/sbin/policy-rc.d ]; then cp /tmp/marketbus-policy-rc.d /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; touch /tmp/marketbus-policy-rc.d.added; fi'
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
if [ -e /tmp/marketbus-policy-rc.d.added ]; then $SUDO rm -f /usr/sbin/policy-rc.d /tmp/marketbus-policy-rc.d.added; fi
command -v promtool >/dev/null && command -v prometheus >/dev/null
