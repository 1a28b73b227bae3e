"""The standalone overlay: Services that reach the pods on their named ports, a ServiceAccount with
no token, a drain-friendly rollout, a PodDisruptionBudget and an autoscaler on queue depth."""
from __future__ import annotations

from pathlib import Path

import pytest

from cyserve.service.config import ServerConfig

from .manifests import K8S, Doc, pod_spec
from .policy import prestop_sleep_s

# The server's metrics port setting where it has one; until then the port the design names.
METRICS_PORT = getattr(ServerConfig(), "metrics_port", 9464)


@pytest.fixture(scope="module")
def docs(rendered: dict[Path, list[Doc]]) -> dict[tuple[str, str], Doc]:
    return {(d["kind"], d["metadata"]["name"]): d for d in rendered[K8S / "overlays" / "standalone"]}


@pytest.fixture(scope="module")
def deployment(docs: dict[tuple[str, str], Doc]) -> Doc:
    return docs[("Deployment", "cyserve")]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_services_reach_the_pods_on_named_ports(docs: dict, deployment: Doc) -> None:
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"]: p["containerPort"] for p in pod_spec(deployment)["containers"][0]["ports"]}
    for name in ("cyserve", "cyserve-headless"):
        service = docs[("Service", name)]
        assert _selects(service["spec"]["selector"], pod_labels), name
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, f"{name}: {port['targetPort']} is not a container port"
        grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["appProtocol"] == "grpc"
    assert docs[("Service", "cyserve-headless")]["spec"]["clusterIP"] == "None"
    metrics = next(p for p in docs[("Service", "cyserve")]["spec"]["ports"] if p["name"] == "metrics")
    assert metrics["port"] == container_ports["metrics"] == METRICS_PORT


def test_service_account_has_no_token(docs: dict, deployment: Doc) -> None:
    assert docs[("ServiceAccount", "cyserve")]["automountServiceAccountToken"] is False
    assert pod_spec(deployment)["serviceAccountName"] == "cyserve"


def test_rollout_keeps_capacity_and_pauses_before_drain(deployment: Doc) -> None:
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1
    assert prestop_sleep_s(pod_spec(deployment)["containers"][0]) > 0
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"


def test_disruption_budget_covers_the_pods(docs: dict, deployment: Doc) -> None:
    budget = docs[("PodDisruptionBudget", "cyserve")]["spec"]
    assert _selects(budget["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])
    assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable", 0) >= 1


def test_autoscaler_scales_the_deployment_on_queue_depth(docs: dict) -> None:
    hpa = docs[("HorizontalPodAutoscaler", "cyserve")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "cyserve"}
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    [metric] = hpa["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "cyserve_requests_waiting"
    assert metric["pods"]["target"]["type"] == "AverageValue"
