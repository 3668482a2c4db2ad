#!/usr/bin/env bash
# Install Debian's Chromium for the real-browser tests when it is missing (CI runs as root).
# Never `playwright install`: it downloads a browser build and fails on these machines.
set -uo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; browser tests will be skipped" >&2
else
  echo "warning: chromium missing and not root; browser tests will be skipped" >&2
fi
exit 0
