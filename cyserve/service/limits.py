"""The service's limits: what one request may ask for, and how much work the server takes at once.

`ServiceLimits` is the configuration (every value configurable; 0 where documented means "only the
model's own bound"). `Admission` enforces the load limits at call time: the number of calls
generating at once and the engine's waiting queue, both answered with RESOURCE_EXHAUSTED and a
retry delay rather than queueing without bound.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

from cyserve.fastpath.contract import EngineClient
from cyserve.fastpath.settings import check_settings, parse_bytes, setting
from cyserve.service.errors import ResourceExhaustedError


@dataclass(frozen=True)
class ServiceLimits:
    """The API limits. The first five are settings of `cyserve serve` (settings.py); the others
    are fixed here and reported by GetCapabilities."""

    max_prompt_tokens: int = setting(
        0, "most prompt tokens per request", "CYSERVE_MAX_PROMPT_TOKENS", int, minimum=0,
        default_text="0: max-model-len - 1, room for one generated token")
    max_tokens: int = setting(
        0, "largest max_tokens a request may ask", "CYSERVE_MAX_TOKENS", int, minimum=0,
        default_text="0: no limit of its own, the context bounds it")
    max_message_bytes: int = setting(
        4 << 20, "largest request message (gRPC's receive limit)", "CYSERVE_MAX_MESSAGE_BYTES", parse_bytes,
        metavar="BYTES", minimum=1, default_text="4MiB")
    max_concurrent_streams: int = setting(
        256, "most calls generating at once (Generate, *Stream, *Batch); more get RESOURCE_EXHAUSTED",
        "CYSERVE_MAX_CONCURRENT_STREAMS", int, minimum=1)
    max_queued_requests: int = setting(
        256, "most engine requests waiting for their first step; more get RESOURCE_EXHAUSTED",
        "CYSERVE_MAX_QUEUED_REQUESTS", int, minimum=1)
    max_n: int = 16
    max_stop_sequences: int = 16
    max_stop_sequence_chars: int = 256
    max_stop_token_ids: int = 64
    max_logit_bias: int = 1024
    max_logprobs: int = 20
    max_batch_size: int = 64
    retry_after_s: float = 1.0  # the delay suggested in RetryInfo when the server is full

    def prompt_limit(self, max_model_len: int) -> int:
        """Most prompt tokens a request may have on a server with `max_model_len`."""
        model_limit = max(max_model_len - 1, 1)
        return min(self.max_prompt_tokens, model_limit) if self.max_prompt_tokens else model_limit

    def tokens_limit(self, max_model_len: int) -> int:
        """Largest max_tokens a request may ask for on a server with `max_model_len`."""
        return min(self.max_tokens, max_model_len) if self.max_tokens else max_model_len

    def for_model(self, max_model_len: int) -> ServiceLimits:
        """These limits with the model's bounds applied: what the server enforces and reports."""
        return replace(self, max_prompt_tokens=self.prompt_limit(max_model_len),
                       max_tokens=self.tokens_limit(max_model_len))

    def check(self) -> None:
        """Raise ValueError on a limit no server could use."""
        check_settings(self)


class Admission:
    """Counts the calls generating now and refuses work beyond the limits (event-loop only)."""

    def __init__(self, limits: ServiceLimits, engine: EngineClient) -> None:
        self.limits = limits
        self.engine = engine
        self.num_active = 0

    @contextlib.contextmanager
    def admit(self, num_requests: int) -> Iterator[None]:
        """Hold one stream slot while the body runs; `num_requests` engine requests will queue."""
        if self.num_active >= self.limits.max_concurrent_streams:
            raise ResourceExhaustedError(
                "TOO_MANY_STREAMS",
                f"the server is generating for {self.num_active} calls, its limit; retry later",
                self.limits.retry_after_s,
            )
        num_waiting = _num_waiting(self.engine)
        if num_waiting + num_requests > self.limits.max_queued_requests:
            raise ResourceExhaustedError(
                "QUEUE_FULL",
                f"{num_waiting} requests are waiting (limit {self.limits.max_queued_requests}); retry later",
                self.limits.retry_after_s,
            )
        self.num_active += 1
        try:
            yield
        finally:
            self.num_active -= 1


def _num_waiting(engine: EngineClient) -> int:
    try:
        return int(engine.stats().num_waiting)
    except Exception:  # a stats failure must not refuse work
        return 0


# Keepalive for long streams behind proxies and load balancers: the server pings an idle
# connection every 30 s (most proxies cut idle TCP at 60 s or more) and drops it if no answer comes
# in 10 s; clients may ping as often as every 10 s, with or without calls in flight.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


def grpc_options(limits: ServiceLimits) -> list[tuple[str, int]]:
    """Channel options the limits imply: message size and keepalive."""
    return [("grpc.max_receive_message_length", limits.max_message_bytes), *KEEPALIVE_OPTIONS]


def connection_age_options(max_age_s: float, grace_s: float) -> list[tuple[str, int]]:
    """Server options that close connections older than `max_age_s` (0 = never) once their calls
    end, or after `grace_s` more (0 = wait for them): clients then reconnect, through the load
    balancer, and spread over replicas added since (gRPC's max_connection_age)."""
    if max_age_s <= 0:
        return []
    options = [("grpc.max_connection_age_ms", int(max_age_s * 1000))]
    if grace_s > 0:
        options.append(("grpc.max_connection_age_grace_ms", int(grace_s * 1000)))
    return options
