"""`cyserve bench` against a real `cyserve serve --port 0` on the default model, both run as
users run them: the numbers must be complete and consistent (no timing thresholds)."""
from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_support import clean_env, cyserve_command

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 120.0
RUN_TIMEOUT = 600.0


class Serve:
    """`cyserve serve --port 0` in a subprocess; its address comes from the server.started log."""

    def __init__(self, **env: str) -> None:
        self.proc = subprocess.Popen(
            [*cyserve_command(), "serve", "--port", "0", "--grace", "2", "--kv-cache-bytes", "64MiB",
             "--threads", "1"],  # one thread: no OpenMP barriers to stall on a busy machine
            cwd=REPO, env=clean_env(CYSERVE_METRICS_PORT="0", **env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, encoding="utf-8",
        )
        self.lines: list[str] = []
        self.started = threading.Event()
        self.address = ""
        threading.Thread(target=self._read, daemon=True).start()
        assert self.started.wait(STARTUP_TIMEOUT), "server did not start:\n" + "".join(self.lines)
        assert self.address, "server exited:\n" + "".join(self.lines)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if '"server.started"' in line:
                self.address = json.loads(line)["address"]
                self.started.set()
        self.started.set()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server() -> Iterator[Serve]:
    serve = Serve()
    try:
        yield serve
    finally:
        serve.stop()


def bench(server: Serve, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cyserve_command(), "bench", "--address", server.address, *args],
        cwd=REPO, env=clean_env(CYSERVE_METRICS_PORT="0"), capture_output=True, text=True, encoding="utf-8",
        timeout=RUN_TIMEOUT, check=False,
    )


def test_closed_loop_json(server: Serve) -> None:
    done = bench(server, "--concurrency", "2", "--num-requests", "4", "--input-len", "24",
                 "--output-len", "6", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["system"] == "cyserve" and report["completed"] == 4 and report["failed"] == 0
    # prompts measured with the server's Tokenize; ignore_eos makes every output exactly 6 tokens
    assert report["total_input_tokens"] == 4 * 24
    assert report["total_output_tokens"] == 4 * 6
    assert report["request_throughput"] > 0 and report["output_throughput"] > 0
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        dist = report[key]
        assert 0 < dist["mean"] and 0 < dist["p50"] <= dist["p90"] <= dist["p99"], key
    assert report["ttft_ms"]["p99"] <= report["e2el_ms"]["p99"]
    # the whole run takes at least as long as its slowest request
    assert report["duration_s"] * 1000 >= report["e2el_ms"]["p99"]


def test_poisson_arrivals_with_shared_prefix_report(server: Serve) -> None:
    done = bench(server, "--request-rate", "20", "--num-requests", "3", "--input-len", "8",
                 "--output-len", "4", "--shared-prefix-len", "32", "--random-range-ratio", "0.5",
                 "--seed", "5")
    assert done.returncode == 0, done.stderr
    assert "Poisson arrivals at 20 req/s" in done.stdout
    lines = {
        label.strip(): value.strip()
        for label, _, value in (line.partition(":") for line in done.stdout.splitlines())
        if value.strip()
    }
    assert lines["Successful requests"] == "3" and lines["Failed requests"] == "0"
    assert 3 * (32 + 4) <= int(lines["Total input tokens"]) <= 3 * (32 + 12)
    assert 3 * 2 <= int(lines["Total generated tokens"]) <= 3 * 6
    assert float(lines["Output token throughput (tok/s)"]) > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_same_requests_over_grpc_and_http_side_by_side() -> None:
    """--also-http: cyserve's OpenAI HTTP API gets the very requests gRPC got, reported beside it."""
    port = _free_port()
    serve = Serve(CYSERVE_HTTP_PORT=str(port), CYSERVE_HOST="127.0.0.1")
    try:
        done = bench(serve, "--also-http", f"http://127.0.0.1:{port}", "--concurrency", "2",
                     "--num-requests", "4", "--input-len", "24", "--output-len", "6", "--json")
    finally:
        serve.stop()
    assert done.returncode == 0, done.stderr
    systems = json.loads(done.stdout)["systems"]
    assert set(systems) == {"cyserve", "cyserve-http"}
    for figures in systems.values():
        assert figures["completed"] == 4 and figures["failed"] == 0
        assert figures["total_input_tokens"] == 4 * 24 and figures["total_output_tokens"] == 4 * 6
