"""A client that stops reading a stream and then cancels it: the server's logs never carry the
request's content, and the call is a cancel in logs, metrics and the trace, not an error."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from service.support import FakeEngine, wait_until

from cyserve.fastpath.core.request import EngineRequest, RequestOutput
from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

from .support import scrape, telemetry_server, value
from .test_logging import logged  # noqa: F401  (the fixture)

SECRET_PROMPT = "PROMPT-7f3a the account number is 1234"
SECRET_OUTPUT = "OUTPUT-9c1e"
CHUNK = SECRET_OUTPUT * 1500  # ~16 KB of text per message: the flow-control window fills fast


class BulkyEngine(FakeEngine):
    """Generates a large message per step, without end, until its iterator is closed."""

    async def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        self.live.add(request.request_id)
        try:
            while True:
                await asyncio.sleep(0)
                yield self._output(request, [42], CHUNK)
        finally:
            self.live.discard(request.request_id)


def test_cancelling_a_stalled_stream_logs_no_content_and_counts_a_cancel(logged):  # noqa: F811
    engine = BulkyEngine()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with telemetry_server(engine, tracer_provider=provider, metrics_port=0) as server:
        # No BDP probing: the client's window stays small, so the server's writes stall.
        options = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 1 << 20)]
        with grpc.insecure_channel(server.address, options=options) as channel:
            call = pb_grpc.GenerationStub(channel).GenerateStream(
                pb.GenerateRequest(prompt=SECRET_PROMPT, request_id="stalled"), timeout=30)
            next(call)
            time.sleep(1.5)  # not reading: the server's buffered output piles up, then stalls
            call.cancel()
            assert wait_until(lambda: not engine.live)
            assert wait_until(lambda: value(scrape(server.metrics_port), "cyserve_requests_total",
                                            model_name="fake", method="GenerateStream", code="CANCELLED") == 1)
        samples = scrape(server.metrics_port)
    provider.shutdown()
    assert value(samples, "cyserve_requests_total", model_name="fake", method="GenerateStream", code="UNKNOWN") == 0
    text = logged.stream.getvalue()
    assert SECRET_PROMPT not in text and SECRET_OUTPUT not in text
    assert '"level": "error"' not in text
    finished = logged.events("stalled")["request.finished"]
    assert finished["outcome"] == "cancelled"
    (span,) = [s for s in exporter.get_finished_spans() if s.name.endswith("/GenerateStream")]
    assert span.attributes["error.type"] == "CANCELLED"
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]


def test_an_expired_deadline_is_deadline_exceeded_in_logs_and_metrics(logged):  # noqa: F811
    engine = FakeEngine()
    with telemetry_server(engine, metrics_port=0) as server, \
            grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GenerationStub(channel).Generate(pb.GenerateRequest(
                prompt="SLOW", request_id="late", stopping=pb.StoppingCriteria(max_tokens=10**4)),
                timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_until(lambda: "request.finished" in logged.events("late"))
        assert wait_until(lambda: value(scrape(server.metrics_port), "cyserve_requests_total",
                                        model_name="fake", method="Generate",
                                        code="DEADLINE_EXCEEDED") == 1)
        assert value(scrape(server.metrics_port), "cyserve_requests_total", model_name="fake",
                     method="Generate", code="CANCELLED") == 0
    assert logged.events("late")["request.finished"]["status"] == "DEADLINE_EXCEEDED"
