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
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc
import structlog

from cyserve.fastpath.contract import EngineClient, ModelInfo, TokenizerClient
from cyserve.fastpath.core.request import EngineRequest, FinishReason, GeneratedTokens, RequestOutput
from cyserve.fastpath.structured import MAX_CONSTRAINT_BYTES
from cyserve.fastpath.structured.grammars import supported_kinds
from cyserve.service.chat_template import (
    ChatTemplate,
    ChatTemplateError,
    RenderedChat,
    prompt_pieces,
    special_token_pattern,
)
from cyserve.service.completion import (
    CompletionProgress,
    Interrupt,
    merged,
    resolved_params,
    until_deadline,
)
from cyserve.service import tool_calls
from cyserve.service.constraints import constraint_of
from cyserve.service.errors import PromptTooLongError, ShuttingDownError
from cyserve.service.limits import Admission, ServiceLimits
from cyserve.service.observability.telemetry import Telemetry
from cyserve.service.validation import (
    MAX_REQUEST_ID_CHARS,
    FieldViolation,
    RequestValidationError,
    check_generate_request,
    generate_request_violations,
    sampling_params,
    stopping_params,
)
from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

log = structlog.get_logger("cyserve.service")
T = TypeVar("T")


class GenerationServicer(pb_grpc.GenerationServicer):
    """Serves one started engine (see docs/interfaces.md, "engine"). Created without one while the
    model loads (ReadinessInterceptor keeps calls away until `attach`)."""

    def __init__(self, engine: EngineClient | None, executor: Executor, telemetry: Telemetry | None = None,
                 limits: ServiceLimits | None = None, *, tls: bool = False,
                 auth_required: bool = False) -> None:
        self._executor = executor
        self._configured_limits = limits or ServiceLimits()
        self._limits = self._configured_limits  # with the model's bounds once attached
        self._features = {"tls": tls, "auth_required": auth_required}
        self.draining = False  # set by Server.stop: new generation calls get UNAVAILABLE
        self._shutdown = asyncio.Event()  # set by finish_all(): every completion ends now
        self._telemetry = telemetry or Telemetry(
            model_name=(engine.model_info.name or "") if engine is not None else "")
        self._engine: EngineClient | None = None
        if engine is not None:
            self.attach(engine)

    @property
    def ready(self) -> bool:
        return self._engine is not None

    @property
    def num_active(self) -> int:
        """Generation calls in progress."""
        return self._admission.num_active if self.ready else 0

    def finish_all(self) -> None:
        """End every completion now with a last message, FINISH_REASON_CANCELLED and an `error`
        saying the server is shutting down (Server.stop, once the grace period is over)."""
        self._shutdown.set()

    def attach(self, engine: EngineClient) -> None:
        """Serve `engine` (started) from now on."""
        self._model_info = model_info_message(engine.model_info)
        self._limits = self._configured_limits.for_model(self._model_info.max_model_len)
        self._admission = Admission(self._limits, engine)
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
        self._special_tokens = special_token_pattern(_special_token_texts(engine.tokenizer))
        self._tool_format = tool_calls.tool_call_format(source or "")
        self._tool_formats = tool_calls.formats_for(source or "")
        self._engine = engine  # last: `ready` means every field above is set

    # ---- RPCs ----

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        check_generate_request(request, self._limits, self._engine.model_info.vocab_size)
        if request.sampling.HasField("n") and request.sampling.n > 1:
            raise RequestValidationError([FieldViolation(
                "sampling.n", "Generate returns one completion; use GenerateStream or GenerateBatch for n > 1")])
        texts: list[str] = []
        whole = pb.GenerateResponse()
        last = pb.GenerateResponse()
        with self._admit(1):
            async with contextlib.aclosing(self._completions(request, context, "Generate")) as responses:
                async for last in responses:
                    texts.append(last.text)
                    whole.token_ids.extend(last.token_ids)
                    whole.logprobs.extend(last.logprobs)
                    whole.prompt_logprobs.extend(last.prompt_logprobs)
                    if last.HasField("params"):
                        whole.params.CopyFrom(last.params)
        last.text = "".join(texts)
        for name in ("token_ids", "logprobs", "prompt_logprobs"):
            del getattr(last, name)[:]
            getattr(last, name).extend(getattr(whole, name))
        if whole.HasField("params"):
            last.params.CopyFrom(whole.params)
        return last

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> None:
        # context.write (not `yield`) so that a cancel while sending lands here, in our frame, and
        # aclosing() closes the engine's iterator at once.
        # Validated before admission, so an invalid request is INVALID_ARGUMENT even when busy.
        check_generate_request(request, self._limits, self._engine.model_info.vocab_size)
        n = request.sampling.n if request.sampling.HasField("n") else 1
        self._check_num_completions(n, "sampling.n")
        with self._admit(n):
            async with contextlib.aclosing(
                self._completions(request, context, "GenerateStream")
            ) as responses:
                async for response in responses:
                    await context.write(response)

    async def GenerateBatch(
        self, request: pb.GenerateBatchRequest, context: grpc.aio.ServicerContext
    ) -> None:
        self._check_batch(request)
        num = sum(max(r.sampling.n, 1) if r.sampling.HasField("n") else 1 for r in request.requests)
        self._check_num_completions(num, "requests")
        with self._admit(num):
            streams = [_errors_as_items(self._completions(item, context, "GenerateBatch", i), item, i)
                       for i, item in enumerate(request.requests)]
            async with contextlib.aclosing(merged(streams)) as responses:
                async for response in responses:
                    await context.write(response)

    async def Detokenize(
        self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetokenizeResponse:
        vocab = self._engine.model_info.vocab_size
        bad = [FieldViolation(f"token_ids[{i}]", f"token id {t} is outside the vocabulary 0..{vocab - 1}")
               for i, t in enumerate(request.token_ids) if t >= vocab]
        if bad:
            raise RequestValidationError(bad[:8])
        text = await self._run_cpu(self._engine.tokenizer.decode, list(request.token_ids),
                                   skip_special=request.skip_special_tokens)
        return pb.DetokenizeResponse(text=text)

    async def RenderChat(
        self, request: pb.RenderChatRequest, context: grpc.aio.ServicerContext
    ) -> pb.RenderChatResponse:
        as_generate = pb.GenerateRequest(messages=request.messages)
        if request.HasField("add_generation_prompt"):
            as_generate.add_generation_prompt = request.add_generation_prompt
        check_generate_request(as_generate)
        prompt, token_ids = await self._run_cpu(self._encode_chat, as_generate)
        return pb.RenderChatResponse(prompt=prompt, token_ids=token_ids)

    async def GetCapabilities(
        self, request: pb.GetCapabilitiesRequest, context: grpc.aio.ServicerContext
    ) -> pb.Capabilities:
        lim, max_len = self._limits, self._model_info.max_model_len
        return pb.Capabilities(
            max_model_len=max_len, max_prompt_tokens=lim.max_prompt_tokens,
            max_tokens=lim.max_tokens, max_n=lim.max_n,
            max_stop_sequences=lim.max_stop_sequences, max_stop_sequence_chars=lim.max_stop_sequence_chars,
            max_stop_token_ids=lim.max_stop_token_ids, max_logit_bias=lim.max_logit_bias,
            max_logprobs=lim.max_logprobs, max_batch_size=lim.max_batch_size,
            max_message_bytes=lim.max_message_bytes, max_concurrent_streams=lim.max_concurrent_streams,
            max_queued_requests=lim.max_queued_requests, chat=self._chat_template is not None,
            prompt_logprobs=True, constraint_kinds=list(supported_kinds()),
            tool_call_formats=self._tool_formats if self._chat_template is not None else [],
            max_constraint_bytes=MAX_CONSTRAINT_BYTES, max_tools=tool_calls.MAX_TOOLS, **self._features,
        )

    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        token_ids = await self._run_cpu(self._engine.tokenizer.encode, request.text, parse_special=True)
        return pb.TokenizeResponse(token_ids=token_ids)

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        return self._model_info

    # ---- for other front ends on the same engine (cyserve.service.http) ----
    # They build a GenerateRequest from their own wire format, so that validation, chat templates,
    # admission, telemetry and the engine plumbing stay the ones gRPC calls go through. Their
    # `context` needs what telemetry and logs read of a grpc.aio context: peer(), code(),
    # details(), time_remaining().

    @property
    def limits(self) -> ServiceLimits:
        """The limits in force (the model's bounds applied once attached)."""
        return self._limits

    @property
    def model_info(self) -> pb.ModelInfo:
        return self._model_info

    @property
    def tokenizer(self) -> TokenizerClient:
        return self._engine.tokenizer

    def check_request(self, request: pb.GenerateRequest) -> None:
        """Raise RequestValidationError when `request` breaks the API's rules or the limits."""
        check_generate_request(request, self._limits, self._engine.model_info.vocab_size)

    def check_num_completions(self, num: int, field: str) -> None:
        self._check_num_completions(num, field)

    def admit(self, num_requests: int) -> contextlib.AbstractContextManager[None]:
        """Hold a stream slot for a call that will submit `num_requests` engine requests; raises
        ShuttingDownError or ResourceExhaustedError when the server cannot take it now."""
        return self._admit(num_requests)

    def completions(self, request: pb.GenerateRequest, context: Any, rpc: str,
                    prompt_index: int = 0) -> AsyncIterator[pb.GenerateResponse]:
        """The responses of every completion of a checked `request` (see `_completions`)."""
        return self._completions(request, context, rpc, prompt_index)

    # ---- generation ----

    def _admit(self, num_requests: int) -> contextlib.AbstractContextManager[None]:
        if self.draining:
            raise ShuttingDownError(self._limits.retry_after_s)
        return self._admission.admit(num_requests)

    def _check_num_completions(self, num: int, field: str) -> None:
        """A call that asks for more completions than the queue holds could never be admitted:
        INVALID_ARGUMENT naming the limit, not a RESOURCE_EXHAUSTED the caller would retry."""
        limit = self._limits.max_queued_requests
        if num > limit:
            raise RequestValidationError([FieldViolation(field, (
                f"asks for {num} completions at once (sum of sampling.n over the prompts); this "
                f"server queues at most {limit} (Capabilities.max_queued_requests): split the call"))])

    def _check_batch(self, request: pb.GenerateBatchRequest) -> None:
        limit = self._limits.max_batch_size
        if not request.requests or len(request.requests) > limit:
            raise RequestValidationError([FieldViolation(
                "requests", f"must hold 1 to {limit} requests, got {len(request.requests)}")])
        vocab = self._engine.model_info.vocab_size
        violations = [FieldViolation(f"requests[{i}].{v.field}", v.description)
                      for i, item in enumerate(request.requests)
                      for v in generate_request_violations(item, self._limits, vocab)]
        if violations:
            raise RequestValidationError(violations)

    async def _completions(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext, rpc: str,
        prompt_index: int = 0,
    ) -> AsyncIterator[pb.GenerateResponse]:
        """The responses of all n completions of a validated `request`, merged; the prompt is
        encoded once (and its K/V shared through the prefix cache), the seed drawn once (here, not
        in the engine, so the first message can echo it)."""
        n = request.sampling.n if request.sampling.HasField("n") else 1
        prompt_token_ids = await self._run_cpu(self._encode_prompt, request)
        self._check_prompt_length(request, prompt_token_ids)
        seed = request.sampling.seed if request.sampling.HasField("seed") else secrets.randbits(64)
        streams = [self._generate(request, context, rpc, prompt_token_ids, seed, index=i, prompt_index=prompt_index)
                   for i in range(n)]
        responses = streams[0] if n == 1 else merged(streams)
        async with contextlib.aclosing(responses):
            async for response in responses:
                yield response

    def _check_prompt_length(self, request: pb.GenerateRequest, prompt_token_ids: list[int]) -> None:
        max_len = self._model_info.max_model_len
        limit = self._limits.prompt_limit(max_len)
        if len(prompt_token_ids) > limit:
            field = ("messages" if request.messages else
                     "prompt_token_ids" if request.prompt_token_ids else "prompt")
            raise PromptTooLongError(field, {"prompt_tokens": len(prompt_token_ids),
                                             "max_prompt_tokens": limit, "max_model_len": max_len})

    async def _generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext, rpc: str,
        prompt_token_ids: list[int], seed: int, index: int = 0, prompt_index: int = 0,
    ) -> AsyncIterator[pb.GenerateResponse]:
        """Responses for one completion of a validated, encoded request, logged as received and
        finished (never with prompt text)."""
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
        progress = CompletionProgress(time.monotonic(), index, prompt_index, self._engine.tokenizer)
        telemetry = self._telemetry.start_request(
            rlog, context, "chat" if request.messages else "text_completion", progress.started,
            prompt_index,
        )
        failure: BaseException | None = None
        generated = GeneratedTokens()
        try:
            progress.num_prompt_tokens = len(prompt_token_ids)
            engine_request = EngineRequest(
                request_id=engine_request_id,
                prompt_token_ids=prompt_token_ids,
                sampling=sampling_params(request.sampling, request.output, index, seed,
                                         defaults=self._model_info.default_sampling),
                stopping=stopping_params(request.stopping),
                priority=request.priority,
                cache_salt=request.cache_salt or None,
                generated=generated,
                constraint=constraint_of(request.sampling) or tool_calls.tool_constraint(request, self._tool_format),
            )
            parse_calls = bool(request.tools) and tool_calls.mode_of(request) != tool_calls.Mode.MODE_NONE
            texts: list[str] = []
            progress.params = resolved_params(engine_request, request.output)
            deadline = (progress.started + request.stopping.max_time_s
                        if request.stopping.HasField("max_time_s") else None)
            telemetry.submitted(engine_request, functools.partial(_input_messages, request))
            async with contextlib.aclosing(until_deadline(
                _engine_outputs(self._engine, engine_request), deadline, self._shutdown
            )) as outputs:
                async for output in outputs:
                    if output is Interrupt.TIME_LIMIT:  # the engine request is aborted
                        yield progress.time_limit_response(request_id)
                        break
                    if output is Interrupt.SHUTDOWN:
                        yield progress.shutdown_response(request_id)
                        break
                    telemetry.on_output(output)
                    response = progress.response(output, request_id)
                    if parse_calls and response is not None:
                        texts.append(response.text)
                        if output.finished:
                            self._add_tool_calls(request, response, "".join(texts), progress)
                    if response is not None:
                        yield response
                    if output.finished:
                        break
            if progress.finish_reason is None:
                raise RuntimeError("the engine ended the request without a finish reason")
            progress.outcome = "ok"
        except (GeneratorExit, asyncio.CancelledError) as exc:
            progress.outcome = "cancelled"
            failure = exc
            raise
        except Exception as exc:
            progress.outcome = type(exc).__name__
            failure = exc
            raise
        finally:
            # what the engine generated, read or not: a caller that left early still used it
            progress.num_completion_tokens = max(progress.num_completion_tokens, generated.count)
            finish_reason = progress.finish_reason
            telemetry.finished(
                progress.summary(),
                finish_reason.name.lower() if finish_reason is not None else None,
                progress.num_completion_tokens,
                failure,
            )

    def _add_tool_calls(self, request: pb.GenerateRequest, response: pb.GenerateResponse, text: str,
                        progress: CompletionProgress) -> None:
        """The last message of a completion that called functions: its calls, finish reason TOOL_CALLS."""
        if response.finish_reason not in (pb.FINISH_REASON_EOS, pb.FINISH_REASON_STOP_SEQUENCE,
                                          pb.FINISH_REASON_STOP_TOKEN):
            return  # cut short (LENGTH, ...): whatever call it was writing is unfinished
        calls = tool_calls.parse_tool_calls(text, self._tool_format, {t.name for t in request.tools})
        if calls:
            response.tool_calls.extend(calls)
            response.finish_reason = pb.FINISH_REASON_TOOL_CALLS
            progress.finish_reason = FinishReason.TOOL_CALLS

    def _encode_prompt(self, request: pb.GenerateRequest) -> list[int]:
        """Prompt token ids (runs in a worker thread)."""
        if request.prompt_token_ids:
            return list(request.prompt_token_ids)
        if request.messages:
            return self._encode_chat(request)[1]
        # A raw prompt is the caller's own markup: special tokens written in it count as such. The
        # BOS the vocabulary asks for (Gemma's <bos>) goes in front unless the prompt writes it.
        tokenizer = self._engine.tokenizer
        return tokenizer.with_bos(tokenizer.encode(request.prompt, parse_special=True))

    def _encode_chat(self, request: pb.GenerateRequest) -> tuple[str, list[int]]:
        """The rendered prompt and its token ids (runs in a worker thread). Message content is
        plain text: special tokens come only from the template's own text. The BOS the vocabulary
        asks for is added once: not again when the template writes it ({{ bos_token }})."""
        rendered = self._render_chat(request)
        tokenizer = self._engine.tokenizer
        if rendered.parts is None:  # the template transforms content: refuse what could forge
            self._refuse_special_text(request)
            return rendered.text, tokenizer.with_bos(tokenizer.encode(rendered.text, parse_special=True))
        token_ids: list[int] = []
        for text, special in prompt_pieces(rendered.parts, self._special_tokens):
            token_ids.extend(tokenizer.encode(text, parse_special=special))
        return rendered.text, tokenizer.with_bos(token_ids)

    def _refuse_special_text(self, request: pb.GenerateRequest) -> None:
        if self._special_tokens is None:
            return
        bad = [FieldViolation(f"messages[{i}].content", (
                   "holds special-token text, which this model's chat template cannot keep apart "
                   "from its own markup; remove it"))
               for i, m in enumerate(request.messages) if self._special_tokens.search(m.content)]
        if bad:
            raise RequestValidationError(bad)

    def _render_chat(self, request: pb.GenerateRequest) -> RenderedChat:
        if self._chat_template is None:
            raise RequestValidationError([FieldViolation("messages", self._chat_template_problem)])
        roles = self._chat_template.roles
        unknown = [FieldViolation(f"messages[{i}].role", (
                       f"is not a role this model's chat template knows; use one of "
                       f"{', '.join(sorted(roles))}"))
                   for i, m in enumerate(request.messages) if m.role not in roles and m.role != "tool"]
        if unknown:
            raise RequestValidationError(unknown)
        add_generation_prompt = (
            request.add_generation_prompt if request.HasField("add_generation_prompt") else True
        )
        messages, tools = tool_calls.template_messages(request, self._chat_template.source, roles)
        try:
            return self._chat_template.render_parts(messages, add_generation_prompt, tools)
        except ChatTemplateError as exc:
            raise RequestValidationError([FieldViolation("messages", str(exc))]) from exc

    async def _run_cpu(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))


async def _errors_as_items(
    responses: AsyncIterator[pb.GenerateResponse], request: pb.GenerateRequest, prompt_index: int
) -> AsyncIterator[pb.GenerateResponse]:
    """A batch item's responses; a failure ends that item with FINISH_REASON_ERROR, not the call."""
    try:
        async with contextlib.aclosing(responses):
            async for response in responses:
                yield response
    except Exception as exc:
        yield pb.GenerateResponse(
            request_id=request.request_id, prompt_index=prompt_index,
            finish_reason=pb.FINISH_REASON_ERROR, error=str(exc) or type(exc).__name__,
        )


def _input_messages(request: pb.GenerateRequest) -> list[dict[str, str]]:
    """The request's input as role/content messages (a prompt is one user message)."""
    if request.messages:
        return [{"role": m.role, "content": m.content} for m in request.messages]
    return [{"role": "user", "content": request.prompt}]


async def _engine_outputs(engine: EngineClient, request: EngineRequest) -> AsyncIterator[RequestOutput]:
    """The engine's outputs for `request`; however this ends, the engine's iterator is closed,
    which aborts the request there and frees its KV blocks."""
    async with contextlib.aclosing(engine.generate(request)) as outputs:
        async for output in outputs:
            yield output


def _special_token_texts(tokenizer: TokenizerClient) -> list[str]:
    """The text of every special (control) token of `tokenizer`."""
    return [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size) if tokenizer.is_special(i)]


def _piece(tokenizer: TokenizerClient, token_id: int) -> str:
    if token_id < 0:
        return ""
    return tokenizer.id_to_piece(token_id)


def model_info_message(info: ModelInfo) -> pb.ModelInfo:
    """The ModelInfo message for the engine's model_info (its `path` is not exposed)."""
    message = pb.ModelInfo(
        name=info.name or "",
        architecture=info.architecture or "",
        vocab_size=info.vocab_size,
        context_length=info.context_length,
        max_model_len=info.max_model_len,
        quantization=info.quantization,
        num_layers=info.num_layers,
        hidden_size=info.hidden_size,
        num_heads=info.num_heads,
        num_kv_heads=info.num_kv_heads,
        chat_template=info.chat_template or "",
        head_dim=info.head_dim,
        tensor_types=dict(info.tensor_types),
    )
    for name, value in info.default_sampling:
        setattr(message.default_sampling, name, value)
    if info.bos_token_id >= 0:
        message.bos_token_id = info.bos_token_id
    if info.eos_token_id >= 0:
        message.eos_token_id = info.eos_token_id
    return message
