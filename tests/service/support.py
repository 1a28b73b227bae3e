"""Test support for the service layer: a server running on its own event-loop thread (so tests use
plain synchronous gRPC stubs), a scriptable fake engine, and status-detail helpers."""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cyserve.fastpath.errors import EngineStoppedError, InvalidRequestError
from cyserve.fastpath.request import EngineRequest, FinishReason, RequestOutput
from cyserve.service.server import Server

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class LoopThread:
    """An asyncio event loop running forever on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextlib.contextmanager
def running_server(engine: Any) -> Iterator[tuple[Server, LoopThread]]:
    """A started Server on 127.0.0.1 (free port) around `engine`, on its own loop thread."""
    loop_thread = LoopThread()

    async def start() -> Server:
        server = Server(engine, "127.0.0.1", 0)
        await server.start()
        return server

    server = loop_thread.run(start())
    try:
        yield server, loop_thread
    finally:
        loop_thread.run(server.stop(1.0))
        loop_thread.close()


def field_violations(exc: grpc.RpcError) -> list[tuple[str, str]]:
    """(field, description) of every BadRequest field violation in the call's status details."""
    status = rpc_status.from_call(exc)
    assert status is not None, f"no rich status in {exc!r}"
    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [(v.field, v.description) for v in bad_request.field_violations]
    return violations


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# ---- a fake engine with the engine API of docs/interfaces.md ----


class FakeTokenizer:
    """One id per UTF-8 byte (id = byte + 10); ids 1 and 2 are <s> and </s>."""

    bos_token_id = 1
    eos_token_id = 2
    vocab_size = 266

    def encode(self, text: str, parse_special: bool = True) -> list[int]:
        return [b + 10 for b in text.encode()]

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return bytes(i - 10 for i in ids if i >= 10).decode(errors="replace")

    def id_to_piece(self, token_id: int) -> str:
        return {1: "<s>", 2: "</s>"}.get(token_id) or self.decode([token_id])


@dataclass
class FakeModelInfo:
    name: str = "fake"
    architecture: str = "llama"
    vocab_size: int = 266
    context_length: int = 64
    num_layers: int = 2
    hidden_size: int = 8
    num_heads: int = 2
    num_kv_heads: int = 1
    quantization: str = "F32"
    bos_token_id: int = 1
    eos_token_id: int = 2
    chat_template: str = CHATML_TEMPLATE
    path: str = "/nonexistent/fake.gguf"


@dataclass
class FakeStats:
    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_total_blocks: int


@dataclass
class FakeEngine:
    """Echoes "<reply>" token by token. The prompt text picks a behaviour:
    "FAIL:invalid" raises InvalidRequestError, "FAIL:stopped" EngineStoppedError, "FAIL:boom"
    RuntimeError, "FAIL:error" finishes with FinishReason.ERROR; "SLOW" generates every 10 ms
    until max_tokens (ignoring EOS)."""

    reply: str = "Hi there"
    model_info: FakeModelInfo = field(default_factory=FakeModelInfo)
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    requests: list[EngineRequest] = field(default_factory=list)
    live: set[str] = field(default_factory=set)  # requests whose iterator is open
    closed_early: list[str] = field(default_factory=list)

    def stats(self) -> FakeStats:
        return FakeStats(len(self.live), 0, 16 - len(self.live), 16)

    def abort(self, request_id: str) -> None:
        pass

    async def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        prompt = self.tokenizer.decode(request.prompt_token_ids)
        self.requests.append(request)
        if "FAIL:invalid" in prompt:
            raise InvalidRequestError("prompt", "is longer than the context (64 tokens)")
        if "FAIL:stopped" in prompt:
            raise EngineStoppedError("the engine is stopping")
        if "FAIL:boom" in prompt:
            raise RuntimeError("boom")
        self.live.add(request.request_id)
        finished = False
        try:
            if "FAIL:error" in prompt:
                yield self._output(request, [], "", FinishReason.ERROR, error="kernel exploded")
                finished = True
                return
            slow = "SLOW" in prompt
            pieces = [self.reply[i:i + 1] for i in range(len(self.reply))]
            n = 0
            while True:
                await asyncio.sleep(0.01 if slow else 0)
                if n == request.stopping.max_tokens:
                    finished = True
                    yield self._output(request, [], "", FinishReason.LENGTH, n)
                    return
                if not slow and n == len(pieces):
                    finished = True
                    yield self._output(request, [2], "", FinishReason.EOS, n + 1)
                    return
                piece = pieces[n % len(pieces)]
                n += 1
                yield self._output(request, self.tokenizer.encode(piece), piece)
        finally:
            self.live.discard(request.request_id)
            if not finished:
                self.closed_early.append(request.request_id)

    @staticmethod
    def _output(
        request: EngineRequest,
        ids: list[int],
        text: str,
        reason: FinishReason = FinishReason.NONE,
        num_completion_tokens: int = 0,
        error: str = "",
    ) -> RequestOutput:
        return RequestOutput(
            request_id=request.request_id,
            new_token_ids=ids,
            text=text,
            finished=reason != FinishReason.NONE,
            finish_reason=reason,
            num_prompt_tokens=len(request.prompt_token_ids),
            num_completion_tokens=num_completion_tokens,
            error=error,
        )
