#!/usr/bin/env bash
# Prometheus and Pushgateway from Debian's packages, for the metrics tier (tests start them on loopback;
# no service is enabled). Idempotent: does nothing when both binaries are present.
set -euo pipefail
if command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null && command -v promtool >/dev/null; then
    prometheus --version 2>&1 | head -1
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway >/dev/null
# Debian's postinst may start the daemons where an init system runs; the tests use their own ports anyway.
prometheus --version 2>&1 | head -1
