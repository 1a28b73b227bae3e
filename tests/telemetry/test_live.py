"""Telemetry around the real engine and the real command: the engine's own timestamps become
phase spans and metrics, and `cyserve serve` configured only by flags and OTEL_* variables exports
a caller-parented span and serves /metrics."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from service.support import wait_until

from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

from .support import Caller, scrape, telemetry_server, value

TIMEOUT = 120.0
GENERATE = "cyserve.v1.Generation/Generate"
# Long enough to fill whole KV blocks, so that a second identical prompt can reuse them.
PROMPT = "The quick brown fox jumps over the lazy dog. " * 4  # about 40 tokens


@pytest.fixture(scope="module")
def live(engine: Any) -> Iterator[tuple[Any, InMemorySpanExporter, pb_grpc.GenerationStub]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with (telemetry_server(engine, tracer_provider=provider, metrics_port=0) as server,
          grpc.insecure_channel(server.address) as channel):
        yield server, exporter, pb_grpc.GenerationStub(channel)


def generate(stub: pb_grpc.GenerationStub, caller: Caller) -> pb.GenerateResponse:
    request = pb.GenerateRequest(prompt=PROMPT, sampling=pb.SamplingParams(temperature=0),
                                 stopping=pb.StoppingCriteria(max_tokens=3, ignore_eos=True))
    return stub.Generate(request, timeout=TIMEOUT, metadata=caller.metadata)


def trace_spans(exporter: InMemorySpanExporter, caller: Caller) -> dict[str, Any]:
    def mine() -> list[Any]:
        return [s for s in exporter.get_finished_spans() if s.context.trace_id == caller.trace_id]

    assert wait_until(lambda: len(mine()) == 4, timeout=10), [s.name for s in mine()]
    return {s.name: s for s in mine()}


def test_engine_timings_become_spans_and_metrics(live):
    server, exporter, stub = live
    before = scrape(server.metrics_port)
    caller = Caller()
    reply = generate(stub, caller)
    spans = trace_spans(exporter, caller)
    root = spans[GENERATE]
    assert root.parent.span_id == caller.span_id
    for name in ("queue", "prefill", "decode"):
        assert spans[name].parent.span_id == root.context.span_id
        assert root.start_time <= spans[name].start_time <= spans[name].end_time <= root.end_time
    assert spans["queue"].end_time <= spans["prefill"].start_time <= spans["prefill"].end_time
    assert spans["prefill"].end_time <= spans["decode"].start_time
    assert root.attributes["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens > 16
    assert root.attributes["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens == 3
    assert root.attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert spans["prefill"].attributes["cyserve.prefill.num_chunks"] >= 1

    after = scrape(server.metrics_port)
    model = {"model_name": server.telemetry.model_name}
    assert value(after, "cyserve_prompt_tokens_total", **model) - value(
        before, "cyserve_prompt_tokens_total", **model) == reply.usage.prompt_tokens
    assert value(after, "cyserve:request_prefill_time_seconds_count", **model) - value(
        before, "cyserve:request_prefill_time_seconds_count", **model) == 1
    assert 0.0 <= value(after, "cyserve_kv_cache_usage_ratio", **model) <= 1.0


def test_a_repeated_prompt_reads_the_prefix_cache(live):
    server, exporter, stub = live
    generate(stub, Caller())  # the prompt's blocks are cached from here on
    before = scrape(server.metrics_port)
    caller = Caller()
    generate(stub, caller)
    spans = trace_spans(exporter, caller)
    cached = spans[GENERATE].attributes["gen_ai.usage.cache_read.input_tokens"]
    assert cached >= 16  # at least one whole block
    assert spans["prefill"].attributes["gen_ai.usage.cache_read.input_tokens"] == cached
    after = scrape(server.metrics_port)
    model = {"model_name": server.telemetry.model_name}
    assert value(after, "cyserve_prefix_cache_hits_total", **model) - value(
        before, "cyserve_prefix_cache_hits_total", **model) >= cached


# ---- the command ----


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cyserve_serve_exports_spans_and_serves_metrics(tmp_path):
    metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CYSERVE_", "OTEL_"))}
    env |= {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "cyserve-test", "CYSERVE_HTTP_PORT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cyserve.service.cli", "serve", "--port", "0", "--kv-cache-bytes",
         "64MiB", "--metrics-port", str(metrics_port), "--grace", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        def started() -> dict | None:
            for line in stderr:
                if '"server.started"' in line:
                    return json.loads(line)
            return None

        assert wait_until(lambda: started() is not None or proc.poll() is not None, timeout=TIMEOUT)
        record = started()
        assert record is not None, "".join(stderr)
        assert (record["metrics_port"], record["tracing"]) == (metrics_port, "on")
        caller = Caller()
        with grpc.insecure_channel(record["address"]) as channel:
            reply = pb_grpc.GenerationStub(channel).Generate(
                pb.GenerateRequest(prompt="Hi", stopping=pb.StoppingCriteria(max_tokens=2)),
                timeout=TIMEOUT, metadata=caller.metadata)
        samples = scrape(metrics_port)
        assert sum(v for (name, _), v in samples.items() if name == "cyserve_generation_tokens_total") \
            == reply.usage.completion_tokens
        finished = [json.loads(line) for line in list(stderr) if '"request.finished"' in line]
        assert finished and finished[-1]["trace_id"] == f"{caller.trace_id:032x}"
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
        reader.join(5)
    assert proc.returncode == 0, "".join(stderr)
    # the console exporter prints each span as JSON when the provider flushes on shutdown
    assert f'"trace_id": "0x{caller.trace_id:032x}"' in stdout
    assert '"name": "cyserve.v1.Generation/Generate"' in stdout
    assert '"service.name": "cyserve-test"' in stdout
