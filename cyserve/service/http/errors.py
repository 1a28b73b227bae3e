"""Exceptions as HTTP answers, in one place: the status, OpenAI's error JSON
(`{"error": {"message", "type", "param", "code"}}`) and headers, plus the gRPC status code the
same failure has over gRPC (what metrics, logs and spans record, so both protocols count alike).

    RequestValidationError, InvalidRequestError   400 invalid_request_error, param = the field
    PromptTooLongError                            400, code context_length_exceeded
    ModelNotFoundError                            404, code model_not_found, param model
    MalformedBodyError                            400 (not JSON)
    RequestTooLargeError                          413, code request_too_large
    ResourceExhaustedError                        429 + Retry-After
    ModelLoadingError, ShuttingDownError          503 + Retry-After
    EngineStoppedError, ServiceUnavailableError   503
    GenerationFailedError                         500 with the engine's message
    anything else                                 500 "internal error" (logged with traceback)
Unauthenticated calls get 401 from the app itself (`unauthorized`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog

from cyserve.fastpath.errors import EngineStoppedError, InvalidRequestError
from cyserve.fastpath.structured.grammars import StructuredOutputUnavailableError
from cyserve.service.errors import (
    GenerationFailedError,
    ModelLoadingError,
    PromptTooLongError,
    ResourceExhaustedError,
    ServiceUnavailableError,
    ShuttingDownError,
)
from cyserve.service.http.request_body import GenerationCall, openai_param
from cyserve.service.validation import RequestValidationError

log = structlog.get_logger("cyserve.service")

MAX_LISTED_PROBLEMS = 16


class ModelNotFoundError(Exception):
    """The request names a model this server does not serve."""

    def __init__(self, name: str, served: str) -> None:
        super().__init__(f"the model {name!r} does not exist here; this server serves {served!r} "
                         "(GET /v1/models)")


class RequestTooLargeError(Exception):
    """The request body is larger than the server takes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes, this server's limit "
                         "(max_message_bytes); send a shorter prompt")


class MalformedBodyError(Exception):
    """The request body is not JSON."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"the request body is not valid JSON ({problem}); send a JSON object")


@dataclass(frozen=True)
class HttpError:
    status: int
    message: str
    type: str
    grpc_code: grpc.StatusCode
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return json.dumps({"error": self.payload()}, ensure_ascii=False).encode()

    def payload(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(math.ceil(seconds), 1))}


def http_error(exc: BaseException, call: GenerationCall | None = None, path: str = "") -> HttpError:
    """The HTTP answer to `exc`, raised while serving `call` (None: before it was parsed)."""
    if isinstance(exc, PromptTooLongError):
        return HttpError(400, f"the prompt {exc.violations[0].description}", "invalid_request_error",
                         grpc.StatusCode.INVALID_ARGUMENT,
                         param=openai_param(exc.violations[0].field, call) if call else None,
                         code="context_length_exceeded")
    if isinstance(exc, RequestValidationError):
        problems = [(openai_param(v.field, call), v.description) for v in exc.violations]
        message = "; ".join(f"{p}: {d}" for p, d in problems[:MAX_LISTED_PROBLEMS])
        if len(problems) > MAX_LISTED_PROBLEMS:
            message += f"; and {len(problems) - MAX_LISTED_PROBLEMS} more problems"
        return HttpError(400, message, "invalid_request_error", grpc.StatusCode.INVALID_ARGUMENT,
                         param=problems[0][0] if problems else None)
    if isinstance(exc, InvalidRequestError):
        param = openai_param(exc.field, call)
        return HttpError(400, f"{param}: {exc.message}", "invalid_request_error",
                         grpc.StatusCode.INVALID_ARGUMENT, param=param)
    if isinstance(exc, StructuredOutputUnavailableError):
        return HttpError(400, str(exc), "invalid_request_error", grpc.StatusCode.FAILED_PRECONDITION,
                         code="structured_output_unavailable")
    if isinstance(exc, ModelNotFoundError):
        return HttpError(404, str(exc), "invalid_request_error", grpc.StatusCode.NOT_FOUND,
                         param="model", code="model_not_found")
    if isinstance(exc, MalformedBodyError):
        return HttpError(400, str(exc), "invalid_request_error", grpc.StatusCode.INVALID_ARGUMENT)
    if isinstance(exc, RequestTooLargeError):
        return HttpError(413, str(exc), "invalid_request_error", grpc.StatusCode.RESOURCE_EXHAUSTED,
                         code="request_too_large")
    if isinstance(exc, ResourceExhaustedError):
        return HttpError(429, f"server busy: {exc}", "rate_limit_error",
                         grpc.StatusCode.RESOURCE_EXHAUSTED, code=exc.reason.lower(),
                         headers=_retry_after(exc.retry_after_s))
    if isinstance(exc, (ModelLoadingError, ShuttingDownError)):
        code = "model_loading" if isinstance(exc, ModelLoadingError) else "shutting_down"
        return HttpError(503, f"server unavailable: {exc}", "service_unavailable",
                         grpc.StatusCode.UNAVAILABLE, code=code, headers=_retry_after(exc.retry_after_s))
    if isinstance(exc, (EngineStoppedError, ServiceUnavailableError)):
        return HttpError(503, f"server unavailable: {exc or 'the engine is not running'}",
                         "service_unavailable", grpc.StatusCode.UNAVAILABLE)
    if isinstance(exc, GenerationFailedError):
        return HttpError(500, f"generation failed: {exc}", "server_error", grpc.StatusCode.INTERNAL)
    # The traceback's frames, never their locals (requests, prompts): see observability.log.
    log.error("http.internal_error", path=path, error_type=type(exc).__name__, exc_info=exc)
    return HttpError(500, "internal error (logged by the server)", "server_error", grpc.StatusCode.INTERNAL)


def unauthorized() -> HttpError:
    return HttpError(401, "missing or wrong bearer token: send the header Authorization: Bearer <token>",
                     "invalid_request_error", grpc.StatusCode.UNAUTHENTICATED, code="invalid_api_key",
                     headers={"WWW-Authenticate": "Bearer"})


def not_found(path: str) -> HttpError:
    return HttpError(404, f"no such endpoint: {path}; this server serves /v1/chat/completions, "
                          "/v1/completions, /v1/models and /health", "invalid_request_error",
                     grpc.StatusCode.UNIMPLEMENTED, code="unknown_url")


def method_not_allowed(method: str, path: str) -> HttpError:
    return HttpError(405, f"{method} is not allowed on {path}", "invalid_request_error",
                     grpc.StatusCode.UNIMPLEMENTED, code="method_not_allowed")


