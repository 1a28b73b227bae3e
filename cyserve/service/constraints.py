"""The request's output constraint (SamplingParams.constraint, or the one a tool choice implies)
as the engine's Constraint, and the checks made before it is compiled.

Only the shape is checked here (one kind set, sizes, choices not empty, a schema that is JSON);
whether a schema, regex or grammar compiles is the compiler's word, reported by the engine as
INVALID_ARGUMENT naming the same field.
"""
from __future__ import annotations

import json

from cyserve.fastpath.structured import MAX_CONSTRAINT_BYTES, Constraint
from cyserve.service.validation import FieldViolation
from cyserve.v1 import generation_pb2 as pb

FIELD = "sampling.constraint"
MAX_CHOICES = 256


def has_constraint(sampling: pb.SamplingParams) -> bool:
    return sampling.HasField("constraint") and sampling.constraint.WhichOneof("kind") is not None


def constraint_violations(request: pb.GenerateRequest) -> list[FieldViolation]:
    """Problems of sampling.constraint and of what it is combined with."""
    sampling, stopping = request.sampling, request.stopping
    if not sampling.HasField("constraint"):
        return []
    c = sampling.constraint
    kind = c.WhichOneof("kind")
    if kind is None:
        return [FieldViolation(FIELD, "set one of json_schema, json_object, regex, choice or grammar")]
    field = f"{FIELD}.{kind}"
    v: list[FieldViolation] = []
    size = _num_bytes(c, kind)
    if size > MAX_CONSTRAINT_BYTES:
        v.append(FieldViolation(field, f"is {size} bytes; at most {MAX_CONSTRAINT_BYTES} "
                                       "(Capabilities.max_constraint_bytes)"))
    elif kind == "json_schema":
        v += _schema_violations(field, c.json_schema)
    elif kind == "json_object" and not c.json_object:
        v.append(FieldViolation(field, "must be true when set (leave the constraint unset for free text)"))
    elif kind in ("regex", "grammar") and not getattr(c, kind):
        v.append(FieldViolation(field, "must not be empty"))
    elif kind == "choice":
        v += _choice_violations(field, list(c.choice.choices))
    if stopping.ignore_eos:
        v.append(FieldViolation("stopping.ignore_eos", "cannot be combined with sampling.constraint: "
                                                       "the constraint decides where the output ends"))
    if stopping.HasField("min_tokens") and stopping.min_tokens:
        v.append(FieldViolation("stopping.min_tokens", "cannot be combined with sampling.constraint: "
                                                       "the constraint decides where the output ends"))
    return v


def _num_bytes(c: pb.OutputConstraint, kind: str) -> int:
    if kind == "choice":
        return sum(len(s.encode("utf-8")) for s in c.choice.choices)
    value = getattr(c, kind)
    return len(value.encode("utf-8")) if isinstance(value, str) else 0


def _schema_violations(field: str, text: str) -> list[FieldViolation]:
    try:
        schema = json.loads(text)
    except ValueError as exc:
        return [FieldViolation(field, f"is not JSON: {exc}")]
    if not isinstance(schema, (dict, bool)):
        return [FieldViolation(field, f"must be a JSON Schema (an object), not a JSON {type(schema).__name__}")]
    return []


def _choice_violations(field: str, choices: list[str]) -> list[FieldViolation]:
    if not choices:
        return [FieldViolation(f"{field}.choices", "must hold at least one string")]
    if len(choices) > MAX_CHOICES:
        return [FieldViolation(f"{field}.choices", f"has {len(choices)} strings; at most {MAX_CHOICES}")]
    return [FieldViolation(f"{field}.choices[{i}]", "must not be empty") for i, s in enumerate(choices) if not s][:8]


def constraint_of(sampling: pb.SamplingParams) -> Constraint | None:
    """The engine's Constraint for a checked sampling.constraint; None when unset."""
    if not has_constraint(sampling):
        return None
    c = sampling.constraint
    kind = c.WhichOneof("kind")
    field = f"{FIELD}.{kind}"
    if kind == "choice":
        return Constraint(kind, tuple(c.choice.choices), field)
    if kind == "json_object":
        return Constraint(kind, "", field)
    return Constraint(kind, getattr(c, kind), field)
