"""The inference-gateway example: an InferencePool over the standalone pods' HTTP port, an endpoint
picker told metric names the server really exports, and Prometheus scraping every pod."""
from __future__ import annotations

from pathlib import Path

import pytest

from cyserve.service.config import ServerConfig
from cyserve.service.observability.metrics import EngineStatsCollector

from .manifests import K8S, Doc, pod_spec

EXAMPLE = K8S / "examples" / "inference-gateway"
METRIC_FLAGS = ("--total-queued-requests-metric", "--total-running-requests-metric",
                "--kv-cache-usage-percentage-metric")


@pytest.fixture(scope="module")
def docs(rendered: dict[Path, list[Doc]]) -> dict[tuple[str, str], Doc]:
    return {(d["kind"], d["metadata"]["name"]): d for d in rendered[EXAMPLE]}


def _container_ports(workload: Doc) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in pod_spec(workload)["containers"][0]["ports"]}


def _picker_args(docs: dict) -> dict[str, str]:
    args = pod_spec(docs[("Deployment", "cyserve-epp")])["containers"][0]["args"]
    return dict(arg.split("=", 1) for arg in args)


def test_the_pool_routes_to_the_http_api_of_the_server_pods(docs: dict) -> None:
    pool = docs[("InferencePool", "cyserve")]["spec"]
    server = docs[("Deployment", "cyserve")]
    labels = server["spec"]["template"]["metadata"]["labels"]
    assert pool["selector"]["matchLabels"].items() <= labels.items()
    http = _container_ports(server)["http"]
    assert [p["number"] for p in pool["targetPorts"]] == [http]
    assert http == ServerConfig().http_port == int(docs[("ConfigMap", _config_map(docs))]["data"]["CYSERVE_HTTP_PORT"])


def _config_map(docs: dict) -> str:
    return next(name for kind, name in docs if kind == "ConfigMap" and name.startswith("cyserve-config"))


def test_the_pool_names_the_picker_service_and_its_port(docs: dict) -> None:
    ref = docs[("InferencePool", "cyserve")]["spec"]["endpointPickerRef"]
    service = docs[("Service", ref["name"])]["spec"]
    assert ref["port"]["number"] in [p["port"] for p in service["ports"]]
    picker = docs[("Deployment", "cyserve-epp")]
    assert service["selector"].items() <= picker["spec"]["template"]["metadata"]["labels"].items()
    assert _picker_args(docs)["--pool-name"] == docs[("InferencePool", "cyserve")]["metadata"]["name"]


def test_the_picker_reads_gauges_the_server_exports(docs: dict, engine) -> None:
    exported = {metric.name: metric.type for metric in EngineStatsCollector(engine, "m").collect()}
    args = _picker_args(docs)
    for flag in METRIC_FLAGS:
        assert exported.get(args[flag]) == "gauge", f"{flag}={args[flag]} is not a gauge cyserve exports"


def test_prometheus_scrapes_the_metrics_port_of_every_server_pod(docs: dict) -> None:
    monitor = docs[("PodMonitor", "cyserve")]["spec"]
    server = docs[("Deployment", "cyserve")]
    assert monitor["selector"]["matchLabels"].items() <= server["spec"]["template"]["metadata"]["labels"].items()
    [endpoint] = monitor["podMetricsEndpoints"]
    assert _container_ports(server)[endpoint["port"]] == ServerConfig().metrics_port
    assert endpoint["path"] == "/metrics"


def test_the_service_exposes_grpc_and_http(docs: dict) -> None:
    ports = {p["name"]: p for p in docs[("Service", "cyserve")]["spec"]["ports"]}
    assert ports["grpc"]["targetPort"] == "grpc" and ports["http"]["targetPort"] == "http"
    assert ports["http"]["port"] == ServerConfig().http_port
