#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv holding samstream and its test tools.
# Re-runs install only when pyproject.toml changed. Set SAMSTREAM_TORCH to choose the torch build
# (default: torch==2.13.0, the CPU build this machine keeps on disk; on a GPU machine, e.g. "torch").
set -euo pipefail
cd "$(dirname "$0")/.."

py="${PYTHON:-}"
if [ -z "$py" ]; then
  for c in python3.11 python3.12 python3.10 python3; do
    if command -v "$c" >/dev/null 2>&1; then py="$c"; break; fi
  done
fi
[ -n "$py" ] || { echo "setup: no python3 found" >&2; exit 1; }

[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=.venv/.samstream-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing samstream into .venv (first run takes a minute)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  # torch first, pinned: a bare "torch" requirement would pull a multi-GB CUDA build here.
  .venv/bin/python -m pip install -q --disable-pip-version-check "${SAMSTREAM_TORCH:-torch==2.13.0}"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
  touch "$stamp"
fi
