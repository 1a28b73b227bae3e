"""Limits a hostile client probes: status details stay small however broken the request, a call
that could never be admitted is INVALID_ARGUMENT (not a retry hint), and Capabilities.max_tokens
is enforced (real engine)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from server_support import details_of, field_violations, serving, violation_fields

from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

VOCAB = 49152  # SmolLM2's vocabulary
INVALID = grpc.StatusCode.INVALID_ARGUMENT
METADATA_LIMIT = 8 << 10  # gRPC's default soft limit on received metadata


@pytest.fixture(scope="module")
def default_stub(engine: Any) -> Iterator[pb_grpc.GenerationStub]:
    """A server with the default limits (4 MiB messages)."""
    with serving(engine) as server, grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GenerationStub(channel)


def _trailer_bytes(err: grpc.RpcError) -> int:
    return sum(len(k) + len(v) for k, v in err.trailing_metadata() or ())


def test_a_huge_logit_bias_is_refused_by_its_count_with_small_details(default_stub):
    request = pb.GenerateRequest(prompt="Hello", sampling=pb.SamplingParams(
        logit_bias={i: 500.0 for i in range(100_000)}))
    with pytest.raises(grpc.RpcError) as err:
        default_stub.Generate(request, timeout=30)
    assert err.value.code() == INVALID
    assert field_violations(err.value) == [("sampling.logit_bias", "has 100000 entries; at most 1024")]
    assert _trailer_bytes(err.value) < 1024


def test_violations_are_capped_per_field_and_per_response(default_stub):
    bias = {i: 500.0 for i in range(1000)}  # under the count limit, every bias out of range
    stop = ["x" * 300] * 16
    request = pb.GenerateRequest(
        prompt_token_ids=[VOCAB + i for i in range(1000)], sampling=pb.SamplingParams(logit_bias=bias),
        stopping=pb.StoppingCriteria(stop=stop, stop_token_ids=[VOCAB] * 64))
    with pytest.raises(grpc.RpcError) as err:
        list(default_stub.GenerateStream(request, timeout=30))
    assert err.value.code() == INVALID
    fields = violation_fields(err.value)
    assert len(fields) == 16
    assert sum(f.startswith("sampling.logit_bias[") for f in fields) == 8
    assert fields[:8] == [f"prompt_token_ids[{i}]" for i in range(8)]
    assert err.value.details().endswith("more problems")
    assert _trailer_bytes(err.value) < METADATA_LIMIT


def test_a_batch_larger_than_the_queue_is_invalid_naming_the_limit(api_stub, engine):
    items = [pb.GenerateRequest(prompt=f"p{i}", sampling=pb.SamplingParams(n=16),
                                stopping=pb.StoppingCriteria(max_tokens=1)) for i in range(17)]
    with pytest.raises(grpc.RpcError) as err:
        list(api_stub.GenerateBatch(pb.GenerateBatchRequest(requests=items), timeout=30))
    assert err.value.code() == INVALID
    ((field, description),) = field_violations(err.value)
    assert field == "requests" and "272 completions" in description and "at most 256" in description
    assert details_of(err.value, error_details_pb2.RetryInfo) == []
    capabilities = api_stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30)
    assert capabilities.max_queued_requests == 256


@pytest.mark.parametrize("max_tokens", [2**31, 2**32 - 1, None])
def test_max_tokens_above_the_capability_is_refused(api_stub, engine, max_tokens):
    limit = api_stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30).max_tokens
    assert limit == engine.model_info.max_model_len  # no --max-tokens: the model's own bound
    request = pb.GenerateRequest(prompt="Hello",
                                 stopping=pb.StoppingCriteria(max_tokens=max_tokens or limit + 1))
    with pytest.raises(grpc.RpcError) as err:
        api_stub.Generate(request, timeout=30)
    assert err.value.code() == INVALID
    ((field, description),) = field_violations(err.value)
    assert field == "stopping.max_tokens" and f"in [1, {limit}]" in description


def test_max_tokens_at_the_capability_is_accepted(api_stub):
    limit = api_stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30).max_tokens
    request = pb.GenerateRequest(prompt="Hello", stopping=pb.StoppingCriteria(max_tokens=limit),
                                 sampling=pb.SamplingParams(temperature=0.0))
    reply = api_stub.Generate(request, timeout=120)
    assert reply.params.stopping.max_tokens == limit
