"""The load generator against a scripted in-memory backend: how many requests are in flight,
Poisson gaps, failures and timeouts counted rather than raised, the progress bar."""
from __future__ import annotations

import asyncio
import random
import statistics

import pytest

from cyserve.loadgen.backends import GenerationOptions
from cyserve.loadgen.metrics import RequestResult
from cyserve.loadgen.runner import LoadPattern, _TextProgress, poisson_gaps, run_benchmark
from cyserve.loadgen.workload import SampleRequest


class ScriptedBackend:
    """Each request takes `delay_s` and yields one token per requested output token; prompts
    containing "FAIL" raise, "HANG" never finish."""

    label = "scripted"

    def __init__(self, delay_s: float = 0.01) -> None:
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.seen: list[str] = []

    async def generate(self, request: SampleRequest, options: GenerationOptions) -> RequestResult:
        self.seen.append(request.prompt)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if "FAIL" in request.prompt:
                raise ConnectionError("reset by peer")
            await asyncio.sleep(3600 if "HANG" in request.prompt else self.delay_s)
            n = request.output_len
            return RequestResult(request.prompt_len, n, True, n, ttft=self.delay_s / 2,
                                 itl=[self.delay_s / 2 / max(n - 1, 1)] * (n - 1),
                                 latency=self.delay_s)
        finally:
            self.in_flight -= 1


def requests(n: int, prompt: str = "p") -> list[SampleRequest]:
    return [SampleRequest(f"{prompt} {i}", prompt_len=10, output_len=4) for i in range(n)]


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_closed_loop_keeps_exactly_n_in_flight(concurrency: int) -> None:
    backend = ScriptedBackend()
    metrics = asyncio.run(run_benchmark(
        backend, requests(8), LoadPattern(concurrency=concurrency), GenerationOptions(), False
    ))
    assert backend.max_in_flight == concurrency
    assert metrics.completed == 8 and metrics.total_output_tokens == 32
    assert sorted(backend.seen) == sorted(r.prompt for r in requests(8))


def test_open_loop_respects_the_cap_and_sends_everything() -> None:
    backend = ScriptedBackend(delay_s=0.05)
    pattern = LoadPattern(concurrency=2, request_rate=1000.0, seed=3)
    metrics = asyncio.run(run_benchmark(backend, requests(10), pattern, GenerationOptions(), False))
    assert metrics.completed == 10
    assert backend.max_in_flight == 2


def test_uncapped_open_loop_overlaps_requests() -> None:
    backend = ScriptedBackend(delay_s=0.2)
    pattern = LoadPattern(concurrency=None, request_rate=10000.0, seed=0)
    metrics = asyncio.run(run_benchmark(backend, requests(6), pattern, GenerationOptions(), False))
    assert metrics.completed == 6 and backend.max_in_flight > 1


def test_poisson_gaps_are_exponential_with_the_right_mean() -> None:
    gaps = poisson_gaps(20000, 4.0, random.Random(1))
    assert gaps[-1] == 0.0 and all(g > 0 for g in gaps[:-1])
    assert statistics.fmean(gaps[:-1]) == pytest.approx(0.25, rel=0.03)
    # an exponential distribution's standard deviation equals its mean
    assert statistics.pstdev(gaps[:-1]) == pytest.approx(0.25, rel=0.05)
    with pytest.raises(ValueError):
        poisson_gaps(3, 0.0, random.Random(1))


def test_failures_and_timeouts_are_counted_not_raised() -> None:
    backend = ScriptedBackend()
    work = requests(3) + requests(1, "FAIL") + requests(1, "HANG")
    pattern = LoadPattern(concurrency=5, timeout_s=0.3)
    metrics = asyncio.run(run_benchmark(backend, work, pattern, GenerationOptions(), False))
    assert (metrics.completed, metrics.failed) == (3, 2)
    assert any("reset by peer" in e for e in metrics.errors)
    assert any("within 0.3 s" in e for e in metrics.errors)


def test_text_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    bar = _TextProgress(3, "run")
    for _ in range(3):
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "run [" in err and "3/3" in err and "#" * _TextProgress.WIDTH in err
