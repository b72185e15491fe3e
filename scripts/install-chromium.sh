#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the browser tests, only when it is missing.
# Called by the Makefile's test target; needs root (apt-get). Playwright drives this binary through
# executable_path=/usr/bin/chromium, so `playwright install` (a download from outside) is never run.
set -euo pipefail
if [[ -x /usr/bin/chromium ]]; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "install-chromium: /usr/bin/chromium is missing and we are not root; skipping" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
