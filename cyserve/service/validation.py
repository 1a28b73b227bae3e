"""Checks a GenerateRequest and turns it into the engine's SamplingParams / StoppingParams.

Every problem becomes a FieldViolation naming the field by its proto path (`sampling.top_p`,
`messages[1].role`); all of a request's problems are reported together.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from cyserve.fastpath.request import SamplingParams, StoppingParams
from cyserve.v1 import generation_pb2 as pb

MAX_REQUEST_ID_CHARS = 128


@dataclass(frozen=True)
class FieldViolation:
    field: str  # proto path of the offending field, e.g. "sampling.top_p"
    description: str  # what is wrong, for the caller


class RequestValidationError(Exception):
    """The request breaks the API's rules; mapped to INVALID_ARGUMENT with a BadRequest detail."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))


def check_generate_request(request: pb.GenerateRequest) -> None:
    """Raise RequestValidationError listing every problem of `request`, if it has any."""
    violations = _input_violations(request)
    violations += _sampling_violations(request.sampling)
    violations += _stopping_violations(request.stopping)
    if len(request.request_id) > MAX_REQUEST_ID_CHARS:
        violations.append(
            FieldViolation("request_id", f"must be at most {MAX_REQUEST_ID_CHARS} characters")
        )
    if violations:
        raise RequestValidationError(violations)


def _input_violations(request: pb.GenerateRequest) -> list[FieldViolation]:
    if request.prompt and request.messages:
        return [FieldViolation("prompt", "set either prompt or messages, not both")]
    if request.messages:
        return [
            FieldViolation(f"messages[{i}].role", "must not be empty")
            for i, message in enumerate(request.messages)
            if not message.role
        ]
    if request.HasField("add_generation_prompt"):
        return [FieldViolation("add_generation_prompt", "applies only to messages, not to a prompt")]
    if not request.prompt:
        return [FieldViolation("prompt", "must not be empty (or send messages instead)")]
    return []


def _sampling_violations(sampling: pb.SamplingParams) -> list[FieldViolation]:
    violations = []
    if sampling.HasField("temperature"):
        t = sampling.temperature
        if not (math.isfinite(t) and t >= 0.0):
            violations.append(FieldViolation("sampling.temperature", f"must be >= 0, got {t}"))
    if sampling.HasField("top_p"):
        p = sampling.top_p
        if not (0.0 < p <= 1.0):  # also rejects NaN
            violations.append(FieldViolation("sampling.top_p", f"must be in (0, 1], got {p}"))
    if sampling.HasField("top_k") and sampling.top_k < 0:
        violations.append(
            FieldViolation("sampling.top_k", f"must be >= 0 (0 = no cut), got {sampling.top_k}")
        )
    return violations


def _stopping_violations(stopping: pb.StoppingCriteria) -> list[FieldViolation]:
    violations = []
    if stopping.HasField("max_tokens") and stopping.max_tokens < 1:
        violations.append(FieldViolation("stopping.max_tokens", "must be at least 1"))
    violations += [
        FieldViolation(f"stopping.stop[{i}]", "must not be empty")
        for i, stop in enumerate(stopping.stop)
        if not stop
    ]
    return violations


def sampling_params(sampling: pb.SamplingParams) -> SamplingParams:
    """The engine's SamplingParams: fields the caller set, the engine's defaults for the rest."""
    given = {
        name: getattr(sampling, name)
        for name in ("temperature", "top_p", "top_k", "seed")
        if sampling.HasField(name)
    }
    return SamplingParams(**given)


def stopping_params(stopping: pb.StoppingCriteria) -> StoppingParams:
    given: dict = {"ignore_eos": stopping.ignore_eos, "stop": tuple(stopping.stop)}
    if stopping.HasField("max_tokens"):
        given["max_tokens"] = stopping.max_tokens
    return StoppingParams(**given)
