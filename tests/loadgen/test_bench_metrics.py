"""The benchmark's statistics on synthetic timings, against values worked out by hand (vLLM's
conventions: TPOT = (e2e - TTFT) / (tokens - 1), ITL = gaps between streamed chunks, linear
percentiles)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cyserve.loadgen import backends
from cyserve.loadgen.metrics import Distribution, RequestResult, format_report, percentile, summarize


def test_percentile_interpolates_between_ranks() -> None:
    # rank = q/100 * (n - 1): 1.5 -> halfway between 2 and 3; 2.7 -> 3.7; 2.97 -> 3.97
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile([10.0, 20.0, 30.0, 40.0, 50.0], 25) == 20.0
    assert percentile([7.0], 99) == 7.0


def test_percentile_rejects_nothing_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


@given(
    st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=1, max_size=50),
    st.floats(min_value=0, max_value=100),
)
def test_percentile_matches_numpy_default(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-9)


def test_tpot_excludes_the_first_token() -> None:
    r = RequestResult(prompt_len=8, output_len=5, success=True, output_tokens=5, ttft=0.1, latency=0.5)
    assert r.tpot == pytest.approx(0.1)  # (0.5 - 0.1) / (5 - 1)
    single = RequestResult(prompt_len=8, output_len=1, success=True, output_tokens=1, ttft=0.3, latency=0.3)
    assert single.tpot is None


def synthetic_results() -> list[RequestResult]:
    return [
        RequestResult(10, 5, True, 5, ttft=0.1, itl=[0.1, 0.1, 0.1, 0.1], latency=0.5),
        RequestResult(20, 3, True, 3, ttft=0.2, itl=[0.3, 0.7], latency=1.2),
        RequestResult(30, 4, False, 0, error="UNAVAILABLE: gone"),
        RequestResult(40, 1, True, 1, ttft=0.3, itl=[], latency=0.3),
    ]


def test_summarize_by_hand() -> None:
    m = summarize(synthetic_results(), duration_s=2.0)
    assert (m.completed, m.failed) == (3, 1)
    assert m.total_input_tokens == 70 and m.total_output_tokens == 9  # failures not counted
    assert m.request_throughput == pytest.approx(1.5)
    assert m.output_throughput == pytest.approx(4.5)
    assert m.total_token_throughput == pytest.approx(39.5)
    # TTFT [100, 200, 300] ms
    assert m.ttft_ms == pytest.approx(Distribution(200.0, 200.0, 280.0, 298.0))
    # TPOT: (500-100)/4 = 100 and (1200-200)/2 = 500; the 1-token request has none
    assert m.tpot_ms == pytest.approx(Distribution(300.0, 300.0, 460.0, 496.0))
    # ITL pooled: [100, 100, 100, 100, 300, 700]
    assert m.itl_ms == pytest.approx(Distribution(1400 / 6, 100.0, 500.0, 680.0))
    # E2EL [300, 500, 1200]
    assert m.e2el_ms == pytest.approx(Distribution(2000 / 3, 500.0, 1060.0, 1186.0))
    assert m.errors == ["UNAVAILABLE: gone"]


def test_json_has_the_documented_fields() -> None:
    out = json.loads(json.dumps(summarize(synthetic_results(), 2.0).to_json()))
    for key in ("completed", "request_throughput", "output_throughput"):
        assert key in out
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        assert set(out[key]) == {"mean", "p50", "p90", "p99"}
    assert out["itl_ms"]["p99"] == pytest.approx(680.0)


def test_nothing_measured_reports_zeros() -> None:
    m = summarize([RequestResult(5, 5, False, error="boom")], duration_s=1.0)
    assert m.completed == 0 and m.failed == 1
    assert m.ttft_ms == Distribution(0.0, 0.0, 0.0, 0.0)
    assert "boom" in format_report("x", m)


def test_report_shows_the_figures() -> None:
    text = format_report("cyserve", summarize(synthetic_results(), 2.0))
    assert "Successful requests:" in text and "680.00" in text and "4.50" in text


def test_stream_clock_turns_arrivals_into_ttft_and_gaps(monkeypatch: pytest.MonkeyPatch) -> None:
    # sent at 10.0; chunks of 1, 2 and 1 tokens at 10.5, 10.7, 11.0; the stream ends at 11.2
    ticks = iter([10.0, 10.5, 10.7, 11.0, 11.2])
    monkeypatch.setattr(backends.time, "perf_counter", lambda: next(ticks))
    result = RequestResult(prompt_len=4, output_len=4)
    clock = backends._StreamClock(result)
    for num_tokens in (1, 2, 1):
        clock.tokens_arrived(num_tokens)
    clock.finish()
    assert result.success and result.output_tokens == 4
    assert result.ttft == pytest.approx(0.5)
    assert result.itl == pytest.approx([0.2, 0.3])
    assert result.latency == pytest.approx(1.2)
    assert result.tpot == pytest.approx(0.7 / 3)


def test_stream_without_tokens_is_a_failure() -> None:
    result = RequestResult(prompt_len=4, output_len=4)
    clock = backends._StreamClock(result)
    clock.finish()
    assert not result.success and "without any token" in result.error
