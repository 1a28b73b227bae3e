"""Prometheus metrics: what one server exposes at `http://HOST:METRICS_PORT/metrics` (https, with
the gRPC port's certificate, when the server runs TLS).

Three families of names, each for a different reader:

- `cyserve_*`: our own names (requests running and waiting, KV cache usage, token and prefix-cache
  counters, requests by finish reason and by gRPC status code);
- `gen_ai_server_*`: the OpenTelemetry GenAI model-server histograms (time to first token, time per
  output token, request duration), labelled with their `gen_ai.*` attributes;
- `cyserve:*`: vLLM's names under our prefix (`vllm:time_to_first_token_seconds` ->
  `cyserve:time_to_first_token_seconds`, same buckets, same `model_name` and `finished_reason`
  labels), so a vLLM dashboard works after one search-and-replace.

Request-level values are recorded by the service (cyserve.service.observability.telemetry) on the event loop.
Engine-level values (running, waiting, KV usage, prefix cache, preemptions) are read from
`engine.stats()` when Prometheus scrapes, by EngineStatsCollector: the engine thread does no
metrics work at all.
"""
from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cyserve.fastpath.contract import EngineClient

log = structlog.get_logger("cyserve.service")

METRICS_SOCKET_TIMEOUT_S = 10.0  # a scrape connection that stays silent longer is dropped
PROVIDER_NAME = "cyserve"  # gen_ai.provider.name

# vLLM's buckets (vllm/v1/metrics/loggers.py), so its dashboards' quantiles line up.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# The GenAI semantic conventions' advised boundaries for the gen_ai.server.* histograms.
GENAI_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                      5.0, 7.5, 10.0)
GENAI_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
GENAI_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                          20.48, 40.96, 81.92)

GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
MODEL_LABEL = ("model_name",)

# FinishReason name -> vLLM's finished_reason label value.
VLLM_FINISHED_REASON = {"eos": "stop", "stop_sequence": "stop", "length": "length",
                        "cancelled": "abort", "error": "error"}


def length_buckets(max_len: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to max_len (vLLM's build_1_2_5_buckets)."""
    buckets: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * scale
            if value > max_len:
                return tuple(buckets)
            buckets.append(value)
        scale *= 10


class ServiceMetrics:
    """Every metric of one server, in a registry of its own (several servers may share a
    process, as in the tests). Methods are called from the event loop; they never block."""

    def __init__(self, model_name: str, max_model_len: int, engine: EngineClient | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.model_name = model_name
        self.registry = registry if registry is not None else CollectorRegistry()
        r, model = self.registry, (model_name,)

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, (*MODEL_LABEL, *labels), registry=r)

        def histogram(name: str, doc: str, buckets: Sequence[float],
                      labels: Sequence[str] = MODEL_LABEL) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        self._prompt_tokens = [
            counter("cyserve_prompt_tokens", "Prompt tokens of requests the engine took.").labels(*model),
            counter("cyserve:prompt_tokens", "Number of prefill tokens processed.").labels(*model),
        ]
        self._generation_tokens = [
            counter("cyserve_generation_tokens", "Tokens generated.").labels(*model),
            counter("cyserve:generation_tokens", "Number of generation tokens processed.").labels(*model),
        ]
        self._finished = counter("cyserve_requests_finished", "Generation requests by finish reason.",
                                 ("finish_reason",))
        self._success = counter("cyserve:request_success", "Count of processed requests.",
                                ("finished_reason",))
        self._rpcs = counter("cyserve_requests", "Calls of the Generation service by gRPC status code.",
                             ("method", "code"))

        lengths = length_buckets(max(max_model_len, 1))
        self._ttft = histogram("cyserve:time_to_first_token_seconds",
                               "Time to first token in seconds.", TTFT_BUCKETS).labels(*model)
        self._genai_ttft = histogram(
            "gen_ai_server_time_to_first_token_seconds", "Time to generate first token.",
            GENAI_TTFT_BUCKETS, GENAI_LABELS)
        self._itl = histogram("cyserve:inter_token_latency_seconds",
                              "Inter-token latency in seconds.", ITL_BUCKETS).labels(*model)
        self._tpot = histogram("cyserve:request_time_per_output_token_seconds",
                               "Mean time per output token after the first, per request.",
                               ITL_BUCKETS).labels(*model)
        self._genai_tpot = histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token generated after the first token for successful responses.",
            GENAI_TPOT_BUCKETS, GENAI_LABELS)
        self._genai_duration = histogram(
            "gen_ai_server_request_duration_seconds",
            "Generative AI server request duration (time to last output token).",
            GENAI_DURATION_BUCKETS, (*GENAI_LABELS, "error_type"))

        def latency(name: str, doc: str) -> Any:
            return histogram(name, doc, REQUEST_LATENCY_BUCKETS).labels(*model)

        self._e2e = latency("cyserve:e2e_request_latency_seconds", "End-to-end request latency in seconds.")
        self._queue = latency("cyserve:request_queue_time_seconds", "Time spent waiting to be scheduled.")
        self._prefill = latency("cyserve:request_prefill_time_seconds", "Time spent in prefill.")
        self._decode = latency("cyserve:request_decode_time_seconds", "Time spent in decode.")
        self._inference = latency("cyserve:request_inference_time_seconds",
                                  "Time spent running (prefill and decode).")
        self._prompt_len = histogram("cyserve:request_prompt_tokens", "Prompt tokens per request.",
                                     lengths).labels(*model)
        self._generation_len = histogram("cyserve:request_generation_tokens",
                                         "Generated tokens per request.", lengths).labels(*model)
        if engine is not None:
            self.registry.register(EngineStatsCollector(engine, model_name))
        ProcessCollector(registry=self.registry)  # process_* : CPU seconds, RSS, open files
        GCCollector(registry=self.registry)

    # ---- recorded by the service ----

    def rpc_finished(self, method: str, code_name: str) -> None:
        self._rpcs.labels(self.model_name, method, code_name).inc()

    def prompt_accepted(self, num_prompt_tokens: int) -> None:
        for c in self._prompt_tokens:
            c.inc(num_prompt_tokens)

    def first_token(self, ttft_s: float, operation: str) -> None:
        self._ttft.observe(ttft_s)
        self._genai_ttft.labels(operation, PROVIDER_NAME, self.model_name).observe(ttft_s)

    def inter_token(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def request_finished(self, summary: RequestSummary) -> None:
        """Once per generation request, however it ended (rejected ones included)."""
        s = summary
        if s.num_completion_tokens:
            for c in self._generation_tokens:
                c.inc(s.num_completion_tokens)
        if s.finish_reason:
            self._finished.labels(self.model_name, s.finish_reason).inc()
            vllm_reason = VLLM_FINISHED_REASON.get(s.finish_reason, s.finish_reason)
            self._success.labels(self.model_name, vllm_reason).inc()
        genai = (s.operation, PROVIDER_NAME, self.model_name)
        self._genai_duration.labels(*genai, s.error_type).observe(s.e2e_s)
        if s.error_type:
            return  # latency and length histograms describe successful responses only
        self._e2e.observe(s.e2e_s)
        self._prompt_len.observe(s.num_prompt_tokens)
        self._generation_len.observe(s.num_completion_tokens)
        if s.tpot_s is not None:
            self._tpot.observe(s.tpot_s)
            self._genai_tpot.labels(*genai).observe(s.tpot_s)
        for histogram, value in ((self._queue, s.queue_s), (self._prefill, s.prefill_s),
                                 (self._decode, s.decode_s), (self._inference, s.inference_s)):
            if value is not None:
                histogram.observe(value)


@dataclass(frozen=True, slots=True)
class RequestSummary:
    """What ServiceMetrics.request_finished records about one finished request."""

    operation: str  # gen_ai.operation.name
    finish_reason: str  # lower-case FinishReason name; "" when the engine never finished it
    error_type: str  # "" on success, else the gRPC status code's name
    num_prompt_tokens: int
    num_completion_tokens: int
    e2e_s: float
    tpot_s: float | None = None  # None: fewer than two tokens
    queue_s: float | None = None  # phases from the engine's timestamps; None where not reached
    prefill_s: float | None = None
    decode_s: float | None = None

    @property
    def inference_s(self) -> float | None:
        if self.prefill_s is None or self.decode_s is None:
            return None
        return self.prefill_s + self.decode_s


class EngineStatsCollector(Collector):
    """Engine gauges and counters, read from `engine.stats()` at scrape time (on the scrape
    thread: stats() only reads a few integers)."""

    def __init__(self, engine: EngineClient, model_name: str) -> None:
        self._engine = engine
        self._model_name = model_name

    def describe(self) -> list[Metric]:
        return []  # names are fixed; no need to call stats() when registering

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._engine.stats()
        except Exception:  # noqa: BLE001  a stopped or failed engine: expose nothing, not a failed scrape
            return
        total, free = stats.num_total_blocks, stats.num_free_blocks
        usage = 1.0 - free / total if total else 0.0
        # The prefix-cache and preemption counters are cumulative in the engine.
        values: list[tuple[type, str, str, str, float]] = [
            (GaugeMetricFamily, "cyserve_requests_running", "cyserve:num_requests_running",
             "Requests in the running batch.", stats.num_running),
            (GaugeMetricFamily, "cyserve_requests_waiting", "cyserve:num_requests_waiting",
             "Requests waiting to be scheduled.", stats.num_waiting),
            (GaugeMetricFamily, "cyserve_requests_parked", "cyserve:num_requests_parked",
             "Requests paused because their callers are not reading their output.", stats.num_parked),
            (GaugeMetricFamily, "cyserve_kv_cache_usage_ratio", "cyserve:kv_cache_usage_perc",
             "Fraction of KV cache blocks in use (0..1).", usage),
            (CounterMetricFamily, "cyserve_prefix_cache_queries", "cyserve:prefix_cache_queries",
             "Prefix cache queries, in prompt tokens looked up.",
             stats.prefix_cache_queries),
            (CounterMetricFamily, "cyserve_prefix_cache_hits", "cyserve:prefix_cache_hits",
             "Prefix cache hits, in prompt tokens found cached.",
             stats.prefix_cache_hits),
            (CounterMetricFamily, "cyserve_preemptions", "cyserve:num_preemptions",
             "Requests preempted (their KV blocks freed, to be recomputed).",
             stats.num_preemptions),
        ]
        for family, ours, vllm_style, doc, value in values:
            for name in (ours, vllm_style):
                metric = family(name, doc, labels=MODEL_LABEL)
                metric.add_metric([self._model_name], value)
                yield metric


class _QuietHandler(WSGIRequestHandler):
    timeout = METRICS_SOCKET_TIMEOUT_S  # a stalled client holds its own thread, never the listener

    def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
        pass


class _MetricsWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    ssl_context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.ssl_context is not None:
            # The handshake runs in the connection's own thread, on its first read and under the
            # handler's timeout: a client that connects and stays silent cannot stall the accept
            # loop (wrapping the listening socket would handshake inside accept()).
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A failed handshake (a plaintext client, no client certificate) or a dropped connection:
        # the client's problem, not a traceback on stderr.
        log.debug("metrics.connection_failed", client=str(client_address[0]))


class MetricsHTTPServer:
    """The `/metrics` HTTP server (HTTPS with `ssl_context`) on its own daemon thread, one thread
    per connection."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """Bind and start serving; port 0 picks a free one. Raises OSError when it cannot bind."""
        addr = host.strip("[]")
        family = socket.getaddrinfo(addr or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        server_class = type("MetricsServer", (_MetricsWSGIServer,), {"address_family": family})
        self._httpd = server_class((addr, port), _QuietHandler)
        self._httpd.ssl_context = ssl_context
        self._httpd.set_app(make_wsgi_app(registry))
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="cyserve-metrics", daemon=True)
        self._thread.start()
        self.port: int = self._httpd.server_port
        self.tls = ssl_context is not None

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
