#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed (/usr/bin/chromium): the dashboard's browser tests
# drive it with Playwright, which cannot download a browser of its own here. As root it installs
# the package; otherwise it says what to run.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "the dashboard tests need Chromium: run 'sudo apt-get install chromium' (Debian)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
