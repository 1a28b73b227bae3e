"""Maps exceptions to gRPC statuses, in one place: an interceptor around the Generation handlers.

Handlers raise domain exceptions; the interceptor turns them into statuses with google.rpc details
(grpcio-status), so no handler builds a status by hand and nothing unexpected leaks as anything but
a logged INTERNAL.

    RequestValidationError, InvalidRequestError  -> INVALID_ARGUMENT + google.rpc.BadRequest
    PromptTooLongError                           -> INVALID_ARGUMENT + BadRequest + ErrorInfo (limits)
    ResourceExhaustedError                       -> RESOURCE_EXHAUSTED + RetryInfo + ErrorInfo
    StructuredOutputUnavailableError             -> FAILED_PRECONDITION naming the extra to install
    EngineStoppedError, ServiceUnavailableError  -> UNAVAILABLE
    ModelLoadingError                            -> UNAVAILABLE + RetryInfo + ErrorInfo (MODEL_LOADING)
    ShuttingDownError                            -> UNAVAILABLE + RetryInfo + ErrorInfo (SHUTTING_DOWN)
    GenerationFailedError                        -> INTERNAL with the engine's message
    any other Exception                          -> INTERNAL "internal error" (logged with traceback)
"""
from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from cyserve.fastpath.errors import EngineStoppedError, InvalidRequestError
from cyserve.fastpath.structured.grammars import StructuredOutputUnavailableError
from cyserve.service.validation import FieldViolation, RequestValidationError

log = structlog.get_logger("cyserve.service")

try:  # what grpc.aio raises from context.write() once the call is gone
    from grpc._cython.cygrpc import ExecuteBatchError as _ExecuteBatchError
    _CALL_GONE_ERRORS: tuple[type[BaseException], ...] = (_ExecuteBatchError,)
except ImportError:  # another grpc build: rely on context.cancelled()
    _CALL_GONE_ERRORS = ()

# Only the methods of this service are wrapped; health and reflection keep their own behaviour.
WRAPPED_SERVICE_PREFIX = "/cyserve.v1.Generation/"
ERROR_DOMAIN = "cyserve.v1"  # google.rpc.ErrorInfo.domain of our errors
# The violation's field when the request bytes do not parse: the request as a whole.
MALFORMED_FIELD = "request"
MAX_FIELD_VIOLATIONS = 16  # per status; a repeated field reports at most 8 of its own


class ServiceUnavailableError(Exception):
    """The server cannot take the call now (starting up or shutting down)."""


class ModelLoadingError(ServiceUnavailableError):
    """The server listens but its model is still loading; retry after `retry_after_s`."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("the model is still loading; retry shortly (health reports SERVING once "
                         "it is ready)")
        self.retry_after_s = retry_after_s


class ShuttingDownError(ServiceUnavailableError):
    """The server is draining before it stops; retry on another replica after `retry_after_s`."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("the server is shutting down; retry on another replica (health reports "
                         "NOT_SERVING)")
        self.retry_after_s = retry_after_s


class GenerationFailedError(Exception):
    """The engine finished a request with FinishReason.ERROR; the message is the engine's."""


class ResourceExhaustedError(Exception):
    """The server is full (queue or streams); the caller should retry after `retry_after_s`."""

    def __init__(self, reason: str, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.reason = reason  # ErrorInfo.reason: "QUEUE_FULL" or "TOO_MANY_STREAMS"
        self.retry_after_s = retry_after_s


class PromptTooLongError(RequestValidationError):
    """The prompt has more tokens than the server allows; `limits` go to ErrorInfo.metadata."""

    def __init__(self, field: str, limits: dict[str, int]) -> None:
        description = (f"is {limits['prompt_tokens']} tokens; this server allows at most "
                       f"{limits['max_prompt_tokens']} (max_model_len {limits['max_model_len']})")
        super().__init__([FieldViolation(field, description)])
        self.limits = dict(limits)


def _pack(*details: Any) -> list[any_pb2.Any]:
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    return packed


def prompt_too_long_status(exc: PromptTooLongError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(
        reason="PROMPT_TOO_LONG", domain=ERROR_DOMAIN,
        metadata={k: str(v) for k, v in exc.limits.items()},
    )
    return _bad_request_with(exc, _pack(info))


def resource_exhausted_status(exc: ResourceExhaustedError) -> grpc.Status:
    seconds = max(exc.retry_after_s, 0.0)
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromNanoseconds(int(seconds * 1e9))
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN)
    return rpc_status.to_status(status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED, message=f"server busy: {exc}", details=_pack(retry, info)
    ))


def _bad_request(violations: list[FieldViolation]) -> tuple[str, error_details_pb2.BadRequest]:
    """The status message and BadRequest of `violations`, at most MAX_FIELD_VIOLATIONS of them
    (the rest are counted in the message), so that the details stay far below gRPC's 8 KiB
    default metadata limit however broken the request."""
    shown = violations[:MAX_FIELD_VIOLATIONS]
    detail = error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
        for v in shown
    ])
    message = "invalid request: " + "; ".join(f"{v.field}: {v.description}" for v in shown)
    if len(violations) > len(shown):
        message += f"; and {len(violations) - len(shown)} more problems"
    return message, detail


def bad_request_status(violations: list[FieldViolation]) -> grpc.Status:
    """INVALID_ARGUMENT whose message lists the violations and whose details hold a BadRequest."""
    message, detail = _bad_request(violations)
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=_pack(detail))
    )


def _bad_request_with(exc: RequestValidationError, extra: list[any_pb2.Any]) -> grpc.Status:
    """INVALID_ARGUMENT with the BadRequest of `exc` followed by `extra` details."""
    message, detail = _bad_request(exc.violations)
    return rpc_status.to_status(status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=message, details=_pack(detail) + extra
    ))


def unavailable_status(exc: ModelLoadingError | ShuttingDownError) -> grpc.Status:
    """UNAVAILABLE with RetryInfo and ErrorInfo (MODEL_LOADING or SHUTTING_DOWN)."""
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromNanoseconds(int(max(exc.retry_after_s, 0.0) * 1e9))
    reason = "MODEL_LOADING" if isinstance(exc, ModelLoadingError) else "SHUTTING_DOWN"
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)
    return rpc_status.to_status(status_pb2.Status(
        code=code_pb2.UNAVAILABLE, message=f"server unavailable: {exc}", details=_pack(retry, info)
    ))


def _plain_status(code: grpc.StatusCode, message: str) -> grpc.Status:
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message))


def status_for(exc: Exception) -> grpc.Status:
    """The status a handler's exception becomes."""
    if isinstance(exc, PromptTooLongError):
        return prompt_too_long_status(exc)
    if isinstance(exc, RequestValidationError):
        return bad_request_status(exc.violations)
    if isinstance(exc, ResourceExhaustedError):
        return resource_exhausted_status(exc)
    if isinstance(exc, InvalidRequestError):
        return bad_request_status([FieldViolation(exc.field, exc.message)])
    if isinstance(exc, StructuredOutputUnavailableError):
        return _plain_status(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, (ModelLoadingError, ShuttingDownError)):
        return unavailable_status(exc)
    if isinstance(exc, (EngineStoppedError, ServiceUnavailableError)):
        reason = str(exc) or "the engine is not running"
        return _plain_status(grpc.StatusCode.UNAVAILABLE, f"server unavailable: {reason}")
    if isinstance(exc, GenerationFailedError):
        return _plain_status(grpc.StatusCode.INTERNAL, f"generation failed: {exc}")
    return _plain_status(grpc.StatusCode.INTERNAL, "internal error (logged by the server)")


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    status = status_for(exc)
    if status.code is grpc.StatusCode.INTERNAL and not isinstance(exc, GenerationFailedError):
        # The traceback's frames, never their local variables (requests, prompts, outputs): see
        # cyserve.service.observability.log.
        log.error("rpc.internal_error", method=method, error_type=type(exc).__name__, exc_info=exc)
    await context.abort_with_status(status)


class _Malformed:
    """Stands in for a request whose bytes did not parse, so the handler answers INVALID_ARGUMENT
    (grpc-python would answer UNKNOWN and log a traceback)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    message_class = getattr(deserializer, "__self__", None)  # FromString is a classmethod
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    name = descriptor.full_name if descriptor is not None else "message"

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError and friends: the bytes are not this message
            return _Malformed(f"the bytes are not a valid {name} ({exc}); serialize the "
                              "request with this service's protos")

    return deserialize


def _check_parsed(request: Any) -> None:
    if isinstance(request, _Malformed):
        raise RequestValidationError([FieldViolation(MALFORMED_FIELD, request.problem)])


def _cancelled_by_the_client(context: grpc.aio.ServicerContext, exc: Exception) -> bool:
    """The call is over from the client's side (cancelled, disconnected, deadline passed): what
    failed in the handler then is a consequence, not an error. A write pending when the client
    cancels fails with grpc's ExecuteBatchError before the context reports the cancel."""
    if isinstance(exc, _CALL_GONE_ERRORS):
        return True
    try:
        return bool(context.cancelled())
    except Exception:  # a context without the API: assume the call is live
        return False


def _wrap_unary(method: str, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            _check_parsed(request)
            return await behaviour(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            if _cancelled_by_the_client(context, exc):
                raise asyncio.CancelledError(f"{method}: the client cancelled the call") from None
            await _abort(context, exc, method)

    return unary


def _wrap_stream(method: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):

        async def stream_gen(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                _check_parsed(request)
                async for response in behaviour(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                if _cancelled_by_the_client(context, exc):
                    raise asyncio.CancelledError(f"{method}: the client cancelled the call") from None
                await _abort(context, exc, method)

        return stream_gen
    return _wrap_unary(method, behaviour)  # a coroutine that writes with context.write()


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns exceptions raised by Generation handlers into statuses (see the module docstring)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(WRAPPED_SERVICE_PREFIX):
            return handler
        codec = {
            "request_deserializer": _lenient(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary), **codec
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream), **codec
            )
        return handler
