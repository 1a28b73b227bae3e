"""The gRPC layer on a real grpc.aio server on a free port, around a scripted fake engine: status
mapping, streaming, cancellation, health, reflection. Fast and model-free; the same behaviours are
checked against the real engine in test_service_e2e.py."""
from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from google.rpc import error_details_pb2
from server_support import details_of, field_violations, running_server, wait_until

from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

from .support import FakeEngine, fake_model_info

TIMEOUT = 10.0


def test_stream_deltas_and_last_message(fake_stub, fake_engine):
    request = pb.GenerateRequest(prompt="hello", request_id="req-1")
    responses = list(fake_stub.GenerateStream(request, timeout=TIMEOUT))
    assert "".join(r.text for r in responses) == fake_engine.reply
    assert all(r.request_id == "req-1" for r in responses)
    assert all(r.finish_reason == pb.FINISH_REASON_UNSPECIFIED for r in responses[:-1])
    assert not any(r.HasField("usage") for r in responses[:-1])
    last = responses[-1]
    assert last.finish_reason == pb.FINISH_REASON_EOS
    token_ids = [t for r in responses for t in r.token_ids]
    assert last.usage.completion_tokens == len(token_ids) == len(fake_engine.reply) + 1
    assert last.usage.prompt_tokens == len("hello")
    assert fake_engine.requests[-1].prompt_token_ids == fake_engine.tokenizer.encode("hello")


def test_unary_is_the_stream_concatenated(fake_stub):
    request = pb.GenerateRequest(prompt="hello", stopping=pb.StoppingCriteria(max_tokens=3))
    streamed = list(fake_stub.GenerateStream(request, timeout=TIMEOUT))
    whole = fake_stub.Generate(request, timeout=TIMEOUT)
    assert whole.text == "".join(r.text for r in streamed) == "Hi "
    assert list(whole.token_ids) == [t for r in streamed for t in r.token_ids]
    assert whole.finish_reason == pb.FINISH_REASON_LENGTH
    assert whole.usage == streamed[-1].usage
    assert len(whole.request_id) == 32  # generated when the caller sends none


def test_parameters_reach_the_engine(fake_stub, fake_engine):
    request = pb.GenerateRequest(
        prompt="x",
        sampling=pb.SamplingParams(temperature=0, top_k=5, seed=7),
        stopping=pb.StoppingCriteria(max_tokens=2, ignore_eos=True, stop=["."]),
    )
    fake_stub.Generate(request, timeout=TIMEOUT)
    sent = fake_engine.requests[-1]
    assert (sent.sampling.temperature, sent.sampling.top_p, sent.sampling.top_k) == (0, 1.0, 5)
    assert sent.sampling.seed == 7
    assert (sent.stopping.max_tokens, sent.stopping.ignore_eos, sent.stopping.stop) == (2, True, (".",))


def test_chat_messages_are_rendered_with_the_template(fake_stub, fake_engine):
    messages = [pb.ChatMessage(role="user", content="Hi")]
    fake_stub.Generate(pb.GenerateRequest(messages=messages), timeout=TIMEOUT)
    rendered = fake_engine.tokenizer.decode(fake_engine.requests[-1].prompt_token_ids)
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"  # default: true
    request = pb.GenerateRequest(messages=messages, add_generation_prompt=False)
    fake_stub.Generate(request, timeout=TIMEOUT)
    rendered = fake_engine.tokenizer.decode(fake_engine.requests[-1].prompt_token_ids)
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n"


@pytest.mark.parametrize(
    "request_,field",
    [
        (pb.GenerateRequest(prompt=""), "prompt"),
        (pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(temperature=-1)),
         "sampling.temperature"),
        (pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(top_p=0)), "sampling.top_p"),
        (pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(top_p=1.5)), "sampling.top_p"),
        (pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(top_k=-1)), "sampling.top_k"),
        (pb.GenerateRequest(prompt="x", messages=[pb.ChatMessage(role="user", content="y")]),
         "prompt"),
        (pb.GenerateRequest(prompt="FAIL:invalid"), "prompt"),  # InvalidRequestError from engine
    ],
)
@pytest.mark.parametrize("rpc", ["Generate", "GenerateStream"])
def test_bad_input_is_invalid_argument_naming_the_field(fake_stub, request_, field, rpc):
    with pytest.raises(grpc.RpcError) as caught:
        result = getattr(fake_stub, rpc)(request_, timeout=TIMEOUT)
        if rpc == "GenerateStream":
            list(result)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details()
    assert [f for f, _ in field_violations(caught.value)] == [field]


def test_template_rejection_is_invalid_argument_on_messages():
    engine = FakeEngine(model_info=fake_model_info(chat_template="{{ raise_exception('roles must alternate') }}"))
    with running_server(engine) as (server, _), grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GenerationStub(channel)
        request = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="x")])
        with pytest.raises(grpc.RpcError) as caught:
            stub.Generate(request, timeout=TIMEOUT)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [("messages", "roles must alternate")]


def test_model_without_template_rejects_messages():
    engine = FakeEngine(model_info=fake_model_info(chat_template=""))
    with running_server(engine) as (server, _), grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GenerationStub(channel)
        request = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="x")])
        with pytest.raises(grpc.RpcError) as caught:
            stub.Generate(request, timeout=TIMEOUT)
        assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT).chat_template == ""
    assert [f for f, _ in field_violations(caught.value)] == ["messages"]


@pytest.mark.parametrize(
    "prompt,code,details",
    [
        ("FAIL:stopped", grpc.StatusCode.UNAVAILABLE, "stopping"),
        ("FAIL:boom", grpc.StatusCode.INTERNAL, "internal error"),
        ("FAIL:error", grpc.StatusCode.INTERNAL, "kernel exploded"),
    ],
)
@pytest.mark.parametrize("rpc", ["Generate", "GenerateStream"])
def test_engine_failures_map_to_statuses(fake_stub, prompt, code, details, rpc):
    with pytest.raises(grpc.RpcError) as caught:
        result = getattr(fake_stub, rpc)(pb.GenerateRequest(prompt=prompt), timeout=TIMEOUT)
        if rpc == "GenerateStream":
            list(result)
    assert caught.value.code() is code
    assert details in caught.value.details()
    assert "boom" not in caught.value.details()  # internals are logged, not sent


def test_cancelled_stream_closes_the_engine_iterator(fake_stub, fake_engine):
    request = pb.GenerateRequest(prompt="SLOW", stopping=pb.StoppingCriteria(max_tokens=10_000))
    call = fake_stub.GenerateStream(request, timeout=TIMEOUT)
    next(call), next(call)
    engine_id = fake_engine.requests[-1].request_id
    assert engine_id in fake_engine.live
    call.cancel()
    assert wait_until(lambda: engine_id not in fake_engine.live, timeout=5)
    assert engine_id in fake_engine.closed_early
    assert fake_stub.Generate(pb.GenerateRequest(prompt="x"), timeout=TIMEOUT).text


@pytest.mark.parametrize("rpc", ["Generate", "GenerateStream"])
def test_deadline_closes_the_engine_iterator(fake_stub, fake_engine, rpc):
    request = pb.GenerateRequest(prompt="SLOW", stopping=pb.StoppingCriteria(max_tokens=10_000))
    with pytest.raises(grpc.RpcError) as caught:
        result = getattr(fake_stub, rpc)(request, timeout=0.3)
        if rpc == "GenerateStream":
            list(result)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    engine_id = fake_engine.requests[-1].request_id
    assert wait_until(lambda: engine_id not in fake_engine.live, timeout=5)
    assert engine_id in fake_engine.closed_early


def test_tokenize_and_model_info(fake_stub, fake_engine):
    response = fake_stub.Tokenize(pb.TokenizeRequest(text="héllo"), timeout=TIMEOUT)
    assert list(response.token_ids) == fake_engine.tokenizer.encode("héllo")
    assert list(fake_stub.Tokenize(pb.TokenizeRequest(), timeout=TIMEOUT).token_ids) == []
    info = fake_stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
    assert (info.name, info.architecture, info.quantization) == ("fake", "llama", "F32")
    assert (info.vocab_size, info.context_length, info.num_layers) == (266, 16384, 2)
    assert info.max_model_len == 16384  # the fake has no max_model_len: context_length stands in
    assert (info.num_heads, info.num_kv_heads, info.hidden_size) == (2, 1, 8)
    assert (info.bos_token_id, info.eos_token_id) == (1, 2)
    assert "im_start" in info.chat_template


def test_health_and_reflection(fake_channel):
    health = health_pb2_grpc.HealthStub(fake_channel)
    for service in ("", "cyserve.v1.Generation"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    services = ProtoReflectionDescriptorDatabase(fake_channel).get_services()
    assert "cyserve.v1.Generation" in services
    assert "grpc.health.v1.Health" in services


def test_shutdown_drains_listening_then_ends_every_stream_with_a_final_message():
    engine = FakeEngine()
    grace = 1.5
    with running_server(engine) as (server, loop_thread):
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = pb_grpc.GenerationStub(channel)
            slow = pb.GenerateRequest(prompt="SLOW", stopping=pb.StoppingCriteria(max_tokens=10**4))
            stream = stub.GenerateStream(slow, timeout=TIMEOUT)
            first = next(stream)
            unary = stub.Generate.future(slow, timeout=TIMEOUT)
            assert wait_until(lambda: len(engine.live) == 2)
            stopping = loop_thread.submit(server.stop(grace))
            check = health_pb2.HealthCheckRequest(service="cyserve.v1.Generation")
            assert wait_until(lambda: health.Check(check, timeout=TIMEOUT).status
                              == health_pb2.HealthCheckResponse.NOT_SERVING)
            # Still listening during the grace period: new calls are refused with a retry hint.
            with pytest.raises(grpc.RpcError) as refused:
                stub.Generate(pb.GenerateRequest(prompt="hi"), timeout=TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert details_of(refused.value, error_details_pb2.RetryInfo)
            (info,) = details_of(refused.value, error_details_pb2.ErrorInfo)
            assert info.reason == "SHUTTING_DOWN"
            rest = list(stream)  # no error status: the stream ends with a final message
            last = rest[-1]
            assert last.finish_reason == pb.FINISH_REASON_CANCELLED and "shutting down" in last.error
            assert last.usage.completion_tokens == sum(len(m.token_ids) for m in [first, *rest])
            assert last.usage.completion_tokens >= grace / 0.01 / 2  # it ran through the grace
            reply = unary.result(TIMEOUT)
            assert reply.finish_reason == pb.FINISH_REASON_CANCELLED and "shutting down" in reply.error
            stopping.result(TIMEOUT)
            assert wait_until(lambda: not engine.live, timeout=5)


def test_shutdown_without_calls_in_flight_does_not_wait_for_the_grace():
    with running_server(FakeEngine()) as (server, loop_thread):
        started = time.monotonic()
        loop_thread.run(server.stop(30.0))
        assert time.monotonic() - started < 5.0
