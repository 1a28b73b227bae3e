"""Messages across the engine boundary: what the service submits and what it gets back."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class FinishReason(enum.IntEnum):
    """Why a request stopped. Values mirror the proto enum (0 = not finished)."""

    NONE = 0
    LENGTH = 1  # max_tokens reached, or the model's context is full
    EOS = 2  # the model produced its end-of-sequence token
    STOP_SEQUENCE = 3  # a stop string matched
    CANCELLED = 4  # aborted by the caller (cancel, disconnect, deadline)
    ERROR = 5  # the engine failed this request; see RequestOutput.error


@dataclass(frozen=True)
class SamplingParams:
    """Resolved sampling settings. temperature 0 means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None  # None = drawn from the engine's entropy

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class StoppingParams:
    max_tokens: int = 256
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()


@dataclass
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stopping: StoppingParams = field(default_factory=StoppingParams)


@dataclass
class RequestOutput:
    """One step's news for one request: new tokens, the text they completed, and the end."""

    request_id: str
    new_token_ids: list[int]
    text: str  # UTF-8-safe text delta; never holds back-to-be-withdrawn stop-string prefixes
    finished: bool = False
    finish_reason: FinishReason = FinishReason.NONE
    stop_sequence: str = ""
    num_prompt_tokens: int = 0
    num_completion_tokens: int = 0
    error: str = ""
