"""Every class of bad input gets its documented status; the server keeps serving and the KV cache's
free-block count returns to where it was (real engine)."""
from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_support import details_of, field_violations, violation_fields, wait_until

from cyserve.v1 import generation_pb2 as pb


VOCAB = 49152  # SmolLM2's vocabulary
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _req(**kw) -> pb.GenerateRequest:
    kw.setdefault("prompt", "Hello")
    kw.setdefault("stopping", pb.StoppingCriteria(max_tokens=2))
    return pb.GenerateRequest(**kw)


S, T = pb.SamplingParams, pb.StoppingCriteria
BAD = [
    (pb.GenerateRequest(prompt=""), "prompt"),
    (pb.GenerateRequest(prompt_token_ids=[1, VOCAB]), "prompt_token_ids[1]"),
    (pb.GenerateRequest(messages=[pb.ChatMessage(content="x")]), "messages[0].role"),
    (_req(sampling=S(temperature=-1)), "sampling.temperature"),
    (_req(sampling=S(temperature=float("nan"))), "sampling.temperature"),
    (_req(sampling=S(top_p=0)), "sampling.top_p"),
    (_req(sampling=S(top_p=1.5)), "sampling.top_p"),
    (_req(sampling=S(top_k=-1)), "sampling.top_k"),
    (_req(sampling=S(min_p=2)), "sampling.min_p"),
    (_req(sampling=S(repetition_penalty=0)), "sampling.repetition_penalty"),
    (_req(sampling=S(presence_penalty=3)), "sampling.presence_penalty"),
    (_req(sampling=S(frequency_penalty=-3)), "sampling.frequency_penalty"),
    (_req(sampling=S(n=0)), "sampling.n"),
    (_req(sampling=S(n=1000)), "sampling.n"),
    (_req(sampling=S(logit_bias={VOCAB: 1.0})), f"sampling.logit_bias[{VOCAB}]"),
    (_req(sampling=S(logit_bias={5: 500.0})), "sampling.logit_bias[5]"),
    (_req(stopping=T(max_tokens=0)), "stopping.max_tokens"),
    (_req(stopping=T(max_tokens=2, min_tokens=3)), "stopping.min_tokens"),
    (_req(stopping=T(stop=["a", "b", "c", "d", "e"])), "stopping.stop"),
    (_req(stopping=T(stop=["ok", ""])), "stopping.stop[1]"),
    (_req(stopping=T(stop_token_ids=[VOCAB])), "stopping.stop_token_ids[0]"),
    (_req(stopping=T(max_time_s=-1)), "stopping.max_time_s"),
    (_req(output=pb.OutputOptions(logprobs=1000)), "output.logprobs"),
    (_req(output=pb.OutputOptions(prompt_logprobs=1000)), "output.prompt_logprobs"),
    (_req(request_id="x" * 200), "request_id"),
]


def _free_blocks(engine) -> int:
    return engine.stats().num_free_blocks


def _back_to_baseline(engine, baseline: int) -> bool:
    return wait_until(lambda: engine.stats().num_running == 0 and engine.stats().num_waiting == 0
                      and _free_blocks(engine) == baseline)


@pytest.mark.parametrize("request_,field", BAD, ids=[f for _, f in BAD])
def test_bad_input_is_invalid_argument_naming_the_field(api_stub, engine, request_, field):
    baseline = _free_blocks(engine)
    for call in (api_stub.Generate, lambda r, timeout: list(api_stub.GenerateStream(r, timeout=timeout))):
        with pytest.raises(grpc.RpcError) as err:
            call(request_, timeout=30)
        assert err.value.code() == INVALID
        assert field in violation_fields(err.value)
    assert api_stub.Generate(_req(), timeout=60).finish_reason != pb.FINISH_REASON_UNSPECIFIED
    assert _back_to_baseline(engine, baseline)


def test_generate_unary_refuses_n_above_one(api_stub):
    with pytest.raises(grpc.RpcError) as err:
        api_stub.Generate(_req(sampling=S(n=2)), timeout=30)
    assert err.value.code() == INVALID and violation_fields(err.value) == ["sampling.n"]


def test_prompt_over_the_limit_carries_error_info(api_stub, engine):
    with pytest.raises(grpc.RpcError) as err:
        api_stub.Generate(pb.GenerateRequest(prompt_token_ids=[42] * 250), timeout=30)
    assert err.value.code() == INVALID
    assert violation_fields(err.value) == ["prompt_token_ids"]
    (info,) = details_of(err.value, error_details_pb2.ErrorInfo)
    assert info.reason == "PROMPT_TOO_LONG" and info.domain == "cyserve.v1"
    assert info.metadata["prompt_tokens"] == "250" and info.metadata["max_prompt_tokens"] == "200"
    assert int(info.metadata["max_model_len"]) == engine.model_info.max_model_len


def test_oversized_message_is_resource_exhausted(api_stub):
    with pytest.raises(grpc.RpcError) as err:
        api_stub.Generate(_req(prompt="x" * (80 << 10)), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert api_stub.Generate(_req(), timeout=60).usage.completion_tokens >= 1


def test_malformed_bytes_on_the_wire(channel, api_stub):
    raw = channel.unary_unary("/cyserve.v1.Generation/Generate")  # bytes in, bytes out
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff\xff garbage", timeout=30)
    assert err.value.code() == INVALID
    ((field, description),) = field_violations(err.value)
    assert field == "request" and "not a valid cyserve.v1.GenerateRequest" in description
    assert api_stub.Generate(_req(), timeout=60).usage.completion_tokens >= 1


finite = st.floats(allow_nan=True, allow_infinity=True, width=32)
sampling = st.builds(
    S, temperature=finite, top_p=finite, top_k=st.integers(-5, 60000), min_p=finite,
    repetition_penalty=finite, presence_penalty=finite, frequency_penalty=finite,
    seed=st.integers(0, 2**64 - 1), n=st.integers(0, 3),
    logit_bias=st.dictionaries(st.integers(0, VOCAB + 10), st.floats(-200, 200, width=32), max_size=3),
)
stopping = st.builds(
    T, max_tokens=st.integers(0, 3), min_tokens=st.integers(0, 4), ignore_eos=st.booleans(),
    stop=st.lists(st.text(max_size=3), max_size=5), stop_token_ids=st.lists(st.integers(0, VOCAB + 5), max_size=2),
    include_stop=st.booleans(),
)
requests = st.builds(
    pb.GenerateRequest, prompt=st.text(max_size=20), sampling=sampling, stopping=stopping,
    output=st.builds(pb.OutputOptions, logprobs=st.integers(0, 30)),
    priority=st.integers(-5, 5), request_id=st.text(max_size=140),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request_=requests)
def test_fuzzed_requests_get_ok_or_invalid_argument(api_stub, engine, request_):
    try:
        responses = list(api_stub.GenerateStream(request_, timeout=60))
    except grpc.RpcError as err:
        assert err.code() == INVALID, err
        assert violation_fields(err), "INVALID_ARGUMENT without a field violation"
        return
    finals = [r for r in responses if r.finish_reason != pb.FINISH_REASON_UNSPECIFIED]
    n = request_.sampling.n if request_.sampling.HasField("n") else 1
    assert len(finals) == n and all(r.usage.completion_tokens <= request_.stopping.max_tokens for r in finals)


def test_kv_blocks_return_after_the_fuzz(api_stub, engine):
    stats = engine.stats()
    assert _back_to_baseline(engine, stats.num_free_blocks)
    assert stats.num_free_blocks == stats.num_total_blocks  # nothing holds blocks between tests
