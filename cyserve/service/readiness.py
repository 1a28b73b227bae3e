"""The gate in front of the Generation service while the model loads.

The server binds its port before the model is loaded, so that health checks get a definite
NOT_SERVING and callers a retryable UNAVAILABLE instead of "connection refused". Until the engine
is attached every Generation call fails with ModelLoadingError (UNAVAILABLE + google.rpc.RetryInfo,
mapped by ErrorMappingInterceptor, which must sit outside this interceptor).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from cyserve.service.errors import WRAPPED_SERVICE_PREFIX, ModelLoadingError

LOADING_RETRY_AFTER_S = 1.0  # suggested in RetryInfo: GGUF loads are quick, tokenizers less so


class ReadinessInterceptor(grpc.aio.ServerInterceptor):
    """Refuses Generation calls while `ready()` is false; health and reflection always pass."""

    def __init__(self, ready: Callable[[], bool], retry_after_s: float = LOADING_RETRY_AFTER_S) -> None:
        self._ready = ready
        self._retry_after_s = retry_after_s

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or self._ready() or not handler_call_details.method.startswith(WRAPPED_SERVICE_PREFIX):
            return handler

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            raise ModelLoadingError(self._retry_after_s)

        codec = {"request_deserializer": handler.request_deserializer,
                 "response_serializer": handler.response_serializer}
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(refuse, **codec)
        return grpc.unary_unary_rpc_method_handler(refuse, **codec)
