"""k8s/ renders with a real kustomize (kubectl's), and the result is valid Kubernetes: every
document passes kubernetes-validate's strict schema (unknown fields rejected) for the current
Kubernetes release and for the oldest one docs/deploying.md supports."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from . import custom_resources
from .manifests import K8S, Doc, kustomizations, pod_spec

# Native sidecars and the preStop sleep action are on by default from 1.30 (docs/deploying.md).
OLDEST_SUPPORTED = "1.30"
CURRENT = kubernetes_validate.latest_version()


def test_every_overlay_and_example_is_rendered(rendered: dict[Path, list[Doc]]) -> None:
    names = {str(directory.relative_to(K8S)) for directory in rendered}
    assert {"base", "overlays/standalone", "examples/sidecar-caller"} <= names
    for directory, docs in rendered.items():
        assert docs, f"{directory} rendered no documents"


def test_the_sidecar_component_is_used_by_a_rendered_example() -> None:
    users = [d for d in kustomizations() if "components/llm-sidecar" in (d / "kustomization.yaml").read_text()]
    assert any(d.relative_to(K8S).parts[0] == "examples" for d in users)


@pytest.mark.parametrize("version", [OLDEST_SUPPORTED, CURRENT])
def test_rendered_documents_pass_strict_schema_validation(
    rendered: dict[Path, list[Doc]], version: str
) -> None:
    failures = []
    for directory, docs in rendered.items():
        for doc in docs:
            if custom_resources.is_custom(doc):
                continue  # test_custom_resources_pass_their_crd_schema
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                failures.append(f"{directory.relative_to(K8S)} {doc['kind']}/{doc['metadata']['name']}: {exc}")
    assert not failures, "\n".join(failures)


def test_strict_validation_rejects_an_unknown_field(rendered: dict[Path, list[Doc]]) -> None:
    """The validator is a real check: a misspelt field in a pod spec fails it."""
    workload = next(d for docs in rendered.values() for d in docs if pod_spec(d) is not None)
    broken = copy.deepcopy(workload)
    pod_spec(broken)["terminationGracePeriod"] = 30  # the real field ends in Seconds
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, CURRENT, strict=True)


def test_kubernetes_validate_command_accepts_the_rendering(
    rendered: dict[Path, list[Doc]], tmp_path: Path
) -> None:
    """The same check as CI's command line: `kubernetes-validate --strict FILE...`."""
    files = []
    for directory, docs in rendered.items():
        path = tmp_path / f"{'-'.join(directory.relative_to(K8S).parts)}.yaml"
        path.write_text(yaml.safe_dump_all([d for d in docs if not custom_resources.is_custom(d)]))
        files.append(str(path))
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", *files],
                            check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_custom_resources_pass_their_crd_schema(rendered: dict[Path, list[Doc]]) -> None:
    """PodMonitor and InferencePool against their CRDs' schemas, unknown fields rejected."""
    seen, failures = set(), []
    for directory, docs in rendered.items():
        for doc in docs:
            if custom_resources.is_custom(doc):
                seen.add(doc["kind"])
                failures += [f"{directory.relative_to(K8S)} {doc['kind']}/{doc['metadata']['name']}: {p}"
                             for p in custom_resources.problems(doc)]
    assert not failures, "\n".join(failures)
    assert {"PodMonitor", "InferencePool"} <= seen


@pytest.mark.parametrize("kind,breakage,expected", [
    ("InferencePool", lambda d: d["spec"].pop("targetPorts"), "targetPorts"),
    ("InferencePool", lambda d: d["spec"]["endpointPickerRef"].update(failureMode="Sometimes"), "Sometimes"),
    ("PodMonitor", lambda d: d["spec"]["podMetricsEndpoints"][0].update(prot="metrics"), "prot"),
])
def test_crd_validation_catches_a_broken_resource(rendered: dict[Path, list[Doc]], kind, breakage, expected) -> None:
    doc = copy.deepcopy(next(d for docs in rendered.values() for d in docs if d["kind"] == kind))
    assert not custom_resources.problems(doc)
    breakage(doc)
    assert any(expected in p for p in custom_resources.problems(doc)), custom_resources.problems(doc)
