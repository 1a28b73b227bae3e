"""The ASGI application of the OpenAI-compatible API (Starlette routing, served by uvicorn on the
gRPC server's event loop): /v1/chat/completions, /v1/completions, /v1/models[/{id}], /health.

A generation call is parsed into GenerateRequests (request_body) and then goes through the gRPC
servicer's own path: its validation and limits, admission, chat template, engine submission and
per-completion telemetry; this module adds what HTTP needs around it: the bearer token, the body
size limit, the model name, the server span (continuing a `traceparent` header), server-sent
events, and a watch on the connection, so that a client that goes away cancels its call, which
aborts its engine requests and frees their KV blocks.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cyserve.service.completion import merged
from cyserve.service.errors import ModelLoadingError, ShuttingDownError
from cyserve.service.http.errors import (
    HttpError,
    MalformedBodyError,
    ModelNotFoundError,
    RequestTooLargeError,
    http_error,
    method_not_allowed,
    not_found,
    unauthorized,
)
from cyserve.service.http.request_body import GenerationCall, chat_call, completion_call
from cyserve.service.http.response_body import Accumulator, StreamChunks, TokenText, sse
from cyserve.service.observability.telemetry import Telemetry
from cyserve.service.readiness import LOADING_RETRY_AFTER_S
from cyserve.service.servicer import GenerationServicer
from cyserve.v1 import generation_pb2 as pb

EXEMPT_PATHS = frozenset({"/health", "/metrics"})  # probes and scrapers send no token, as on --metrics-port
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]  # no proxy buffering of the stream
JSON_HEADERS = [(b"content-type", b"application/json")]
REQUEST_ID_HEADER = "x-request-id"
LABELS = {"chat": "ChatCompletions", "completion": "Completions"}  # the calls counter's method


class _Metadatum(NamedTuple):  # a header as grpc metadata, for the shared telemetry
    key: str
    value: str


class ClientGone(Exception):
    """The client closed the connection before the call was over."""


class HttpCallContext:
    """What the servicer's telemetry and logs read of a call's context (grpc.aio's names)."""

    def __init__(self, scope: Scope) -> None:
        client = scope.get("client")
        self._peer = f"ipv4:{client[0]}:{client[1]}" if client else "unknown"
        self._code: grpc.StatusCode = grpc.StatusCode.OK
        self._details = ""
        self.disconnected = False

    def peer(self) -> str:
        return self._peer

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def time_remaining(self) -> float | None:
        return None  # HTTP calls carry no deadline

    def cancelled(self) -> bool:
        return self.disconnected

    def failed(self, error: HttpError) -> None:
        self._code, self._details = error.grpc_code, error.message


class OpenAIApi:
    """The endpoints, around the gRPC server's servicer and telemetry."""

    def __init__(self, servicer: GenerationServicer, telemetry: Telemetry,
                 auth_token: str | None = None, model_name: str | None = None) -> None:
        """`model_name` is the name clients send (None: the model's own)."""
        self._servicer = servicer
        self._model_name = model_name
        self._telemetry = telemetry
        self._interceptor = telemetry.interceptor()
        self._auth_token = auth_token
        self._token_text: TokenText | None = None
        self.created = int(time.time())

    def app(self) -> ASGIApp:
        routes = [
            Route("/v1/chat/completions", _Endpoint(self, "chat"), methods=["POST"]),
            Route("/v1/completions", _Endpoint(self, "completion"), methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", self.model, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]
        app = Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})
        return _BearerToken(app, self._auth_token) if self._auth_token else app

    def served_name(self, info: pb.ModelInfo) -> str:
        """The model name clients send and /v1/models lists."""
        return self._model_name or info.name or "default"

    def _check_model(self, name: str, info: pb.ModelInfo) -> None:
        if name != self.served_name(info):
            raise ModelNotFoundError(name, self.served_name(info))

    # ---- plain endpoints ----

    def _ready(self) -> GenerationServicer:
        servicer = self._servicer
        if not servicer.ready:
            raise ModelLoadingError(LOADING_RETRY_AFTER_S)
        if servicer.draining:
            raise ShuttingDownError(servicer.limits.retry_after_s)
        return servicer

    def _model_card(self) -> dict[str, Any]:
        info = self._servicer.model_info
        return {"id": self.served_name(info), "object": "model", "created": self.created,
                "owned_by": "cyserve", "max_model_len": info.max_model_len}

    async def models(self, request: Request) -> Response:
        try:
            self._ready()
        except Exception as exc:
            return error_response(http_error(exc))
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        try:
            servicer = self._ready()
            self._check_model(request.path_params["model_id"], servicer.model_info)
        except Exception as exc:
            return error_response(http_error(exc))
        return JSONResponse(self._model_card())

    async def health(self, request: Request) -> Response:
        """200 while serving; 503 while the model loads or the server drains (as gRPC health)."""
        try:
            self._ready()
        except Exception as exc:
            return error_response(http_error(exc))
        return JSONResponse({"status": "ok"})

    async def metrics(self, request: Request) -> Response:
        """The Prometheus exposition of --metrics-port, here too: an inference gateway's endpoint
        picker scrapes the port it routes to (404 while metrics are off)."""
        metrics = self._telemetry.metrics
        if metrics is None:
            return error_response(not_found(request.url.path))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ---- generation ----

    async def generate(self, kind: str, scope: Scope, receive: Receive, send: Send) -> None:
        label = LABELS[kind]
        method = f"/openai.v1/{label}"
        metadata = [_Metadatum(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        state = self._interceptor.begin_call(
            method, metadata, span_name=f"POST {scope['path']}",
            attributes={"http.request.method": "POST", "url.path": scope["path"],
                        "url.scheme": scope.get("scheme", "http")})
        context = HttpCallContext(scope)
        call: GenerationCall | None = None
        response = _Responder(send)
        failure: BaseException | None = None
        try:
            servicer = self._ready()
            body = await _read_body(receive, servicer.limits.max_message_bytes)
            call = self._parse(kind, body, servicer)
            self._check(call, servicer)  # after `call` is known: errors name the caller's parameters
            request_id = next((m.value for m in metadata if m.key == REQUEST_ID_HEADER), None)
            for request in call.requests:
                request.request_id = request.request_id or request_id or uuid.uuid4().hex
            with servicer.admit(call.num_completions), _cancelled_on_disconnect(receive, context, response):
                await self._answer(servicer, call, context, response, label)
        except (ClientGone, asyncio.CancelledError) as exc:
            if not context.disconnected and not isinstance(exc, ClientGone):
                raise  # the server is cancelling us, not the client
            context.disconnected = True
            failure = asyncio.CancelledError("the client went away")
        except Exception as exc:
            error = http_error(exc, call, scope["path"])
            context.failed(error)
            await response.error(error)
        finally:
            stand_in = call.requests[0] if call is not None and call.requests else _stand_in(kind)
            self._interceptor.end_call(method, stand_in, context, state, failure,
                                       attributes={"http.response.status_code": response.status})

    def _parse(self, kind: str, body: bytes, servicer: GenerationServicer) -> GenerationCall:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedBodyError(str(exc)) from None
        call = (chat_call(payload) if kind == "chat"
                else completion_call(payload, servicer.limits.max_batch_size))
        return call

    def _check(self, call: GenerationCall, servicer: GenerationServicer) -> None:
        self._check_model(call.model, servicer.model_info)
        for request in call.requests:
            servicer.check_request(request)
        servicer.check_num_completions(call.num_completions, "n")

    def _text_of(self, servicer: GenerationServicer) -> TokenText:
        if self._token_text is None:
            self._token_text = TokenText(servicer.tokenizer.decode)
        return self._token_text

    async def _answer(self, servicer: GenerationServicer, call: GenerationCall,
                      context: HttpCallContext, response: _Responder, label: str) -> None:
        streams = [servicer.completions(r, context, label, prompt_index=i) for i, r in enumerate(call.requests)]
        outputs = streams[0] if len(streams) == 1 else merged(streams)
        model = self.served_name(servicer.model_info)
        async with contextlib.aclosing(outputs):
            if not call.stream:
                whole = Accumulator(call, model, self._text_of(servicer))
                async for message in outputs:
                    whole.add(message)
                await response.json(whole.body())
                return
            chunks = StreamChunks(call, model, self._text_of(servicer))
            first = await anext(outputs, None)  # a failure before any output is an HTTP status
            await response.start_stream()
            events = chunks.opening() + (chunks.events(first) if first is not None else [])
            try:
                await response.body(b"".join(events))
                async for message in outputs:
                    await response.body(b"".join(chunks.events(message)))
            except Exception as exc:  # headers are sent: the error goes in the stream
                error = http_error(exc, call)
                context.failed(error)
                await response.body(sse({"error": error.payload()}) + b"data: [DONE]\n\n", last=True)
                return
            await response.body(b"".join(chunks.closing()), last=True)


class _Endpoint:
    """An ASGI endpoint of one generation kind (Starlette routes to it as an ASGI app)."""

    def __init__(self, api: OpenAIApi, kind: str) -> None:
        self._api = api
        self._kind = kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._api.generate(self._kind, scope, receive, send)


class _Responder:
    """Sends one response: a whole JSON body, an error, or a stream of events."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0  # 0: nothing sent yet
        self.finished = False  # the last body part is on its way: a disconnect now is no cancel

    async def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def json(self, payload: dict[str, Any], status: int = 200,
                   headers: dict[str, str] | None = None) -> None:
        extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        await self._start(status, JSON_HEADERS + extra)
        await self.body(json.dumps(payload, ensure_ascii=False).encode(), last=True)

    async def error(self, error: HttpError) -> None:
        if self.status:  # a stream had begun: end it with the error
            if not self.finished:
                await self.body(sse({"error": error.payload()}) + b"data: [DONE]\n\n", last=True)
            return
        await self.json({"error": error.payload()}, error.status, error.headers)

    async def start_stream(self) -> None:
        await self._start(200, SSE_HEADERS)

    async def body(self, data: bytes, last: bool = False) -> None:
        if last:
            self.finished = True
        await self._send({"type": "http.response.body", "body": data, "more_body": not last})


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The request body; RequestTooLargeError past `limit` bytes, ClientGone on a disconnect."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise RequestTooLargeError(limit)
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts)


@contextlib.contextmanager
def _cancelled_on_disconnect(receive: Receive, context: HttpCallContext,
                             response: _Responder) -> Iterator[None]:
    """While the body runs, a disconnect of the client cancels this task (which closes the
    engine's iterators, aborting the requests) and is raised here as ClientGone."""
    task = asyncio.current_task()
    assert task is not None

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not response.finished:
                    context.disconnected = True
                    task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        yield
    except asyncio.CancelledError:
        if context.disconnected and task.uncancel() == 0:
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()


class _BearerToken:
    """Refuses requests without `Authorization: Bearer <token>` (the gRPC port's token) with
    401; /health is exempt. The token is compared in constant time and never logged."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("the auth token must not be empty")
        self._app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS or self._authorized(scope):
            await self._app(scope, receive, send)
            return
        await error_response(unauthorized())(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for key, value in scope["headers"]:
            if key == b"authorization":
                return hmac.compare_digest(value, self._expected)
        return False


def error_response(error: HttpError) -> Response:
    return Response(error.body(), error.status, headers=error.headers, media_type="application/json")


async def _http_exception(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    if status == 405:
        return error_response(method_not_allowed(request.method, request.url.path))
    return error_response(not_found(request.url.path))


class _StandIn(NamedTuple):  # what telemetry reads of a request that never parsed
    messages: tuple
    request_id: str = ""


def _stand_in(kind: str) -> _StandIn:
    return _StandIn(messages=("?",) if kind == "chat" else ())
