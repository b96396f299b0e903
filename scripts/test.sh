#!/usr/bin/env bash
# Run the test suite. The network-namespace test needs root and iproute2 + iptables (which
# brings ebtables); as root, install them from Debian's packages if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=""
for tool in ip tc iptables ebtables; do command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"; done
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing iproute2 iptables for the network-namespace test (missing:$missing)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 iptables >/dev/null
fi
# The dashboard's browser tests drive Debian's headless Chromium (tests/test_dashboard_browser.py).
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium chromium-driver for the dashboard's browser tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
exec .venv/bin/python -m pytest -q "$@"
