"""What one benchmark run measured: per-request timings in, summary statistics out.

The conventions are those of vLLM's serving benchmark, so figures compare with what people
already quote:
  TTFT  time from sending a request to its first streamed token;
  TPOT  per request, (e2e latency - TTFT) / (output tokens - 1), only for requests with > 1 token;
  ITL   every gap between two consecutive streamed chunks that carried tokens, pooled over requests;
  E2EL  time from sending a request to its last message.
Percentiles interpolate linearly between order statistics (numpy's default `linear` method).
Times are kept in seconds and reported in milliseconds.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PERCENTILES = (50, 90, 99)


@dataclass
class RequestResult:
    """The timings of one request, as the client saw them."""

    prompt_len: int  # tokens the workload asked for (shared prefix included)
    output_len: int  # max_tokens requested
    success: bool = False
    output_tokens: int = 0  # tokens actually generated
    ttft: float = 0.0  # seconds
    itl: list[float] = field(default_factory=list)  # seconds, one per chunk after the first
    latency: float = 0.0  # seconds, end to end
    error: str = ""

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first; None when there is no second token."""
        if self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


@dataclass(frozen=True)
class Distribution:
    """mean and percentiles of one quantity, in milliseconds (all 0.0 when nothing was measured,
    as vLLM reports an empty distribution)."""

    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of_seconds(cls, values: Sequence[float]) -> Distribution:
        if not values:
            return cls(0.0, 0.0, 0.0, 0.0)
        ms = [v * 1000.0 for v in values]
        p50, p90, p99 = (percentile(ms, q) for q in PERCENTILES)
        return cls(sum(ms) / len(ms), p50, p90, p99)


@dataclass
class BenchmarkMetrics:
    """The summary of one run; `to_json()` is what `cyserve bench --json` prints."""

    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float  # completed requests per second
    output_throughput: float  # generated tokens per second
    total_token_throughput: float  # prompt + generated tokens per second
    ttft_ms: Distribution
    tpot_ms: Distribution
    itl_ms: Distribution
    e2el_ms: Distribution
    errors: list[str] = field(default_factory=list)  # the first few distinct failure messages

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


MAX_ERRORS_KEPT = 5


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) with linear interpolation between the two nearest
    ranks: rank = q/100 * (n - 1) over the sorted values (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside [0, 100]")
    ordered = sorted(values)
    rank = q / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(results: Sequence[RequestResult], duration_s: float) -> BenchmarkMetrics:
    """Statistics over the successful requests; throughputs over the run's wall time."""
    if duration_s <= 0:
        raise ValueError(f"duration must be positive, got {duration_s}")
    done = [r for r in results if r.success]
    total_input = sum(r.prompt_len for r in done)
    total_output = sum(r.output_tokens for r in done)
    errors: list[str] = []
    for r in results:
        if not r.success and r.error not in errors and len(errors) < MAX_ERRORS_KEPT:
            errors.append(r.error)
    return BenchmarkMetrics(
        completed=len(done),
        failed=len(results) - len(done),
        duration_s=duration_s,
        total_input_tokens=total_input,
        total_output_tokens=total_output,
        request_throughput=len(done) / duration_s,
        output_throughput=total_output / duration_s,
        total_token_throughput=(total_input + total_output) / duration_s,
        ttft_ms=Distribution.of_seconds([r.ttft for r in done]),
        tpot_ms=Distribution.of_seconds([t for r in done if (t := r.tpot) is not None]),
        itl_ms=Distribution.of_seconds([gap for r in done for gap in r.itl]),
        e2el_ms=Distribution.of_seconds([r.latency for r in done]),
        errors=errors,
    )


def format_report(label: str, metrics: BenchmarkMetrics) -> str:
    """A human-readable block in the layout of vLLM's serving benchmark."""
    rule = "=" * 50
    lines = [
        f"{f' {label} ':=^50}",
        f"{'Successful requests:':<40}{metrics.completed:>10}",
        f"{'Failed requests:':<40}{metrics.failed:>10}",
        f"{'Benchmark duration (s):':<40}{metrics.duration_s:>10.2f}",
        f"{'Total input tokens:':<40}{metrics.total_input_tokens:>10}",
        f"{'Total generated tokens:':<40}{metrics.total_output_tokens:>10}",
        f"{'Request throughput (req/s):':<40}{metrics.request_throughput:>10.2f}",
        f"{'Output token throughput (tok/s):':<40}{metrics.output_throughput:>10.2f}",
        f"{'Total token throughput (tok/s):':<40}{metrics.total_token_throughput:>10.2f}",
    ]
    for title, dist in (
        ("Time to First Token", metrics.ttft_ms),
        ("Time per Output Token (excl. 1st token)", metrics.tpot_ms),
        ("Inter-token Latency", metrics.itl_ms),
        ("End-to-end Latency", metrics.e2el_ms),
    ):
        lines.append(f"{title:-^50}")
        lines.append(f"{'Mean (ms):':<40}{dist.mean:>10.2f}")
        for q in PERCENTILES:
            lines.append(f"{f'P{q} (ms):':<40}{getattr(dist, f'p{q}'):>10.2f}")
    lines.append(rule)
    lines.extend(f"error: {e}" for e in metrics.errors)
    return "\n".join(lines)
