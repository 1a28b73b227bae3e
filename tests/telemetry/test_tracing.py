"""Spans of a request: a call made under a caller's span yields the gRPC server span (child of the
caller's, across the process boundary) with GenAI attributes, and queue/prefill/decode children
built from the engine's timestamps."""
from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from service.support import wait_until

from cyserve.fastpath.core.request import RequestTimings
from cyserve.service.observability.tracing import (
    configure_tracing,
    exporter_names,
    record_phase_spans,
)
from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

from .support import (
    NUM_CACHED_PROMPT_TOKENS,
    NUM_PREFILL_CHUNKS,
    PREEMPTED_AFTER_S,
    PREFILL_S,
    QUEUE_S,
    Caller,
    TimedFakeEngine,
    telemetry_server,
)

TIMEOUT = 10.0
GENERATE = "cyserve.v1.Generation/Generate"
STREAM = "cyserve.v1.Generation/GenerateStream"
NS = 1e9


def finished_spans(exporter: InMemorySpanExporter, count: int) -> dict[str, ReadableSpan]:
    """The exporter's spans by name, once `count` have ended (the server span ends just after
    the call's status goes out, so a client can see the status a moment before)."""
    wait_until(lambda: len(exporter.get_finished_spans()) >= count, timeout=5)
    spans = exporter.get_finished_spans()
    assert len(spans) == count, [s.name for s in spans]
    return {s.name: s for s in spans}


def test_call_under_a_callers_span_yields_the_span_tree(traced_stub, spans, timed_engine):
    caller = Caller()
    request = pb.GenerateRequest(prompt="hello", request_id="trace-1",
                                 sampling=pb.SamplingParams(temperature=0.5, top_p=0.9, seed=11),
                                 stopping=pb.StoppingCriteria(max_tokens=50))
    reply = traced_stub.Generate(request, timeout=TIMEOUT, metadata=caller.metadata)
    by_name = finished_spans(spans, 4)
    assert set(by_name) == {GENERATE, "queue", "prefill", "decode"}

    server = by_name[GENERATE]
    assert server.kind is SpanKind.SERVER
    assert server.context.trace_id == caller.trace_id
    assert server.parent is not None and server.parent.is_remote
    assert server.parent.span_id == caller.span_id
    for name in ("queue", "prefill", "decode"):
        child = by_name[name]
        assert child.context.trace_id == caller.trace_id
        assert child.parent is not None and child.parent.span_id == server.context.span_id
        assert server.start_time <= child.start_time <= child.end_time <= server.end_time

    attributes = dict(server.attributes)
    assert attributes == attributes | {
        "rpc.system": "grpc", "rpc.service": "cyserve.v1.Generation", "rpc.method": "Generate",
        "rpc.grpc.status_code": 0,
        "gen_ai.operation.name": "text_completion",
        "gen_ai.provider.name": "cyserve",
        "gen_ai.request.model": timed_engine.model_info.name,
        "gen_ai.request.max_tokens": 50,
        "gen_ai.request.temperature": pytest.approx(0.5),
        "gen_ai.request.top_p": pytest.approx(0.9),
        "gen_ai.request.seed": 11,
        "gen_ai.usage.input_tokens": reply.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": reply.usage.completion_tokens,
        "gen_ai.usage.cache_read.input_tokens": NUM_CACHED_PROMPT_TOKENS,
        "gen_ai.response.finish_reasons": ("eos",),
    }
    assert "error.type" not in attributes
    assert server.status.status_code is StatusCode.UNSET
    assert not any(key.startswith(("gen_ai.input", "gen_ai.output")) for key in attributes)


def test_phase_spans_follow_the_engine_timestamps(traced_stub, spans, timed_engine):
    reply = traced_stub.Generate(pb.GenerateRequest(prompt="hello there"), timeout=TIMEOUT)
    by_name = finished_spans(spans, 4)
    queue, prefill, decode = by_name["queue"], by_name["prefill"], by_name["decode"]
    timings = timed_engine.timings[timed_engine.requests[-1].request_id]
    assert queue.end_time - queue.start_time == pytest.approx(QUEUE_S * NS, abs=1000)
    assert prefill.end_time - prefill.start_time == pytest.approx(PREFILL_S * NS, abs=1000)
    assert queue.end_time == prefill.start_time and prefill.end_time == decode.start_time
    assert decode.end_time - decode.start_time == pytest.approx(
        (timings.finished - timings.first_token) * NS, abs=1000)

    assert dict(prefill.attributes) == {
        "gen_ai.usage.input_tokens": reply.usage.prompt_tokens,
        "gen_ai.usage.cache_read.input_tokens": NUM_CACHED_PROMPT_TOKENS,
        "cyserve.prefill.num_chunks": NUM_PREFILL_CHUNKS,
    }
    assert dict(decode.attributes) == {"gen_ai.usage.output_tokens": reply.usage.completion_tokens}
    [preempted] = prefill.events
    assert preempted.name == "preempted"
    assert preempted.timestamp - prefill.start_time == pytest.approx(PREEMPTED_AFTER_S * NS, abs=1000)
    [first_token] = decode.events
    assert (first_token.name, first_token.timestamp) == ("first_token", decode.start_time)
    assert not queue.events


def test_chat_stream_is_a_chat_operation(traced_stub, spans):
    request = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="hi")])
    list(traced_stub.GenerateStream(request, timeout=TIMEOUT))
    server = finished_spans(spans, 4)[STREAM]
    assert server.attributes["gen_ai.operation.name"] == "chat"
    assert server.attributes["rpc.method"] == "GenerateStream"


def test_rejected_request_is_an_error_type_without_phases(traced_stub, spans):
    caller = Caller()
    with pytest.raises(grpc.RpcError) as info:
        traced_stub.Generate(pb.GenerateRequest(prompt=""), timeout=TIMEOUT, metadata=caller.metadata)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    server = finished_spans(spans, 1)[GENERATE]
    assert server.context.trace_id == caller.trace_id
    assert server.attributes["error.type"] == "INVALID_ARGUMENT"
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert server.status.status_code is StatusCode.UNSET  # the caller's fault, not the server's


def test_engine_failure_marks_the_span_failed(traced_stub, spans):
    with pytest.raises(grpc.RpcError) as info:
        traced_stub.Generate(pb.GenerateRequest(prompt="FAIL:error"), timeout=TIMEOUT)
    assert info.value.code() is grpc.StatusCode.INTERNAL
    server = finished_spans(spans, 4)[GENERATE]  # the engine reported its phases
    assert server.attributes["error.type"] == "INTERNAL"
    assert server.attributes["gen_ai.response.finish_reasons"] == ("error",)
    assert server.status.status_code is StatusCode.ERROR


def test_health_checks_are_not_traced(traced_server, spans):
    with grpc.insecure_channel(traced_server.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert spans.get_finished_spans() == ()


def test_prompt_and_output_text_only_when_opted_in():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    engine = TimedFakeEngine(reply="Sure")
    with (telemetry_server(engine, tracer_provider=provider, trace_content=True) as server,
          grpc.insecure_channel(server.address) as channel):
        pb_grpc.GenerationStub(channel).Generate(pb.GenerateRequest(prompt="Secret 42"), timeout=TIMEOUT)
    attributes = finished_spans(exporter, 4)[GENERATE].attributes
    assert "Secret 42" in attributes["gen_ai.input.messages"]
    assert '"content": "Sure"' in attributes["gen_ai.output.messages"]
    assert '"finish_reason": "eos"' in attributes["gen_ai.output.messages"]


def test_phases_the_engine_never_reached_are_left_out(tracer_provider, spans):
    tracer = tracer_provider.get_tracer("test")
    parent = tracer.start_span("parent")
    record_phase_spans(tracer, parent, RequestTimings(arrival=5.0), 3, 0)  # cancelled while queued
    record_phase_spans(tracer, parent, RequestTimings(arrival=5.0, first_scheduled=5.5, finished=6.0), 3, 0)
    parent.end()
    names = sorted(s.name for s in spans.get_finished_spans())
    assert names == ["parent", "prefill", "queue"]  # the second: failed during prefill


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, []),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
])
def test_exporters_come_from_the_standard_variables(environ, expected):
    assert exporter_names(environ) == expected


def test_configure_tracing_builds_a_provider_only_when_asked(monkeypatch):
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)
    assert configure_tracing({}) is None
    provider = configure_tracing({"OTEL_TRACES_EXPORTER": "console"}, version="9.9")
    try:
        assert isinstance(provider, TracerProvider)
        assert provider.resource.attributes["service.name"] == "cyserve"
        assert provider.resource.attributes["service.version"] == "9.9"
    finally:
        provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "llm-sidecar")  # the SDK reads it, and it wins
    provider = configure_tracing({"OTEL_TRACES_EXPORTER": "console"})
    try:
        assert provider.resource.attributes["service.name"] == "llm-sidecar"
    finally:
        provider.shutdown()
    with pytest.raises(ValueError, match="zipkin"):
        configure_tracing({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_completions_of_one_call_add_up_on_its_span(traced_stub, spans):
    """n > 1: one server span, phase spans per completion, usage summed, the prompt counted once."""
    request = pb.GenerateRequest(prompt="hello", sampling=pb.SamplingParams(n=2, seed=3))
    responses = list(traced_stub.GenerateStream(request, timeout=TIMEOUT))
    finals = [r for r in responses if r.finish_reason]
    assert len(finals) == 2
    assert wait_until(lambda: len(spans.get_finished_spans()) == 7)
    server = next(s for s in spans.get_finished_spans() if s.name == STREAM)
    children = [s for s in spans.get_finished_spans() if s.parent and s.parent.span_id == server.context.span_id]
    assert sorted(s.name for s in children) == ["decode", "decode", "prefill", "prefill", "queue", "queue"]
    attributes = server.attributes
    assert attributes["gen_ai.usage.input_tokens"] == finals[0].usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == sum(r.usage.completion_tokens for r in finals)
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == NUM_CACHED_PROMPT_TOKENS
    assert attributes["gen_ai.response.finish_reasons"] == ("eos", "eos")


def test_a_batch_counts_every_prompt(traced_stub, spans):
    batch = pb.GenerateBatchRequest(requests=[pb.GenerateRequest(prompt="hello"),
                                              pb.GenerateRequest(prompt="hi")])
    responses = list(traced_stub.GenerateBatch(batch, timeout=TIMEOUT))
    assert wait_until(lambda: len(spans.get_finished_spans()) == 7)
    server = next(s for s in spans.get_finished_spans() if s.name.endswith("/GenerateBatch"))
    finals = [r for r in responses if r.finish_reason]
    assert server.attributes["gen_ai.usage.input_tokens"] == len("hello") + len("hi")
    assert server.attributes["gen_ai.usage.output_tokens"] == sum(r.usage.completion_tokens for r in finals)
    assert server.attributes["gen_ai.usage.cache_read.input_tokens"] == 2 * NUM_CACHED_PROMPT_TOKENS
