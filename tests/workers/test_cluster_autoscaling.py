"""Cluster mode end to end on Ray's simulated autoscaling cluster.

``ray.cluster_utils.AutoscalingCluster`` runs the real Ray autoscaler with a provider that starts
worker "nodes" as processes on this machine: GPU nodes and CPU nodes. ``samstream serve`` (the real
command, a real Redis server, real PyAV) joins it with an encoder pool of 0..3 replicas, one GPU
each, and one source host of two streams to start with, two CPUs each. From zero worker nodes,
three submitted jobs make Serve want replicas, whose GPU demand makes the autoscaler add GPU
nodes, and the third job needs a second source host, whose CPU demand (the head is full) makes it
add a CPU node. Every job ends with exactly its frames, the API process is killed and started
again meanwhile (the jobs go on: they run in the cluster's driver), and once idle the replicas,
the extra source host and then the nodes go away again.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.bench.samples import object_centres, write_clip
from pipeline.streams import EmbeddedRedis, Keys, MaskReader, connect
from tests.fixtures.serve import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

EXE = str(Path(sys.executable).with_name("samstream"))
TOKEN = "cluster-test-token"
IDLE_TIMEOUT_MIN = 0.25  # the autoscaler removes a node idle this long
REPLICA_IDLE_S = 4  # Serve removes a replica idle this long
FRAMES = 24


def _cluster_config(idle_minutes: float) -> dict[str, Any]:
    """The fake-multinode base config (the PyPI wheel lacks Ray's example file; built here instead)."""
    return {
        "cluster_name": "samstream-test",
        "max_workers": 3,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_minutes,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "head_node_type": "ray.head.default",
        "available_node_types": {},
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from ray.cluster_utils import AutoscalingCluster

    class SimulatedCluster(AutoscalingCluster):  # type: ignore[misc]
        def _generate_config(self, head_resources: dict, worker_node_types: dict, **_: Any) -> dict:
            config = _cluster_config(IDLE_TIMEOUT_MIN)
            config["available_node_types"] = {
                **worker_node_types,
                "ray.head.default": {"resources": dict(head_resources), "node_config": {}, "max_workers": 0},
            }
            return config

    # `ray start` / `ray stop` are run from PATH: this interpreter's.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    sim = SimulatedCluster(
        # The head takes the driver (0.25 CPU), one source host (2) and the tracker host (0.5); a
        # second source host fits a CPU node only (a GPU node has 1 CPU, for an encoder replica).
        head_resources={"CPU": 3},
        worker_node_types={
            "gpu_node": {
                "resources": {"CPU": 1, "GPU": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 3,
            },
            "cpu_node": {
                "resources": {"CPU": 2},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 1,
            },
        },
    )
    sim.start()
    try:
        yield
    finally:
        import ray

        ray.shutdown()
        sim.shutdown()


def _service(redis_url: str, log_dir: Path) -> ServeProcess:
    """``samstream serve`` joining the simulated cluster (started, killed, started again)."""
    args = [
        "--address", "auto", "--redis-url", redis_url,
        "--weights", "random", "--image-size", "256", "--compile", "eager", "--allow-local-files",
        "--min-encoders", "0", "--max-encoders", "3", "--encoder-gpus", "1", "--encoder-cpus", "1",
        "--idle-s", str(REPLICA_IDLE_S), "--metrics-port", "0",
        "--source-hosts", "1", "--streams-per-host", "2", "--host-cpus", "2", "--host-idle-s", "3",
        # Ray's simulated nodes cannot declare memory (a real node type does, and the
        # autoscaler counts it): the hosts ask for none here, or no node would ever fit them.
        "--host-memory-mb", "0", "--tracker-memory-mb", "0",
    ]  # fmt: skip
    return ServeProcess(args, log_dir, TOKEN)


def _gpu_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0)


def _cpu_nodes() -> int:
    """Worker nodes with no GPU (the head carries Ray's ``node:__internal_head__`` resource)."""
    import ray

    return sum(
        1
        for n in ray.nodes()
        if n["Alive"] and not n["Resources"].get("GPU") and "node:__internal_head__" not in n["Resources"]
    )


def client_hget(url: str, job_id: str, field: str) -> str | None:
    client = connect(url)
    try:
        value: str | None = client.hget(Keys().job(job_id), field)  # type: ignore[assignment]
        return value
    finally:
        client.close()


def _replicas() -> int:
    from ray import serve

    apps = serve.status().applications
    if "samstream-encoders" not in apps:
        return 0
    states = apps["samstream-encoders"].deployments["encoder"].replica_states
    return sum(n for state, n in states.items() if state in ("RUNNING", "STARTING", "PENDING_ALLOCATION"))


def test_jobs_scale_gpu_nodes_up_and_back_down(cluster: None, tmp_path: Path) -> None:
    import ray

    clip = write_clip(tmp_path / "clip.mp4", frames=FRAMES, width=160, height=120)
    with EmbeddedRedis(tmp_path / "redis") as redis_server:
        service = _service(redis_server.url, tmp_path)
        try:
            service.start()
            ray.init(address="auto", namespace="samstream-test", logging_level="ERROR")
            assert _gpu_nodes() == 0 and _cpu_nodes() == 0  # nothing held while idle

            x, y = (float(v) for v in object_centres(0, 160, 120)[0])
            jobs = []
            with service.api() as api:
                for i in range(3):
                    tracks = [{"id": 1, "points": [[x, y]]}] + (
                        [{"id": 2, "box": [4, 4, 60, 50]}] if i else []
                    )
                    r = api.post(
                        "/jobs", json={"source": str(clip), "tracks": tracks, "job_id": f"cluster-{i}"}
                    )
                    assert r.status_code == 201, r.text
                    jobs.append(r.json()["id"])

            # Demand: replicas are wanted, cannot be placed on the GPU-less head, nodes are added.
            most_nodes = most_replicas = most_cpu_nodes = 0
            deadline = time.monotonic() + 420
            restarted = False
            statuses: dict[str, str] = {}
            while time.monotonic() < deadline:
                most_nodes = max(most_nodes, _gpu_nodes())
                most_cpu_nodes = max(most_cpu_nodes, _cpu_nodes())
                most_replicas = max(most_replicas, _replicas())
                with service.api() as api:
                    statuses = {j: api.get(f"/jobs/{j}").json()["status"] for j in jobs}
                if not restarted and "running" in statuses.values() and most_nodes >= 1:
                    service.kill()  # the API dies mid-run; the jobs must not notice
                    service.start()
                    restarted = True
                if all(s in ("succeeded", "failed", "cancelled") for s in statuses.values()):
                    break
                time.sleep(1)
            assert statuses == dict.fromkeys(jobs, "succeeded"), (statuses, service.log())
            assert restarted
            assert most_nodes >= 1 and most_replicas >= 1, (most_nodes, most_replicas)
            # The third job needed a second source host, and the full head a CPU node for it.
            assert most_cpu_nodes == 1, (most_cpu_nodes, service.log())
            placement = {client_hget(redis_server.url, j, "source_host") for j in jobs}
            assert placement == {"0", "1"}, placement

            # Exactly the right entries: one per frame, in order, each with the job's tracks.
            client = connect(redis_server.url)
            for i, job_id in enumerate(jobs):
                entries = list(MaskReader(client, Keys(), job_id).read())
                assert [eid for eid, _ in entries] == [f"{n}-1" for n in range(FRAMES)], job_id
                assert all(len(r.tracks) == (2 if i else 1) for _, r in entries)
                assert all(r.width == 160 and r.height == 120 for _, r in entries)
                info = client.hgetall(Keys().job(job_id))
                assert info["frames_done"] == str(FRAMES)

            # Idle: replicas go (Serve), then the nodes they held (the autoscaler's idle timeout).
            idle_since = time.monotonic()
            idle_deadline = time.monotonic() + REPLICA_IDLE_S + IDLE_TIMEOUT_MIN * 60 + 120
            while time.monotonic() < idle_deadline and (
                _replicas() > 0 or _gpu_nodes() > 0 or _cpu_nodes() > 0
            ):
                time.sleep(2)
            assert _replicas() == 0, "encoder replicas did not scale back to 0"
            assert _gpu_nodes() == 0, "GPU nodes were not removed once idle"
            assert _cpu_nodes() == 0, "the CPU node was not removed once its source host went"
            print(
                f"at most {most_nodes} GPU nodes, {most_cpu_nodes} CPU node, {most_replicas} replicas; back to 0 after {time.monotonic() - idle_since:.0f} s"
            )
        finally:
            service.stop()
