"""Sends a workload to one backend and times it: a closed loop of N concurrent streams, or
Poisson arrivals at a request rate (optionally capped at N in flight), with a progress bar."""
from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cyserve.loadgen.backends import Backend, GenerationOptions
from cyserve.loadgen.metrics import BenchmarkMetrics, RequestResult, summarize
from cyserve.loadgen.workload import SampleRequest


@dataclass(frozen=True)
class LoadPattern:
    """How requests are sent. request_rate None: a closed loop of `concurrency` streams, each
    sending its next request when the previous one ends. Otherwise requests arrive as a Poisson
    process of that rate (exponential gaps), at most `concurrency` in flight when it is set."""

    concurrency: int | None = 1
    request_rate: float | None = None
    timeout_s: float = 600.0  # per request
    seed: int = 0

    def describe(self) -> str:
        if self.request_rate is None:
            return f"concurrency {self.concurrency}"
        cap = f", at most {self.concurrency} in flight" if self.concurrency else ""
        return f"Poisson arrivals at {self.request_rate:g} req/s{cap}"


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _TextProgress:
    """A one-line bar on stderr, for when tqdm is not installed."""

    WIDTH = 30

    def __init__(self, total: int, desc: str) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.desc = desc
        self.started = time.monotonic()
        self._draw()

    def update(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()

    def _draw(self) -> None:
        filled = self.WIDTH * self.done // self.total
        elapsed = time.monotonic() - self.started
        bar = "#" * filled + "." * (self.WIDTH - filled)
        sys.stderr.write(f"\r{self.desc} [{bar}] {self.done}/{self.total} {elapsed:6.1f}s")
        sys.stderr.flush()


def make_progress(total: int, desc: str, enabled: bool) -> Progress:
    if not enabled:
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _TextProgress(total, desc)
    return tqdm(total=total, desc=desc, file=sys.stderr, unit="req", leave=False)


def poisson_gaps(num_requests: int, request_rate: float, rng: random.Random) -> list[float]:
    """Seconds to wait after each request before sending the next (the last waits 0)."""
    if request_rate <= 0:
        raise ValueError(f"request rate must be positive, got {request_rate}")
    return [rng.expovariate(request_rate) for _ in range(num_requests - 1)] + [0.0]


async def run_benchmark(
    backend: Backend,
    requests: Sequence[SampleRequest],
    pattern: LoadPattern,
    options: GenerationOptions,
    progress: bool = True,
) -> BenchmarkMetrics:
    """Runs every request once and summarizes; failures are counted, never raised."""
    bar = make_progress(len(requests), f"{backend.label} ({pattern.describe()})", progress)
    started = time.perf_counter()
    try:
        if pattern.request_rate is None:
            results = await _closed_loop(backend, requests, pattern, options, bar)
        else:
            results = await _open_loop(backend, requests, pattern, options, bar)
    finally:
        bar.close()
    return summarize(results, time.perf_counter() - started)


async def run_warmup(
    backend: Backend, requests: Sequence[SampleRequest], options: GenerationOptions, timeout_s: float
) -> list[RequestResult]:
    """Sends `requests` one after another, untimed (first-call costs: connections, page-ins)."""
    return [await _timed_request(backend, r, options, timeout_s) for r in requests]


async def _closed_loop(
    backend: Backend,
    requests: Sequence[SampleRequest],
    pattern: LoadPattern,
    options: GenerationOptions,
    bar: Progress,
) -> list[RequestResult]:
    results: list[RequestResult | None] = [None] * len(requests)
    pending = iter(enumerate(requests))  # shared by the workers; next() never awaits

    async def worker() -> None:
        for index, request in pending:
            results[index] = await _timed_request(backend, request, options, pattern.timeout_s)
            bar.update(1)

    num_workers = min(pattern.concurrency or len(requests), len(requests))
    await asyncio.gather(*(worker() for _ in range(num_workers)))
    return [r for r in results if r is not None]


async def _open_loop(
    backend: Backend,
    requests: Sequence[SampleRequest],
    pattern: LoadPattern,
    options: GenerationOptions,
    bar: Progress,
) -> list[RequestResult]:
    assert pattern.request_rate is not None
    gaps = poisson_gaps(len(requests), pattern.request_rate, random.Random(pattern.seed))
    limit = asyncio.Semaphore(pattern.concurrency) if pattern.concurrency else None

    async def send(request: SampleRequest) -> RequestResult:
        if limit is None:
            result = await _timed_request(backend, request, options, pattern.timeout_s)
        else:
            async with limit:
                result = await _timed_request(backend, request, options, pattern.timeout_s)
        bar.update(1)
        return result

    tasks = []
    for request, gap in zip(requests, gaps):
        tasks.append(asyncio.create_task(send(request)))
        if gap > 0:
            await asyncio.sleep(gap)
    return list(await asyncio.gather(*tasks))


async def _timed_request(
    backend: Backend, request: SampleRequest, options: GenerationOptions, timeout_s: float
) -> RequestResult:
    try:
        return await asyncio.wait_for(backend.generate(request, options), timeout_s)
    except asyncio.TimeoutError:
        return RequestResult(
            prompt_len=request.prompt_len, output_len=request.output_len,
            latency=timeout_s, error=f"no complete answer within {timeout_s:g} s",
        )
    except Exception as exc:  # a broken connection must not end the whole run
        return RequestResult(
            prompt_len=request.prompt_len, output_len=request.output_len,
            error=f"{type(exc).__name__}: {exc}",
        )
