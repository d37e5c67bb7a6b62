"""`ray_cluster.yaml` passes Ray's own cluster-config schema and keeps GPU workers autoscaled."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import validate_config

CONFIG = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"


def test_ray_cluster_yaml_passes_rays_schema() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    validate_config(config)  # raises on any schema violation
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert config["idle_timeout_minutes"] > 0
    assert any("samstream" in cmd for cmd in config["setup_commands"])
