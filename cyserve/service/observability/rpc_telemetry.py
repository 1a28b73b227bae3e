"""Telemetry of each call of the Generation service, as a server interceptor: the gRPC server span
(continuing the caller's W3C trace context), the calls-by-status-code counter, and a
`request.rejected` line (plus its gen_ai duration) for generation calls refused before any
completion started (invalid, or the server full or draining).

The call's state (CallTelemetry) reaches the completions of the call (cyserve.service.observability.telemetry's
RequestTelemetry: one per completion, several for n > 1 or a batch) through a context variable,
so that they add up their usage on the one server span.
"""
from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from cyserve.service.errors import WRAPPED_SERVICE_PREFIX
from cyserve.service.observability.metrics import RequestSummary, ServiceMetrics
from cyserve.service.validation import MAX_REQUEST_ID_CHARS

log = structlog.get_logger("cyserve.service")

# (the OpenAI-compatible HTTP endpoints count theirs under ChatCompletions and Completions)
GENERATION_METHODS = frozenset({"Generate", "GenerateStream", "GenerateBatch", "ChatCompletions",
                                "Completions"})
# Codes that are the server's fault: they mark a server span as failed (OpenTelemetry's gRPC
# conventions); the others are the caller's business and only set error.type.
SERVER_ERROR_CODES = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})
# The client's deadline passes before the server's (which counts from when the call arrived):
# a call cancelled this close to the server's deadline is the client's deadline expiring.
DEADLINE_SLACK_S = 0.25
# Codes with which a request is "rejected" (logged as request.rejected, not request.finished).
REJECTED_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.NOT_FOUND,  # HTTP: an unknown model name
})


class CallTelemetry:
    """One call: its server span (None with tracing off) and what its completions used."""

    __slots__ = ("cached_tokens", "finish_reasons", "num_completions", "output_messages",
                 "output_tokens", "prompt_tokens", "span", "started")

    def __init__(self, span: trace.Span | None, started: float) -> None:
        self.span = span
        self.started = started  # time.monotonic()
        self.num_completions = 0  # completions that started (RequestTelemetry objects)
        self.prompt_tokens: dict[int, int] = {}  # by prompt index: n > 1 shares one prompt
        self.cached_tokens: dict[int, int] = {}
        self.output_tokens = 0
        self.finish_reasons: list[str] = []
        self.output_messages: list[dict[str, Any]] = []  # only with content capture on

    def usage_attributes(self) -> dict[str, Any]:
        """gen_ai.usage.* and finish reasons over the completions that ended so far."""
        attributes: dict[str, Any] = {
            "gen_ai.usage.input_tokens": sum(self.prompt_tokens.values()),
            "gen_ai.usage.output_tokens": self.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": sum(self.cached_tokens.values()),
        }
        if self.finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = list(self.finish_reasons)
        return attributes


CURRENT_CALL: contextvars.ContextVar[CallTelemetry | None] = contextvars.ContextVar(
    "cyserve_call_telemetry", default=None)


def caller_context(metadata: Sequence[Any] | None) -> otel_context.Context | None:
    """The trace context the caller sent (W3C `traceparent`, via OTEL_PROPAGATORS), or None."""
    if not metadata or not any(m.key == "traceparent" for m in metadata):
        return None
    return propagate.extract({m.key: m.value for m in metadata})


def status_of(exc: BaseException | None, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status a call ends with, from what its handler raised (None = returned)."""
    if exc is None or isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            return code
        return grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= DEADLINE_SLACK_S
        return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN  # what grpc makes of an exception nobody mapped


def operation_of(request: Any) -> str:
    """gen_ai.operation.name of a GenerateRequest (a batch: of its first item)."""
    items = getattr(request, "requests", None)
    if items:
        request = items[0]
    return "chat" if getattr(request, "messages", None) else "text_completion"


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Around each Generation call: a SERVER span parented on the caller's context (made current,
    so the handler's spans and log lines join it), and the calls-by-status-code counter. Put it
    before ErrorMappingInterceptor so that it sees the status the error mapping chose."""

    def __init__(self, owner: Any) -> None:
        """`owner` is the server's Telemetry, read at each call: its metrics and model name are
        only set once the model has loaded, after the server already listens."""
        self._owner = owner

    @property
    def _tracer(self) -> trace.Tracer | None:
        return self._owner.tracer

    @property
    def _metrics(self) -> ServiceMetrics | None:
        return self._owner.metrics

    @property
    def _model_name(self) -> str:
        return self._owner.model_name

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or not method.startswith(WRAPPED_SERVICE_PREFIX):
            return handler
        codec = {"request_deserializer": handler.request_deserializer,
                 "response_serializer": handler.response_serializer}
        metadata = details.invocation_metadata
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_call(method, metadata, handler.unary_unary), **codec)
        if handler.unary_stream is not None:
            behaviour = handler.unary_stream
            wrapped = (self._wrap_stream(method, metadata, behaviour)
                       if inspect.isasyncgenfunction(behaviour)
                       else self._wrap_call(method, metadata, behaviour))
            return grpc.unary_stream_rpc_method_handler(wrapped, **codec)
        return handler

    def begin_call(self, method: str, metadata: Any, *, span_name: str | None = None,
                   attributes: dict[str, Any] | None = None) -> tuple[CallTelemetry, Any, object | None]:
        """Start a call's telemetry: its server span (named `span_name`, default the gRPC method,
        with `attributes`, default the rpc.* ones) and its CallTelemetry as the current one.
        `metadata` holds (key, value) items with `.key` and `.value`, as grpc's do. Pass what
        this returns to `end_call`."""
        started = time.monotonic()
        parent = caller_context(metadata)
        span = None
        if self._tracer is not None:
            service, _, name = method[1:].rpartition("/")
            if attributes is None:
                attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
            span = self._tracer.start_span(
                span_name or method[1:], context=parent, kind=SpanKind.SERVER, attributes=attributes)
            parent = trace.set_span_in_context(span, parent)
        call = CallTelemetry(span, started)
        token = otel_context.attach(parent) if parent is not None else None
        return call, CURRENT_CALL.set(call), token

    def end_call(self, method: str, request: Any, context: Any,
                 state: tuple[CallTelemetry, Any, object | None], failure: BaseException | None,
                 *, attributes: dict[str, Any] | None = None) -> None:
        """End what `begin_call` started: the status from `failure` and `context` (a grpc.aio
        context, or one with its code(), details() and time_remaining()), the calls counter
        under the method's last path segment, `attributes` added to the span."""
        call, call_token, otel_token = state
        code = status_of(failure, context)
        name = method.rpartition("/")[2]
        if name in GENERATION_METHODS and call.num_completions == 0 and code is not grpc.StatusCode.OK:
            self._unstarted(name, request, context, call, code)  # while the span is current
        CURRENT_CALL.reset(call_token)
        if otel_token is not None:
            otel_context.detach(otel_token)
        if self._metrics is not None:
            self._metrics.rpc_finished(name, code.name)
        span = call.span
        if span is not None:
            span.set_attributes(attributes if attributes is not None
                                else {"rpc.grpc.status_code": code.value[0]})
            if code is not grpc.StatusCode.OK:
                span.set_attribute("error.type", code.name)
            if code in SERVER_ERROR_CODES:
                span.set_status(Status(StatusCode.ERROR, code.name))
            span.end()

    def _unstarted(self, name: str, request: Any, context: grpc.aio.ServicerContext,
                   call: CallTelemetry, code: grpc.StatusCode) -> None:
        """A generation call that ended before any completion started: log and count it."""
        duration = time.monotonic() - call.started
        request_id = str(getattr(request, "request_id", "") or "")[:MAX_REQUEST_ID_CHARS]
        event = "request.rejected" if code in REJECTED_CODES else "request.finished"
        log.info(event, rpc=name, request_id=request_id or None, status=code.name,
                 message=context.details() or "", duration_s=round(duration, 4))
        operation = operation_of(request)
        if call.span is not None:
            call.span.set_attributes({"gen_ai.operation.name": operation,
                                      "gen_ai.provider.name": "cyserve",
                                      "gen_ai.request.model": self._model_name})
        if self._metrics is not None:
            self._metrics.request_finished(RequestSummary(
                operation=operation, finish_reason="", error_type=code.name,
                num_prompt_tokens=0, num_completion_tokens=0, e2e_s=duration))

    def _wrap_call(self, method: str, metadata: Any, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            state = self.begin_call(method, metadata)
            failure: BaseException | None = None
            try:
                return await behaviour(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                self.end_call(method, request, context, state, failure)

        return call

    def _wrap_stream(self, method: str, metadata: Any, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            state = self.begin_call(method, metadata)
            failure: BaseException | None = None
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as exc:
                failure = exc
                raise
            finally:
                self.end_call(method, request, context, state, failure)

        return stream
