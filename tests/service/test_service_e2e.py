"""The gRPC API end to end: a real grpc.aio server on a free port around the real engine serving
the default model (SmolLM2-135M-Instruct Q4_1)."""
from __future__ import annotations

import collections
import concurrent.futures

import gguf
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from server_support import field_violations, wait_until

from cyserve.v1 import generation_pb2 as pb


TIMEOUT = 120.0
PROMPT = "The three primary colors are"


def greedy(prompt: str = PROMPT, max_tokens: int = 12, **stopping) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt=prompt,
        sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_tokens=max_tokens, **stopping),
    )


def idle(engine) -> bool:
    stats = engine.stats()
    return stats.num_running == 0 and stats.num_waiting == 0


def test_greedy_stream_concatenates_to_unary(stub, engine):
    request = greedy()
    streamed = list(stub.GenerateStream(request, timeout=TIMEOUT))
    whole = stub.Generate(request, timeout=TIMEOUT)
    assert whole.text and whole.text == "".join(r.text for r in streamed)
    token_ids = [t for r in streamed for t in r.token_ids]
    assert list(whole.token_ids) == token_ids
    assert all(r.finish_reason == pb.FINISH_REASON_UNSPECIFIED for r in streamed[:-1])
    assert not any(r.HasField("usage") for r in streamed[:-1])
    last = streamed[-1]
    assert last.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_EOS)
    assert last.usage.prompt_tokens == len(engine.tokenizer.encode(PROMPT, parse_special=True))
    assert last.usage.completion_tokens == len(token_ids) <= 12
    assert whole.usage == last.usage and whole.finish_reason == last.finish_reason
    assert engine.tokenizer.decode(token_ids, skip_special=True) == whole.text


def test_chat_answers_paris(stub):
    request = pb.GenerateRequest(
        messages=[pb.ChatMessage(role="user", content="What is the capital of France? Answer in one sentence.")],
        add_generation_prompt=True,
        sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_tokens=32),
    )
    response = stub.Generate(request, timeout=TIMEOUT)
    assert "Paris" in response.text, response.text


def test_stop_sequence_ends_the_text_before_it(stub):
    text = stub.Generate(greedy(max_tokens=16), timeout=TIMEOUT).text
    stop = text[len(text) // 2:][:3]
    assert stop.strip(), text
    response = stub.Generate(greedy(max_tokens=16, stop=[stop]), timeout=TIMEOUT)
    assert response.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert response.stop_sequence == stop
    assert response.text == text[: text.index(stop)]


def test_seed_makes_sampling_reproducible(stub):
    request = pb.GenerateRequest(
        prompt="Once upon a time",
        sampling=pb.SamplingParams(temperature=1.0, top_p=0.95, top_k=50, seed=1234),
        stopping=pb.StoppingCriteria(max_tokens=10),
    )
    first = stub.Generate(request, timeout=TIMEOUT)
    assert stub.Generate(request, timeout=TIMEOUT).token_ids == first.token_ids


def test_concurrent_greedy_requests_agree(stub):
    request = greedy(max_tokens=8)
    expected = stub.Generate(request, timeout=TIMEOUT).text
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda _: stub.Generate(request, timeout=TIMEOUT).text, range(4)))
    assert texts == [expected] * 4


@pytest.mark.parametrize(
    "text", ["", "Hello, world!", "<|im_start|>user\nhé 12345 ∑ 🤗\t  x<|im_end|>\n", "a" * 5000]
)
def test_tokenize_equals_the_engine_tokenizer(stub, engine, text):
    response = stub.Tokenize(pb.TokenizeRequest(text=text), timeout=TIMEOUT)
    assert list(response.token_ids) == list(engine.tokenizer.encode(text, parse_special=True))


def test_model_info(stub, engine):
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
    assert info.architecture == "llama"
    assert info.name == engine.model_info.name != ""
    assert (info.vocab_size, info.context_length) == (49152, 8192)
    assert 0 < info.max_model_len == engine.model_info.max_model_len <= 8192
    assert (info.num_layers, info.hidden_size, info.num_heads, info.num_kv_heads) == (30, 576, 9, 3)
    assert "Q4_1" in info.quantization and info.head_dim == 64
    reader = gguf.GGUFReader(engine.model_info.path)
    kinds = collections.Counter(t.tensor_type.name for t in reader.tensors)
    assert dict(info.tensor_types) == dict(kinds) and info.tensor_types["Q4_1"] > 0
    assert (info.bos_token_id, info.eos_token_id) == (1, 2)
    assert "<|im_start|>" in info.chat_template


def test_health_serving_and_reflection(live_channel):
    health = health_pb2_grpc.HealthStub(live_channel)
    for service in ("", "cyserve.v1.Generation"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert "cyserve.v1.Generation" in ProtoReflectionDescriptorDatabase(live_channel).get_services()


@pytest.mark.parametrize(
    "request_,field",
    [
        (pb.GenerateRequest(prompt=""), "prompt"),
        (pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(temperature=-0.5)),
         "sampling.temperature"),
        (pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(top_p=0.0)), "sampling.top_p"),
        (pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(top_p=1.5)), "sampling.top_p"),
        (pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(top_k=-1)), "sampling.top_k"),
        (pb.GenerateRequest(prompt="x", messages=[pb.ChatMessage(role="user", content="y")]),
         "prompt"),
        (pb.GenerateRequest(prompt="x", stopping=pb.StoppingCriteria(max_tokens=0)),
         "stopping.max_tokens"),
        (pb.GenerateRequest(prompt="hello " * 9000), "prompt"),  # longer than the context
    ],
)
def test_bad_input_is_invalid_argument(stub, engine, request_, field):
    free_before = engine.stats().num_free_blocks
    for rpc in (stub.Generate, lambda r, timeout: list(stub.GenerateStream(r, timeout=timeout))):
        with pytest.raises(grpc.RpcError) as caught:
            rpc(request_, timeout=TIMEOUT)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in field_violations(caught.value)] == [field]
    assert engine.stats().num_free_blocks == free_before
    assert stub.Generate(greedy(max_tokens=2), timeout=TIMEOUT).text  # still serving


def _long_request() -> pb.GenerateRequest:
    return greedy(max_tokens=2800, ignore_eos=True)


def test_cancelled_stream_frees_its_kv_blocks(stub, engine):
    assert wait_until(lambda: idle(engine))
    free_before = engine.stats().num_free_blocks
    call = stub.GenerateStream(_long_request(), timeout=TIMEOUT)
    for _ in range(3):
        next(call)
    assert engine.stats().num_running == 1
    assert engine.stats().num_free_blocks < free_before
    call.cancel()
    assert wait_until(lambda: idle(engine) and engine.stats().num_free_blocks == free_before)
    assert stub.Generate(greedy(max_tokens=4), timeout=TIMEOUT).text


@pytest.mark.parametrize("rpc", ["Generate", "GenerateStream"])
def test_expired_deadline_frees_kv_blocks(stub, engine, rpc):
    assert wait_until(lambda: idle(engine))
    free_before = engine.stats().num_free_blocks
    with pytest.raises(grpc.RpcError) as caught:
        result = getattr(stub, rpc)(_long_request(), timeout=1.0)
        if rpc == "GenerateStream":
            list(result)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_until(lambda: idle(engine) and engine.stats().num_free_blocks == free_before)
    assert stub.Generate(greedy(max_tokens=4), timeout=TIMEOUT).text
