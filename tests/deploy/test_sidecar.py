"""The llm-sidecar component: a native sidecar the app reaches on loopback, injected into every
labelled workload kind and nothing else."""
from __future__ import annotations

import os
import textwrap

import pytest

from .manifests import K8S, Pod, pod_spec, pods, render
from .policy import POLICIES, server_config

COMPONENT = K8S / "components" / "llm-sidecar"
LABEL = "cyserve.dev/llm-sidecar: enabled"


def _example(all_pods: list[Pod]) -> Pod:
    return next(pod for pod in all_pods if pod.source.startswith("examples/sidecar-caller"))


def test_example_runs_cyserve_as_a_native_sidecar(all_pods: list[Pod]) -> None:
    pod = _example(all_pods)
    [server] = pod.servers()
    assert server in pod.spec["initContainers"]
    assert server["restartPolicy"] == "Always"
    assert pod.clients(), "the example has an app container calling the sidecar"


def test_example_app_calls_the_sidecar_on_loopback(all_pods: list[Pod]) -> None:
    pod = _example(all_pods)
    port = server_config(pod, pod.servers()[0]).port
    addresses = [v["value"] for c in pod.clients() for v in c.get("env", []) if v["name"] == "CYSERVE_ADDRESS"]
    assert addresses == [f"127.0.0.1:{port}"]


def _workload(kind: str, name: str, labelled: bool, api: str = "apps/v1") -> str:
    labels = f"\n  labels:\n    {LABEL}" if labelled else ""
    template = f"""\
    template:
      metadata:
        labels: {{app: {name}}}
      spec:
        {'restartPolicy: Never' if kind == 'Job' else ''}
        initContainers:
          - name: migrate
            image: migrate:1
        containers:
          - name: app
            image: app:1
    """
    selector = "" if kind == "Job" else f"  selector:\n    matchLabels: {{app: {name}}}\n"
    service = "  serviceName: x\n" if kind == "StatefulSet" else ""
    return (f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}{labels}\nspec:\n"
            f"{selector}{service}{textwrap.indent(textwrap.dedent(template), '  ')}")


@pytest.fixture(scope="module")
def injected(kubectl_binary: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pod]:
    root = tmp_path_factory.mktemp("sidecar-kinds")
    workloads = {
        "job": _workload("Job", "job", True, api="batch/v1"),
        "sts": _workload("StatefulSet", "sts", True),
        "ds": _workload("DaemonSet", "ds", True),
        "plain": _workload("Deployment", "plain", False),
    }
    for name, text in workloads.items():
        (root / f"{name}.yaml").write_text(text)
    (root / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{', '.join(f'{n}.yaml' for n in workloads)}]\n"
        f"components: [{os.path.relpath(COMPONENT, root)}]\n"  # kustomize wants it relative
    )
    return {pod.workload["metadata"]["name"]: pod for pod in pods(K8S, render(root, kubectl_binary))
            if pod_spec(pod.workload) is not None}


@pytest.mark.parametrize("name", ["job", "sts", "ds"])
def test_component_injects_into_labelled_workloads(injected: dict[str, Pod], name: str) -> None:
    pod = injected[name]
    init = [c["name"] for c in pod.spec["initContainers"]]
    # Sidecar first: the app's own init containers (kept) can already call it.
    assert init == ["cyserve", "migrate"]
    assert [c["name"] for c in pod.spec["containers"]] == ["app"]
    for policy in ("native_sidecar", "grpc_probes", "whole_cores", "settings_parse"):
        assert not POLICIES[policy](pod), policy


def test_component_leaves_unlabelled_workloads_alone(injected: dict[str, Pod]) -> None:
    pod = injected["plain"]
    assert [c["name"] for c in pod.spec["initContainers"]] == ["migrate"]
    assert not pod.servers()
    assert not any(v.get("name") == "cyserve-tmp" for v in pod.spec.get("volumes", []))
