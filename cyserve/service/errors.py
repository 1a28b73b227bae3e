"""Maps exceptions to gRPC statuses, in one place: an interceptor around the Generation handlers.

Handlers raise domain exceptions; the interceptor turns them into statuses with google.rpc details
(grpcio-status), so no handler builds a status by hand and nothing unexpected leaks as anything but
a logged INTERNAL.

    RequestValidationError, InvalidRequestError  -> INVALID_ARGUMENT + google.rpc.BadRequest
    EngineStoppedError, ServiceUnavailableError  -> UNAVAILABLE
    GenerationFailedError                        -> INTERNAL with the engine's message
    any other Exception                          -> INTERNAL "internal error" (logged with traceback)
"""
from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from cyserve.fastpath.errors import EngineStoppedError, InvalidRequestError
from cyserve.service.validation import FieldViolation, RequestValidationError

log = structlog.get_logger("cyserve.service")

# Only the methods of this service are wrapped; health and reflection keep their own behaviour.
WRAPPED_SERVICE_PREFIX = "/cyserve.v1.Generation/"


class ServiceUnavailableError(Exception):
    """The server cannot take the call now (starting up or shutting down)."""


class GenerationFailedError(Exception):
    """The engine finished a request with FinishReason.ERROR; the message is the engine's."""


def bad_request_status(violations: list[FieldViolation]) -> grpc.Status:
    """INVALID_ARGUMENT whose message lists the violations and whose details hold a BadRequest."""
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in violations
        ]
    )
    packed = any_pb2.Any()
    packed.Pack(detail)
    message = "invalid request: " + "; ".join(f"{v.field}: {v.description}" for v in violations)
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[packed])
    )


def _plain_status(code: grpc.StatusCode, message: str) -> grpc.Status:
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message))


def status_for(exc: Exception) -> grpc.Status:
    """The status a handler's exception becomes."""
    if isinstance(exc, RequestValidationError):
        return bad_request_status(exc.violations)
    if isinstance(exc, InvalidRequestError):
        return bad_request_status([FieldViolation(exc.field, exc.message)])
    if isinstance(exc, (EngineStoppedError, ServiceUnavailableError)):
        reason = str(exc) or "the engine is not running"
        return _plain_status(grpc.StatusCode.UNAVAILABLE, f"server unavailable: {reason}")
    if isinstance(exc, GenerationFailedError):
        return _plain_status(grpc.StatusCode.INTERNAL, f"generation failed: {exc}")
    return _plain_status(grpc.StatusCode.INTERNAL, "internal error (logged by the server)")


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    status = status_for(exc)
    if status.code is grpc.StatusCode.INTERNAL and not isinstance(exc, GenerationFailedError):
        log.error("rpc.internal_error", method=method, exc_info=exc)
    await context.abort_with_status(status)


def _wrap_unary(method: str, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behaviour(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return unary


def _wrap_stream(method: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):

        async def stream_gen(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for response in behaviour(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
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
            "request_deserializer": handler.request_deserializer,
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
