"""The TLS variant (components/tls, used by examples/standalone-tls): the gRPC port serves TLS
from a mounted Secret, every grpc probe asks the plaintext health-only port (the kubelet's grpc
probes speak no TLS), no Service exposes that port, and /metrics is announced as HTTPS."""
from __future__ import annotations

import copy
import posixpath
from pathlib import Path

import pytest

from .manifests import K8S, Doc, Pod
from .policy import POLICIES, server_config

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
SECRET = "cyserve-tls"


@pytest.fixture(scope="module")
def pod(all_pods: list[Pod]) -> Pod:
    return next(p for p in all_pods if p.source.startswith("examples/standalone-tls"))


@pytest.fixture(scope="module")
def docs(rendered: dict[Path, list[Doc]]) -> dict[tuple[str, str], Doc]:
    return {(d["kind"], d["metadata"]["name"]): d for d in rendered[K8S / "examples" / "standalone-tls"]}


def test_main_port_is_tls_and_every_probe_asks_the_plaintext_health_port(pod: Pod) -> None:
    [server] = pod.servers()
    config = server_config(pod, server)
    assert config.tls_cert and config.tls_key, "the TLS variant serves TLS on the gRPC port"
    assert config.health_port and config.health_port not in (config.port, config.metrics_port)
    for kind in PROBES:
        assert server[kind]["grpc"]["port"] == config.health_port, kind
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports["grpc"] == config.port and ports["health"] == config.health_port


def test_tls_files_come_from_the_mounted_secret(pod: Pod) -> None:
    [server] = pod.servers()
    config = server_config(pod, server)
    volumes = {v["name"]: v for v in pod.spec["volumes"]}
    [mount] = [m for m in server["volumeMounts"] if "secret" in volumes[m["name"]]]
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == SECRET and mount["readOnly"] is True
    for path, key in ((config.tls_cert, "tls.crt"), (config.tls_key, "tls.key")):  # kubernetes.io/tls keys
        assert path == posixpath.join(mount["mountPath"], key)
    # The key is readable by the server's group only, not by every user in the container.
    assert secret["defaultMode"] & 0o007 == 0
    assert pod.spec["securityContext"]["fsGroup"] == pod.spec["securityContext"]["runAsGroup"]


def test_no_service_exposes_the_health_port_and_metrics_say_https(docs: dict, pod: Pod) -> None:
    for (kind, name), doc in docs.items():
        if kind == "Service":
            assert all(p["targetPort"] != "health" for p in doc["spec"]["ports"]), name
    metrics = next(p for p in docs[("Service", "cyserve")]["spec"]["ports"] if p["name"] == "metrics")
    assert metrics["appProtocol"] == "https"


def _probes_on(server: Doc, port: int) -> None:
    for kind in PROBES:
        server[kind]["grpc"]["port"] = port


def test_the_probe_policy_catches_tls_probes_on_the_main_port(pod: Pod) -> None:
    assert not POLICIES["grpc_probes"](pod)
    broken = copy.deepcopy(pod)
    [server] = broken.servers()
    _probes_on(server, server_config(broken, server).port)  # the health port still set
    assert POLICIES["grpc_probes"](broken)
    server["env"] = [v for v in server["env"] if v["name"] != "CYSERVE_HEALTH_PORT"]  # no health port
    problems = POLICIES["grpc_probes"](broken)
    assert any("CYSERVE_HEALTH_PORT" in p for p in problems), problems


def test_every_rendered_tls_server_probes_a_plaintext_health_port(server_pods: list[Pod]) -> None:
    """Whatever kustomization turns TLS on, its probes reach the server without TLS."""
    tls = [(pod, c) for pod in server_pods for c in pod.servers() if server_config(pod, c).tls_cert]
    assert tls, "some rendered pod serves TLS"
    for pod, server in tls:
        health_port = server_config(pod, server).health_port
        assert health_port, pod.source
        assert {server[kind]["grpc"]["port"] for kind in PROBES} == {health_port}, pod.source
