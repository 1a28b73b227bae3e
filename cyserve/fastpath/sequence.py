"""Engine-side state of one request: its tokens, how many have KV computed, its blocks."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from cyserve.fastpath.request import EngineRequest, FinishReason


class SequenceStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2


@dataclass(eq=False)
class Sequence:
    request: EngineRequest
    arrival_index: int
    token_ids: list[int]  # prompt followed by the output so far
    num_prompt_tokens: int
    max_len: int  # prompt + output never grows past this (max_tokens and the model's context)
    rng_state: int
    num_computed_tokens: int = 0  # tokens whose K/V are in this sequence's blocks
    block_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason = FinishReason.NONE
    num_preemptions: int = 0

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens
