"""The Generation service: validates a request, renders chat messages, tokenizes, submits to the
engine and turns its outputs into responses. Errors are raised as exceptions and mapped to
statuses by cyserve.service.errors.ErrorMappingInterceptor.

CPU work that grows with the input (chat rendering, tokenizing) runs on a small thread pool, not on
the event loop; generation itself runs on the engine's own thread.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc
import structlog

from cyserve.fastpath.request import EngineRequest, FinishReason, RequestOutput
from cyserve.service.chat_template import ChatTemplate, ChatTemplateError
from cyserve.service.errors import GenerationFailedError
from cyserve.service.validation import (
    MAX_REQUEST_ID_CHARS,
    FieldViolation,
    RequestValidationError,
    check_generate_request,
    sampling_params,
    stopping_params,
)
from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

log = structlog.get_logger("cyserve.service")
T = TypeVar("T")


class GenerationServicer(pb_grpc.GenerationServicer):
    """Serves one started engine (see docs/interfaces.md, "engine")."""

    def __init__(self, engine: Any, executor: Executor) -> None:
        self._engine = engine
        self._executor = executor
        self._model_info = model_info_message(engine.model_info)
        self._chat_template: ChatTemplate | None = None
        self._chat_template_problem = "the model has no chat template; send a prompt instead"
        source = engine.model_info.chat_template
        if source:
            try:
                self._chat_template = ChatTemplate(
                    source,
                    bos_token=_piece(engine.tokenizer, engine.model_info.bos_token_id),
                    eos_token=_piece(engine.tokenizer, engine.model_info.eos_token_id),
                )
            except ChatTemplateError as exc:
                self._chat_template_problem = f"{exc}; send a prompt instead"
                log.warning("chat_template.unusable", error=str(exc))

    # ---- RPCs ----

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        texts: list[str] = []
        token_ids: list[int] = []
        last = pb.GenerateResponse()
        async with contextlib.aclosing(self._generate(request, context, "Generate")) as responses:
            async for last in responses:
                texts.append(last.text)
                token_ids.extend(last.token_ids)
        last.text = "".join(texts)
        del last.token_ids[:]
        last.token_ids.extend(token_ids)
        return last

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> None:
        # context.write (not `yield`) so that a cancel while sending lands here, in our frame, and
        # aclosing() closes the engine's iterator at once.
        async with contextlib.aclosing(
            self._generate(request, context, "GenerateStream")
        ) as responses:
            async for response in responses:
                await context.write(response)

    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        token_ids = await self._run_cpu(self._engine.tokenizer.encode, request.text, parse_special=True)
        return pb.TokenizeResponse(token_ids=token_ids)

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        return self._model_info

    # ---- generation ----

    async def _generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext, rpc: str
    ) -> AsyncIterator[pb.GenerateResponse]:
        """Responses for one request, logged as received and finished (never with prompt text)."""
        request_id = request.request_id or uuid.uuid4().hex
        engine_request_id = uuid.uuid4().hex  # unique even when callers reuse request_id
        rlog = log.bind(  # an over-long request_id is rejected below; never log it whole
            rpc=rpc, request_id=request_id[:MAX_REQUEST_ID_CHARS], engine_request_id=engine_request_id
        )
        rlog.info(
            "request.received",
            peer=context.peer(),
            input="messages" if request.messages else "prompt",
            num_messages=len(request.messages),
            prompt_chars=len(request.prompt),
            max_tokens=request.stopping.max_tokens if request.stopping.HasField("max_tokens") else None,
            temperature=(
                round(request.sampling.temperature, 4)
                if request.sampling.HasField("temperature") else None
            ),
        )
        progress = _Progress(started=time.monotonic())
        try:
            check_generate_request(request)
            prompt_token_ids = await self._run_cpu(self._encode_prompt, request)
            progress.num_prompt_tokens = len(prompt_token_ids)
            engine_request = EngineRequest(
                request_id=engine_request_id,
                prompt_token_ids=prompt_token_ids,
                sampling=sampling_params(request.sampling),
                stopping=stopping_params(request.stopping),
            )
            async with contextlib.aclosing(_engine_outputs(self._engine, engine_request)) as outputs:
                async for output in outputs:
                    response = progress.response(output, request_id)
                    if response is not None:
                        yield response
                    if output.finished:
                        break
            if progress.finish_reason is None:
                raise RuntimeError("the engine ended the request without a finish reason")
            progress.outcome = "ok"
        except (GeneratorExit, asyncio.CancelledError):
            progress.outcome = "cancelled"
            raise
        except Exception as exc:
            progress.outcome = type(exc).__name__
            raise
        finally:
            rlog.info("request.finished", **progress.summary())

    def _encode_prompt(self, request: pb.GenerateRequest) -> list[int]:
        """Prompt token ids (runs in a worker thread)."""
        text = self._render_chat(request) if request.messages else request.prompt
        return list(self._engine.tokenizer.encode(text, parse_special=True))

    def _render_chat(self, request: pb.GenerateRequest) -> str:
        if self._chat_template is None:
            raise RequestValidationError([FieldViolation("messages", self._chat_template_problem)])
        add_generation_prompt = (
            request.add_generation_prompt if request.HasField("add_generation_prompt") else True
        )
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            return self._chat_template.render(messages, add_generation_prompt)
        except ChatTemplateError as exc:
            raise RequestValidationError([FieldViolation("messages", str(exc))]) from exc

    async def _run_cpu(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))


async def _engine_outputs(engine: Any, request: EngineRequest) -> AsyncIterator[RequestOutput]:
    """The engine's outputs for `request`; however this ends, the engine's iterator is closed,
    which aborts the request there and frees its KV blocks."""
    outputs = engine.generate(request)
    if inspect.isawaitable(outputs):  # tolerate `async def generate` returning an iterator
        outputs = await outputs
    try:
        async for output in outputs:
            yield output
    finally:
        aclose = getattr(outputs, "aclose", None)
        if aclose is not None:
            await aclose()


class _Progress:
    """What one request has produced so far; builds its responses and its log summary."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_token_at: float | None = None
        self.num_prompt_tokens = 0
        self.num_completion_tokens = 0
        self.finish_reason: FinishReason | None = None
        self.outcome = "error"

    def response(self, output: RequestOutput, request_id: str) -> pb.GenerateResponse | None:
        """The message for one engine output; None when it carries nothing."""
        if output.new_token_ids and self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.num_completion_tokens += len(output.new_token_ids)
        if output.finished and output.finish_reason == FinishReason.ERROR:
            raise GenerationFailedError(output.error or "the engine gave no reason")
        if not output.finished:
            if not output.text and not output.new_token_ids:
                return None
            return pb.GenerateResponse(
                text=output.text, token_ids=output.new_token_ids, request_id=request_id
            )
        self.finish_reason = FinishReason(output.finish_reason)
        if output.num_prompt_tokens:
            self.num_prompt_tokens = output.num_prompt_tokens
        if output.num_completion_tokens:
            self.num_completion_tokens = output.num_completion_tokens
        return pb.GenerateResponse(
            text=output.text,
            token_ids=output.new_token_ids,
            finish_reason=int(self.finish_reason),
            usage=pb.Usage(
                prompt_tokens=self.num_prompt_tokens, completion_tokens=self.num_completion_tokens
            ),
            request_id=request_id,
            stop_sequence=output.stop_sequence,
        )

    def summary(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "outcome": self.outcome,
            "finish_reason": self.finish_reason.name if self.finish_reason is not None else None,
            "prompt_tokens": self.num_prompt_tokens,
            "completion_tokens": self.num_completion_tokens,
            "duration_s": round(now - self.started, 4),
            "ttft_s": (
                round(self.first_token_at - self.started, 4) if self.first_token_at else None
            ),
        }


def _piece(tokenizer: Any, token_id: int | None) -> str:
    if token_id is None or token_id < 0:
        return ""
    return tokenizer.id_to_piece(token_id)


def model_info_message(info: Any) -> pb.ModelInfo:
    """The ModelInfo message for the engine's model_info (its `path` is not exposed)."""
    quantization = getattr(info, "quantization", "")
    message = pb.ModelInfo(
        name=info.name or "",
        architecture=info.architecture or "",
        vocab_size=info.vocab_size,
        context_length=info.context_length,
        max_model_len=getattr(info, "max_model_len", 0) or info.context_length,
        quantization=str(getattr(quantization, "name", quantization) or ""),
        num_layers=info.num_layers,
        hidden_size=info.hidden_size,
        num_heads=info.num_heads,
        num_kv_heads=info.num_kv_heads,
        chat_template=info.chat_template or "",
    )
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(info, name, None)
        if value is not None and value >= 0:
            setattr(message, name, value)
    return message
