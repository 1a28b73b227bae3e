"""Start-up: the server listens before its model is loaded, says NOT_SERVING and answers every
Generation call with UNAVAILABLE + RetryInfo until the engine is there, then SERVING.

The model loader is real (Engine.from_config on the default model) but held on an event the test
sets, so each phase is observed for certain, with no sleeping.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_support import details_of, running_server

from cyserve.fastpath.engine import Engine
from cyserve.fastpath.engine_config import EngineConfig
from cyserve.fastpath.errors import ModelLoadError
from cyserve.service.server import HEALTH_SERVICES
from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING
GATE_TIMEOUT_S = 120.0  # a safety net only: the test sets the gate itself


def gated_loader(model_path: str, gate: threading.Event, loaded: list[Any]) -> Callable[[], Any]:
    def load() -> Any:
        if not gate.wait(GATE_TIMEOUT_S):
            raise TimeoutError("the test never opened the gate")
        engine = Engine.from_config(EngineConfig(model_path=model_path, kv_cache_bytes=16 << 20))
        engine.start()
        loaded.append(engine)
        return engine

    return load


def generation_calls(stub: pb_grpc.GenerationStub) -> dict[str, Callable[[], Any]]:
    prompt = pb.GenerateRequest(prompt="Hello", stopping=pb.StoppingCriteria(max_tokens=2))
    return {
        "Generate": lambda: stub.Generate(prompt, timeout=30),
        "GenerateStream": lambda: list(stub.GenerateStream(prompt, timeout=30)),
        "GenerateBatch": lambda: list(stub.GenerateBatch(pb.GenerateBatchRequest(requests=[prompt]), timeout=30)),
        "Tokenize": lambda: stub.Tokenize(pb.TokenizeRequest(text="Hello"), timeout=30),
        "Detokenize": lambda: stub.Detokenize(pb.DetokenizeRequest(token_ids=[1]), timeout=30),
        "GetModelInfo": lambda: stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30),
        "GetCapabilities": lambda: stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30),
        "RenderChat": lambda: stub.RenderChat(pb.RenderChatRequest(
            messages=[pb.ChatMessage(role="user", content="Hi")]), timeout=30),
    }


def test_unavailable_while_loading_then_serving(model_path):
    gate, loaded = threading.Event(), []
    try:
        with running_server(None) as (server, loop_thread), grpc.insecure_channel(server.address) as channel:
            loading = loop_thread.submit(server.load(gated_loader(model_path, gate, loaded)))
            health = health_pb2_grpc.HealthStub(channel)
            for service in HEALTH_SERVICES:
                assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status == NOT_SERVING
            stub = pb_grpc.GenerationStub(channel)
            for name, call in generation_calls(stub).items():
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, name
                assert "loading" in err.value.details(), name
                (retry,) = details_of(err.value, error_details_pb2.RetryInfo)
                assert retry.retry_delay.ToNanoseconds() > 0
                (info,) = details_of(err.value, error_details_pb2.ErrorInfo)
                assert info.reason == "MODEL_LOADING" and info.domain == "cyserve.v1"

            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=GATE_TIMEOUT_S)
            assert next(watch).status == NOT_SERVING
            gate.set()
            assert next(watch).status == SERVING  # pushed by the server once the engine is attached
            watch.cancel()
            assert loading.result(GATE_TIMEOUT_S) is loaded[0]
            response = stub.Generate(pb.GenerateRequest(
                prompt="Hello", sampling=pb.SamplingParams(temperature=0),
                stopping=pb.StoppingCriteria(max_tokens=2, ignore_eos=True)), timeout=120)
            assert response.usage.completion_tokens == 2
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
            assert info.vocab_size == loaded[0].model_info.vocab_size
    finally:
        gate.set()
        for engine in loaded:
            engine.stop()


def test_a_failed_load_raises_and_leaves_the_server_not_serving(tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file" * 64)

    def load() -> Any:
        return Engine.from_config(EngineConfig(model_path=str(garbage)))

    with running_server(None) as (server, loop_thread), grpc.insecure_channel(server.address) as channel:
        with pytest.raises(ModelLoadError) as err:
            loop_thread.run(server.load(load))
        assert str(garbage) in str(err.value)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == NOT_SERVING
        with pytest.raises(grpc.RpcError) as call:
            pb_grpc.GenerationStub(channel).Tokenize(pb.TokenizeRequest(text="x"), timeout=30)
        assert call.value.code() == grpc.StatusCode.UNAVAILABLE
