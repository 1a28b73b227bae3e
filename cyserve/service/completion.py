"""One completion's responses, built from the engine's outputs, and the plumbing around them:
a time limit (max_time_s), and the merge of several completions (n > 1, GenerateBatch) into one
stream that closes every member however it ends.
"""
from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from cyserve.fastpath.contract import TokenizerClient
from cyserve.fastpath.core.request import EngineRequest, FinishReason, RequestOutput
from cyserve.service.errors import GenerationFailedError
from cyserve.v1 import generation_pb2 as pb


class CompletionProgress:
    """What one completion has produced so far; builds its responses and its log summary."""

    def __init__(self, started: float, index: int = 0, prompt_index: int = 0,
                 tokenizer: TokenizerClient | None = None) -> None:
        self.started = started
        self.first_token_at: float | None = None
        self.num_prompt_tokens = 0
        self.num_completion_tokens = 0
        self.num_cached_tokens = 0
        self.finish_reason: FinishReason | None = None
        self.outcome = "error"
        self.index = index
        self.prompt_index = prompt_index
        self.tokenizer = tokenizer
        self.params: pb.ResolvedParams | None = None  # sent once, with the first message

    def _message(self, request_id: str, **fields: Any) -> pb.GenerateResponse:
        message = pb.GenerateResponse(request_id=request_id, index=self.index,
                                      prompt_index=self.prompt_index, **fields)
        if self.params is not None:
            message.params.CopyFrom(self.params)
            self.params = None
        return message

    def response(self, output: RequestOutput, request_id: str) -> pb.GenerateResponse | None:
        """The message for one engine output; None when it carries nothing."""
        if output.new_token_ids and self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.num_completion_tokens += len(output.new_token_ids)
        if output.finished and output.finish_reason == FinishReason.ERROR:
            raise GenerationFailedError(output.error or "the engine gave no reason")
        logprobs = logprob_messages(self.tokenizer, output)
        prompt_logprobs = prompt_logprob_messages(self.tokenizer, output)
        if not output.finished:
            if not output.text and not output.new_token_ids and self.params is None:
                return None
            return self._message(request_id, text=output.text, token_ids=output.new_token_ids,
                                 logprobs=logprobs, prompt_logprobs=prompt_logprobs)
        self.finish_reason = FinishReason(output.finish_reason)
        if output.num_prompt_tokens:
            self.num_prompt_tokens = output.num_prompt_tokens
        if output.num_completion_tokens:
            self.num_completion_tokens = output.num_completion_tokens
        self.num_cached_tokens = output.num_cached_tokens
        message = self._message(
            request_id, text=output.text, token_ids=output.new_token_ids, logprobs=logprobs,
            prompt_logprobs=prompt_logprobs, finish_reason=int(self.finish_reason), usage=self.usage(),
            stop_sequence=output.stop_sequence, timings=self.timings(output),
        )
        if output.stop_token_id is not None:
            message.stop_token_id = output.stop_token_id
        return message

    def time_limit_response(self, request_id: str) -> pb.GenerateResponse:
        """The last message of a completion stopped by max_time_s."""
        self.finish_reason = FinishReason.TIME_LIMIT
        return self._message(request_id, finish_reason=int(FinishReason.TIME_LIMIT),
                             usage=self.usage(), timings=self.timings(None))

    def shutdown_response(self, request_id: str) -> pb.GenerateResponse:
        """The last message of a completion the server stopped because it is shutting down."""
        self.finish_reason = FinishReason.CANCELLED
        return self._message(request_id, finish_reason=int(FinishReason.CANCELLED),
                             usage=self.usage(), timings=self.timings(None),
                             error="the server is shutting down; retry on another replica")

    def usage(self) -> pb.Usage:
        return pb.Usage(prompt_tokens=self.num_prompt_tokens,
                        completion_tokens=self.num_completion_tokens,
                        cached_prompt_tokens=self.num_cached_tokens)

    def timings(self, output: RequestOutput | None) -> pb.Timings:
        now = time.monotonic()
        message = pb.Timings(total_s=now - self.started)
        if self.first_token_at is not None:
            message.time_to_first_token_s = self.first_token_at - self.started
        engine = output.timings if output is not None else None
        if engine is not None and engine.first_scheduled and engine.arrival:
            message.queue_s = max(engine.first_scheduled - engine.arrival, 0.0)
        return message

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


def logprob_messages(tokenizer: TokenizerClient, output: RequestOutput) -> list[pb.TokenLogprob]:
    """TokenLogprob per new token of `output` (empty when the request asked for none)."""
    if not output.logprobs:
        return []

    def piece(token_id: int) -> str:
        return tokenizer.id_to_piece(token_id) if tokenizer is not None else ""

    messages = []
    for token_id, (logprob, top) in zip(output.new_token_ids, output.logprobs):
        messages.append(pb.TokenLogprob(
            token_id=token_id, logprob=logprob, token=piece(token_id),
            top_logprobs=[pb.TokenLogprob(token_id=t, logprob=lp, token=piece(t)) for t, lp in top],
        ))
    return messages


def prompt_logprob_messages(tokenizer: TokenizerClient, output: RequestOutput) -> list[pb.TokenLogprob]:
    """TokenLogprob per scored prompt token of `output` (empty unless this output carries them)."""
    scores = output.prompt_logprobs
    if not scores:
        return []
    piece = tokenizer.id_to_piece if tokenizer is not None else (lambda _: "")
    return [
        pb.TokenLogprob(
            token_id=token_id, logprob=logprob, token=piece(token_id),
            top_logprobs=[pb.TokenLogprob(token_id=t, logprob=lp, token=piece(t))
                          for t, lp in zip(top_ids, top_lps)],
        )
        for token_id, logprob, top_ids, top_lps in zip(
            scores.token_ids, scores.logprobs, scores.top_ids, scores.top_logprobs)
    ]


def resolved_params(request: EngineRequest, output: pb.OutputOptions) -> pb.ResolvedParams:
    """Every parameter of `request` as the engine runs it, defaults filled in."""
    s, st = request.sampling, request.stopping
    sampling = pb.SamplingParams(
        temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p,
        repetition_penalty=s.repetition_penalty, presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty, logit_bias=dict(s.logit_bias), n=1,
    )
    if s.seed is not None:
        sampling.seed = s.seed
    stopping = pb.StoppingCriteria(
        max_tokens=st.max_tokens, min_tokens=st.min_tokens, ignore_eos=st.ignore_eos,
        stop=list(st.stop), stop_token_ids=list(st.stop_token_ids), include_stop=st.include_stop,
    )
    return pb.ResolvedParams(sampling=sampling, stopping=stopping, output=output,
                             priority=request.priority,
                             prompt_tokens=len(request.prompt_token_ids))


class Interrupt(enum.Enum):
    """Why until_deadline() stopped a completion before the engine finished it."""

    TIME_LIMIT = "max_time_s passed"
    SHUTDOWN = "the server is shutting down"


async def until_deadline(outputs: AsyncGenerator[RequestOutput, None], deadline: float | None,
                         shutdown: asyncio.Event | None = None,
                         ) -> AsyncIterator[RequestOutput | Interrupt]:
    """`outputs`, then a single Interrupt if the monotonic `deadline` passes or `shutdown` is set
    first. However this ends, the pending read is cancelled and `outputs` closed, which closes the
    engine's iterator and aborts the request there."""
    stopping = asyncio.ensure_future(shutdown.wait()) if shutdown is not None else None
    try:
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if stopping is None and remaining is None:
                item = await anext(outputs, _END)
            else:
                reading = asyncio.ensure_future(anext(outputs, _END))
                waited = {reading} if stopping is None else {reading, stopping}
                try:
                    await asyncio.wait(waited, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                finally:  # however this ends (our caller cancelled too), the read does not outlive it
                    if not reading.done():
                        reading.cancel()
                        await asyncio.gather(reading, return_exceptions=True)
                if reading.cancelled():
                    yield (Interrupt.SHUTDOWN if stopping is not None and stopping.done()
                           else Interrupt.TIME_LIMIT)
                    return
                item = reading.result()
            if item is _END:
                return
            yield item
    finally:
        if stopping is not None:
            stopping.cancel()
        await outputs.aclose()  # closes the engine's iterator now, however this ended


_END: Any = object()


async def merged(streams: list[AsyncIterator[Any]]) -> AsyncIterator[Any]:
    """Items of every stream as they come. The first exception of any stream is raised here after
    the others are cancelled; leaving early cancels and closes every stream."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(stream: AsyncIterator[Any]) -> None:
        try:
            async with contextlib.aclosing(stream):
                async for item in stream:
                    await queue.put((True, item))
        except Exception as exc:
            await queue.put((False, exc))
            return
        await queue.put((False, None))

    tasks = [asyncio.ensure_future(pump(stream)) for stream in streams]
    try:
        remaining = len(tasks)
        while remaining:
            is_item, value = await queue.get()
            if is_item:
                yield value
            elif value is None:
                remaining -= 1
            else:
                raise value
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
