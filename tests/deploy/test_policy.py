"""Every pod that k8s/ renders keeps every deployment policy (tests/deploy/policy.py), and each
policy catches the mistake it exists for, shown on a copy of a real pod broken on purpose."""
from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from cyserve.service.config import ServerConfig

from .manifests import Doc, Pod
from .policy import POLICIES, server_config


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_rendered_pods_keep_the_policy(name: str, all_pods: list[Pod]) -> None:
    problems = [p for pod in all_pods for p in POLICIES[name](pod)]
    assert not problems, "\n".join(problems)


def _pod(pods: list[Pod], prefix: str) -> Pod:
    return next(pod for pod in pods if pod.source.startswith(prefix))


def _server(pod: Pod) -> Doc:
    return pod.servers()[0]


def _set_env(pod: Pod, name: str, value: str) -> None:
    env = _server(pod).setdefault("env", [])
    env[:] = [v for v in env if v["name"] != name] + [{"name": name, "value": value}]


def _no_service_links_guard(pod: Pod) -> None:
    pod.spec.pop("enableServiceLinks", None)
    pod.config_maps = {name: {k: v for k, v in data.items() if k != "CYSERVE_PORT"}
                       for name, data in pod.config_maps.items()}


# policy -> (which pod to break, how); each must make the policy report a problem.
BREAKAGES: dict[str, tuple[str, Callable[[Pod], None]]] = {
    "settings_parse": ("overlays/standalone", lambda p: _set_env(p, "CYSERVE_THREDS", "2")),
    "native_sidecar": ("examples/sidecar-caller", lambda p: _server(p).pop("restartPolicy")),
    "grpc_probes": ("overlays/standalone",
                    lambda p: _server(p).update(readinessProbe={"tcpSocket": {"port": 50051}})),
    "whole_cores": ("overlays/standalone", lambda p: _server(p)["resources"]["limits"].update(cpu="1500m")),
    "threads_from_cpu_limit": ("overlays/standalone", lambda p: _set_env(p, "CYSERVE_THREADS", "8")),
    "memory_fits_model_and_kv": ("examples/",
                                 lambda p: _server(p)["resources"]["limits"].update(memory="256Mi")),
    "grace_outlasts_drain": ("overlays/standalone", lambda p: p.spec.update(terminationGracePeriodSeconds=12)),
    "listens_where_probes_reach": ("examples/sidecar-caller", lambda p: _set_env(p, "CYSERVE_HOST", "127.0.0.1")),
    "service_links_cannot_set_port": ("overlays/standalone", _no_service_links_guard),
    "hardened": ("examples/sidecar-caller", lambda p: p.clients()[0]["securityContext"].pop("readOnlyRootFilesystem")),
    "no_prompt_logging": ("examples/sidecar-caller", lambda p: p.clients()[0]["env"].append(
        {"name": "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "value": "true"})),
    "no_api_token": ("overlays/standalone", lambda p: p.spec.pop("automountServiceAccountToken")),
}


def test_every_policy_has_a_breakage() -> None:
    assert set(BREAKAGES) == set(POLICIES)


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_the_policy_catches_its_breakage(name: str, all_pods: list[Pod]) -> None:
    prefix, breakage = BREAKAGES[name]
    pod = copy.deepcopy(_pod(all_pods, prefix))
    assert not POLICIES[name](pod)
    breakage(pod)
    assert POLICIES[name](pod), f"{name} did not notice the breakage"


def test_drain_time_is_the_servers_default(server_pods: list[Pod]) -> None:
    """No manifest overrides CYSERVE_GRACE_S, so the grace check used ServerConfig's own default."""
    default = ServerConfig().grace_s
    for pod in server_pods:
        for container in pod.servers():
            assert server_config(pod, container).grace_s == default


def test_a_longer_drain_needs_a_longer_grace_period(all_pods: list[Pod]) -> None:
    pod = copy.deepcopy(_pod(all_pods, "overlays/standalone"))
    grace = pod.spec["terminationGracePeriodSeconds"]
    _set_env(pod, "CYSERVE_GRACE_S", str(grace))
    assert POLICIES["grace_outlasts_drain"](pod)
