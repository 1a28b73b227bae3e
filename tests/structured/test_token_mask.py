"""The sampler's token masks against the grammar matcher: the C kernel against its numpy twin over
odd vocabulary sizes, and the allowed set the samplers keep equal to xgrammar's, step by step."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyserve.fastpath.core.request import EngineRequest, SamplingParams, StoppingParams
from cyserve.fastpath.core.sequence import Sequence
from cyserve.fastpath.model.cpu_sampler import sample
from cyserve.fastpath.structured import Constraint
from cyserve.fastpath.structured.masks import (
    allowed_tokens,
    bitmask_words,
    reference_apply_token_bitmask,
    token_masks,
)
from cyserve.fastpath.structured.token_mask import apply_token_bitmask, apply_token_bitmask_rows
from cyserve.fastpath.structured.vocab import token_bytes


@settings(max_examples=60, deadline=None)
@given(vocab=st.integers(1, 300), seed=st.integers(0, 2**32 - 1), density=st.floats(0.0, 1.0))
def test_kernel_matches_the_numpy_reference(vocab, seed, density):
    rng = np.random.default_rng(seed)
    words = bitmask_words(vocab) + int(rng.integers(0, 2))  # a wider mask is allowed
    bits = rng.random(words * 32) < density
    bitmask = np.packbits(bits, bitorder="little").view("<i4").astype(np.int32)
    row = rng.standard_normal(vocab).astype(np.float32)
    expected = reference_apply_token_bitmask(row, bitmask)
    apply_token_bitmask(row, bitmask)
    np.testing.assert_array_equal(row, expected)
    assert set(np.flatnonzero(np.isfinite(row))) == set(np.flatnonzero(bits[:vocab]))


def test_rows_kernel_touches_only_listed_rows():
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((5, 77)).astype(np.float32)
    bitmask = rng.integers(-2**31, 2**31, size=(5, bitmask_words(77)), dtype=np.int64).astype(np.int32)
    before = logits.copy()
    apply_token_bitmask_rows(logits, bitmask, np.array([1, 3], dtype=np.intp))
    for r in range(5):
        expected = reference_apply_token_bitmask(before[r], bitmask[r]) if r in (1, 3) else before[r]
        np.testing.assert_array_equal(logits[r], expected)


def test_a_short_bitmask_is_refused():
    with pytest.raises(ValueError, match="covers 32 tokens"):
        apply_token_bitmask(np.zeros(33, np.float32), np.zeros(1, np.int32))


def test_vocabulary_bytes_spell_what_the_tokenizer_decodes(tokenizer, vocab_size):
    table = token_bytes(tokenizer, vocab_size)
    assert len(table) == vocab_size
    ids = tokenizer.encode("Hello, wörld!\n  {\"a\": 1}")
    assert b"".join(table[i] for i in ids).decode() == tokenizer.decode(ids)
    assert all(table[i] == b"" for i in range(vocab_size) if tokenizer.is_special(i))


def _sequence(prompt: list[int], constraint: Constraint, grammars) -> Sequence:
    req = EngineRequest("r", prompt, SamplingParams(temperature=0.0), StoppingParams(max_tokens=64),
                        constraint=constraint)
    seq = Sequence(req, 1, list(prompt), len(prompt), len(prompt) + 64)
    seq.matcher = grammars.compile(constraint).new_matcher()
    return seq


SCHEMA = json.dumps({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                                       "tag": {"enum": ["x", "y"]}},
                     "required": ["n", "tag"]})


@pytest.mark.parametrize("constraint", [Constraint("json_schema", SCHEMA), Constraint("regex", r"ab?[0-9]{2,3}"),
                                        Constraint("choice", ("red", "green", "blue"))],
                         ids=lambda c: c.kind)
def test_sampler_keeps_exactly_the_matchers_allowed_set(constraint, grammars, vocab_size, eos_ids):
    """Step by step with random logits: every token the sampler can still pick (finite after its
    processing) is one xgrammar's own matcher allows, and every allowed one stays finite; the
    picked token advances both."""
    import xgrammar as xgr

    seq = _sequence([1, 2, 3], constraint, grammars)
    oracle = xgr.GrammarMatcher(grammars.compile(constraint)._compiled)
    rng = np.random.default_rng(0)
    for _ in range(40):
        masks = token_masks([seq], vocab_size)
        expected = xgr.allocate_token_bitmask(1, vocab_size)
        oracle.fill_next_token_bitmask(expected, 0)
        allowed = allowed_tokens(expected.numpy()[0], vocab_size)
        np.testing.assert_array_equal(allowed_tokens(masks.bitmask[0], vocab_size), allowed)
        logits = rng.standard_normal((1, vocab_size)).astype(np.float32) * 5
        kept = reference_apply_token_bitmask(logits[0], masks.bitmask[0])
        np.testing.assert_array_equal(np.flatnonzero(np.isfinite(kept)), allowed)
        token = sample(logits, [seq], eos_ids, None, masks)[0]
        assert token in set(allowed.tolist())
        if token in eos_ids:
            assert oracle.is_completed()
            break
        assert oracle.accept_token(token)
        seq.token_ids.append(token)
    else:
        pytest.fail("the constraint never let the sequence end")


def test_unconstrained_batches_build_no_mask(vocab_size):
    seqs = [SimpleNamespace(matcher=None) for _ in range(3)]
    assert token_masks(seqs, vocab_size) is None


def test_matcher_follows_the_sequence_back_and_forth(grammars, tokenizer):
    """sync() accepts what the sequence gained and rolls back what it lost (the sequence's tokens
    are the truth), so a rebuilt batch after preemption needs nothing of the matcher."""
    matcher = grammars.compile(Constraint("regex", "[a-z]+ [0-9]+")).new_matcher()
    ids = tokenizer.encode("abc 12")
    matcher.sync(ids)
    assert matcher.is_completed()
    matcher.sync(ids[:1])
    assert matcher.num_accepted == 1 and not matcher.is_completed()
    matcher.sync(ids)
    assert matcher.is_completed()
    matcher.reset()
    assert matcher.num_accepted == 0
    with pytest.raises(RuntimeError, match="breaks the constraint"):
        matcher.sync(tokenizer.encode("ABC"))


def test_compiled_grammars_are_cached(grammars):
    before = grammars.num_compiled
    a = grammars.compile(Constraint("regex", "[xy]{4}", field="sampling.constraint.regex"))
    b = grammars.compile(Constraint("regex", "[xy]{4}", field="other.field"))
    assert grammars.num_compiled == before + 1
    assert a._compiled is b._compiled
    assert a.new_matcher() is not b.new_matcher()


def _seeded_sequence(index: int, prompt: list[int], params: SamplingParams, constraint: Constraint | None,
                     grammars) -> Sequence:
    from cyserve.fastpath.model.cpu_sampler import seed_state

    req = EngineRequest(f"r{index}", prompt, params, StoppingParams(max_tokens=48), constraint=constraint)
    seq = Sequence(req, index, list(prompt), len(prompt), len(prompt) + 48, rng_state=seed_state(500 + index))
    if constraint is not None:
        seq.matcher = grammars.compile(constraint).new_matcher()
    return seq


MIXED_BATCH = [  # (sampling, constraint): constrained and free rows, greedy and sampled, interleaved
    (SamplingParams(temperature=0.0), Constraint("json_schema", SCHEMA)),
    (SamplingParams(temperature=1.0, top_p=0.9), None),
    (SamplingParams(temperature=0.8, top_k=20), Constraint("regex", r"ab?[0-9]{2,3}")),
    (SamplingParams(temperature=0.0), None),
    (SamplingParams(temperature=1.2, min_p=0.02), Constraint("choice", ("red", "green", "blue"))),
]


def test_device_sampler_masks_match_the_cpu_sampler_and_xgrammar(grammars, vocab_size, eos_ids):
    """A mixed batch stepped through the device sampler (torch, float64 on the CPU device) and the
    CPU sampler side by side: each constrained row keeps exactly the set xgrammar's own matcher
    allows, the free rows are untouched, and both samplers pick the same token for every row."""
    torch = pytest.importorskip("torch")
    import xgrammar as xgr

    from cyserve.fastpath.model.device_sampler import DeviceSampler, _masked

    def build() -> list[Sequence]:
        return [_seeded_sequence(i, [1, 2, 3 + i], params, constraint, grammars)
                for i, (params, constraint) in enumerate(MIXED_BATCH)]

    device_seqs, host_seqs = build(), build()
    oracles = {i: xgr.GrammarMatcher(grammars.compile(c)._compiled) for i, (_, c) in enumerate(MIXED_BATCH)
               if c is not None}
    sampler = DeviceSampler("cpu", torch.float64)
    rng = np.random.default_rng(3)
    live = list(range(len(MIXED_BATCH)))
    for _ in range(40):
        if not any(i in oracles for i in live):
            break
        dev_batch, host_batch = [device_seqs[i] for i in live], [host_seqs[i] for i in live]
        masks = token_masks(dev_batch, vocab_size)
        host_masks = token_masks(host_batch, vocab_size)
        logits = (rng.standard_normal((len(live), vocab_size)) * 4).astype(np.float32)

        masked = _masked(torch.from_numpy(logits.copy()), masks).numpy()
        for row, i in enumerate(live):
            if i in oracles:
                expected = xgr.allocate_token_bitmask(1, vocab_size)
                oracles[i].fill_next_token_bitmask(expected, 0)
                np.testing.assert_array_equal(np.flatnonzero(np.isfinite(masked[row])),
                                              allowed_tokens(expected.numpy()[0], vocab_size))
            else:
                np.testing.assert_array_equal(masked[row], logits[row])

        got = sampler.sample(torch.from_numpy(logits.copy()), dev_batch, eos_ids, None, masks)
        want = sample(logits, host_batch, eos_ids, None, host_masks)
        assert got == want
        assert [s.rng_state for s in dev_batch] == [s.rng_state for s in host_batch]
        finished = []
        for row, i in enumerate(live):
            token = got[row]
            if i in oracles:
                if token in eos_ids:
                    assert oracles[i].is_completed()
                    finished.append(i)
                    continue
                assert oracles[i].accept_token(token)
            device_seqs[i].token_ids.append(token)
            host_seqs[i].token_ids.append(token)
        live = [i for i in live if i not in finished]
    assert not any(i in oracles for i in live), "a constrained row never finished"
