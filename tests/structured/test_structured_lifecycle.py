"""Constrained requests through the rest of a request's life on a real server and the default
model: a prefix-cache hit, a client cancelling mid-stream, and preemption with recompute. Each
must leave the grammar state and the KV cache as an unconstrained request would: outputs that
validate, the same tokens for the same seed, and every block free afterwards."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import jsonschema
import pytest
from server_support import serving, wait_until

from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

S, T, C = pb.SamplingParams, pb.StoppingCriteria, pb.OutputConstraint

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 12},
    "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"]}


def _numbers(count: int) -> dict:
    """An object whose output has a known, bounded length: exactly `count` small integers."""
    return {"type": "object", "properties": {"values": {
        "type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
        "minItems": count, "maxItems": count}}, "required": ["values"]}


def _chat(text: str, schema: dict, seed: int, max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content=text)],
                              sampling=S(temperature=0.8, seed=seed, constraint=C(json_schema=json.dumps(schema))),
                              stopping=T(max_tokens=max_tokens))


def _idle(engine) -> bool:
    s = engine.stats()
    return s.num_running == 0 and s.num_waiting == 0 and s.num_free_blocks == s.num_total_blocks


def _valid(response: pb.GenerateResponse, schema: dict) -> None:
    assert response.finish_reason == pb.FINISH_REASON_EOS, (response.finish_reason, response.text)
    jsonschema.validate(json.loads(response.text), schema)


def test_a_prefix_cache_hit_gives_the_same_valid_output(stub):
    # A user turn no other test sends, longer than a block, so that only the second request
    # can find its blocks cached.
    text = ("Lifecycle check 7f3a: invent a person who keeps bees on a rooftop in a northern harbour "
            "town and describe them as JSON with a name and an age.")
    first = stub.Generate(_chat(text, PERSON, seed=11, max_tokens=48), timeout=120)
    second = stub.Generate(_chat(text, PERSON, seed=11, max_tokens=48), timeout=120)
    assert second.usage.cached_prompt_tokens > first.usage.cached_prompt_tokens
    assert second.usage.cached_prompt_tokens >= 16, "at least the user turn's first full block"
    assert second.text == first.text and list(second.token_ids) == list(first.token_ids)
    _valid(first, PERSON)


def test_a_cancelled_constrained_stream_frees_everything(stub, engine):
    long = _numbers(40)  # ~100 tokens: far from done after the first message
    stream = stub.GenerateStream(_chat("Forty numbers as JSON.", long, seed=3, max_tokens=200), timeout=120)
    first = next(stream)
    assert first.finish_reason == pb.FINISH_REASON_UNSPECIFIED and first.token_ids
    stream.cancel()
    with pytest.raises(grpc.RpcError) as err:
        list(stream)
    assert err.value.code() == grpc.StatusCode.CANCELLED
    assert wait_until(lambda: _idle(engine), timeout=30), engine.stats()
    # The next constrained request starts from fresh grammar state and validates.
    _valid(stub.Generate(_chat("A person as JSON.", PERSON, seed=4, max_tokens=48), timeout=120), PERSON)
    assert wait_until(lambda: _idle(engine), timeout=30), engine.stats()


@pytest.fixture(scope="module")
def small_engine(model_path):
    """Eight KV blocks (128 tokens) in all: a few constrained requests at once cannot all fit."""
    from cyserve.fastpath.engine import Engine
    from cyserve.fastpath.engine_config import EngineConfig

    eng = Engine.from_config(EngineConfig(model_path=model_path, kv_cache_bytes=8 * 368640, max_num_seqs=8))
    eng.start()
    yield eng
    eng.stop()


def test_preempted_constrained_requests_resume_to_the_same_valid_outputs(small_engine):
    schema = _numbers(10)  # ~30 output tokens after a ~30-token chat prompt: ~4 blocks each
    requests = [_chat(f"Ten numbers as JSON, set {i}.", schema, seed=20 + i, max_tokens=80) for i in range(4)]
    with serving(small_engine) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GenerationStub(channel)
        alone = [stub.Generate(r, timeout=120) for r in requests]
        assert small_engine.stats().num_preemptions == 0, "test premise: one at a time fits"
        with ThreadPoolExecutor(len(requests)) as pool:
            together = list(pool.map(lambda r: stub.Generate(r, timeout=300), requests))
        assert small_engine.stats().num_preemptions > 0, "test premise: all four at once do not fit"
        for a, t in zip(alone, together):
            _valid(t, schema)
            # recompute after preemption replays the same tokens through the same grammar state
            assert list(t.token_ids) == list(a.token_ids), (a.text, t.text)
        assert wait_until(lambda: _idle(small_engine), timeout=30), small_engine.stats()
