"""Throughput with tracing on versus off, side by side (issue 6: target under 2 % apart).

    python bench/bench_tracing.py                       # the default model, 8 streams
    python bench/bench_tracing.py --engine echo         # no model: the telemetry cost laid bare
    python bench/bench_tracing.py --rounds 8 --concurrency 8 --max-tokens 32

Two servers in this process share one engine:
  off  no tracer provider: what `cyserve serve` runs with no OTEL_* exporter variable;
  on   an SDK TracerProvider with a BatchSpanProcessor (as the OTLP path uses) into an exporter
       that counts and drops spans, so every span is created, filled, ended and exported.
Both serve Prometheus metrics, so tracing is the only difference. Rounds alternate off/on (the
order flips every round) so that load drift on a shared machine hits both alike; each round sends
`--requests` streaming requests, `--concurrency` at a time, of `--max-tokens` tokens each
(greedy, ignore_eos). Prints each round's output tokens per wall second and per CPU second of
this process (client, servers and engine: every thread), their medians, and on/off. On a busy
shared machine wall-clock throughput swings by tens of percent from round to round; CPU time
per token is what tracing adds to, and it holds still.

`--control` runs the same rounds with tracing off in both servers (an A/A test): the spread it
shows is the noise floor of the side-by-side figures on this machine. The last line measures the
telemetry path alone (interceptor, per-output hooks, spans, metrics and log lines of one request,
no gRPC and no engine) with tracing off and on, and puts the difference against the CPU time a
request took in the run.

`--engine echo` swaps the model for an engine that streams tokens as fast as the event loop takes
them (with RequestTimings, as the real engine reports them): requests per second then measure the
per-request cost of the service layer, tracing included, with nothing to hide it.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from cyserve.fastpath.contract import EngineStats, ModelInfo
from cyserve.fastpath.core.request import (
    EngineRequest,
    FinishReason,
    RequestOutput,
    RequestTimings,
)
from cyserve.service.observability.log import configure_logging
from cyserve.service.observability.metrics import ServiceMetrics
from cyserve.service.server import Server
from cyserve.service.observability.telemetry import Telemetry
from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

PROMPTS = [f"Write a short note number {i} about the sea, the wind and the harbour." for i in range(64)]


class CountingExporter(SpanExporter):
    """Drops spans after counting them (the export path runs; nothing leaves the process)."""

    def __init__(self) -> None:
        self.num_spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.num_spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


# ---- an engine without a model ----


class _ByteTokenizer:
    vocab_size = 266

    def encode(self, text: str, parse_special: bool = True) -> list[int]:
        return [b + 10 for b in text.encode()]

    def id_to_piece(self, token_id: int) -> str:
        return chr(max(token_id - 10, 32))

    def is_special(self, token_id: int) -> bool:
        return token_id < 10


class EchoEngine:
    """Streams max_tokens one-token outputs, yielding to the event loop between them."""

    def __init__(self) -> None:
        self.model_info = ModelInfo(
            name="echo", path="", architecture="llama", vocab_size=266, context_length=4096, max_model_len=4096,
            num_layers=1, hidden_size=8, num_heads=1, num_kv_heads=1, quantization="F32", bos_token_id=1,
            eos_token_id=2, chat_template="")
        self.tokenizer = _ByteTokenizer()
        self.num_running = 0

    def stats(self) -> EngineStats:
        return EngineStats(self.num_running, 0, 16, 16)

    def abort(self, request_id: str) -> None:
        pass

    async def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        timings = RequestTimings(arrival=time.monotonic())
        self.num_running += 1
        try:
            n = request.stopping.max_tokens
            for i in range(n):
                await asyncio.sleep(0)
                now = time.monotonic()
                if i == 0:
                    timings.first_scheduled = timings.first_token = now
                    timings.num_prefill_chunks = 1
                out = RequestOutput(request.request_id, [42], "x")
                if i == n - 1:
                    timings.finished = now
                    out.finished, out.finish_reason, out.timings = True, FinishReason.LENGTH, timings
                    out.num_prompt_tokens, out.num_completion_tokens = len(request.prompt_token_ids), n
                yield out
        finally:
            self.num_running -= 1


# ---- servers and load ----


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Round:
    tokens: int
    wall_s: float
    cpu_s: float  # CPU time of this whole process: client, server, engine (every thread)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def tokens_per_cpu_s(self) -> float:
        return self.tokens / self.cpu_s


async def one_round(address: str, num_requests: int, concurrency: int, max_tokens: int) -> Round:
    """`num_requests` streams, `concurrency` in flight."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(num_requests):
        queue.put_nowait(i)
    tokens = 0

    async def worker(stub: pb_grpc.GenerationStub) -> None:
        nonlocal tokens
        while not queue.empty():
            i = queue.get_nowait()
            request = pb.GenerateRequest(
                prompt=PROMPTS[i % len(PROMPTS)], sampling=pb.SamplingParams(temperature=0),
                stopping=pb.StoppingCriteria(max_tokens=max_tokens, ignore_eos=True))
            async for response in stub.GenerateStream(request, timeout=600):
                tokens += len(response.token_ids)

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GenerationStub(channel)
        start, cpu_start = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(stub) for _ in range(concurrency)))
        return Round(tokens, time.perf_counter() - start, time.process_time() - cpu_start)


def load_engine(kind: str, num_threads: int) -> tuple[Any, Any]:
    """(engine, stop callable)."""
    if kind == "echo":
        return EchoEngine(), lambda: None
    from cyserve.fastpath.engine import Engine
    from cyserve.fastpath.engine_config import EngineConfig
    from cyserve.service.config import default_model_path

    config = EngineConfig(model_path=default_model_path(), kv_cache_bytes=256 << 20, num_threads=num_threads)
    engine = Engine.from_config(config)
    engine.start()
    return engine, engine.stop


# ---- the telemetry path alone ----


class _Context:
    """What the telemetry reads of a grpc.aio.ServicerContext, for a call that succeeds."""

    def code(self) -> None:
        return None

    def details(self) -> None:
        return None

    def time_remaining(self) -> None:
        return None


@dataclass
class _CallDetails:
    method: str
    invocation_metadata: tuple[Any, ...]


@dataclass
class _Metadatum:
    key: str
    value: str


async def telemetry_path_cpu_s(telemetry: Telemetry, num_requests: int, max_tokens: int) -> float:
    """CPU seconds per request of what the service's telemetry does around one streamed request
    (interceptor, per-output hooks, the end: spans, metrics, log lines), without gRPC or engine."""
    log = structlog.get_logger("cyserve.service").bind(rpc="GenerateStream", request_id="bench")
    request = EngineRequest("bench", list(range(40)))
    outputs = [RequestOutput("bench", [42], "x") for _ in range(max_tokens)]
    details = _CallDetails("/cyserve.v1.Generation/GenerateStream", (
        _Metadatum("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),))

    async def behaviour(_: Any, context: Any) -> None:
        started = time.monotonic()
        completion = telemetry.start_request(log, context, "text_completion", started)
        completion.submitted(request, list)
        outputs[-1].timings = RequestTimings(started, started, started, time.monotonic(), 0, 1, [])
        for output in outputs:
            completion.on_output(output)
        completion.finished({"duration_s": 0.0}, "length", max_tokens, None)

    async def continuation(_: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(behaviour)

    handler = await telemetry.interceptor().intercept_service(continuation, details)
    context = _Context()
    start = time.process_time()
    for _ in range(num_requests):
        await handler.unary_unary(None, context)
    return (time.process_time() - start) / num_requests


def path_cost(provider: TracerProvider, rounds: int, max_tokens: int) -> tuple[float, float]:
    """Median CPU seconds per request of the telemetry path, tracing (off, on); metrics on in both."""
    settings = {name: Telemetry(p, ServiceMetrics("bench", 4096), model_name="bench")
                for name, p in (("off", None), ("on", provider))}
    results: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(rounds):
        for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
            results[name].append(asyncio.run(telemetry_path_cpu_s(settings[name], 300, max_tokens)))
    return statistics.median(results["off"]), statistics.median(results["on"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("model", "echo"), default="model")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds per setting")
    parser.add_argument("--requests", type=int, help="requests per round (default 4 x concurrency)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--control", action="store_true",
                        help="A/A run: the 'on' server traces nothing either; shows the noise floor")
    parser.add_argument("--threads", type=int, default=0,
                        help="engine compute threads (default: all usable CPUs); 1 steadies a busy machine")
    args = parser.parse_args(argv)
    if args.engine == "echo" and args.requests is None:
        args.requests = 400
    num_requests = args.requests or 4 * args.concurrency

    # JSON log lines, as `cyserve serve` writes them, into the void: both settings pay for them.
    configure_logging(stream=open(os.devnull, "w"), console=False)  # noqa: SIM115 (open until exit)
    engine, stop_engine = load_engine(args.engine, args.threads)
    exporter = CountingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    loop_thread = LoopThread()

    async def start(tracer_provider: TracerProvider | None) -> Server:
        server = Server(engine, "127.0.0.1", 0, tracer_provider=tracer_provider, metrics_port=0)
        await server.start()
        return server

    servers = {"off": loop_thread.run(start(None)),
               "on": loop_thread.run(start(None if args.control else provider))}
    results: dict[str, list[Round]] = {"off": [], "on": []}
    try:
        for name, server in servers.items():  # warm-up: caches, connections, first-call costs
            asyncio.run(one_round(server.address, args.concurrency, args.concurrency, args.max_tokens))
        print(f"engine={args.engine} rounds={args.rounds} requests/round={num_requests} "
              f"concurrency={args.concurrency} max_tokens={args.max_tokens} threads={args.threads}"
              + ("  CONTROL: tracing off in both" if args.control else ""))
        for r in range(args.rounds):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            line = []
            for name in order:
                result = asyncio.run(
                    one_round(servers[name].address, num_requests, args.concurrency, args.max_tokens))
                results[name].append(result)
                line.append(f"{name} {result.tokens_per_s:9.1f} tok/s {result.tokens_per_cpu_s:9.1f} tok/cpu-s")
            print(f"round {r + 1}: " + "   ".join(line), flush=True)
    finally:
        for server in servers.values():
            loop_thread.run(server.stop(1.0))
        loop_thread.close()
        stop_engine()
    for label, measure in (("output tokens per wall second", "tokens_per_s"),
                           ("output tokens per CPU second", "tokens_per_cpu_s")):
        off = statistics.median(getattr(r, measure) for r in results["off"])
        on = statistics.median(getattr(r, measure) for r in results["on"])
        # each round's on and off ran back to back: their ratio cancels slower drifts in load
        paired = statistics.median(getattr(a, measure) / getattr(b, measure)
                                   for a, b in zip(results["on"], results["off"]))
        print(f"median {label}: off {off:.1f}   on {on:.1f}   on/off {on / off:.4f} "
              f"({(on / off - 1) * 100:+.2f} %); median of per-round on/off {paired:.4f}")
    path_off, path_on = path_cost(provider, max(args.rounds, 6), args.max_tokens)
    cpu_per_request = args.max_tokens / statistics.median(r.tokens_per_cpu_s for r in results["off"])
    added = path_on - path_off
    print(f"telemetry path alone, CPU per request: off {path_off * 1e6:.0f} us   on {path_on * 1e6:.0f} us"
          f"   tracing adds {added * 1e6:.0f} us = {added / cpu_per_request * 100:.2f} % of the "
          f"{cpu_per_request * 1e3:.1f} ms of CPU a request took here with tracing off")
    provider.shutdown()
    print(f"spans exported: {exporter.num_spans}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
