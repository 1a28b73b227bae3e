"""Structured logs: one JSON line per lifecycle event of a request, each carrying the request id
and the trace and span ids of the call's server span (or the caller's, with tracing off)."""
from __future__ import annotations

import io
import json
from collections.abc import Iterator

import grpc
import pytest
import structlog
from service.support import wait_until

from cyserve.service.observability.log import add_trace_context, configure_logging, processors
from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

from .support import Caller, TimedFakeEngine, telemetry_server

TIMEOUT = 10.0
GENERATE = "cyserve.v1.Generation/Generate"


class Lines:
    """What the service logged, one parsed JSON object per line."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def records(self, request_id: str) -> list[dict]:
        parsed = [json.loads(line) for line in self.stream.getvalue().splitlines() if line]
        return [r for r in parsed if r.get("request_id") == request_id]

    def events(self, request_id: str) -> dict[str, dict]:
        return {r["event"]: r for r in self.records(request_id)}


@pytest.fixture()
def logged() -> Iterator[Lines]:
    """structlog configured with the server's JSON chain into a buffer (uncached, so the
    service's module-level loggers pick it up), restored afterwards."""
    saved = structlog.get_config()
    lines = Lines()
    structlog.configure(processors=processors(console=False),
                        logger_factory=structlog.PrintLoggerFactory(file=lines.stream),
                        wrapper_class=structlog.make_filtering_bound_logger(0),
                        cache_logger_on_first_use=False)
    yield lines
    structlog.configure(**saved)


def test_each_lifecycle_line_carries_its_span(logged, traced_stub, spans):
    caller = Caller()
    reply = traced_stub.Generate(pb.GenerateRequest(prompt="hello", request_id="log-1"),
                                 timeout=TIMEOUT, metadata=caller.metadata)
    assert wait_until(lambda: "request.finished" in logged.events("log-1"))
    assert wait_until(lambda: any(s.name == GENERATE for s in spans.get_finished_spans()))
    server_span = next(s for s in spans.get_finished_spans() if s.name == GENERATE)
    events = logged.events("log-1")
    assert {"request.received", "request.scheduled", "request.first_token", "request.finished"} <= set(events)
    for record in events.values():
        assert record["trace_id"] == f"{caller.trace_id:032x}"
        assert record["span_id"] == f"{server_span.context.span_id:016x}"
        assert record["level"] == "info" and record["timestamp"]
    finished = events["request.finished"]
    assert (finished["finish_reason"], finished["status"]) == ("EOS", "OK")
    assert (finished["prompt_tokens"], finished["completion_tokens"]) == (
        reply.usage.prompt_tokens, reply.usage.completion_tokens)
    assert finished["queue_s"] == pytest.approx(0.004) and finished["prefill_s"] == pytest.approx(0.006)
    assert finished["cached_prompt_tokens"] == 3 and finished["preemptions"] == 1
    assert 0 < events["request.first_token"]["ttft_s"] <= finished["duration_s"]
    assert events["request.scheduled"]["queue_s"] == pytest.approx(0.004)
    assert "hello" not in json.dumps(list(events.values()))  # no prompt text in logs


def test_rejected_request_logs_its_status(logged, traced_stub):
    with pytest.raises(grpc.RpcError):
        traced_stub.Generate(pb.GenerateRequest(prompt="", request_id="log-2"), timeout=TIMEOUT)
    assert wait_until(lambda: "request.rejected" in logged.events("log-2"))
    events = logged.events("log-2")
    rejected = events["request.rejected"]
    assert rejected["status"] == "INVALID_ARGUMENT"
    assert "prompt" in rejected["message"]
    assert "request.finished" not in events
    assert len(rejected["trace_id"]) == 32 and len(rejected["span_id"]) == 16


def test_with_tracing_off_lines_carry_the_callers_trace(logged):
    caller = Caller()
    with telemetry_server(TimedFakeEngine()) as server:
        with grpc.insecure_channel(server.address) as channel:
            pb_grpc.GenerationStub(channel).Generate(
                pb.GenerateRequest(prompt="hi", request_id="log-3"), timeout=TIMEOUT,
                metadata=caller.metadata)
        assert wait_until(lambda: "request.finished" in logged.events("log-3"))
    for record in logged.records("log-3"):
        assert record["trace_id"] == f"{caller.trace_id:032x}"
        assert record["span_id"] == f"{caller.span_id:016x}"


def test_without_any_trace_there_are_no_ids(logged):
    with telemetry_server(TimedFakeEngine()) as server:
        with grpc.insecure_channel(server.address) as channel:
            pb_grpc.GenerationStub(channel).Generate(
                pb.GenerateRequest(prompt="hi", request_id="log-4"), timeout=TIMEOUT)
        assert wait_until(lambda: "request.finished" in logged.events("log-4"))
    assert all("trace_id" not in r for r in logged.records("log-4"))


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "renderer"), [
    (FakeTerminal(), structlog.dev.ConsoleRenderer),
    (io.StringIO(), structlog.processors.JSONRenderer),
])
def test_console_output_on_a_terminal_json_otherwise(stream, renderer):
    saved = structlog.get_config()
    try:
        configure_logging(stream=stream)
        chain = structlog.get_config()["processors"]
        assert isinstance(chain[-1], renderer)
        assert add_trace_context in chain
    finally:
        structlog.configure(**saved)


def test_console_rendering_is_readable():
    *chain, render = processors(console=True)
    event: dict = {"event": "request.finished", "request_id": "r-1"}
    for processor in chain:
        event = processor(None, "info", event)
    text = render(None, "info", event)
    assert "request.finished" in text and "request_id" in text and "r-1" in text
    assert not text.lstrip().startswith("{")


@pytest.mark.parametrize("console", [False, True])
def test_tracebacks_never_carry_frame_locals(console):
    stream = io.StringIO()
    configure_logging(stream=stream, console=console)
    try:
        def fail(prompt: str) -> None:
            raise RuntimeError("failed")

        try:
            fail("-".join(("SECRET", "PROMPT", "41")))  # not in the source the traceback shows
        except RuntimeError as exc:
            structlog.get_logger("cyserve.service").error("rpc.internal_error", exc_info=exc)
    finally:
        structlog.reset_defaults()
    text = stream.getvalue()
    assert "rpc.internal_error" in text and "fail" in text  # the frames are there
    assert "SECRET-PROMPT-41" not in text
