"""The files in ``deploy/`` hold together: what KubeRay, Kubernetes, Prometheus and Grafana need,
and the names, ports and secrets that one file expects another to provide.

Nothing here talks to a cluster; the manifests are read as data and checked against each other,
against samstream's own metric definitions and against the Ray that is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})
DASHBOARD = DEPLOY / "grafana" / "samstream-dashboard.json"
DOCKERFILE = DEPLOY / "Dockerfile"
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# --- loading -------------------------------------------------------------------------------------


@cache
def docs_of(path: Path) -> tuple[dict[str, Any], ...]:
    return tuple(d for d in yaml.safe_load_all(path.read_text()) if d is not None)


def all_docs() -> Iterator[dict[str, Any]]:
    for path in MANIFESTS:
        yield from docs_of(path)


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in all_docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/, found {len(found)}"
    return found[0]


def ray_cluster_spec() -> dict[str, Any]:
    """The RayCluster spec, whether written as a RayCluster or inside a RayService."""
    found = [d for d in all_docs() if d["kind"] in {"RayCluster", "RayService"}]
    assert len(found) == 1, f"expected one RayCluster or RayService, found {len(found)}"
    doc = found[0]
    assert doc["apiVersion"] == "ray.io/v1"
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterConfig"]


def ray_cluster_name() -> str:
    return next(d for d in all_docs() if d["kind"] in {"RayCluster", "RayService"})["metadata"]["name"]


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    """KubeRay treats the first container of a group's pod template as the Ray container."""
    return group["template"]["spec"]["containers"][0]


def container_ports(container: dict[str, Any]) -> dict[int, str]:
    return {p["containerPort"]: p.get("name", "") for p in container.get("ports", [])}


def gpu_limit(container: dict[str, Any]) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def script_of(container: dict[str, Any]) -> str:
    return " ".join([*container.get("command", []), *container.get("args", [])])


def serve_argv(script: str) -> list[str]:
    """The arguments of the one ``samstream serve`` command in a shell script (continuation lines
    joined; lines that only name it in quotes, like ``pkill -f "samstream serve"``, are not it)."""
    joined = script.replace("\\\n", " ")
    lines = [ln.strip() for ln in joined.splitlines() if re.search(r"(^|\s)samstream serve\s", ln)]
    assert len(lines) == 1, f"expected one `samstream serve` line, found {len(lines)}"
    words = shlex.split(lines[0], comments=True)
    words = words[words.index("samstream") + 2 :]
    # The command ends where the shell's redirections or control operators begin.
    end = next(
        (i for i, w in enumerate(words) if w[0] in "&;|>" or (w[0].isdigit() and ">" in w)), len(words)
    )
    return words[:end]


def option(argv: list[str], name: str) -> str | None:
    for i, word in enumerate(argv):
        if word == name:
            return argv[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def example_secret(name: str = "samstream-secrets") -> dict[str, str]:
    (secret,) = (
        d
        for d in docs_of(DEPLOY / "secrets.example.yaml")
        if d["kind"] == "Secret" and d["metadata"]["name"] == name
    )
    return secret["stringData"]


def secret_refs(node: Any) -> Iterator[dict[str, str]]:
    """Every ``secretKeyRef`` anywhere below ``node``."""
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            yield node["secretKeyRef"]
        for value in node.values():
            yield from secret_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from secret_refs(value)


def env_from_secret(container: dict[str, Any], var: str) -> dict[str, str]:
    (entry,) = (e for e in container.get("env", []) if e["name"] == var)
    assert "value" not in entry, f"{var} must come from a Secret, not a literal"
    return entry["valueFrom"]["secretKeyRef"]


# --- every manifest ------------------------------------------------------------------------------


def test_deploy_folder_has_the_expected_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*") if p.is_file()}
    for required in (
        "Dockerfile",
        "redis.yaml",
        "secrets.example.yaml",
        "prometheus.yaml",
        "grafana/samstream-dashboard.json",
    ):
        assert required in names
    assert any(n.startswith("kuberay/") for n in names)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_document_names_its_api_kind_and_name(path: Path) -> None:
    docs = docs_of(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], doc
        assert isinstance(doc.get("kind"), str) and doc["kind"], doc
        assert DNS_1123.match(doc["metadata"]["name"]), doc["metadata"]["name"]


def test_every_secret_reference_names_a_key_of_the_example_secret() -> None:
    keys = set(example_secret())
    refs = list(secret_refs(list(all_docs())))
    assert len(refs) >= 4  # API token, Redis URL, Redis password (server and probe)
    for ref in refs:
        if ref["name"] == "samstream-secrets":
            assert ref["key"] in keys, f"{ref['key']} is not in deploy/secrets.example.yaml"
    assert {r["name"] for r in refs} == {"samstream-secrets"}


# --- KubeRay -------------------------------------------------------------------------------------


def test_in_tree_autoscaling_with_an_idle_timeout() -> None:
    spec = ray_cluster_spec()
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0


def test_ray_version_matches_the_image() -> None:
    """KubeRay, the image's Ray and the Ray pinned in the Dockerfile are the same version."""
    version = ray_cluster_spec()["rayVersion"]
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+rayproject/ray:(\S+)", text, re.M)
    assert base, "the Dockerfile should build on a rayproject/ray image"
    assert base.group(1).split("-")[0] == version
    assert f"=={version}" in text, "pin Ray in the Dockerfile's pip install so it cannot drift"


def test_head_group_runs_ray_without_gpus_and_exposes_its_ports() -> None:
    head = ray_cluster_spec()["headGroupSpec"]
    params = head["rayStartParams"]
    assert isinstance(params, dict)
    assert params["num-gpus"] == "0"
    container = ray_container(head)
    assert container["image"]
    assert gpu_limit(container) == 0
    ports = container_ports(container)
    assert {6379, 8000, 9400} <= set(ports), ports
    metrics_port = int(params["metrics-export-port"])
    assert ports.get(metrics_port) == "metrics", "KubeRay and Prometheus look for the port named metrics"


def test_worker_groups_scale_within_bounds_and_ask_for_what_they_request() -> None:
    spec = ray_cluster_spec()
    groups = spec["workerGroupSpecs"]
    names = [g["groupName"] for g in groups]
    assert len(set(names)) == len(names)
    head_image = ray_container(spec["headGroupSpec"])["image"]
    for group in groups:
        lo, n, hi = group["minReplicas"], group.get("replicas", group["minReplicas"]), group["maxReplicas"]
        assert 0 <= lo <= n <= hi and hi >= 1, (group["groupName"], lo, n, hi)
        container = ray_container(group)
        assert container["image"] == head_image, "every Ray node must run the same samstream and Ray"
        gpus = gpu_limit(container)
        requested = container["resources"].get("requests", {}).get("nvidia.com/gpu")
        assert requested is None or int(requested) == gpus, "GPU requests must equal limits"
        assert int(group["rayStartParams"].get("num-gpus", gpus)) == gpus, group["groupName"]
        assert (
            group["rayStartParams"].get("metrics-export-port")
            == spec["headGroupSpec"]["rayStartParams"]["metrics-export-port"]
        )


def test_a_gpu_worker_group_scales_from_zero() -> None:
    gpu_groups = [g for g in ray_cluster_spec()["workerGroupSpecs"] if gpu_limit(ray_container(g)) > 0]
    assert gpu_groups, "no worker group asks for nvidia.com/gpu"
    for group in gpu_groups:
        assert group["minReplicas"] == 0, "idle GPUs cost money: the autoscaler should remove them all"
        tolerations = group["template"]["spec"].get("tolerations", [])
        assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations)


def test_overwritten_container_commands_still_start_ray() -> None:
    """With ray.io/overwrite-container-cmd KubeRay runs our command only: each must start Ray."""
    doc = next(d for d in all_docs() if d["kind"] in {"RayCluster", "RayService"})
    # The head's script (Ray, then the API) needs its own command run as written.
    assert doc["metadata"].get("annotations", {}).get("ray.io/overwrite-container-cmd") == "true"
    spec = ray_cluster_spec()
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        script = script_of(ray_container(group))
        assert "$KUBERAY_GEN_RAY_START_CMD" in script
        assert "ulimit -n 65536" in script  # KubeRay adds it only to commands it generates


def test_head_runs_samstream_serve_with_secrets_from_the_environment() -> None:
    container = ray_container(ray_cluster_spec()["headGroupSpec"])
    argv = serve_argv(script_of(container))
    assert option(argv, "--address") == "auto"
    assert option(argv, "--token") is None, "a token on the command line shows in every process list"
    assert option(argv, "--redis-url") is None, "the Redis URL holds a password"
    ports = container_ports(container)
    assert ports[int(option(argv, "--port") or 8000)] == "api"
    assert ports[int(option(argv, "--metrics-port") or 0)] == "api-metrics"
    assert env_from_secret(container, "SAMSTREAM_API_TOKEN")["key"] == "api-token"
    assert env_from_secret(container, "SAMSTREAM_REDIS_URL")["key"] == "redis-url"


def test_encoder_pool_fits_the_gpu_workers() -> None:
    spec = ray_cluster_spec()
    argv = serve_argv(script_of(ray_container(spec["headGroupSpec"])))
    wanted = int(option(argv, "--max-encoders") or 4) * float(option(argv, "--encoder-gpus") or 1.0)
    available = sum(g["maxReplicas"] * gpu_limit(ray_container(g)) for g in spec["workerGroupSpecs"])
    assert 0 < wanted <= available


def serve_parser() -> argparse.ArgumentParser:
    from pipeline.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


@pytest.mark.parametrize("where", ["kuberay", "ray_cluster.yaml"])
def test_serve_commands_parse_with_the_real_cli(where: str) -> None:
    """Once `samstream serve` exists, the deployed command lines must be ones it accepts."""
    if where == "kuberay":
        script = script_of(ray_container(ray_cluster_spec()["headGroupSpec"]))
    else:
        script = "\n".join(yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())["head_start_ray_commands"])
    argv = serve_argv(script)
    args = serve_parser().parse_args(argv)
    assert args.port == 8000 and args.metrics_port == 9400


def test_api_service_reaches_the_head_api_port() -> None:
    service = one("Service", "samstream-api")
    head = ray_container(ray_cluster_spec()["headGroupSpec"])
    assert service["spec"]["selector"] == {"ray.io/cluster": ray_cluster_name(), "ray.io/node-type": "head"}
    by_port = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}
    ports = container_ports(head)
    target = by_port[8000]
    api_port = target if isinstance(target, int) else next(n for n, name in ports.items() if name == target)
    assert api_port == 8000 and ports[api_port] == "api"


# --- closed control plane ------------------------------------------------------------------------

RAY_DASHBOARD_PORT, RAY_CLIENT_PORT = 8265, 10001
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def ray_groups() -> list[dict[str, Any]]:
    spec = ray_cluster_spec()
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def env_value(container: dict[str, Any], var: str) -> str | None:
    for entry in container.get("env", []):
        if entry["name"] == var:
            return entry.get("value")
    return None


def test_ray_token_authentication_is_on_for_every_ray_container() -> None:
    """Without it, whoever reaches a Ray port runs code on the cluster and reads its secrets."""
    spec = ray_cluster_spec()
    assert version_tuple(spec["rayVersion"]) >= (2, 52, 0), "Ray token authentication needs Ray 2.52+"
    auth = spec["authOptions"]
    assert auth["mode"] == "token"
    # KubeRay gives every Ray container RAY_AUTH_TOKEN from this Secret's key auth_token.
    assert example_secret(auth["secretName"])["auth_token"]
    for group in ray_groups():
        # Set explicitly as well: an operator that drops authOptions leaves Ray refusing to start.
        assert env_value(ray_container(group), "RAY_AUTH_MODE") == "token", group.get("groupName", "head")
    text = DOCKERFILE.read_text()
    assert re.search(r"^ENV\s+RAY_AUTH_MODE=token\s*$", text, re.M), "the image should default to token auth"


def test_the_installed_ray_reads_the_auth_mode_the_manifests_set() -> None:
    """RAY_AUTH_MODE=token, as the containers and the image set it, turns on the pinned Ray's token
    mode (checked in a fresh process: Ray reads its configuration once)."""
    import subprocess
    import sys

    import ray

    if ray.__version__ != ray_cluster_spec()["rayVersion"]:
        pytest.skip(
            f"Ray {ray.__version__} is installed, the manifests pin {ray_cluster_spec()['rayVersion']}"
        )
    probe = (
        "from ray._raylet import AuthenticationMode, get_authentication_mode; "
        "print(get_authentication_mode() == AuthenticationMode.TOKEN)"
    )
    for mode, expected in (("token", "True"), ("disabled", "False")):
        env = {**os.environ, "RAY_AUTH_MODE": mode}
        out = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.stdout.strip() == expected, (mode, out.stdout, out.stderr[-2000:])


def test_the_dashboard_listens_on_the_head_loopback_only() -> None:
    params = ray_cluster_spec()["headGroupSpec"]["rayStartParams"]
    # KubeRay passes --dashboard-host=0.0.0.0 unless told otherwise.
    assert params.get("dashboard-host") in LOOPBACK


def kuberay_head_service_ports() -> dict[str, int]:
    """The ports of the head Service KubeRay creates: those the head container declares, or, when
    it declares none, KubeRay's defaults (which include the dashboard and the client server)."""
    declared = container_ports(ray_container(ray_cluster_spec()["headGroupSpec"]))
    if not declared:
        return {
            "client": RAY_CLIENT_PORT,
            "gcs-server": 6379,
            "dashboard": RAY_DASHBOARD_PORT,
            "metrics": 8080,
        }
    return {name or f"{port}-port": port for port, name in declared.items()}


def test_no_service_carries_the_dashboard_or_the_ray_client_port() -> None:
    closed = {RAY_DASHBOARD_PORT, RAY_CLIENT_PORT}
    head_ports = kuberay_head_service_ports()
    assert not closed & set(head_ports.values()), f"KubeRay's head Service would carry {head_ports}"
    assert "dashboard" not in head_ports and "client" not in head_ports
    services = [d for d in all_docs() if d["kind"] == "Service"]
    assert services
    for service in services:
        for port in service["spec"]["ports"]:
            assert port["port"] not in closed and port.get("targetPort") not in closed, service["metadata"][
                "name"
            ]
            assert port.get("targetPort") not in {"dashboard", "client"}, service["metadata"]["name"]
        # Exposing a Service beyond the cluster is the operator's choice, behind TLS (docs/deploy.md).
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
    assert ray_cluster_spec()["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    assert not [d for d in all_docs() if d["kind"] in {"Ingress", "Route", "HTTPRoute", "Gateway"}]


# What runs in a pod, and the labels its pods carry (KubeRay labels Ray pods by cluster and type).


def pods() -> dict[str, tuple[dict[str, str], dict[str, Any]]]:
    """Every pod template in deploy/: name -> (the pod's labels, its spec)."""
    out: dict[str, tuple[dict[str, str], dict[str, Any]]] = {}
    cluster = ray_cluster_name()
    spec = ray_cluster_spec()
    out["ray-head"] = (
        {"ray.io/cluster": cluster, "ray.io/node-type": "head"},
        spec["headGroupSpec"]["template"]["spec"],
    )
    for group in spec["workerGroupSpecs"]:
        labels = {"ray.io/cluster": cluster, "ray.io/node-type": "worker", "ray.io/group": group["groupName"]}
        out[f"ray-{group['groupName']}"] = (labels, group["template"]["spec"])
    for doc in all_docs():
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            template = doc["spec"]["template"]
            out[doc["metadata"]["name"]] = (template["metadata"]["labels"], template["spec"])
    return out


def pod_labels_of(name: str) -> dict[str, str]:
    return pods()[name][0]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are modelled here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


Peer = tuple[str, ...]
Port = tuple[str, int] | str


def peer_of(peer: dict[str, Any]) -> Peer:
    """A peer of a NetworkPolicy rule: pods of this namespace with these labels, or an IP block."""
    assert "namespaceSelector" not in peer, "peers in other namespaces are not expected"
    if "podSelector" in peer:
        assert set(peer["podSelector"]) <= {"matchLabels"}
        return ("pods", *sorted(f"{k}={v}" for k, v in peer["podSelector"].get("matchLabels", {}).items()))
    block = peer["ipBlock"]
    return ("ipBlock", block["cidr"], *sorted(block.get("except", [])))


def admitted(rules: list[dict[str, Any]], peers_key: str) -> set[tuple[Peer, Port]]:
    """The (peer, port) pairs a list of ingress or egress rules admits; ``("any",)`` is any peer,
    ``"all"`` any port."""
    out: set[tuple[Peer, Port]] = set()
    for rule in rules:
        peers = [peer_of(p) for p in rule.get(peers_key, [])] or [("any",)]
        ports: list[Port] = [(p.get("protocol", "TCP"), int(p["port"])) for p in rule.get("ports", [])] or [
            "all"
        ]
        out.update((peer, port) for peer in peers for port in ports)
    return out


def traffic(pod: str, direction: str) -> set[tuple[Peer, Port]] | None:
    """What the NetworkPolicies admit to (Ingress) or from (Egress) a pod; None: not restricted."""
    labels = pod_labels_of(pod)
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    policies = [
        d
        for d in all_docs()
        if d["kind"] == "NetworkPolicy"
        and selects(d["spec"]["podSelector"], labels)
        and direction in d["spec"].get("policyTypes", ["Ingress"])
    ]
    if not policies:
        return None
    return set().union(*(admitted(p["spec"].get(key, []), peers_key) for p in policies))


def pods_like(name: str) -> Peer:
    return (
        "pods",
        *sorted(f"{k}={v}" for k, v in pod_labels_of(name).items() if k == "app.kubernetes.io/name"),
    )


def test_network_policies_admit_exactly_what_each_pod_needs() -> None:
    spec = ray_cluster_spec()
    head = ray_container(spec["headGroupSpec"])
    argv = serve_argv(script_of(head))
    api_port, api_metrics = int(option(argv, "--port") or 8000), int(option(argv, "--metrics-port") or 0)
    ray_metrics = int(spec["headGroupSpec"]["rayStartParams"]["metrics-export-port"])
    (redis,) = pods()["samstream-redis"][1]["containers"]
    (redis_port,) = container_ports(redis)
    (prometheus,) = pods()["samstream-prometheus"][1]["containers"]
    (prometheus_port,) = container_ports(prometheus)

    ray: Peer = ("pods", f"ray.io/cluster={ray_cluster_name()}")
    prom = pods_like("samstream-prometheus")
    from_prometheus = {(prom, ("TCP", ray_metrics))}
    between_ray = {(ray, "all")}  # the GCS, raylets, object managers and workers: many ports

    assert traffic("ray-head", "Ingress") == between_ray | from_prometheus | {
        (("any",), ("TCP", api_port)),
        (prom, ("TCP", api_metrics)),
    }
    for group in spec["workerGroupSpecs"]:
        assert traffic(f"ray-{group['groupName']}", "Ingress") == between_ray | from_prometheus
    assert traffic("samstream-redis", "Ingress") == {(ray, ("TCP", redis_port))}
    assert traffic("samstream-redis", "Egress") == set(), "Redis opens no connection"
    assert traffic("samstream-prometheus", "Ingress") == {(("pods",), ("TCP", prometheus_port))}


def test_ray_pods_cannot_reach_the_cloud_metadata_address() -> None:
    for group in ray_groups():
        name = "ray-head" if group is ray_cluster_spec()["headGroupSpec"] else f"ray-{group['groupName']}"
        egress = traffic(name, "Egress")
        assert egress is not None, f"{name}: egress is not restricted"
        assert ((("any",), "all")) not in egress
        blocks = {peer[1]: peer[2:] for peer, _ in egress if peer[0] == "ipBlock"}
        assert set(blocks) == {"0.0.0.0/0", "::/0"}, blocks
        assert "169.254.169.254/32" in blocks["0.0.0.0/0"] and "fd00:ec2::254/128" in blocks["::/0"]
        assert ((("pods", f"ray.io/cluster={ray_cluster_name()}"), "all")) in egress
        assert (pods_like("samstream-redis"), ("TCP", 6379)) in egress


def test_network_policies_select_pods_that_exist() -> None:
    policies = [d for d in all_docs() if d["kind"] == "NetworkPolicy"]
    assert {p["metadata"]["name"] for p in policies} >= {"samstream-ray", "samstream-api", "samstream-redis"}
    for policy in policies:
        assert any(selects(policy["spec"]["podSelector"], labels) for labels, _ in pods().values())
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if peer.get("podSelector", {}).get("matchLabels"):
                    assert any(selects(peer["podSelector"], labels) for labels, _ in pods().values()), peer
    for name in pods():
        assert traffic(name, "Ingress") is not None, f"no NetworkPolicy restricts what reaches {name}"


def containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, container, pod spec) for every container and init container, and KubeRay's
    autoscaler sidecar (its securityContext is set in autoscalerOptions)."""
    for name, (_, spec) in pods().items():
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield f"{name}/{container['name']}", container, spec
    yield (
        "ray-head/autoscaler",
        ray_cluster_spec()["autoscalerOptions"],
        ray_cluster_spec()["headGroupSpec"]["template"]["spec"],
    )


def test_every_container_runs_unprivileged() -> None:
    found = list(containers())
    assert len(found) >= 6
    for where, container, pod in found:
        sc = container.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not sc.get("capabilities", {}).get("add"), where
        assert sc.get("runAsNonRoot") is True, where
        assert not sc.get("privileged"), where
        user = sc.get("runAsUser", pod.get("securityContext", {}).get("runAsUser"))
        assert user is not None and user != 0, where


def test_dockerfile_ends_as_a_numeric_non_root_user_and_exposes_no_control_port() -> None:
    lines = [
        ln.strip() for ln in DOCKERFILE.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    # A number lets the kubelet check runAsNonRoot from the image alone.
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), users[-1]
    exposed = {int(p) for ln in lines if ln.startswith("EXPOSE ") for p in ln.split()[1:]}
    assert not exposed & {RAY_DASHBOARD_PORT, RAY_CLIENT_PORT}


# --- Redis and secrets ---------------------------------------------------------------------------


def test_example_secret_holds_only_placeholders() -> None:
    data = example_secret()
    assert set(data) == {"api-token", "redis-password", "redis-url"}
    ray_auth = example_secret("samstream-ray-auth")
    assert set(ray_auth) == {"auth_token"}, "KubeRay reads Ray's token from the key auth_token"
    for key, value in {**data, **ray_auth}.items():
        assert "change-me" in value, f"{key} should be an obvious placeholder"


def test_redis_url_points_at_the_redis_service_with_its_password() -> None:
    data = example_secret()
    url = urlsplit(data["redis-url"])
    assert url.scheme == "redis"
    assert url.password == data["redis-password"]
    service = one("Service", url.hostname)
    assert url.port in {p["port"] for p in service["spec"]["ports"]}
    assert url.path == "/0"


def test_redis_requires_the_secret_password_and_persists_to_a_volume() -> None:
    sts = one("StatefulSet", "samstream-redis")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ref = env_from_secret(container, "REDIS_PASSWORD")
    assert ref == {"name": "samstream-secrets", "key": "redis-password"}
    assert re.search(r'--requirepass\s+"?\$\{?REDIS_PASSWORD\b', script_of(container))

    (conf_volume,) = (v for v in pod["volumes"] if "configMap" in v)
    conf = one("ConfigMap", conf_volume["configMap"]["name"])["data"]["redis.conf"]
    directives = dict(line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#"))
    assert directives["appendonly"] == "yes"
    assert "requirepass" not in directives, "the password belongs in the Secret"

    claims = {c["metadata"]["name"]: c for c in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    data_claim = next(name for name in claims if mounts.get(name) == directives["dir"])
    assert claims[data_claim]["spec"]["resources"]["requests"]["storage"]
    assert sts["spec"]["serviceName"] == "samstream-redis"


K8S_UNITS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}
REDIS_UNITS = {"kb": 2**10, "mb": 2**20, "gb": 2**30, "k": 10**3, "m": 10**6, "g": 10**9}


def k8s_bytes(quantity: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]i?|k)?", quantity)
    assert m, quantity
    return int(m.group(1)) * K8S_UNITS.get(m.group(2) or "", 1)


def redis_bytes(value: str) -> int:
    m = re.fullmatch(r"(\d+)(kb|mb|gb|k|m|g)?", value.lower())
    assert m, value
    return int(m.group(1)) * REDIS_UNITS.get(m.group(2) or "", 1)


def test_unit_parsers() -> None:
    assert k8s_bytes("8Gi") == 8 * 2**30 and k8s_bytes("512Mi") == 512 * 2**20 and k8s_bytes("1G") == 10**9
    assert redis_bytes("5gb") == 5 * 2**30 and redis_bytes("5g") == 5 * 10**9 and redis_bytes("100") == 100


def redis_directives() -> dict[str, str]:
    sts = one("StatefulSet", "samstream-redis")
    (conf_volume,) = (v for v in sts["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
    conf = one("ConfigMap", conf_volume["configMap"]["name"])["data"]["redis.conf"]
    return dict(
        line.split(None, 1) for line in conf.splitlines() if line.strip() and not line.startswith("#")
    )


def test_redis_maxmemory_leaves_room_below_the_container_limit() -> None:
    """Without maxmemory Redis grows until the kernel kills it, then crash-loops replaying its AOF.
    An AOF rewrite forks, and pages written meanwhile are copied: keep a quarter of the limit free
    at least (docs/deploy.md sizes both)."""
    (container,) = one("StatefulSet", "samstream-redis")["spec"]["template"]["spec"]["containers"]
    limit = k8s_bytes(container["resources"]["limits"]["memory"])
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]
    maxmemory = redis_bytes(redis_directives()["maxmemory"])
    assert 0 < maxmemory <= 0.75 * limit, (maxmemory, limit)


def test_redis_evicts_only_keys_that_expire() -> None:
    """Finished jobs' keys carry an expiry (--keep); a running job's and a live stream's do not. A
    volatile policy may drop the former when full and never the latter; allkeys-* would drop masks
    of running jobs."""
    assert redis_directives()["maxmemory-policy"] == "volatile-lru"


# --- Prometheus ----------------------------------------------------------------------------------


def prometheus_config() -> dict[str, Any]:
    deployment = one("Deployment", "samstream-prometheus")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    config_file = Path(option(container["args"], "--config.file") or "")
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_file.parent)
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    data = one("ConfigMap", volume["configMap"]["name"])["data"]
    return yaml.safe_load(data[config_file.name])


def keeps(job: dict[str, Any], source_label: str) -> str | None:
    """The regex a ``keep`` relabelling applies to ``source_label``, if any."""
    for rule in job.get("relabel_configs", []):
        if rule.get("action") == "keep" and rule["source_labels"] == [source_label]:
            return str(rule["regex"])
    return None


def test_prometheus_scrapes_every_ray_pod_on_the_metrics_port() -> None:
    spec = ray_cluster_spec()
    port = spec["headGroupSpec"]["rayStartParams"]["metrics-export-port"]
    jobs = [
        j
        for j in prometheus_config()["scrape_configs"]
        if keeps(j, "__meta_kubernetes_pod_label_ray_io_cluster")
    ]
    ray_jobs = [j for j in jobs if keeps(j, "__meta_kubernetes_pod_container_port_number") == port]
    assert len(ray_jobs) == 1
    (job,) = ray_jobs
    assert [c["role"] for c in job["kubernetes_sd_configs"]] == ["pod"]
    assert re.fullmatch(keeps(job, "__meta_kubernetes_pod_label_ray_io_cluster") or "", ray_cluster_name())
    assert keeps(job, "__meta_kubernetes_pod_label_ray_io_node_type") is None, "workers must be scraped too"
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        assert int(port) in container_ports(ray_container(group))


def test_prometheus_scrapes_the_api_metrics_port_on_the_head() -> None:
    argv = serve_argv(script_of(ray_container(ray_cluster_spec()["headGroupSpec"])))
    port = option(argv, "--metrics-port")
    jobs = [
        j
        for j in prometheus_config()["scrape_configs"]
        if keeps(j, "__meta_kubernetes_pod_container_port_number") == port
    ]
    assert len(jobs) == 1
    assert keeps(jobs[0], "__meta_kubernetes_pod_label_ray_io_node_type") == "head"


def test_prometheus_may_list_pods() -> None:
    deployment = one("Deployment", "samstream-prometheus")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    binding = next(
        d
        for d in all_docs()
        if d["kind"] in {"RoleBinding", "ClusterRoleBinding"}
        and any(s["kind"] == "ServiceAccount" and s["name"] == account for s in d["subjects"])
    )
    role = one(binding["roleRef"]["kind"], binding["roleRef"]["name"])
    pod_rules = [r for r in role["rules"] if "pods" in r["resources"]]
    assert pod_rules and {"list", "watch"} <= set(pod_rules[0]["verbs"])


# --- Grafana -------------------------------------------------------------------------------------

PROMQL_WORDS = {
    # aggregations, functions and keywords that may appear bare (not followed by "(")
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are neither functions, keywords,
    label names (in ``{...}``, ``by (...)``) nor Grafana variables."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors ([$__rate_interval], [5m])
    expr = re.sub(r'"[^"]*"', "", expr)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        word, is_call = m.group(1), m.group(2)
        if not is_call and word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def test_metric_name_extraction() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, stage) (rate(a_b_bucket{x="y"}[$__rate_interval]))) / on() c or vector(0)'
    assert metric_names(expr) == {"a_b_bucket", "c"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return [p for p in out if p["type"] != "row"]


def exprs() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


@cache
def samstream_cluster_series() -> frozenset[str]:
    """The series samstream exports on a cluster, derived from the metric definitions themselves
    so that a renamed metric breaks this test: the job workers' (through Ray's metrics agent, so
    ``ray_``-prefixed) and the API process's own (jobs by status, unprefixed)."""
    from pipeline.api.metrics import JobsCollector
    from workers.metrics import RayMetrics

    suffixes = {"Histogram": ("_bucket", "_sum", "_count"), "Counter": ("_total",), "Gauge": ("",)}
    series = set()
    for metric in vars(RayMetrics()).values():
        series.update("ray_" + metric._name + s for s in suffixes[type(metric).__name__])

    class NoJobs:
        def list(self) -> list:
            return []

    for family in JobsCollector(NoJobs()).collect():  # type: ignore[arg-type]
        series.add(family.name)
    return frozenset(series)


@cache
def ray_source() -> str:
    import ray

    root = Path(ray.__file__).parent
    return "\n".join(p.read_text(errors="ignore") for p in root.rglob("*.py"))


def ray_defines(name: str) -> bool:
    """Whether installed Ray defines metric ``name`` (Ray defines it without the ``ray_`` prefix
    its metrics agent adds, and without the ``_total``/``_bucket`` suffixes Prometheus adds)."""
    base = re.sub(r"_(bucket|sum|count|total)$", "", name.removeprefix("ray_"))
    return f'"{base}"' in ray_source()


def test_dashboard_is_importable_with_a_prometheus_datasource_variable() -> None:
    dash = dashboard()
    assert dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"


def test_every_dashboard_metric_is_exported_by_samstream_or_ray() -> None:
    used = set().union(*(metric_names(e) for e in exprs()))
    ours = samstream_cluster_series()
    unknown = sorted(n for n in used if n not in ours and not (n.startswith("ray_") and ray_defines(n)))
    assert not unknown, f"no such metric in samstream or Ray: {unknown}"
    # the samstream panels the dashboard promises
    for name in (
        "ray_samstream_stage_seconds_bucket",
        "ray_samstream_end_to_end_seconds_bucket",
        "ray_samstream_frames_published_total",
        "ray_samstream_frames_dropped_total",
        "ray_samstream_encoder_batch_size_bucket",
        "samstream_active_jobs",
    ):
        assert name in ours, f"{name} is no longer exported (workers/metrics.py, pipeline/api/metrics.py)"
        assert name in used, f"the dashboard does not show {name}"
    assert {"ray_serve_deployment_replica_healthy", "ray_node_gpus_available"} <= used


def test_ray_name_check_rejects_made_up_names() -> None:
    assert ray_defines("ray_serve_deployment_replica_healthy")
    assert not ray_defines("ray_serve_encoder_replicas_that_do_not_exist")


def test_stage_latency_quantiles_are_per_stage() -> None:
    stage = [e for e in exprs() if "ray_samstream_stage_seconds_bucket" in e]
    quantiles = set()
    for e in stage:
        m = re.match(r"histogram_quantile\(([\d.]+),\s*sum by \(le, stage\) \(rate\(", e)
        assert m, e
        quantiles.add(float(m.group(1)))
    assert quantiles == {0.5, 0.95, 0.99}


# --- image and docs ------------------------------------------------------------------------------


def test_dockerfile_installs_samstream_as_a_non_root_user() -> None:
    lines = [ln.strip() for ln in DOCKERFILE.read_text().replace("\\\n", " ").splitlines()]
    instructions = [ln for ln in lines if ln and not ln.startswith("#")]
    assert instructions[0].startswith(("FROM ", "ARG "))
    assert any(ln.startswith("FROM ") for ln in instructions)
    assert any(re.match(r"RUN .*pip install .*(\s\.(\s|$)|\s\.\[)", ln) for ln in instructions)
    users = [ln.split()[1] for ln in instructions if ln.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    exposed = {int(p) for ln in instructions if ln.startswith("EXPOSE ") for p in ln.split()[1:]}
    assert {8000, 9400, 8080} <= exposed
    fetch = [ln for ln in instructions if "samstream weights fetch" in ln]
    assert fetch and all("FETCH_WEIGHTS" in ln for ln in fetch), "fetching weights must be opt-in"


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "samstream-out"} <= ignored


@pytest.mark.parametrize("doc", ["docs/deploy.md", "deploy/README.md"])
def test_docs_mention_every_deploy_file(doc: str) -> None:
    text = (ROOT / doc).read_text()
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.name != "README.md":
            assert path.relative_to(DEPLOY).as_posix() in text, f"{doc} does not mention {path}"


def test_deploy_docs_have_a_security_model_and_size_redis() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    (security,) = [s for s in sections if s.startswith("Security model")]
    protected, _, operator = security.partition("What the operator must still do")
    assert operator, "the section says what is left to the operator"
    for topic in ("bearer token", "--allow-hosts", "redacted", "SHA-256", "authOptions", "NetworkPolic"):
        assert topic in protected, f"the security model does not cover {topic}"
    for duty in ("TLS", "rotate", "out of git", "exec into", "Size Redis"):
        assert duty in operator, f"the operator's duties do not include {duty}"
    (sizing,) = [s for s in re.split(r"^### ", text, flags=re.M) if s.startswith("Sizing Redis memory")]
    assert "maxmemory" in sizing and "maxlen" in sizing and "256 KB" in sizing
