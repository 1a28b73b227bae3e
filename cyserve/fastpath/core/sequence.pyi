import enum
from typing import Any, final

from cyserve.fastpath.core.request import EngineRequest, FinishReason

class SequenceStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2
    PARKED = 3

@final
class Sequence:
    request: EngineRequest
    arrival_index: int
    token_ids: list[int]
    num_prompt_tokens: int
    max_len: int
    rng_state: int
    num_computed_tokens: int
    block_ids: list[int]
    status_code: int
    finish_reason: FinishReason
    num_preemptions: int
    priority: int
    cache_salt: str | None
    num_cached_tokens: int
    num_scheduled_tokens: int
    preempted_at_step: int
    num_scored_prompt_rows: int
    num_committed_blocks: int
    def __init__(self, request: EngineRequest, arrival_index: int, token_ids: list[int], num_prompt_tokens: int,
                 max_len: int, rng_state: int = 0, num_computed_tokens: int = 0, block_ids: list[int] | None = None,
                 status: SequenceStatus = ..., finish_reason: Any = None, num_preemptions: int = 0) -> None: ...
    @property
    def status(self) -> SequenceStatus: ...
    @status.setter
    def status(self, value: SequenceStatus) -> None: ...
    @property
    def request_id(self) -> str: ...
    @property
    def num_tokens(self) -> int: ...
    @property
    def samples_next_token(self) -> bool: ...
    @property
    def num_output_tokens(self) -> int: ...
    @property
    def output_token_ids(self) -> list[int]: ...
    @property
    def num_uncomputed_tokens(self) -> int: ...
    @property
    def block_hashes(self) -> list[int]: ...
