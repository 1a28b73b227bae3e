"""The deployment policies, each a function from a rendered pod to its violations (empty = fine).

The tests apply every policy to every pod in k8s/ and, to show each one bites, to a copy broken
on purpose. Numbers come from the server's code: ServerConfig.from_env parses the container's
environment exactly as `cyserve serve` would, so the drain time, port, threads and KV budget are
the server's own defaults wherever the manifests leave them unset.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable

from cyserve.service.config import ENV_VARS, ServerConfig, default_model_path

from .manifests import (
    Doc,
    Pod,
    all_containers,
    container_env,
    prestop_sleep_s,
    quantity,
)

# What the server process needs beyond the model file and the KV cache: Python, numpy, gRPC and
# the engine's working buffers. Measured on the default model (docs/deploying.md, "Sizing"):
# ~215 MiB resident after loading, ~230 MiB after serving, KV cache excluded.
RUNTIME_ALLOWANCE_BYTES = 256 * 2**20
# After the gRPC drain the engine thread stops and the process exits: seconds to leave for that
# (measured: exit 3.2 s after a 10 s grace ran out, on a loaded 2-core machine).
ENGINE_STOP_MARGIN_S = 5.0
DEFAULT_TERMINATION_GRACE_S = 30.0  # Kubernetes' default when a pod leaves it unset
LISTEN_EVERYWHERE = {"0.0.0.0", "::", "[::]"}
# Setting names that would put prompt or output text into logs or spans.
CONTENT_SETTING = re.compile(r"PROMPT|CAPTURE|CONTENT|MESSAGE", re.IGNORECASE)
TRUTHY = {"1", "true", "yes", "on", "y", "t"}

Policy = Callable[[Pod], list[str]]


def server_config(pod: Pod, container: Doc) -> ServerConfig:
    """The settings `cyserve serve` would run with in this container (raises on a bad value)."""
    unknown = sorted(k for k in container_env(pod, container)
                     if k.startswith("CYSERVE_") and k not in {var for var, _ in ENV_VARS.values()})
    if unknown:
        raise ValueError(f"variables the server does not read: {unknown}")
    return ServerConfig.from_env(container_env(pod, container))


def health_services() -> tuple[str, ...]:
    from cyserve.service.server import HEALTH_SERVICES

    return HEALTH_SERVICES


def generation_service() -> str:
    from cyserve.service.server import SERVICE_NAME

    return SERVICE_NAME


def _where(pod: Pod, container: Doc) -> str:
    return f"{pod.source} container {container['name']}"


# ---- policies on the server containers ----


def settings_parse(pod: Pod) -> list[str]:
    problems = []
    for c in pod.servers():
        try:
            server_config(pod, c)
        except ValueError as exc:
            problems.append(f"{_where(pod, c)}: {exc}")
    return problems


def native_sidecar(pod: Pod) -> list[str]:
    """Beside other containers, cyserve is a native sidecar: an init container restarted Always
    (a plain init container would block the pod, since `serve` never exits)."""
    problems = []
    init = {c["name"] for c in pod.spec.get("initContainers", [])}
    for c in pod.servers():
        if c["name"] in init and c.get("restartPolicy") != "Always":
            problems.append(f"{_where(pod, c)}: init container without restartPolicy: Always")
        if c["name"] not in init and len(pod.spec["containers"]) > 1:
            problems.append(f"{_where(pod, c)}: beside other containers; make it a native sidecar")
    return problems


def grpc_probes(pod: Pod) -> list[str]:
    """Startup, readiness and liveness probes, each a `grpc:` check of the server's own health
    service on its port, or on its plaintext health-only port when it has one; readiness and
    startup ask for the Generation service by name. The kubelet's grpc probes speak no TLS, so a
    server with TLS on must have that health port."""
    problems = []
    for c in pod.servers():
        config = server_config(pod, c)
        if config.tls_cert and not config.health_port:
            problems.append(f"{_where(pod, c)}: TLS on and no CYSERVE_HEALTH_PORT: plaintext grpc probes "
                            "cannot pass on a TLS port")
        port = config.health_port or config.port
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            check = c.get(kind, {}).get("grpc")
            if check is None:
                problems.append(f"{_where(pod, c)}: {kind} is not a grpc probe")
                continue
            service = check.get("service", "")
            if check.get("port") != port:
                problems.append(f"{_where(pod, c)}: {kind} port {check.get('port')} != server's probe port {port}")
            if service not in health_services():
                problems.append(f"{_where(pod, c)}: {kind} asks for {service!r}, not a health service")
            if kind != "livenessProbe" and service != generation_service():
                problems.append(f"{_where(pod, c)}: {kind} should ask for {generation_service()}")
    return problems


def whole_cores(pod: Pod) -> list[str]:
    """CPU requests == limits in whole cores, memory requests == limits: Guaranteed QoS, and the
    static CPU manager's dedicated cores where the node runs it."""
    problems = []
    for c in pod.servers():
        requests = c.get("resources", {}).get("requests", {})
        limits = c.get("resources", {}).get("limits", {})
        if "cpu" not in limits or requests.get("cpu") is None:
            problems.append(f"{_where(pod, c)}: CPU request and limit must both be set")
            continue
        cpu = quantity(limits["cpu"])
        if quantity(requests["cpu"]) != cpu:
            problems.append(f"{_where(pod, c)}: CPU request {requests['cpu']} != limit {limits['cpu']}")
        if cpu < 1 or cpu != int(cpu):
            problems.append(f"{_where(pod, c)}: CPU limit {limits['cpu']} is not whole cores")
        if "memory" not in limits or quantity(requests.get("memory", "0")) != quantity(limits["memory"]):
            problems.append(f"{_where(pod, c)}: memory request must equal a set limit")
    return problems


def threads_from_cpu_limit(pod: Pod) -> list[str]:
    problems = []
    for c in pod.servers():
        threads = server_config(pod, c).num_threads
        cpu = quantity(c.get("resources", {}).get("limits", {}).get("cpu", "0"))
        if threads != cpu:
            problems.append(f"{_where(pod, c)}: {threads} threads for a {cpu}-core CPU limit")
    return problems


def memory_fits_model_and_kv(pod: Pod) -> list[str]:
    """Memory limit >= model file + KV budget + runtime. The KV budget must be stated: the
    engine's default reads the node's /proc/meminfo, not the container's limit."""
    problems = []
    for c in pod.servers():
        config = server_config(pod, c)
        if config.kv_cache_bytes is None:
            problems.append(f"{_where(pod, c)}: CYSERVE_KV_CACHE_BYTES unset")
            continue
        model_bytes = 0 if config.model_path else os.path.getsize(default_model_path())
        need = model_bytes + config.kv_cache_bytes + RUNTIME_ALLOWANCE_BYTES
        limit = quantity(c.get("resources", {}).get("limits", {}).get("memory", "0"))
        if limit < need:
            problems.append(f"{_where(pod, c)}: memory limit {limit / 2**20:.0f} MiB < "
                            f"model + KV + runtime = {need / 2**20:.0f} MiB")
    return problems


def grace_outlasts_drain(pod: Pod) -> list[str]:
    """terminationGracePeriodSeconds > preStop pause + the server's drain (CYSERVE_GRACE_S or its
    default) + engine stop: the kubelet's SIGKILL never lands in the middle of a drain."""
    problems = []
    grace = float(pod.spec.get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_S))
    app_pause = max((prestop_sleep_s(c) for c in pod.clients()), default=0.0)
    for c in pod.servers():
        drain = server_config(pod, c).grace_s
        need = app_pause + prestop_sleep_s(c) + drain + ENGINE_STOP_MARGIN_S
        if grace <= need:
            problems.append(f"{_where(pod, c)}: terminationGracePeriodSeconds {grace:g} <= "
                            f"preStop + drain {drain:g} s + {ENGINE_STOP_MARGIN_S:g} s = {need:g}")
    return problems


def listens_where_probes_reach(pod: Pod) -> list[str]:
    """The kubelet's probes dial the pod IP, so loopback-only would never pass a probe."""
    return [f"{_where(pod, c)}: listens on {server_config(pod, c).host}"
            for c in pod.servers() if server_config(pod, c).host not in LISTEN_EVERYWHERE]


def service_links_cannot_set_port(pod: Pod) -> list[str]:
    """A Service named `cyserve` makes Kubernetes inject CYSERVE_PORT=tcp://IP:PORT, which the
    server would read as its port: disable service links or set CYSERVE_PORT in the pod (a pod's
    own variables win over service links; the image's ENV does not)."""
    if pod.spec.get("enableServiceLinks") is False:
        return []
    problems = []
    for c in pod.servers():
        own = {v["name"] for v in c.get("env", [])}
        for source in c.get("envFrom", []):
            own |= set(pod.config_maps.get(source.get("configMapRef", {}).get("name"), {}))
        if "CYSERVE_PORT" not in own:
            problems.append(f"{_where(pod, c)}: service links on and CYSERVE_PORT not set in the pod")
    return problems


# ---- policies on every container ----


def hardened(pod: Pod) -> list[str]:
    """Non-root, read-only root filesystem, no privilege escalation, no capabilities."""
    problems = []
    pod_security = pod.spec.get("securityContext", {})
    for c in all_containers(pod.spec):
        security = {**pod_security, **c.get("securityContext", {})}
        if security.get("runAsNonRoot") is not True or security.get("runAsUser") == 0:
            problems.append(f"{_where(pod, c)}: may run as root")
        if c.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
            problems.append(f"{_where(pod, c)}: root filesystem is writable")
        if c.get("securityContext", {}).get("allowPrivilegeEscalation") is not False:
            problems.append(f"{_where(pod, c)}: privilege escalation allowed")
        if "ALL" not in c.get("securityContext", {}).get("capabilities", {}).get("drop", []):
            problems.append(f"{_where(pod, c)}: capabilities not dropped")
    return problems


def no_prompt_logging(pod: Pod) -> list[str]:
    """Nothing turns on prompt/output capture: no such variable set true (ours or OpenTelemetry's
    OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT), no such flag, no such server setting."""
    problems = []
    for c in all_containers(pod.spec):
        for key, value in container_env(pod, c).items():
            if CONTENT_SETTING.search(key) and value.strip().lower() in TRUTHY:
                problems.append(f"{_where(pod, c)}: {key}={value}")
        for arg in c.get("args", []):
            if arg.startswith("-") and CONTENT_SETTING.search(arg):
                problems.append(f"{_where(pod, c)}: flag {arg}")
    for c in pod.servers():
        config = server_config(pod, c)
        for field in dataclasses.fields(config):
            value = getattr(config, field.name)  # switches only: max_message_bytes is no capture
            if CONTENT_SETTING.search(field.name) and isinstance(value, bool) and value:
                problems.append(f"{_where(pod, c)}: server setting {field.name} is on")
    return problems


def no_api_token(pod: Pod) -> list[str]:
    """A pod that runs cyserve has no Kubernetes API token (cyserve never calls the API); other
    pods of an example (an inference gateway's endpoint picker) may need theirs."""
    if not pod.servers() or pod.spec.get("automountServiceAccountToken") is False:
        return []
    return [f"{pod.source}: automountServiceAccountToken is not false"]


POLICIES: dict[str, Policy] = {
    "settings_parse": settings_parse,
    "native_sidecar": native_sidecar,
    "grpc_probes": grpc_probes,
    "whole_cores": whole_cores,
    "threads_from_cpu_limit": threads_from_cpu_limit,
    "memory_fits_model_and_kv": memory_fits_model_and_kv,
    "grace_outlasts_drain": grace_outlasts_drain,
    "listens_where_probes_reach": listens_where_probes_reach,
    "service_links_cannot_set_port": service_links_cannot_set_port,
    "hardened": hardened,
    "no_prompt_logging": no_prompt_logging,
    "no_api_token": no_api_token,
}
