"""Messages across the engine boundary: what the service submits and what it gets back."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from cyserve.fastpath.structured.constraint import Constraint


class FinishReason(enum.IntEnum):
    """Why a request stopped. Values mirror the proto enum (0 = not finished)."""

    NONE = 0
    LENGTH = 1  # max_tokens reached, or the model's context is full
    EOS = 2  # the model produced its end-of-sequence token
    STOP_SEQUENCE = 3  # a stop string matched
    CANCELLED = 4  # aborted by the caller (cancel, disconnect, deadline)
    ERROR = 5  # the engine failed this request; see RequestOutput.error
    STOP_TOKEN = 6  # one of StoppingParams.stop_token_ids was sampled
    TIME_LIMIT = 7  # StoppingParams.max_time_s passed (enforced by the service)
    TOOL_CALLS = 8  # the output is function calls (set by the service, which parses them)


@dataclass(frozen=True)
class SamplingParams:
    """Resolved sampling settings. temperature 0 means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None  # None = drawn from the engine's entropy
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off; applies to prompt and output tokens
    presence_penalty: float = 0.0  # applies to output tokens
    frequency_penalty: float = 0.0  # applies to output tokens
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) pairs
    logprobs: int | None = None  # None = no logprobs; k = the sampled token's and the top k
    # None = none; k = every prompt token's logprob (but the first's) and the top k at its position.
    # Such a request computes its whole prompt (no prefix-cache hits: they would skip rows).
    prompt_logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def needs_processing(self) -> bool:
        """Whether the logits change before picking (penalties or bias); else the raw row is used."""
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0 or bool(self.logit_bias))


@dataclass(frozen=True)
class StoppingParams:
    max_tokens: int = 256
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    min_tokens: int = 0  # EOS and stop tokens are masked out until this many tokens exist
    stop_token_ids: tuple[int, ...] = ()
    include_stop: bool = False  # keep the matched stop string / stop token text in the output


@dataclass
class GeneratedTokens:
    """How many tokens the engine has generated for one request, updated by the engine as it
    emits them: a caller that leaves before reading all of them still counts them in its usage."""

    count: int = 0


@dataclass
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stopping: StoppingParams = field(default_factory=StoppingParams)
    priority: int = 0  # higher is scheduled first (and preempted last); FCFS within a priority
    cache_salt: str | None = None  # prefix-cache namespace: only requests with the same salt share K/V
    # What the output must match (structured output); compiled off the engine thread before the
    # request is scheduled, and each of its sequences gets its own matcher. None: free text.
    constraint: Constraint | None = None
    generated: GeneratedTokens = field(default_factory=GeneratedTokens, compare=False, repr=False)


@dataclass
class RequestTimings:
    """Monotonic timestamps (time.monotonic()) the engine records for one request, so the
    service can build trace spans and latency metrics after the fact; the engine thread itself
    does no telemetry work. 0.0 = not reached."""

    arrival: float = 0.0  # generate() accepted it
    first_scheduled: float = 0.0  # its first prefill chunk ran
    first_token: float = 0.0  # its first output token was sampled
    finished: float = 0.0
    num_cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache
    num_prefill_chunks: int = 0
    preemptions: list[float] = field(default_factory=list)  # when it was preempted


@dataclass
class PromptLogprobs:
    """Scores of prompt tokens 1..n-1, each given the tokens before it (log-softmax of the raw
    logits), with the most likely alternatives at each position, most likely first."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_ids: list[list[int]] = field(default_factory=list)
    top_logprobs: list[list[float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.token_ids)


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
    num_cached_tokens: int = 0  # prompt tokens whose K/V came from the prefix cache
    timings: RequestTimings | None = None  # set on the last output of a request
    stop_token_id: int | None = None  # set when finish_reason is STOP_TOKEN
    # With SamplingParams.logprobs: per new token, (logprob, [(top id, top logprob), ...]).
    logprobs: list[tuple[float, list[tuple[int, float]]]] | None = None
    # With SamplingParams.prompt_logprobs: set on the request's first output (its first token).
    prompt_logprobs: PromptLogprobs | None = None
