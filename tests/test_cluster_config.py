"""`ray_cluster.yaml` passes Ray's own cluster-config schema, keeps GPU workers autoscaled, installs
the samstream the user has, and keeps Ray's control plane, Redis and the API closed."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from ray.autoscaler._private.util import validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "ray_cluster.yaml"
LAUNCHER_REDIS = ROOT / "deploy" / "launcher" / "redis.conf"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


def commands(config: dict[str, Any]) -> list[str]:
    keys = [k for k in config if k.endswith("_commands")]
    return [cmd for key in keys for cmd in config[key] or []]


def ray_start_commands(config: dict[str, Any]) -> list[list[str]]:
    """Every `ray start` command as words, with the environment assignments before it."""
    out = []
    for cmd in commands(config):
        words = shlex.split(cmd)
        if "ray" in words and words[words.index("ray") + 1 : words.index("ray") + 2] == ["start"]:
            out.append(words)
    return out


def serve_words(config: dict[str, Any]) -> list[str]:
    (line,) = [c for c in config["head_start_ray_commands"] if re.search(r"(^|\s)samstream serve\s", c)]
    return shlex.split(line.split(" > ")[0])


def option(words: list[str], name: str) -> str | None:
    for i, word in enumerate(words):
        if word == name:
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def redis_conf(path: Path) -> dict[str, str]:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return dict(ln.split(None, 1) for ln in lines)


def test_ray_cluster_yaml_passes_rays_schema() -> None:
    cfg = config()
    validate_config(cfg)  # raises on any schema violation
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert cfg["idle_timeout_minutes"] > 0
    assert any("samstream" in cmd for cmd in cfg["setup_commands"])


def test_samstream_is_installed_from_the_synced_checkout_not_a_remote_repository() -> None:
    """The nodes run the code of the checkout `ray up` runs from; nothing is fetched from a VCS."""
    cfg = config()
    for cmd in commands(cfg):
        assert not re.search(r"git\+|github\.com|\bgit clone\b", cmd), cmd
    if "docker" in cfg and cfg["docker"].get("image"):
        return  # the image of deploy/Dockerfile, which holds samstream already
    mounts = {os.path.normpath(remote): local for remote, local in cfg["file_mounts"].items()}
    installs = [c for c in cfg["setup_commands"] if re.search(r"pip install", c)]
    (install,) = installs
    (target,) = [w for w in shlex.split(install) if w.startswith("~/")]
    # What `pip install DIR` needs, each synced from the checkout (paths relative to the repository root).
    for needed in ("pyproject.toml", "README.md", "pipeline", "workers"):
        local = mounts[os.path.normpath(f"{target}/{needed}")]
        assert (ROOT / local).resolve() == (ROOT / needed).resolve(), (needed, local)
        assert (ROOT / local).exists()


def test_ray_pin_matches_the_image_of_the_raycluster() -> None:
    (install,) = [c for c in config()["setup_commands"] if "pip install" in c]
    pinned = re.search(r"ray\[[^\]]*\]==([\d.]+)", install)
    assert pinned, "pin Ray so that every node and the KubeRay image agree"
    assert f"rayproject/ray:{pinned.group(1)}-" in (ROOT / "deploy" / "Dockerfile").read_text()


def test_every_ray_node_starts_with_token_authentication() -> None:
    cfg = config()
    starts = ray_start_commands(cfg)
    assert len(starts) == 2  # the head, the workers
    for words in starts:
        assert "RAY_AUTH_MODE=token" in words[: words.index("ray")], words
    # The token itself: one file, copied from the user's machine to every node.
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # ...and the same mode for every shell on the nodes (ray exec, ray attach).
    assert any("export RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in cfg["setup_commands"])


def test_the_dashboard_and_the_api_listen_on_the_head_loopback() -> None:
    cfg = config()
    (head,) = [w for w in ray_start_commands(cfg) if "--head" in w]
    assert option(head, "--dashboard-host") in LOOPBACK, "reach it with `ray dashboard ray_cluster.yaml`"
    words = serve_words(cfg)
    # The API, and /metrics with it, are reached through `ray attach -p 8000`, an SSH tunnel.
    assert option(words, "--host") in LOOPBACK


def test_serve_uses_the_password_protected_redis_of_the_head() -> None:
    """Workers on other nodes need a Redis they can reach: not an embedded one on 127.0.0.1."""
    cfg = config()
    words = serve_words(cfg)
    assert option(words, "--address") == "auto"
    assert option(words, "--redis-url") is None, "a URL with a password shows in every process list"
    (url,) = [w.split("=", 1)[1] for w in words if w.startswith("SAMSTREAM_REDIS_URL=")]
    port = int(redis_conf(LAUNCHER_REDIS)["port"])
    assert re.fullmatch(
        rf"redis://:\$\(cat ~/samstream-redis/password\)@\$\(cat ~/samstream-redis/address\):{port}/0", url
    ), url
    assert port != 6379, "Ray's GCS has 6379 on the head"
    mounted = {os.path.normpath(r): os.path.normpath(lo) for r, lo in cfg["file_mounts"].items()}
    assert mounted["~/samstream/deploy/launcher"] == os.path.normpath("./deploy/launcher")


def test_the_launcher_redis_has_a_memory_bound_and_the_same_eviction_policy_as_kubernetes() -> None:
    conf = redis_conf(LAUNCHER_REDIS)
    assert conf["appendonly"] == "yes"
    assert re.fullmatch(r"\d+(gb|mb)", conf["maxmemory"])
    k8s = yaml.safe_load_all((ROOT / "deploy" / "redis.yaml").read_text())
    (cm,) = [d for d in k8s if d and d["kind"] == "ConfigMap"]
    assert f"maxmemory-policy {conf['maxmemory-policy']}" in cm["data"]["redis.conf"]
    assert "requirepass" not in conf, "the password is generated on the head, never committed"


@pytest.mark.integration
def test_the_head_commands_start_a_redis_that_refuses_clients_without_the_password(tmp_path: Path) -> None:
    """Run the head's Redis commands as written, in a scratch home, with the real redis-server."""
    home = tmp_path / "home"
    (home / "samstream" / "deploy" / "launcher").mkdir(parents=True)
    with socket.socket() as s:  # a free port for this run instead of the configured one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = LAUNCHER_REDIS.read_text().replace("\nport 6380\n", f"\nport {port}\n")
    assert f"port {port}" in conf
    (home / "samstream" / "deploy" / "launcher" / "redis.conf").write_text(conf)
    # `python3` on the head is the one samstream was installed into: here, this interpreter.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "python3"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    redis_cmds = [
        c
        for c in config()["head_start_ray_commands"]
        if "samstream-redis" in c and "samstream serve" not in c
    ]
    assert len(redis_cmds) == 2
    try:
        for _ in range(2):  # `ray up` again: the running Redis and its password are kept
            for cmd in redis_cmds:
                subprocess.run(["bash", "-c", cmd], env=env, check=True, timeout=30)
        state = home / "samstream-redis"
        password = (state / "password").read_text().strip()
        assert len(password) >= 32
        assert oct((state / "password").stat().st_mode & 0o777) == "0o600"
        assert oct(state.stat().st_mode & 0o777) == "0o700"
        client = redis.Redis(port=port, password=password)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        size = re.fullmatch(r"(\d+)(gb|mb)", redis_conf(LAUNCHER_REDIS)["maxmemory"])
        assert size
        number, unit = size.groups()
        assert client.config_get("maxmemory")["maxmemory"] == str(
            int(number) * {"gb": 2**30, "mb": 2**20}[unit]
        )
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "volatile-lru"
        assert client.config_get("dir")["dir"] == str(state)
        # Workers on other nodes connect to the address Ray gives the head.
        address = (state / "address").read_text().strip()
        assert client.config_get("bind")["bind"].split() == [address, "127.0.0.1"]
        assert redis.Redis(host=address, port=port, password=password).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, password="not-" + password).ping()
        cmdline = Path(f"/proc/{(state / 'redis.pid').read_text().strip()}/cmdline").read_bytes()
        assert password.encode() not in cmdline, "the password must not be on the command line"
    finally:
        pid_file = home / "samstream-redis" / "redis.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            os.kill(pid, 15)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.1)
