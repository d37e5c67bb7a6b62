#!/usr/bin/env bash
# The main job on a fresh machine: set-up, a generated sample, samstream on it.
# Uses the released MobileSAM weights (cached, or downloaded once); with no network and no
# cached copy it says so and falls back to random weights, so the command always completes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=samstream-out/demo
mkdir -p "$out"
.venv/bin/python -c "
from PIL import Image
from pipeline.samples import sample_image
Image.fromarray(sample_image(480, 640)).save('$out/sample.png')
"
weights=()
if ! .venv/bin/samstream weights fetch; then
  echo "demo: no MobileSAM weights here; running with --weights random (masks are meaningless)" >&2
  weights=(--weights random)
fi
.venv/bin/samstream segment "$out/sample.png" --point 213,240 "${weights[@]}" --out "$out/sample.mask.png"
echo "demo: image $out/sample.png, mask $out/sample.mask.png"
