"""Test support for the service layer: a scriptable fake engine with the engine API of
docs/interfaces.md, and a chat template for it. Servers, stubs and status helpers are in
tests/server_support.py (wait_until is re-exported here for the telemetry tests)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from server_support import wait_until  # noqa: F401  (imported from here by tests/telemetry)

from cyserve.fastpath.contract import EngineStats, ModelInfo
from cyserve.fastpath.errors import EngineStoppedError, InvalidRequestError
from cyserve.fastpath.core.request import EngineRequest, FinishReason, RequestOutput

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# ---- a fake engine with the engine API of docs/interfaces.md ----


class FakeTokenizer:
    """One id per UTF-8 byte (id = byte + 10); ids 1 and 2 are <s> and </s>."""

    bos_token_id = 1
    eos_token_id = 2
    vocab_size = 266

    def encode(self, text: str, parse_special: bool = True) -> list[int]:
        return [b + 10 for b in text.encode()]

    def with_bos(self, ids: list[int]) -> list[int]:
        return list(ids)                        # like SmolLM2: the vocabulary asks for no BOS

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return bytes(i - 10 for i in ids if i >= 10).decode(errors="replace")

    def id_to_piece(self, token_id: int) -> str:
        return {1: "<s>", 2: "</s>"}.get(token_id) or self.decode([token_id])

    def is_special(self, token_id: int) -> bool:
        return token_id in (1, 2)


def fake_model_info(**overrides) -> ModelInfo:
    """The fake engine's ModelInfo (a 16384-token context: room for long SLOW streams,
    whose max_tokens it bounds; the byte tokenizer's vocabulary)."""
    fields = dict(name="fake", path="/nonexistent/fake.gguf", architecture="llama", vocab_size=266,
                  context_length=16384, max_model_len=16384, num_layers=2, hidden_size=8, num_heads=2,
                  num_kv_heads=1, quantization="F32", bos_token_id=1, eos_token_id=2,
                  chat_template=CHATML_TEMPLATE)
    return ModelInfo(**{**fields, **overrides})


@dataclass
class FakeEngine:
    """Echoes "<reply>" token by token. The prompt text picks a behaviour:
    "FAIL:invalid" raises InvalidRequestError, "FAIL:stopped" EngineStoppedError, "FAIL:boom"
    RuntimeError, "FAIL:error" finishes with FinishReason.ERROR; "SLOW" generates every 10 ms
    until max_tokens (ignoring EOS)."""

    reply: str = "Hi there"
    model_info: ModelInfo = field(default_factory=fake_model_info)
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    requests: list[EngineRequest] = field(default_factory=list)
    live: set[str] = field(default_factory=set)  # requests whose iterator is open
    closed_early: list[str] = field(default_factory=list)

    def stats(self) -> EngineStats:
        return EngineStats(len(self.live), 0, 16 - len(self.live), 16)

    def abort(self, request_id: str) -> None:
        pass

    async def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        prompt = self.tokenizer.decode(request.prompt_token_ids)
        self.requests.append(request)
        if "FAIL:invalid" in prompt:
            raise InvalidRequestError("prompt", "is longer than the context (16384 tokens)")
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
