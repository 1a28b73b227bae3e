"""Test support for telemetry: a fake engine that reports RequestTimings and engine counters, a
Prometheus scrape, and a caller's traceparent. `telemetry_server` is server_support.serving (a
server with the given tracing and metrics keyword arguments on 127.0.0.1)."""
from __future__ import annotations

import asyncio
import contextlib
import random
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from server_support import serving as telemetry_server  # noqa: F401  (the telemetry tests' name)
from service.support import FakeEngine

from cyserve.fastpath.contract import EngineStats
from cyserve.fastpath.core.request import EngineRequest, RequestOutput, RequestTimings

# The phases TimedFakeEngine reports (synthetic timestamps: exact values to assert on).
QUEUE_S = 0.004
PREFILL_S = 0.006
PREEMPTED_AFTER_S = 0.001  # into prefill
NUM_CACHED_PROMPT_TOKENS = 3
NUM_PREFILL_CHUNKS = 2


@dataclass
class TimedFakeEngine(FakeEngine):
    """FakeEngine whose last output carries RequestTimings, as the real engine's does."""

    timings: dict[str, RequestTimings] = field(default_factory=dict)

    def stats(self) -> EngineStats:
        return EngineStats(len(self.live), 3, 12, 16, num_preemptions=2, prefix_cache_queries=100,
                           prefix_cache_hits=40)

    async def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        arrival = time.monotonic()
        scheduled = arrival + QUEUE_S
        timings = RequestTimings(
            arrival=arrival, first_scheduled=scheduled, first_token=scheduled + PREFILL_S,
            num_cached_prompt_tokens=NUM_CACHED_PROMPT_TOKENS, num_prefill_chunks=NUM_PREFILL_CHUNKS,
            preemptions=[scheduled + PREEMPTED_AFTER_S],
        )
        self.timings[request.request_id] = timings
        await asyncio.sleep(QUEUE_S + PREFILL_S)  # so that the phases above lie in the past
        async with contextlib.aclosing(super().generate(request)) as outputs:
            async for output in outputs:
                if output.finished:
                    timings.finished = time.monotonic()
                    output.timings = timings
                yield output


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample of http://127.0.0.1:port/metrics, keyed by (sample name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when absent (a labelled series appears on its first increment)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass(frozen=True)
class Caller:
    """A caller's span, as the W3C traceparent it would send."""

    trace_id: int = field(default_factory=lambda: random.getrandbits(128) or 1)
    span_id: int = field(default_factory=lambda: random.getrandbits(64) or 1)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("traceparent", f"00-{self.trace_id:032x}-{self.span_id:016x}-01"),)
