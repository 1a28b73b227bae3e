"""GenerateRequest validation and conversion to engine parameters (no server)."""
from __future__ import annotations

import math

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from cyserve.fastpath.core.request import FinishReason, SamplingParams, StoppingParams
from cyserve.service.errors import bad_request_status
from cyserve.service.validation import (
    FieldViolation,
    RequestValidationError,
    check_generate_request,
    sampling_params,
    stopping_params,
)
from cyserve.v1 import generation_pb2 as pb


def violations_of(request: pb.GenerateRequest) -> list[str]:
    try:
        check_generate_request(request)
    except RequestValidationError as exc:
        return [v.field for v in exc.violations]
    return []


def test_finish_reason_enum_mirrors_the_engine():
    for reason in FinishReason:
        if reason is FinishReason.NONE:
            assert pb.FinishReason.Name(0) == "FINISH_REASON_UNSPECIFIED"
        else:
            assert pb.FinishReason.Value(f"FINISH_REASON_{reason.name}") == reason.value
    assert len(pb.FinishReason.keys()) == len(FinishReason)


@pytest.mark.parametrize(
    "request_,fields",
    [
        (pb.GenerateRequest(prompt="hi"), []),
        (pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="hi")]), []),
        (pb.GenerateRequest(), ["prompt"]),
        (pb.GenerateRequest(prompt=""), ["prompt"]),
        (
            pb.GenerateRequest(prompt="hi", messages=[pb.ChatMessage(role="user", content="x")]),
            ["prompt"],
        ),
        (
            pb.GenerateRequest(messages=[pb.ChatMessage(role="user"), pb.ChatMessage(content="x")]),
            ["messages[1].role"],
        ),
        (pb.GenerateRequest(prompt="hi", add_generation_prompt=True), ["add_generation_prompt"]),
        (pb.GenerateRequest(prompt="hi", request_id="x" * 129), ["request_id"]),
    ],
)
def test_input_rules(request_, fields):
    assert violations_of(request_) == fields


@pytest.mark.parametrize(
    "sampling,field",
    [
        (pb.SamplingParams(temperature=-0.1), "sampling.temperature"),
        (pb.SamplingParams(temperature=math.nan), "sampling.temperature"),
        (pb.SamplingParams(temperature=math.inf), "sampling.temperature"),
        (pb.SamplingParams(top_p=0.0), "sampling.top_p"),
        (pb.SamplingParams(top_p=1.01), "sampling.top_p"),
        (pb.SamplingParams(top_p=-1), "sampling.top_p"),
        (pb.SamplingParams(top_p=math.nan), "sampling.top_p"),
        (pb.SamplingParams(top_k=-1), "sampling.top_k"),
    ],
)
def test_bad_sampling_names_the_field(sampling, field):
    assert violations_of(pb.GenerateRequest(prompt="hi", sampling=sampling)) == [field]


@pytest.mark.parametrize(
    "sampling",
    [
        pb.SamplingParams(temperature=0.0),
        pb.SamplingParams(temperature=2.5, top_p=1.0, top_k=0, seed=2**64 - 1),
        pb.SamplingParams(top_p=1e-6, top_k=1),
    ],
)
def test_good_sampling_passes(sampling):
    assert violations_of(pb.GenerateRequest(prompt="hi", sampling=sampling)) == []


def test_bad_stopping_names_the_field():
    request = pb.GenerateRequest(
        prompt="hi", stopping=pb.StoppingCriteria(max_tokens=0, stop=["ok", ""])
    )
    assert violations_of(request) == ["stopping.max_tokens", "stopping.stop[1]"]


def test_every_problem_is_reported_at_once():
    request = pb.GenerateRequest(sampling=pb.SamplingParams(temperature=-1, top_p=2, top_k=-3))
    assert violations_of(request) == [
        "prompt", "sampling.temperature", "sampling.top_p", "sampling.top_k"
    ]


def test_unset_fields_keep_engine_defaults():
    assert sampling_params(pb.SamplingParams()) == SamplingParams()
    assert stopping_params(pb.StoppingCriteria()) == StoppingParams()


def test_set_fields_are_passed_through():
    sampling = sampling_params(pb.SamplingParams(temperature=0.0, top_p=0.5, top_k=7, seed=42))
    assert sampling == SamplingParams(temperature=0.0, top_p=0.5, top_k=7, seed=42)
    assert sampling.greedy
    stopping = stopping_params(pb.StoppingCriteria(max_tokens=5, ignore_eos=True, stop=["\n", "."]))
    assert stopping == StoppingParams(max_tokens=5, ignore_eos=True, stop=("\n", "."))


def test_bad_request_status_carries_field_violations():
    status = bad_request_status([FieldViolation("sampling.top_p", "must be in (0, 1], got 2.0")])
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "sampling.top_p" in status.details
    (key, value), = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    decoded = status_pb2.Status.FromString(value)
    assert decoded.code == code_pb2.INVALID_ARGUMENT
    bad_request = error_details_pb2.BadRequest()
    assert decoded.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("sampling.top_p", "must be in (0, 1], got 2.0")
    ]
