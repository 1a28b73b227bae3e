"""The model's recommended sampling (generation_config.json): read from a Hugging Face directory,
reported by GetModelInfo, and applied to each field a request leaves unset, never over one it set."""
from __future__ import annotations

import json

import grpc
import pytest
from server_support import serving
from service.support import FakeEngine, fake_model_info

from cyserve.fastpath.model.hf_checkpoint import default_sampling
from cyserve.v1 import generation_pb2 as pb
from cyserve.v1 import generation_pb2_grpc as pb_grpc

RECOMMENDED = (("temperature", 0.6), ("top_p", 0.9), ("top_k", 20))


def test_generation_config_sampling_is_read_as_vllm_reads_it(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({
        "do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05,
        "min_p": True, "max_new_tokens": 64, "eos_token_id": [1, 2]}))
    assert default_sampling(str(tmp_path)) == (*RECOMMENDED, ("repetition_penalty", 1.05))
    assert isinstance(dict(default_sampling(str(tmp_path)))["top_k"], int)
    (tmp_path / "generation_config.json").unlink()
    assert default_sampling(str(tmp_path)) == ()


@pytest.fixture(scope="module")
def stub():
    engine = FakeEngine(model_info=fake_model_info(default_sampling=RECOMMENDED))
    with serving(engine) as server, grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GenerationStub(channel)


def _first(stub, sampling: pb.SamplingParams) -> pb.GenerateResponse:
    return next(iter(stub.GenerateStream(pb.GenerateRequest(prompt="hi", sampling=sampling), timeout=20)))


def test_model_info_reports_the_recommendation(stub):
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert [f.name for f, _ in info.default_sampling.ListFields()] == ["temperature", "top_p", "top_k"]
    assert info.default_sampling.top_k == 20 and info.default_sampling.top_p == pytest.approx(0.9)


def test_unset_fields_take_the_recommendation_set_ones_stay(stub):
    params = _first(stub, pb.SamplingParams()).params.sampling
    assert (params.temperature, params.top_p, params.top_k) == (pytest.approx(0.6), pytest.approx(0.9), 20)
    params = _first(stub, pb.SamplingParams(temperature=0.0, top_k=5)).params.sampling
    assert (params.temperature, params.top_p, params.top_k) == (0.0, pytest.approx(0.9), 5)
    assert params.min_p == 0.0, "not recommended: the engine's own default"
