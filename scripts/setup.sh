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

# Test-only system packages: GStreamer's RTSP server, which the live-feed tests start as a real
# RTSP peer. Installed when we may (root, apt); without them those few tests are skipped.
if [ "${SAMSTREAM_SKIP_APT:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
   && ! /usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0")' >/dev/null 2>&1; then
  echo "setup: installing GStreamer's RTSP server for the live-feed tests (apt)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
      gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad >/dev/null) \
    || echo "setup: could not install the RTSP test server; RTSP tests will be skipped" >&2
fi
# Test-only system packages: Debian's Chromium (and its driver), the real browser the viewer's tests
# drive through Playwright (never `playwright install`: it downloads a browser of its own). Without
# them those tests are skipped, saying so.
if [ "${SAMSTREAM_SKIP_APT:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
   && ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing Chromium for the viewer's browser tests (apt)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver >/dev/null) \
    || echo "setup: could not install Chromium; the viewer's browser tests will be skipped" >&2
fi
stamp=.venv/.samstream-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing samstream into .venv (first run takes a minute)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  # torch first, pinned: a bare "torch" requirement would pull a multi-GB CUDA build here.
  .venv/bin/python -m pip install -q --disable-pip-version-check "${SAMSTREAM_TORCH:-torch==2.13.0}"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
  touch "$stamp"
fi
