"""The deployment files, checked without a Docker engine or a cluster.

- The two images: how their Dockerfiles are built, and what their build contexts send.
- docker-compose.yml and docker-compose.cluster.yml: what `docker compose config` would
  catch, the proxy's wiring, and (the second) the Redis Cluster its init service forms.
- k8s/: every manifest and every overlay, rendered through kustomize and validated against
  the Kubernetes schemas, plus the properties docs/deploy.md promises.
- The images' entry points, run here: the gateway through exactly the command and
  environment its Dockerfile gives it (health, readiness, a WebSocket round trip, its
  HEALTHCHECK, a graceful SIGTERM), and the chat worker the same way, chatting.

Linting (hadolint, yamllint, kubernetes-validate on the files) is `python3 dev.py check`.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type hints (no py.typed)
import pytest
import redis
import yaml
from deploy_tools import (
    Dockerfile,
    DockerIgnore,
    compose_variables,
    interpolate,
    render_kustomization,
    split_image,
)
from docker_mode import SWITCH
from system_harness import Client, GatewayProcess, wait_for_consumers

from wsq_devkit import ManagedProcess, free_port, wait_until
from wsq_devkit.redis_server import RedisServer
from wsq_gateway.settings import Settings, describe_settings
from wsq_protocol.keys import Keys, shards_from_env
from wsq_worker.settings import describe_settings as describe_worker_settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The same system on a six-node Redis Cluster (docs/deploy.md, "Redis Cluster").
CLUSTER_COMPOSE_FILE = ROOT / "docker-compose.cluster.yml"
COMPOSE_FILES = [COMPOSE_FILE, CLUSTER_COMPOSE_FILE]
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
GATEWAY_DOCKERFILE = ROOT / "gateway-service" / "Dockerfile"
WORKER_DOCKERFILE = ROOT / "examples" / "chat" / "Dockerfile"
# Each image and the build context it is built from (as docker-compose.yml and the docs say):
# the repository root for both, so that each builds wsq-protocol (protocol/) from this tree.
IMAGES = {
    "gateway": (GATEWAY_DOCKERFILE, ROOT),
    "chat-worker": (WORKER_DOCKERFILE, ROOT),
}
OVERLAYS = ["base", "overlays/dev", "overlays/dev-keda", "overlays/redis-cluster"]
# Kubernetes versions the manifests must be valid for: an old supported one and the newest.
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]
GATEWAY_SETTINGS = {name for name, _, _ in describe_settings()}
WORKER_SETTINGS = {name for name, _, _ in describe_worker_settings()}
KEYS = json.loads((ROOT / "protocol" / "keys.json").read_text())


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module", params=COMPOSE_FILES, ids=lambda p: p.name)
def compose(request: pytest.FixtureRequest) -> dict[str, Any]:
    path: Path = request.param
    doc: dict[str, Any] = yaml.safe_load(path.read_text())  # resolves the `<<:` merge keys
    return doc


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render_kustomization(K8S / overlay) for overlay in OVERLAYS}


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def drain_budget_s(config: dict[str, str]) -> float:
    """The longest a gateway may take to drain: WSQ_DRAIN_S as configured, else its default."""
    return float(config.get("WSQ_DRAIN_S", Settings.model_fields["drain_s"].default))


# ---- the images -------------------------------------------------------------------------------


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_images_are_multi_stage_pinned_slim_and_unprivileged(image: str) -> None:
    dockerfile = Dockerfile(IMAGES[image][0])
    bases = {stage.base for stage in dockerfile.stages}
    assert len(bases) == 1, f"every stage on the same interpreter (the venv is copied): {bases}"
    (base,) = bases
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), f"a slim base pinned by version: {base}"
    assert len(dockerfile.stages) >= 2
    final = dockerfile.final
    # The final stage installs nothing: it copies the finished venv from an earlier stage.
    for run in final.all("RUN"):
        assert "pip" not in run.arguments.split(), f"pip in the final stage: {run.arguments}"
    assert any(flags.get("from") for stage, _, _, flags in dockerfile.copies() if stage is final)
    for stage in dockerfile.stages:
        for run in stage.all("RUN"):
            if " install " in run.arguments or " wheel " in run.arguments:
                assert "--no-cache-dir" in run.arguments, f"pip's cache stays out: {run.arguments}"
    user = final.last("USER")
    assert user is not None
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user.arguments), "a numeric, non-root user"
    assert dockerfile.exec_form("ENTRYPOINT"), "exec form, so SIGTERM reaches the process"
    stop = final.last("STOPSIGNAL")
    assert stop is None or stop.arguments == "SIGTERM"
    assert final.last("HEALTHCHECK") is not None, "a health check, or an explicit HEALTHCHECK NONE"


def test_the_gateway_image_listens_where_it_says() -> None:
    dockerfile = Dockerfile(GATEWAY_DOCKERFILE)
    env = dockerfile.env({"PATH": "/usr/bin"})
    expose = dockerfile.final.last("EXPOSE")
    assert expose is not None
    assert expose.arguments == env["WSQ_PORT"]
    assert dockerfile.healthcheck() is not None
    for key in env:
        assert not key.startswith("WSQ_") or key in GATEWAY_SETTINGS, f"{key} is not a setting"


def is_by_product(path: Path) -> bool:
    """What local development leaves behind (bytecode, egg-info): never part of an image."""
    return (
        "__pycache__" in path.parts
        or any(part.endswith(".egg-info") for part in path.parts)
        or (path.suffix in (".pyc", ".pyo", ".pyd"))
    )


def copied_files(path: Path) -> list[Path]:
    """The files ``COPY path`` must bring: the file itself; for a Python project's folder, what
    its wheel is built from (pyproject.toml, the README, src/, and what hatchling
    force-includes into it: wsq-protocol's keys.json, lua/ and schemas/)."""
    if path.is_file():
        return [path]
    with (path / "pyproject.toml").open("rb") as file:
        pyproject = tomllib.load(file)
    wheel = pyproject.get("tool", {}).get("hatch", {}).get("build", {}).get("targets", {}).get("wheel", {})
    roots = [path / "pyproject.toml", path / pyproject["project"]["readme"], path / "src"]
    roots += [path / name for name in wheel.get("force-include", {})]
    files = [file for root in roots for file in ([root] if root.is_file() else root.rglob("*"))]
    return [file for file in files if file.is_file() and not is_by_product(file)]


def needed(image: str) -> set[str]:
    """The files of its build context that ``image``'s Dockerfile COPYs (relative, with /)."""
    dockerfile_path, context = IMAGES[image]
    sources = [
        source
        for _, copy_sources, _, flags in Dockerfile(dockerfile_path).copies()
        if "from" not in flags
        for source in copy_sources
    ]
    assert sources
    files = set()
    for source in sources:
        path = context / source
        assert path.exists(), f"COPY {source}: not in the build context {context}"
        files |= {file.relative_to(context).as_posix() for file in copied_files(path)}
    return files


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_the_build_context_sends_exactly_what_the_dockerfiles_copy(image: str) -> None:
    _, context = IMAGES[image]
    sent = set(DockerIgnore.of(context).sent(context))
    for relative in sorted(needed(image)):
        assert relative in sent, f"{relative} is needed by {image}'s COPY lines but .dockerignore drops it"
    # One context serves several images: it sends what one of them copies, and nothing else.
    copied = set().union(*(needed(other) for other, (_, c) in IMAGES.items() if c == context))
    stray = sorted(sent - copied)
    assert not stray, f"sent to the daemon but never copied (tighten .dockerignore): {stray[:10]}"
    assert not any(".venv" in f or f.startswith(".git/") or "__pycache__" in f for f in sent)


def test_both_images_build_the_protocol_core_from_this_tree() -> None:
    """The gateway's and the SDK's wheels need wsq-protocol: each image builds its wheel from
    protocol/ and installs it by its path (never from a package index)."""
    for image, (dockerfile_path, _) in IMAGES.items():
        dockerfile = Dockerfile(dockerfile_path)
        assert "protocol/src/wsq_protocol/keys.py" in needed(image)
        runs = [run.arguments for stage in dockerfile.stages for run in stage.all("RUN")]
        assert any(" wheel " in run and "./protocol" in run.split() for run in runs), image
        assert any(" install " in run and "/wheels/wsq_protocol-*.whl" in run for run in runs) or any(
            " install " in run and "/wheels/*.whl" in run for run in runs
        ), image


# ---- docker-compose.yml ---------------------------------------------------------------------------


def documented_compose_variables() -> dict[str, str]:
    """The variables table of docs/deploy.md's compose section: name -> default."""
    section = DEPLOY_DOC.read_text().split("<!-- compose-variables -->\n")[1].split("\n\n")[0]
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| `([^`]*)` \|", section, flags=re.MULTILINE)
    return dict(rows)


def test_every_compose_variable_has_a_default_and_is_documented(compose: dict[str, Any]) -> None:
    variables = compose_variables(compose)
    assert variables
    documented = documented_compose_variables()
    for variable in variables:
        assert variable.operator == ":-", f"${{{variable.name}}} needs a default: ${{NAME:-default}}"
        assert variable.name in documented, f"{variable.name} is not in docs/deploy.md's compose table"
        assert documented[variable.name] == variable.argument, f"{variable.name}: documented default differs"
    assert set(documented) == {v.name for v in variables}, "the docs list variables the file does not use"


def test_compose_services_build_from_what_exists_and_start_in_order(compose: dict[str, Any]) -> None:
    services = interpolate(compose, {})["services"]
    assert {"gateway-1", "gateway-2", "worker", "proxy"} <= set(services)
    assert "redis" in services or set(cluster_nodes(services)) == {f"redis-{n}" for n in range(1, 7)}
    for name, service in services.items():
        if "build" in service:
            context = ROOT / service["build"]["context"]
            dockerfile = context / service["build"].get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: no {dockerfile}"
            assert (dockerfile.resolve(), context.resolve()) in {
                (d.resolve(), c.resolve()) for d, c in IMAGES.values()
            }, f"{name} builds an image this test does not check"
        else:
            _name_part, tag = split_image(service["image"])
            assert re.search(r"\d", tag), f"{name}: pin {service['image']} to a version"
            assert "latest" not in tag
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: mounts {source}, which does not exist"
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on {dependency}, which is no service"
            if condition["condition"] == "service_healthy":
                assert has_healthcheck(services[dependency]), f"{dependency} has no health check"
            elif condition["condition"] == "service_completed_successfully":
                # A one-shot: restarted, it would never have completed.
                assert services[dependency].get("restart", "no") == "no", f"{dependency} restarts"
            else:
                assert condition["condition"] == "service_started", condition
    assert services["worker"]["deploy"]["replicas"] >= 2


def has_healthcheck(service: dict[str, Any]) -> bool:
    if "healthcheck" in service:
        return True
    if "build" not in service:
        return False
    context = ROOT / service["build"]["context"]
    return Dockerfile(context / service["build"].get("dockerfile", "Dockerfile")).healthcheck() is not None


def test_compose_environment_names_only_real_settings(compose: dict[str, Any]) -> None:
    services = interpolate(compose, {})["services"]
    for name, service in services.items():
        for key in service.get("environment", {}):
            known = GATEWAY_SETTINGS if name.startswith("gateway") else WORKER_SETTINGS
            assert key in known, f"{name}: {key} is not a setting it reads"
    for variable in compose_variables(compose):
        if variable.name not in ("WSQ_KEY_PREFIX", "WSQ_LOG_LEVEL", "WSQ_LOG_FORMAT", "WSQ_TRUSTED_PROXIES"):
            assert variable.name not in GATEWAY_SETTINGS, f"{variable.name}: compose-only, not a setting"
    # Longer than the gateways' drain, so `docker compose stop` never kills one mid-drain.
    for name in ("gateway-1", "gateway-2"):
        grace = services[name]["stop_grace_period"]
        assert grace.endswith("s")
        assert float(grace[:-1]) > drain_budget_s(services[name]["environment"])


def test_the_proxy_forwards_to_both_gateways_and_serves_the_page(compose: dict[str, Any]) -> None:
    services = interpolate(compose, {})["services"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in services["proxy"]["volumes"]}
    config = (ROOT / mounts["/etc/nginx/conf.d/default.conf"]).read_text()
    static = mounts["/usr/share/nginx/html"]
    assert static == "./examples/chat/static"
    assert (ROOT / static / "index.html").is_file()
    # the page imports the JavaScript client from ./wsq-client/, which the proxy serves from its folder
    assert 'from "./wsq-client/index.js"' in (ROOT / static / "chat.js").read_text()
    assert mounts["/usr/share/nginx/wsq-client"] == "./clients/js/src"
    client = re.search(r"location /wsq-client/ \{\s*alias (\S+);", config)
    assert client is not None
    assert client.group(1) == "/usr/share/nginx/wsq-client/"
    gateway_port = Dockerfile(GATEWAY_DOCKERFILE).env({})["WSQ_PORT"]
    upstream = re.search(r"upstream wsq_gateways \{(.*?)\}", config, re.DOTALL)
    assert upstream is not None
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", upstream.group(1), re.MULTILINE)
    assert sorted(servers) == [("gateway-1", gateway_port), ("gateway-2", gateway_port)]
    assert "hash" not in upstream.group(1), "no stickiness (ip_hash, hash)"
    listening = sorted(re.findall(r"^\s*listen\s+(\d+);", config, re.MULTILINE))
    published = sorted(port.rsplit(":", 1)[1] for port in services["proxy"]["ports"])
    assert listening == published == ["8000", "8080"]
    ws = re.search(r"location = (\S+) \{(.*?)\}", config, re.DOTALL)
    assert ws is not None
    assert ws.group(1) == Settings.model_fields["path"].default
    for needed in (
        "proxy_http_version 1.1",
        "Upgrade $http_upgrade",
        "Connection $connection_upgrade",
        "proxy_next_upstream error timeout http_503",  # a draining gateway answers 503
    ):
        assert needed in ws.group(2)
    timeout = re.search(r"proxy_read_timeout (\d+)h;", ws.group(2))
    assert timeout is not None, "a read timeout far above the heartbeat"


def cluster_nodes(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that are Redis Cluster nodes: those announcing a host name."""
    return {name: s for name, s in services.items() if "--cluster-announce-hostname" in s.get("command", [])}


def redis_config(text: str) -> dict[str, str]:
    """A redis.conf's directives (the last of each wins, as in Redis)."""
    lines = (line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {words[0]: words[1].strip() if len(words) > 1 else "" for words in lines}


def test_the_cluster_compose_file_forms_one_cluster_and_uses_it() -> None:
    """docker-compose.cluster.yml: six cluster nodes, each announcing the name the others and
    the clients reach it by; an init service that joins exactly them (3 masters + 3 replicas)
    once they answer; gateways and workers on the cluster, started after it formed."""
    compose = yaml.safe_load(CLUSTER_COMPOSE_FILE.read_text())
    services = interpolate(compose, {})["services"]
    nodes = cluster_nodes(services)
    assert len(nodes) == 6
    for name, node in nodes.items():
        command = node["command"]
        assert command[0] == "redis-server"
        assert command[command.index("--cluster-announce-hostname") + 1] == name
        (config_mount,) = [v for v in node["volumes"] if v.startswith("./")]
        source, target, _mode = config_mount.split(":")
        assert command[1] == target, f"{name} reads the mounted configuration"
        config = redis_config((ROOT / source).read_text())
        assert config["cluster-enabled"] == "yes"
        assert config["cluster-preferred-endpoint-type"] == "hostname"
        assert config["appendonly"] == "yes"
        assert config["maxmemory-policy"] == "noeviction"
        assert any(v.split(":")[1] == config["dir"] for v in node["volumes"] if not v.startswith("./"))
        assert node["image"].startswith("redis:7.2.")
    assert len({tuple(v for v in n["volumes"] if not v.startswith("./")) for n in nodes.values()}) == 6

    init = services["redis-cluster-init"]
    assert init["depends_on"] == {name: {"condition": "service_healthy"} for name in nodes}
    assert init.get("restart") == "no"
    script = init["command"][-1]
    assert init["command"][:2] == ["sh", "-ec"]
    listed = re.search(r'^nodes="([^"]*)"$', script, re.MULTILINE)
    assert listed is not None
    assert listed.group(1).split() == [f"{name}:6379" for name in sorted(nodes)]
    create = re.search(r"redis-cli --cluster create \$nodes (.*)$", script, re.MULTILINE)
    assert create is not None
    assert create.group(1).split() == ["--cluster-replicas", "1", "--cluster-yes"]
    assert "cluster_known_nodes" in script, "creates the cluster only when there is none"
    syntax = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr

    users = {name: s for name, s in services.items() if name.startswith(("gateway", "worker"))}
    assert set(users) == {"gateway-1", "gateway-2", "worker"}
    for name, service in users.items():
        env = service["environment"]
        assert env["WSQ_REDIS_CLUSTER"] == "1", name
        host = re.fullmatch(r"redis://([\w-]+):6379", env["WSQ_REDIS_URL"])
        assert host is not None
        assert host.group(1) in nodes, f"{name}: WSQ_REDIS_URL names a node"
        after_init = {"redis-cluster-init": {"condition": "service_completed_successfully"}}
        assert service["depends_on"] == after_init, f"{name} starts once the cluster formed"
    assert len({s["environment"].get("WSQ_SHARDS") for s in users.values()}) == 1, "one WSQ_SHARDS for all"


# ---- Kubernetes -------------------------------------------------------------------------------------

SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    # KEDA's ScaledObject (keda.sh/v1alpha1), for the fields wsq's manifests may use; written
    # from KEDA's CRD, which kubernetes-validate does not ship. Unknown fields are errors.
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {k: {"type": "string"} for k in ("apiVersion", "kind", "name")},
                },
                **{
                    key: {"type": "integer", "minimum": 0}
                    for key in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod")
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "scalingModifiers": {
                            "type": "object",
                            "required": ["formula", "target"],
                            "additionalProperties": False,
                            "properties": {
                                "formula": {"type": "string"},
                                "target": {"type": "string"},
                                "activationTarget": {"type": "string"},
                                "metricType": {"enum": ["AverageValue", "Value"]},
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                        },
                    },
                },
            },
        },
    },
}


def validate_manifest(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("keda.sh/"):
        jsonschema.validate(doc, SCALED_OBJECT_SCHEMA)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_is_valid(path: Path) -> None:
    for doc in load_yaml_documents(path):
        validate_manifest(doc)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_to_valid_objects_in_one_namespace(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[overlay]
    for doc in docs:
        validate_manifest(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "wsq", f"{doc['kind']} {doc['metadata']['name']}"
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for doc in docs:  # every ConfigMap and Secret a pod takes its environment from exists
        for container in pod_containers(doc):
            for source in container.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source:
                        wanted = (kind, source[key]["name"])
                        # The base leaves the Secret to the overlays (it holds the Redis URL).
                        assert wanted in names or (overlay == "base" and wanted[1] == "wsq-secrets")
        if doc["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            assert ("Deployment", doc["spec"]["scaleTargetRef"]["name"]) in names


def pod_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] not in ("Deployment", "StatefulSet"):
        return []
    containers: list[dict[str, Any]] = doc["spec"]["template"]["spec"]["containers"]
    return containers


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_renderer_agrees_with_kustomize(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    """deploy_tools' renderer against the real thing, where this machine has one."""
    command = kustomize_command()
    if command is None:
        pytest.skip("no kustomize or kubectl on PATH: the Python renderer alone checked the overlays")
    output = subprocess.run([*command, str(K8S / overlay)], capture_output=True, text=True, check=True)

    def key(doc: dict[str, Any]) -> tuple[str, str, str]:
        return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]

    real = sorted((d for d in yaml.safe_load_all(output.stdout) if d), key=key)
    assert sorted(rendered[overlay], key=key) == real


def test_the_gateways_roll_drain_and_spread_safely(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["overlays/dev"]
    deployment = find(docs, "Deployment", "wsq-gateway")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    image_port = int(Dockerfile(GATEWAY_DOCKERFILE).env({})["WSQ_PORT"])
    assert container["ports"] == [{"name": "http", "containerPort": image_port, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # SIGKILL comes after preStop + the drain + a margin.
    config = find_config(docs)
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain_budget_s(config) + 5
    # A rollout adds before it removes; the autoscaler, not `replicas`, owns the count.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "replicas" not in deployment["spec"]
    hpa = find(docs, "HorizontalPodAutoscaler", "wsq-gateway")
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = find(docs, "PodDisruptionBudget", "wsq-gateway")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    # Service and Ingress lead to those pods, on the WebSocket path, with long timeouts.
    service = find(docs, "Service", "wsq-gateway")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"].get("sessionAffinity", "None") == "None"
    ingress = find(docs, "Ingress", "wsq-gateway")
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["path"] == config.get("WSQ_PATH", Settings.model_fields["path"].default)
    assert path["backend"]["service"] == {"name": "wsq-gateway", "port": {"name": "http"}}
    annotations = ingress["metadata"]["annotations"]
    heartbeat = float(config.get("WSQ_HEARTBEAT_S", Settings.model_fields["heartbeat_s"].default))
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{name}"]) > 10 * heartbeat


@pytest.mark.parametrize("name", ["wsq-gateway", "wsq-worker"])
def test_every_pod_is_non_root_read_only_and_bounded(
    name: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    deployment = find(rendered["overlays/dev"], "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    dockerfile = GATEWAY_DOCKERFILE if name == "wsq-gateway" else WORKER_DOCKERFILE
    user = Dockerfile(dockerfile).final.last("USER")
    assert user is not None
    assert user.arguments == f"{pod['securityContext']['runAsUser']}:10001"
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound])
        assert not container["image"].endswith(":latest")


def find_config(docs: list[dict[str, Any]]) -> dict[str, str]:
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("wsq-")]
    data: dict[str, str] = config["data"]
    return data


def test_config_names_real_settings_and_the_dev_secret_points_at_the_dev_redis(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["overlays/dev"]
    for key in find_config(docs):
        assert key in GATEWAY_SETTINGS | WORKER_SETTINGS, f"{key} is not a setting"
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(values) <= GATEWAY_SETTINGS
    redis_service = find(docs, "Service", "redis")
    assert values["WSQ_REDIS_URL"] == f"redis://redis:{redis_service['spec']['ports'][0]['port']}/0"
    # The worker's grace period covers the Worker's default shutdown_timeout (30 s).
    worker = find(docs, "Deployment", "wsq-worker")["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] > 30


def test_keda_scales_the_workers_on_every_inbound_partition(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["overlays/dev-keda"]
    scaled = find(docs, "ScaledObject", "wsq-worker")
    hpas = [d["metadata"]["name"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert "wsq-worker" not in hpas, "KEDA's own HPA replaces it"
    config = find_config(docs)
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis-streams"}, "one composite metric, nothing beside it"
    # One trigger per partition of the configured shard count, each read by the workers' group.
    keys = Keys(config["WSQ_KEY_PREFIX"], shards_from_env(config))
    assert [t["metadata"]["stream"] for t in triggers] == keys.inbound_streams()
    assert {t["metadata"]["consumerGroup"] for t in triggers} == {KEYS["consumer_group"]}
    # Exactly one way of counting: XLEN is the backlog because workers XDEL what they finished.
    for trigger in triggers:
        ways = [k for k in ("pendingEntriesCount", "streamLength", "lagCount") if k in trigger["metadata"]]
        assert ways == ["streamLength"]
    # The formula adds every partition's backlog, each exactly once.
    formula = scaled["spec"]["advanced"]["scalingModifiers"]["formula"]
    assert sorted(term.strip() for term in formula.split("+")) == sorted(t["name"] for t in triggers)
    service = find(docs, "Service", "redis")
    namespace = service["metadata"]["namespace"]
    address = f"redis.{namespace}.svc.cluster.local:{service['spec']['ports'][0]['port']}"
    assert {t["metadata"]["address"] for t in triggers} == {address}


def test_the_redis_cluster_overlay_forms_a_cluster_and_points_everything_at_it(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """overlays/redis-cluster: dev's single Redis replaced by a six-pod cluster whose nodes
    announce their stable DNS names, a Job that forms it from exactly those names, and
    gateways and workers configured for a cluster through the client Service."""
    docs = rendered["overlays/redis-cluster"]
    assert not [d for d in docs if d["metadata"]["name"] == "redis"], "dev's single Redis is gone"
    config = find_config(docs)
    assert config["WSQ_REDIS_CLUSTER"] == "1"
    assert shards_from_env(config) == int(config["WSQ_SHARDS"])
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    for name in ("wsq-gateway", "wsq-worker"):  # both take the ConfigMap and the Secret
        (container,) = find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        sources = {next(iter(source.values()))["name"] for source in container["envFrom"]}
        assert sources == {find_config_name(docs), secret["metadata"]["name"]}, name
    url = base64.b64decode(secret["data"]["WSQ_REDIS_URL"]).decode()
    client_service = find(docs, "Service", "redis-cluster")
    assert url == f"redis://redis-cluster:{client_service['spec']['ports'][0]['port']}/0"

    statefulset = find(docs, "StatefulSet", "redis-cluster")
    spec = statefulset["spec"]
    assert spec["replicas"] == 6
    assert spec["podManagementPolicy"] == "Parallel", "no pod is ready before all six formed the cluster"
    headless = find(docs, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    labels = spec["template"]["metadata"]["labels"]
    for service in (headless, client_service):
        assert service["spec"]["selector"].items() <= labels.items()
    (redis_container,) = spec["template"]["spec"]["containers"]
    command = redis_container["command"]

    def option(name: str) -> str:
        return str(command[command.index(name) + 1])

    assert option("--cluster-enabled") == "yes"
    assert option("--appendonly") == "yes"
    assert option("--maxmemory-policy") == "noeviction"
    assert option("--cluster-preferred-endpoint-type") == "hostname"
    domain = f"{spec['serviceName']}.$(POD_NAMESPACE).svc.cluster.local"
    assert option("--cluster-announce-hostname") == f"$(POD_NAME).{domain}"
    fields = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in redis_container["env"]}
    assert fields == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    ports = {p["name"]: p["containerPort"] for p in redis_container["ports"]}
    assert ports == {"redis": 6379, "cluster-bus": 16379}
    assert {p["targetPort"] for p in headless["spec"]["ports"]} == set(ports)
    assert "cluster_state:ok" in " ".join(redis_container["readinessProbe"]["exec"]["command"])

    job = find(docs, "Job", "redis-cluster-create")["spec"]["template"]["spec"]
    (create,) = job["containers"]
    assert create["image"] == redis_container["image"]
    env = {e["name"]: e.get("value") for e in create["env"]}
    assert int(env["REPLICAS"]) == spec["replicas"]
    script = create["command"][-1]
    assert create["command"][:2] == ["sh", "-ec"]
    # The names it joins are the pods' stable names: <statefulset>-<i>.<headless service>...
    assert f'domain="{spec["serviceName"]}.$POD_NAMESPACE.svc.cluster.local"' in script
    assert f'nodes="$nodes {statefulset["metadata"]["name"]}-$i.$domain:6379"' in script
    create_line = re.search(r"redis-cli --cluster create \$nodes (.*)$", script, re.MULTILINE)
    assert create_line is not None
    assert create_line.group(1).split() == ["--cluster-replicas", "1", "--cluster-yes"]
    assert "cluster_known_nodes" in script, "creates the cluster only when there is none"
    syntax = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr
    assert job["restartPolicy"] == "OnFailure"


def find_config_name(docs: list[dict[str, Any]]) -> str:
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("wsq-")]
    return str(config["metadata"]["name"])


# ---- docs/deploy.md ------------------------------------------------------------------------------


def test_the_deploy_doc_names_only_real_variables_and_links_the_benchmarks(compose: dict[str, Any]) -> None:
    text = DEPLOY_DOC.read_text()
    compose_only = {v.name for v in compose_variables(compose)}
    for name in set(re.findall(r"\bWSQ_[A-Z0-9_]+\b", text)):
        known = GATEWAY_SETTINGS | WORKER_SETTINGS | compose_only | {SWITCH}
        assert name in known, f"docs/deploy.md: {name} is unknown"
    assert "benchmarks.md" in text
    for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (DEPLOY_DOC.parent / link).resolve().exists(), f"docs/deploy.md links to a missing {link}"


# ---- the entry points, run here ------------------------------------------------------------------


def container_command(dockerfile: Dockerfile, *extra_env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The image's ENTRYPOINT + CMD and its ENV, with the image's venv mapped to this one.

    The environment is the image's alone (plus ``extra_env``), not this process': nothing
    from the developer's shell reaches the gateway that would not reach the container.
    """
    image_env = dockerfile.env({"PATH": "/usr/local/bin:/usr/bin:/bin"})
    venv = image_env["VIRTUAL_ENV"]

    def local(value: str) -> str:
        return value.replace(venv, sys.prefix)

    argv = [*(dockerfile.exec_form("ENTRYPOINT") or []), *(dockerfile.exec_form("CMD") or [])]
    assert argv[0].startswith(venv + "/bin/"), f"the entry point is the venv's own command: {argv[0]}"
    env = {key: local(value) for key, value in image_env.items()}
    for extra in extra_env:
        env.update(extra)
    return [local(arg) for arg in argv], env


def start_as_container(
    name: str, dockerfile: Dockerfile, env: dict[str, str], cwd: Path | None = None
) -> ManagedProcess:
    argv, full_env = container_command(dockerfile, env)
    process = ManagedProcess(name, argv, {})
    process.env = full_env  # exactly the container's environment, not ours on top
    process.cwd = cwd
    return process.start()


def run_healthcheck(dockerfile: Dockerfile, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, run here in the container's environment."""
    healthcheck = dockerfile.healthcheck()
    assert healthcheck is not None
    options, command = healthcheck
    _, full_env = container_command(dockerfile, env)
    venv = full_env["VIRTUAL_ENV"]
    image_venv = dockerfile.env({})["VIRTUAL_ENV"]
    local = [arg.replace(image_venv, venv) for arg in command]
    timeout_s = float(options["timeout"].rstrip("s")) + 5  # Docker gives it `timeout`; a margin here
    return subprocess.run(local, check=False, env=full_env, capture_output=True, text=True, timeout=timeout_s)


async def test_the_gateway_runs_as_its_image_runs_it(
    redis_server: RedisServer, key_prefix: str, processes: list[ManagedProcess], rendered: dict[str, Any]
) -> None:
    """ENTRYPOINT and ENV of gateway-service/Dockerfile, with WSQ_REDIS_URL (and a port of
    its own, as `docker run -p` would map one): healthy, ready, a round trip, HEALTHCHECK,
    then SIGTERM drains it and it exits with status 0 within the pod's grace period."""
    dockerfile = Dockerfile(GATEWAY_DOCKERFILE)
    port = free_port()
    env = {"WSQ_REDIS_URL": redis_server.url, "WSQ_KEY_PREFIX": key_prefix, "WSQ_PORT": str(port)}
    process = start_as_container("gateway-image", dockerfile, env)
    processes.append(process)
    gateway = GatewayProcess(process, port, node_id="(generated)")
    gateway.wait_ready()
    assert gateway.status("/healthz") == 200
    assert json.loads(process.output().splitlines()[0])["event"], "JSON log lines, the image's default"

    check = run_healthcheck(dockerfile, env)
    assert check.returncode == 0, check.stderr

    async with aiohttp.ClientSession() as session:
        client = await Client.connect(session, gateway.ws_url)
        assert client.connection_id
        await client.send("$ping", "from the image", id="p1")
        pong = await client.receive()
        assert isinstance(pong.pop("seq"), int)  # session resume is on by default: frames are numbered
        assert pong == {"action": "$pong", "data": "from the image", "id": "p1"}

        process.signal(signal.SIGTERM)
        code, _ = await client.close_code()
        assert code in (1001, 1012), f"closed with a 'reconnect' code, not {code}"
    pod = find(rendered["overlays/dev"], "Deployment", "wsq-gateway")["spec"]["template"]["spec"]
    assert process.wait(timeout=pod["terminationGracePeriodSeconds"]) == 0

    failed = run_healthcheck(dockerfile, env)
    assert failed.returncode != 0, "the HEALTHCHECK fails once the gateway is gone"


async def test_the_chat_worker_runs_as_its_image_runs_it(
    redis_server: RedisServer, key_prefix: str, processes: list[ManagedProcess]
) -> None:
    """ENTRYPOINT + CMD of examples/chat/Dockerfile, run from the repository root (the
    image's WORKDIR holds the same relative paths), next to the gateway's image command:
    the demo's own chat check passes through them, and SIGTERM stops the worker cleanly."""
    worker_dockerfile = Dockerfile(WORKER_DOCKERFILE)
    workdir = worker_dockerfile.final.last("WORKDIR")
    assert workdir is not None
    for stage, sources, destination, flags in worker_dockerfile.copies():
        if stage is worker_dockerfile.final and "from" not in flags:
            assert sources == [destination], "the app's files keep their repository paths under WORKDIR"
    env = {"WSQ_REDIS_URL": redis_server.url, "WSQ_KEY_PREFIX": key_prefix}
    port = free_port()
    gateway = GatewayProcess(
        start_as_container("gateway-image", Dockerfile(GATEWAY_DOCKERFILE), {**env, "WSQ_PORT": str(port)}),
        port,
        node_id="(generated)",
    )
    processes.append(gateway.process)
    gateway.wait_ready()
    worker = start_as_container("worker-image", worker_dockerfile, env, cwd=ROOT)
    processes.append(worker)
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        wait_for_consumers(client, key_prefix, 1)

    chat = load_chat_runner()
    page = chat.serve_static("127.0.0.1", free_port())
    try:
        summary = await chat.round_trip(
            f"http://127.0.0.1:{page.server_port}/", gateway.ws_url, live_stats=False
        )
    finally:
        page.shutdown()
        page.server_close()
    assert "$pong" in summary
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=45) == 0


def load_chat_runner() -> ModuleType:
    """examples/chat/run.py, whose --check round trip is the chat's own end-to-end check."""
    spec = importlib.util.spec_from_file_location("chat_run", ROOT / "examples" / "chat" / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gateway_waits_for_a_redis_that_comes_late(
    processes: list[ManagedProcess], rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """Pods start in any order: a gateway whose Redis is not up yet keeps retrying rather
    than exiting, answers /healthz meanwhile (so its startup and liveness probes pass and
    Kubernetes does not restart it), and is ready soon after Redis is."""
    late = RedisServer()  # its port is chosen now, the server starts below
    port = free_port()
    env = {"WSQ_REDIS_URL": late.url, "WSQ_PORT": str(port)}
    process = start_as_container("gateway-early", Dockerfile(GATEWAY_DOCKERFILE), env)
    processes.append(process)
    gateway = GatewayProcess(process, port, node_id="(generated)")
    try:
        wait_until(lambda: "not reachable" in process.output(), timeout=20, message="a Redis retry")
        assert process.running(), process.output()
        assert gateway.status("/readyz") == 503
        assert gateway.status("/healthz") == 200, "alive while waiting: no restart loop"
        late.start()
        gateway.wait_ready()
    finally:
        late.close()
    pod = find(rendered["overlays/dev"], "Deployment", "wsq-gateway")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz", "the startup probe must not wait for Redis"
