"""Bearer-token authentication: an interceptor that admits a call only with the metadata
`authorization: Bearer <token>`, and the loading of that token from a file or the environment.

The token is a secret: it is compared in constant time and never logged (log lines say only that a
call was refused). The health service is exempt, so probes need no secret.
"""
from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable

import grpc
import structlog

log = structlog.get_logger("cyserve.service")

TOKEN_ENV_VAR = "CYSERVE_AUTH_TOKEN"
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def load_token(path: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The token from `path` (first line, stripped) if given, else from $CYSERVE_AUTH_TOKEN;
    None when neither is set. Raises ValueError for an unreadable or empty file."""
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                token = fh.readline().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the auth token file {path!r}: {exc.strerror}") from None
        if not token:
            raise ValueError(f"the auth token file {path!r} is empty")
        return token
    token = (os.environ if environ is None else environ).get(TOKEN_ENV_VAR, "").strip()
    return token or None


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the right bearer token with UNAUTHENTICATED (health exempt)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the auth token must not be empty")
        self._expected = f"Bearer {token}".encode()

    def _authorized(self, metadata: tuple | None) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(EXEMPT_PREFIXES) or self._authorized(details.invocation_metadata):
            return await continuation(details)
        log.info("rpc.unauthenticated", method=details.method)  # never the token itself
        handler = await continuation(details)
        if handler is not None and handler.unary_unary is None:
            # Answer in the method's own shape, so streaming clients see the status, not a hang.
            async def abort_stream(request: object, context: grpc.aio.ServicerContext):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
                yield  # pragma: no cover - makes this an async generator

            return grpc.unary_stream_rpc_method_handler(
                abort_stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(
            _refuse_call, request_deserializer=getattr(handler, "request_deserializer", None),
            response_serializer=getattr(handler, "response_serializer", None))


async def _refuse_call(request: object, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
