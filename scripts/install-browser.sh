#!/usr/bin/env bash
# Debian's Chromium + ChromeDriver for the Prefect UI browser test (never a downloaded browser).
# Idempotent: returns at once when both are installed. Without root or apt it only warns; the
# browser test then skips, except under CI, where a test insists they are there.
set -uo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: need root and apt-get to install chromium; the UI test will skip" >&2
  exit 0
fi
start=$(date +%s)
apt-get update -qq >/dev/null \
  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
  || echo "install-browser: apt-get install chromium chromium-driver failed" >&2
echo "install-browser: chromium ready in $(( $(date +%s) - start ))s"
