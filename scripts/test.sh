#!/usr/bin/env bash
# Set everything up, lint, type-check, and run the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-openclaw.sh  # the real OpenClaw CLI for its e2e test (.tools/)
bash scripts/install-browser.sh   # Debian chromium for the Prefect UI test
.venv/bin/ruff check .            # lint and format: a finding fails the run before any test
.venv/bin/ruff format --check .
.venv/bin/mypy                    # type check of metaclaw/ ([tool.mypy] in pyproject.toml)
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
