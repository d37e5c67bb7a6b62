#!/usr/bin/env bash
# The main job on a fresh machine: set-up, a generated 720p clip with two moving objects,
# `samstream run` on it (local Ray, embedded Redis), then the overlay video.
# Uses the released MobileSAM weights (cached, or downloaded once); with no network and no
# cached copy it says so and falls back to random weights, so the command always completes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=samstream-out/demo
mkdir -p "$out"
.venv/bin/python - "$out" <<'PY'
import sys
from pipeline.bench.samples import object_boxes, object_centres, write_clip
out = sys.argv[1]
write_clip(f"{out}/clip.mp4", frames=30, width=1280, height=720)
x, y = object_centres(0, 1280, 720)[0]
box = object_boxes(0, 1280, 720)[1]
with open(f"{out}/tracks.yaml", "w") as f:
    f.write(f"tracks:\n  - id: 1\n    points: [[{x:.0f}, {y:.0f}]]\n  - id: 2\n    box: {[int(v) for v in box]}\n")
PY
weights=()
if ! .venv/bin/samstream weights fetch; then
  echo "demo: no MobileSAM weights here; running with --weights random (masks are meaningless)" >&2
  weights=(--weights random)
fi
job="demo-$(date +%Y%m%d-%H%M%S)"
.venv/bin/samstream run "$out/clip.mp4" --prompts "$out/tracks.yaml" --job-id "$job" "${weights[@]}"
.venv/bin/samstream status "$job"
.venv/bin/samstream render "$job" --out "$out/overlay.mp4"
echo "demo: masks in Redis stream samstream:job:$job:masks (data in samstream-out/redis); overlay: $out/overlay.mp4"
