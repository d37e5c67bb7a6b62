#!/usr/bin/env bash
# The test command: set-up, lint, type check, the whole test suite (slow and integration tests too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check pipeline workers tests
.venv/bin/ruff format --check pipeline workers tests
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
