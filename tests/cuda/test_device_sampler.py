"""The device sampler (torch, the GPU path's) against the host sampler (Cython, the CPU path's).

Runs on torch's CPU device in every CI job; on a GPU the same class runs the same torch ops. In
float64 the device sampler does the host sampler's arithmetic, so the two must pick the same token
for every row and leave every sequence's generator in the same state; in float32 (the GPU default)
they may differ only where the uniform draw lands within round-off of a boundary.
"""
import numpy as np
import pytest
import torch

from cyserve.fastpath.model import cpu_sampler as host
from cyserve.fastpath.model.device_sampler import DeviceSampler
from cyserve.fastpath.core.request import EngineRequest, SamplingParams, StoppingParams
from cyserve.fastpath.core.sequence import Sequence

VOCAB = 300
EOS = 7

SETTINGS = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7, top_k=5),
    SamplingParams(temperature=1.3, top_p=0.8),
    SamplingParams(temperature=0.9, min_p=0.05),
    SamplingParams(temperature=1.0, top_k=40, top_p=0.9, min_p=0.02),
    SamplingParams(temperature=1.0, top_k=VOCAB + 5),  # a k over the vocabulary cuts nothing
    SamplingParams(temperature=0.8, repetition_penalty=1.3),
    SamplingParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.7),
    SamplingParams(temperature=1.1, logit_bias=((3, 4.0), (11, -2.5), (3, 1.0))),
    SamplingParams(temperature=0.0, repetition_penalty=0.8, logit_bias=((EOS, 50.0),)),
    SamplingParams(temperature=0.5, top_p=0.3, logprobs=3),
    SamplingParams(temperature=0.0, logprobs=0),
]


def make_seq(params: SamplingParams, index: int, rng: np.random.Generator, min_tokens: int = 0) -> Sequence:
    prompt = [int(t) for t in rng.integers(0, VOCAB, 12)]
    req = EngineRequest(f"r{index}", prompt, sampling=params,
                        stopping=StoppingParams(min_tokens=min_tokens, stop_token_ids=(13,)))
    seq = Sequence(req, index, list(prompt), len(prompt), 64, rng_state=host.seed_state(1000 + index))
    seq.token_ids.extend(int(t) for t in rng.integers(0, VOCAB, 5))  # some output tokens to penalise
    return seq


def batch(rng: np.random.Generator, n: int) -> tuple[list[Sequence], np.ndarray]:
    seqs = [make_seq(SETTINGS[i % len(SETTINGS)], i, rng, min_tokens=10 if i % 4 == 0 else 0) for i in range(n)]
    logits = (rng.standard_normal((n, VOCAB)) * 3).astype(np.float32)
    logits[:, EOS] += 6.0  # EOS would often win: the min_tokens mask matters
    return seqs, logits


def twin(seqs: list[Sequence]) -> list[Sequence]:
    """The same sequences again, with their own generator states."""
    return [Sequence(s.request, s.arrival_index, list(s.token_ids), s.num_prompt_tokens, s.max_len,
                     rng_state=s.rng_state) for s in seqs]


@pytest.mark.parametrize("step", range(6))
def test_float64_picks_what_the_host_sampler_picks(step):
    rng = np.random.default_rng(step)
    seqs, logits = batch(rng, 3 * len(SETTINGS))
    theirs = twin(seqs)
    host_lp: list = []
    dev_lp: list = []
    want = host.sample(logits, theirs, (EOS,), host_lp)
    got = DeviceSampler("cpu", torch.float64).sample(torch.from_numpy(logits.copy()), seqs, (EOS,), dev_lp)
    assert got == want
    assert [s.rng_state for s in seqs] == [s.rng_state for s in theirs]
    for mine, ref in zip(dev_lp, host_lp):
        assert (mine is None) == (ref is None)
        if ref is not None:
            assert mine[0] == pytest.approx(ref[0], abs=1e-4)
            assert [t for t, _ in mine[1]] == [t for t, _ in ref[1]]
            np.testing.assert_allclose([v for _, v in mine[1]], [v for _, v in ref[1]], atol=1e-4)


def test_min_tokens_mask_and_bias_hold():
    rng = np.random.default_rng(1)
    params = SamplingParams(temperature=0.0, logit_bias=((EOS, 100.0), (13, 90.0)))
    masked = make_seq(params, 0, rng, min_tokens=50)
    free = make_seq(params, 1, rng, min_tokens=0)
    logits = torch.from_numpy(rng.standard_normal((2, VOCAB)).astype(np.float32))
    tokens = DeviceSampler("cpu").sample(logits, [masked, free], (EOS,))
    assert tokens[0] not in (EOS, 13)  # stop token and EOS are masked whatever their bias
    assert tokens[1] == EOS


def test_float32_agrees_with_the_host_sampler_almost_always():
    rng = np.random.default_rng(42)
    agree = total = 0
    for _ in range(20):
        seqs, logits = batch(rng, 2 * len(SETTINGS))
        theirs = twin(seqs)
        want = host.sample(logits, theirs, (EOS,))
        got = DeviceSampler("cpu", torch.float32).sample(torch.from_numpy(logits), seqs, (EOS,))
        agree += sum(a == b for a, b in zip(got, want))
        total += len(want)
    assert agree / total >= 0.99, f"{agree}/{total}"


def test_a_seed_gives_the_same_token_alone_and_batched():
    rng = np.random.default_rng(3)
    seqs, logits = batch(rng, 8)
    sampler = DeviceSampler("cpu")
    batched = sampler.sample(torch.from_numpy(logits), twin(seqs), (EOS,))
    alone = [sampler.sample(torch.from_numpy(logits[i:i + 1]), twin(seqs[i:i + 1]), (EOS,))[0] for i in range(8)]
    assert batched == alone


def test_sampled_frequencies_follow_the_distribution():
    """Temperature 1 over four tokens: 4000 draws land in proportion to softmax (within 4 sigma)."""
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    seq = make_seq(SamplingParams(temperature=1.0), 0, np.random.default_rng(0))
    sampler = DeviceSampler("cpu")
    row = torch.from_numpy(logits[None, :])
    counts = np.bincount([sampler.sample(row.clone(), [seq])[0] for _ in range(4000)], minlength=4)
    expected = 4000 * np.array([0.5, 0.3, 0.15, 0.05])
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected)), counts


def test_rows_logprobs_match_the_host():
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal((300, VOCAB)) * 4).astype(np.float32)  # over one slice of rows
    targets = rng.integers(0, VOCAB, 300)
    want = host.rows_logprobs(logits, targets, 4)
    got = DeviceSampler("cpu").rows_logprobs(torch.from_numpy(logits), targets, 4)
    np.testing.assert_allclose(got[0], want[0], atol=1e-4)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], atol=1e-4)
    empty = DeviceSampler("cpu").rows_logprobs(torch.zeros((0, VOCAB)), [], 2)
    assert [a.shape for a in empty] == [(0,), (0, 2), (0, 2)]


def test_raw_logits_stay_raw_when_logprobs_are_wanted():
    rng = np.random.default_rng(9)
    seq = make_seq(SamplingParams(temperature=0.0, logit_bias=((5, 30.0),), logprobs=1), 0, rng)
    logits = torch.from_numpy(rng.standard_normal((1, VOCAB)).astype(np.float32))
    before = logits.clone()
    out: list = []
    token = DeviceSampler("cpu").sample(logits, [seq], (), out)[0]
    assert token == 5
    assert torch.equal(logits, before)
    assert out[0][0] == pytest.approx(float(torch.log_softmax(before[0], -1)[5]), abs=1e-5)


def test_row_count_must_match():
    seqs, logits = batch(np.random.default_rng(0), 3)
    with pytest.raises(ValueError, match="2 logits rows for 3 sequences"):
        DeviceSampler("cpu").sample(torch.from_numpy(logits[:2]), seqs)
