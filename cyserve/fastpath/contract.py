"""The engine's contract with the service: what `cyserve.service` may call and read.

`EngineClient` is the protocol the servicer, the server and the telemetry are typed against; the
engine (engine.py) implements it, and so do the test fakes, which build the same `ModelInfo` and
`EngineStats` values as the engine does.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from cyserve.fastpath.core.request import EngineRequest, RequestOutput


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    architecture: str
    vocab_size: int
    context_length: int
    max_model_len: int  # the longest prompt + output this engine serves
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    quantization: str  # the dominant weight type, e.g. "Q4_1"
    bos_token_id: int  # -1 when the vocabulary has none
    eos_token_id: int
    chat_template: str  # "" when the model has none
    head_dim: int = 0
    tensor_types: tuple[tuple[str, int], ...] = ()  # (GGML type name, number of tensors), most first
    default_sampling: tuple[tuple[str, float], ...] = ()  # SamplingParams fields the model recommends


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_free_blocks: int  # blocks no request holds (prefix-cached ones included: reused on demand)
    num_total_blocks: int
    num_preemptions: int = 0
    num_used_blocks: int = 0
    num_cached_blocks: int = 0  # blocks (used or free) a request with the same prefix can share
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of those, tokens whose K/V came from the cache
    num_steps: int = 0
    num_scheduled_tokens_last_step: int = 0
    num_scheduled_tokens_total: int = 0  # / num_steps = mean tokens per step
    block_size: int = 16
    num_parked: int = 0  # requests paused because their callers are not reading their output


class TokenizerClient(Protocol):
    """The tokenizer calls the service makes (cyserve.fastpath.tokenizer.Tokenizer has them)."""

    vocab_size: int

    def encode(self, text: str, parse_special: bool = True) -> list[int]: ...

    def with_bos(self, ids: Sequence[int]) -> list[int]:
        """`ids` as a prompt: the BOS the vocabulary asks for in front, once."""
        ...

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str: ...

    def id_to_piece(self, token_id: int) -> str: ...

    def is_special(self, token_id: int) -> bool: ...


class EngineClient(Protocol):
    """A started engine, as the service sees it."""

    model_info: ModelInfo
    tokenizer: TokenizerClient

    def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        """The request's outputs, the last one finished; closing the iterator early aborts it.
        Raises InvalidRequestError for a request it cannot serve, EngineStoppedError when stopping."""
        ...

    def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...
