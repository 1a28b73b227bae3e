"""OpenTelemetry tracing: the tracer provider configured by the standard `OTEL_*` variables, and
the per-request child spans (queue, prefill, decode) built after the fact from the timestamps
the engine recorded (cyserve.fastpath.core.request.RequestTimings), so the engine thread never traces.

Tracing is on when an exporter is asked for, and off otherwise (then the service does no span
work at all):

    OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none   off, whatever else is set
    OTEL_TRACES_EXPORTER=otlp (or console, or "otlp,console")   on, with those exporters
    OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set   on, OTLP
    none of these   off

The OTLP exporter then reads its own variables (endpoint, headers, timeout, compression, TLS;
`OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL` picks grpc, the default, or http/protobuf, which needs
the opentelemetry-exporter-otlp-proto-http package); the SDK reads OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER[_ARG] and OTEL_BSP_*; the caller's context is read
with the propagators of OTEL_PROPAGATORS (W3C tracecontext and baggage by default).
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

from cyserve.fastpath.core.request import RequestTimings

TRACER_NAME = "cyserve.service"
DEFAULT_SERVICE_NAME = "cyserve"

# Span names of the phases of one request, children of its gRPC server span.
QUEUE_SPAN = "queue"
PREFILL_SPAN = "prefill"
DECODE_SPAN = "decode"
FIRST_TOKEN_EVENT = "first_token"
PREEMPTED_EVENT = "preempted"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The trace exporters the environment asks for; [] = tracing off (see the module docstring)."""
    if _truthy(environ.get("OTEL_SDK_DISABLED")):
        return []
    named = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if named:
        return [] if "none" in named else named
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return ["otlp"] if any(environ.get(v, "").strip() for v in endpoints) else []


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter,
        )
        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as Http,
            )
        except ImportError:
            raise ValueError("OTLP over http/protobuf needs `pip install "
                             "opentelemetry-exporter-otlp-proto-http`; or use protocol grpc") from None
        return Http()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: cyserve exports grpc or http/protobuf")


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "otlp":
        return _otlp_exporter(environ)
    if name == "console":
        return ConsoleSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: cyserve knows otlp, console and none")


def resource(version: str | None = None) -> Resource:
    """OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME, else service.name "cyserve"."""
    detected = Resource.create({SERVICE_VERSION: version} if version else {})
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        detected = detected.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return detected


def configure_tracing(environ: Mapping[str, str] | None = None,
                      version: str | None = None) -> TracerProvider | None:
    """A tracer provider exporting where `environ` (default os.environ) says, or None when
    tracing is off. Raises ValueError on an exporter or protocol it cannot provide. The caller
    owns the provider: `shutdown()` it on exit to flush the last spans."""
    environ = os.environ if environ is None else environ
    names = exporter_names(environ)
    if not names:
        return None
    exporters = [_exporter(name, environ) for name in names]
    provider = TracerProvider(resource=resource(version), shutdown_on_exit=False)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


# ---- spans from the engine's timestamps ----


class MonotonicClock:
    """Turns time.monotonic() readings into the epoch nanoseconds spans carry. The offset is
    taken once per request, so one request's spans are consistent with each other."""

    __slots__ = ("offset_ns",)

    def __init__(self) -> None:
        self.offset_ns = time.time_ns() - time.monotonic_ns()

    def ns(self, monotonic_s: float) -> int:
        return self.offset_ns + int(monotonic_s * 1e9)


def record_phase_spans(tracer: trace.Tracer, parent: trace.Span, timings: RequestTimings,
                       num_prompt_tokens: int, num_output_tokens: int,
                       clock: MonotonicClock | None = None) -> None:
    """Children of `parent` for the phases `timings` saw: queue (arrival -> first scheduled),
    prefill (-> first token), decode (first token -> finished; an event at the first token).
    Preemptions are events on the phase they interrupted. A phase whose ends the engine did not
    reach (a request cancelled while queued, say) is left out."""
    clock = clock or MonotonicClock()
    context = trace.set_span_in_context(parent)
    t = timings
    preemptions = list(t.preemptions)

    def phase(name: str, start: float, end: float, attributes: dict[str, Any]) -> trace.Span | None:
        if not (start and end and end >= start):
            return None
        span = tracer.start_span(name, context=context, start_time=clock.ns(start), attributes=attributes)
        for when in [p for p in preemptions if start <= p <= end]:
            span.add_event(PREEMPTED_EVENT, timestamp=clock.ns(when))
            preemptions.remove(when)
        return span

    spans = []
    queue = phase(QUEUE_SPAN, t.arrival, t.first_scheduled, {})
    if queue is not None:
        spans.append((queue, t.first_scheduled))
    prefill_end = t.first_token or t.finished
    prefill = phase(PREFILL_SPAN, t.first_scheduled, prefill_end, {
        "gen_ai.usage.input_tokens": num_prompt_tokens,
        "gen_ai.usage.cache_read.input_tokens": t.num_cached_prompt_tokens,
        "cyserve.prefill.num_chunks": t.num_prefill_chunks,
    })
    if prefill is not None:
        spans.append((prefill, prefill_end))
    decode = phase(DECODE_SPAN, t.first_token, t.finished,
                   {"gen_ai.usage.output_tokens": num_output_tokens})
    if decode is not None:
        decode.add_event(FIRST_TOKEN_EVENT, timestamp=clock.ns(t.first_token))
        spans.append((decode, t.finished))
    for span, end in spans:
        span.end(end_time=clock.ns(end))
