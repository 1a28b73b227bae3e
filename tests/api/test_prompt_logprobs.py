"""Prompt logprobs (OutputOptions.prompt_logprobs) end to end, on real servers around the default
model: against the transformers fp32 oracle, across chunked prefills, with the prefix cache on.

Tolerance: our CPU path quantizes activations to 8-bit blocks (as llama.cpp does) and keeps K/V
in fp16; the oracle runs fp32 on the same dequantized weights. Measured |logprob diff| of the
prompt tokens on these prompts: max 0.18 and 0.23 nats, most under 0.05; we allow LOGPROB_ATOL
for any one value and LOGPROB_MEAN_ATOL on average.
"""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from server_support import serving, violation_fields

from cyserve.fastpath.engine import Engine
from cyserve.fastpath.engine_config import EngineConfig
from cyserve.fastpath.core.request import EngineRequest, RequestOutput, SamplingParams, StoppingParams
from cyserve.fastpath.model.cpu_sampler import rows_logprobs
from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

LOGPROB_ATOL = 0.5
LOGPROB_MEAN_ATOL = 0.08
TOP_K = 5
CHUNK_TOKENS = 16  # the chunked server's token budget per step: prompts span several chunks
# Over the scheduler's 128-row cap for prompt-logprob chunks, under the API tests' 200-token limit.
LONG_PROMPT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based ink and a wooden screw press. Within decades, print "
    "shops spread across Europe, books became cheaper, and literacy rose. Scholars could compare "
    "identical copies of a text, which changed how knowledge was checked and shared. Newspapers, "
    "pamphlets and scientific journals followed, and the speed of ideas grew with every new press "
    "that was built in a city. Governments tried to license printers, churches published lists "
    "of banned books, and authors began to ask who owned the words they wrote. The first "
    "copyright law, the Statute of Anne, was passed in 1710. Historians still debate how much"
)
SHORT_PROMPT = "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of"


def scoring_request(prompt: str, k: int = TOP_K, max_tokens: int = 1, **fields: Any) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(temperature=0),
                              stopping=pb.StoppingCriteria(max_tokens=max_tokens),
                              output=pb.OutputOptions(prompt_logprobs=k), **fields)


def scores(response: pb.GenerateResponse) -> np.ndarray:
    return np.array([entry.logprob for entry in response.prompt_logprobs])


@pytest.fixture(scope="module")
def chunked(model_path: str) -> Iterator[pb_grpc.GenerationStub]:
    """A server whose engine prefills CHUNK_TOKENS tokens per step, with prefix caching on."""
    engine = Engine.from_config(EngineConfig(model_path=model_path, kv_cache_bytes=32 << 20,
                                             max_num_batched_tokens=CHUNK_TOKENS,
                                             enable_prefix_caching=True))
    engine.start()
    try:
        with serving(engine) as server, grpc.insecure_channel(server.address) as channel:
            yield pb_grpc.GenerationStub(channel)
    finally:
        engine.stop()


@pytest.mark.oracle
@pytest.mark.parametrize("prompt", [SHORT_PROMPT, LONG_PROMPT])
def test_prompt_logprobs_match_the_oracle(api_stub, engine, oracle, prompt):
    ids = engine.tokenizer.encode(prompt)
    response = api_stub.Generate(scoring_request(prompt), timeout=300)
    assert [e.token_id for e in response.prompt_logprobs] == ids[1:]
    logits = oracle.logits(ids).astype(np.float64)  # [n, vocab]: row p predicts token p + 1
    ref = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    want = ref[np.arange(len(ids) - 1), ids[1:]]
    got = scores(response)
    assert np.abs(got - want).max() < LOGPROB_ATOL, np.abs(got - want).max()
    assert np.abs(got - want).mean() < LOGPROB_MEAN_ATOL, np.abs(got - want).mean()
    for position, entry in enumerate(response.prompt_logprobs):
        top = [t.token_id for t in entry.top_logprobs]
        top_lps = np.array([t.logprob for t in entry.top_logprobs])
        assert len(top) == TOP_K == len(set(top))
        assert np.all(np.diff(top_lps) <= 0), "alternatives must come most likely first"
        assert np.abs(top_lps - ref[position, top]).max() < LOGPROB_ATOL
        # Our best is the oracle's best, up to the quantization noise between near ties.
        assert ref[position, top[0]] > ref[position].max() - LOGPROB_ATOL
        assert entry.logprob <= top_lps[0] + 1e-6 and entry.token == engine.tokenizer.id_to_piece(entry.token_id)


def test_chunked_prefill_gives_the_scores_of_one_pass(api_stub, chunked):
    whole = api_stub.Generate(scoring_request(LONG_PROMPT), timeout=300)
    in_chunks = chunked.Generate(scoring_request(LONG_PROMPT), timeout=300)
    assert [e.token_id for e in in_chunks.prompt_logprobs] == [e.token_id for e in whole.prompt_logprobs]
    assert np.abs(scores(in_chunks) - scores(whole)).max() < 1e-3
    assert in_chunks.token_ids == whole.token_ids


def test_prefix_cache_is_skipped_for_scoring_but_filled_for_others(chunked):
    prompt = SHORT_PROMPT + " Italy. Madrid is the capital of"  # not in the cache yet
    first = chunked.Generate(scoring_request(prompt), timeout=300)
    second = chunked.Generate(scoring_request(prompt), timeout=300)
    assert len(first.prompt_logprobs) == first.usage.prompt_tokens - 1
    assert list(second.prompt_logprobs) == list(first.prompt_logprobs)
    assert first.usage.cached_prompt_tokens == second.usage.cached_prompt_tokens == 0
    plain = chunked.Generate(pb.GenerateRequest(prompt=prompt, stopping=pb.StoppingCriteria(max_tokens=1)),
                             timeout=300)
    assert plain.usage.cached_prompt_tokens >= CHUNK_TOKENS and not plain.prompt_logprobs


def test_long_prompts_are_scored_in_capped_chunks(engine):
    """The session engine's budget (512 tokens) would take the prompt in one chunk; scoring caps
    chunks at 128 rows of logits."""
    ids = engine.tokenizer.encode(LONG_PROMPT)
    assert 128 < len(ids) <= 256

    async def run(prompt_logprobs: int | None) -> list[RequestOutput]:
        request = EngineRequest(uuid.uuid4().hex, ids,
                                SamplingParams(temperature=0, prompt_logprobs=prompt_logprobs),
                                StoppingParams(max_tokens=1))
        return [output async for output in engine.generate(request)]

    scored = asyncio.run(run(1))
    assert scored[-1].timings.num_prefill_chunks == 2
    assert scored[0].prompt_logprobs.token_ids == ids[1:]
    plain = asyncio.run(run(None))
    assert plain[-1].timings.num_prefill_chunks == 1 and plain[0].prompt_logprobs is None


def test_stream_carries_them_in_the_first_message_of_completion_0(chunked):
    request = scoring_request(SHORT_PROMPT, k=2, max_tokens=4)
    request.sampling.n = 2
    request.sampling.temperature = 0.7
    request.stopping.ignore_eos = True
    messages = list(chunked.GenerateStream(request, timeout=300))
    carrying = [m for m in messages if m.prompt_logprobs]
    assert len(carrying) == 1 and carrying[0].index == 0
    assert carrying[0] is next(m for m in messages if m.index == 0)
    assert carrying[0].params.output.prompt_logprobs == 2
    assert all(len(e.top_logprobs) == 2 for e in carrying[0].prompt_logprobs)


def test_zero_alternatives_scores_the_prompt_tokens_only(chunked):
    response = chunked.Generate(scoring_request(SHORT_PROMPT, k=0), timeout=300)
    assert response.prompt_logprobs and all(not e.top_logprobs for e in response.prompt_logprobs)
    assert all(e.logprob <= 0.0 for e in response.prompt_logprobs)


def test_over_the_limit_is_invalid_argument(api_stub):
    caps = api_stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30)
    assert caps.prompt_logprobs
    with pytest.raises(grpc.RpcError) as err:
        api_stub.Generate(scoring_request(SHORT_PROMPT, k=caps.max_logprobs + 1), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violation_fields(err.value) == ["output.prompt_logprobs"]


@settings(max_examples=60, deadline=None)
@given(
    logits=hnp.arrays(np.float32, st.tuples(st.integers(1, 70), st.integers(2, 40)),
                      elements=st.floats(-30, 30, width=32)),
    num_top=st.integers(0, 50),
    data=st.data(),
)
def test_rows_logprobs_is_log_softmax_and_top_k(logits, num_top, data):
    rows, vocab = logits.shape
    targets = data.draw(hnp.arrays(np.int64, rows, elements=st.integers(0, vocab - 1)))
    lp, top_ids, top_lp = rows_logprobs(logits, targets, num_top)
    x = logits.astype(np.float64)
    ref = x - np.logaddexp.reduce(x, axis=1, keepdims=True)
    np.testing.assert_allclose(lp, ref[np.arange(rows), targets], atol=1e-4)
    k = min(num_top, vocab)
    assert top_ids.shape == top_lp.shape == (rows, k)
    np.testing.assert_allclose(top_lp, np.take_along_axis(ref, top_ids, axis=1), atol=1e-4)
    assert np.all(np.diff(top_lp, axis=1) <= 0)
    if k:  # the k best values, whichever ids tie
        np.testing.assert_allclose(top_lp, -np.sort(-ref, axis=1)[:, :k], atol=1e-4)
