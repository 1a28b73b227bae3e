"""Prompts of exact token lengths, built against fake tokenizers whose words cost one or more
tokens (and which may add a BOS token), and the length distributions."""
from __future__ import annotations

import asyncio
import random

import pytest

from cyserve.loadgen.workload import WORDS, PromptBuilder, WorkloadSpec, build_workload, sample_lengths


def fake_counter(bos: bool):
    """Words of 6+ letters cost 2 tokens, longer than 9 cost 3; optionally one BOS token."""
    calls: list[str] = []

    async def count(text: str) -> int:
        calls.append(text)
        return int(bos) + sum(1 + len(word) // 6 + len(word) // 10 for word in text.split())

    return count, calls


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("num_tokens", [1, 2, 7, 64, 257])
def test_prompts_have_exactly_the_asked_length(bos: bool, num_tokens: int) -> None:
    count, _ = fake_counter(bos)

    async def build() -> tuple[str, int]:
        builder = PromptBuilder(count)
        await builder.prepare()
        return await builder.build(num_tokens, random.Random(num_tokens))

    text, length = asyncio.run(build())
    assert length == num_tokens
    assert asyncio.run(count(text)) == num_tokens
    assert all(word in WORDS for word in text.split())


def test_workload_lengths_prefix_and_determinism() -> None:
    count, _ = fake_counter(bos=True)
    spec = WorkloadSpec(num_requests=12, input_len=40, output_len=20, range_ratio=0.5,
                        shared_prefix_len=16, seed=7)
    requests = asyncio.run(build_workload(spec, count))
    again = asyncio.run(build_workload(spec, count))
    assert requests == again  # same seed, same tokenizer: same workload for every system
    # 16 prefix tokens hold at least 6 words (a word costs at most 3 tokens)
    assert len({tuple(r.prompt.split()[:5]) for r in requests}) == 1
    for r in requests:
        assert r.prompt_len == asyncio.run(count(r.prompt))
        # 16 shared + 20..60 own tokens (the BOS is counted once, in the whole prompt)
        assert 16 + 20 <= r.prompt_len <= 16 + 60 + 1
        assert 10 <= r.output_len <= 30
    assert len({r.prompt for r in requests}) == len(requests)
    other = asyncio.run(build_workload(WorkloadSpec(12, 40, 20, 0.5, 16, seed=8), count))
    assert [r.prompt for r in other] != [r.prompt for r in requests]


def test_fixed_lengths_when_range_ratio_is_zero() -> None:
    count, _ = fake_counter(bos=False)
    requests = asyncio.run(build_workload(WorkloadSpec(5, 33, 9), count))
    assert [r.prompt_len for r in requests] == [33] * 5
    assert [r.output_len for r in requests] == [9] * 5


def test_sample_lengths_stay_in_range_and_cover_it() -> None:
    lengths = sample_lengths(100, 0.25, 2000, random.Random(0))
    assert min(lengths) == 75 and max(lengths) == 125
    assert set(sample_lengths(1, 0.9, 50, random.Random(0))) == {1, 2}  # never below 1


def test_spec_bounds() -> None:
    spec = WorkloadSpec(num_requests=1, input_len=100, output_len=10, range_ratio=0.5,
                        shared_prefix_len=20)
    assert spec.max_prompt_len == 170 and spec.max_output_len == 15
