#!/usr/bin/env bash
# Install Debian's chromium for the browser test (tests/system/test_browser.py),
# which drives it headless against the scheduler's coupler dashboard page.
# Run as root (CI does). Idempotent: does nothing when chromium already runs.
#
# Usage: .ci/browser-up.sh      (then `chromium --headless --version` works)
set -euo pipefail

log() { echo "browser-up: $*"; }
die() { echo "browser-up: error: $*" >&2; exit 1; }

works() { command -v chromium >/dev/null && chromium --headless --no-sandbox --version >/dev/null 2>&1; }

if works; then
  log "$(chromium --headless --no-sandbox --version 2>/dev/null | head -n 1) is installed; nothing to do"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root to install chromium with apt-get; got uid $(id -u)"

# Package scripts may try to start services; without an init system that fails.
# A policy-rc.d that exits 101 stops them; keep one that is already there.
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  created_policy=1
fi
log "installing chromium (Debian package)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Fonts so that text renders in screenshots; recommends pull in a desktop's worth.
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d

works || die "chromium was installed but 'chromium --headless --no-sandbox --version' fails"
log "$(chromium --headless --no-sandbox --version 2>/dev/null | head -n 1) ready"
