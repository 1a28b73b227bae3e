"""When to send a failed call again: exponential backoff with jitter, never sooner than the
server's RetryInfo asks, never past the call's deadline, and only for statuses where another try
can succeed (CallError.retryable: UNAVAILABLE, RESOURCE_EXHAUSTED with RetryInfo)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from cyserve.client.errors import CallError


@dataclass(frozen=True)
class RetryPolicy:
    """max_attempts counts the first try (1 = never retry). The n-th retry waits a random time in
    [b/2, b] with b = min(max_backoff_s, initial_backoff_s * multiplier ** (n - 1)), or the server's
    RetryInfo delay if that is longer."""

    max_attempts: int = 4
    initial_backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1 (1 = no retries), got {self.max_attempts}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("backoffs must satisfy 0 < initial_backoff_s <= max_backoff_s, got "
                             f"{self.initial_backoff_s} and {self.max_backoff_s}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier}")

    def delay_s(self, retry: int, error: CallError) -> float:
        """Seconds to wait before retry number `retry` (1 for the first) after `error`."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        return max(self.rng.uniform(ceiling / 2, ceiling), error.retry_delay_s or 0.0)

    def next_delay_s(self, attempt: int, error: CallError, remaining_s: float | None) -> float | None:
        """The wait before another try after try number `attempt` failed with `error`, or None when
        the call should fail now: the status is not retryable, the attempts are spent, or the wait
        would pass the deadline (`remaining_s` seconds away; None = no deadline)."""
        if not error.retryable or attempt >= self.max_attempts:
            return None
        delay = self.delay_s(attempt, error)
        if remaining_s is not None and delay >= remaining_s:
            return None
        return delay


NO_RETRY = RetryPolicy(max_attempts=1)
