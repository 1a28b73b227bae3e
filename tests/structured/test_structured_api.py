"""Structured output through the gRPC API on the default model and a real server: every
constrained output parses and validates, batched with free-text requests, with seeds, n > 1,
logprobs and stop strings; bad constraints get their documented status and the server goes on."""
from __future__ import annotations

import json
import re
from collections import defaultdict

import grpc
import jsonschema
import pytest
from server_support import violation_fields

from cyserve.v1 import generation_pb2 as pb

S, T = pb.SamplingParams, pb.StoppingCriteria
C = pb.OutputConstraint

SCHEMAS = {
    "person": {"type": "object", "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"]},
    "nested": {"type": "object", "properties": {
        "city": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                                  "big": {"type": "boolean"}}, "required": ["name", "big"]}},
               "required": ["city"]},
    "array": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 3}},
              "required": ["tags"]},
    "pattern": {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
        "score": {"type": "number", "minimum": -1, "maximum": 1}}, "required": ["code", "score"]},
    "enum": {"enum": ["approve", "reject", "escalate"]},
}


def _chat(text: str, **kw) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content=text)], **kw)


def _texts(stub, requests: list[pb.GenerateRequest]) -> dict[tuple[int, int], tuple[str, int]]:
    """(prompt index, completion index) -> (text, finish reason) of one GenerateBatch call."""
    texts: dict[tuple[int, int], list[str]] = defaultdict(list)
    reasons: dict[tuple[int, int], int] = {}
    for r in stub.GenerateBatch(pb.GenerateBatchRequest(requests=requests), timeout=300):
        texts[(r.prompt_index, r.index)].append(r.text)
        if r.finish_reason:
            assert r.finish_reason != pb.FINISH_REASON_ERROR, r.error
            reasons[(r.prompt_index, r.index)] = r.finish_reason
    return {key: ("".join(parts), reasons[key]) for key, parts in texts.items()}


def test_every_schema_output_validates_batched_with_free_text(stub):
    names = list(SCHEMAS)
    requests = [_chat(f"Describe a {name} as JSON.", sampling=S(
                    temperature=0.8, seed=seed, constraint=C(json_schema=json.dumps(SCHEMAS[name]))),
                    stopping=T(max_tokens=48))
                for name in names for seed in (1, 2)]
    requests += [_chat("Say something.", sampling=S(temperature=0.8, seed=3), stopping=T(max_tokens=16))] * 2
    out = _texts(stub, requests)
    for i, name in enumerate(n for n in names for _ in (1, 2)):
        text, reason = out[(i, 0)]
        assert reason == pb.FINISH_REASON_EOS, f"{name}: ended {reason} with {text!r}"
        jsonschema.validate(json.loads(text), SCHEMAS[name])
    assert {out[(len(requests) - 1, 0)][1], out[(len(requests) - 2, 0)][1]} <= {
        pb.FINISH_REASON_EOS, pb.FINISH_REASON_LENGTH}


def test_regex_choice_json_object_and_grammar_outputs_always_match(stub):
    regex = r"[0-9]{3}-[a-z]{2,5}"
    choices = ["alpha", "beta", "gamma delta"]
    grammar = 'root ::= "(" item ("," item)* ")"\nitem ::= [a-c]+'
    kinds = [C(regex=regex), C(choice=pb.ChoiceList(choices=choices)), C(json_object=True), C(grammar=grammar)]
    requests = [_chat("Answer.", sampling=S(temperature=1.0, seed=seed, constraint=kind), stopping=T(max_tokens=24))
                for kind in kinds for seed in (5, 6)]
    out = _texts(stub, requests)
    for i in range(len(requests)):
        text, reason = out[(i, 0)]
        kind = requests[i].sampling.constraint.WhichOneof("kind")
        if reason == pb.FINISH_REASON_LENGTH:  # only an unbounded grammar may run out of tokens
            assert kind in ("json_object", "grammar"), (kind, text)
            continue
        assert reason == pb.FINISH_REASON_EOS, (kind, text)
        if kind == "regex":
            assert re.fullmatch(regex, text), text
        elif kind == "choice":
            assert text in choices
        elif kind == "json_object":
            assert isinstance(json.loads(text), dict)
        else:
            assert re.fullmatch(r"\([a-c]+(,[a-c]+)*\)", text), text


def test_same_seed_same_output_alone_and_batched_and_n_each_valid(stub):
    schema = SCHEMAS["person"]
    one = _chat("A person as JSON.", sampling=S(temperature=1.0, seed=77, constraint=C(json_schema=json.dumps(schema))),
                stopping=T(max_tokens=40))
    alone = stub.Generate(one, timeout=120).text
    many = pb.GenerateRequest()
    many.CopyFrom(one)
    many.sampling.n = 3
    out = _texts(stub, [many, _chat("Hi", stopping=T(max_tokens=8))])
    assert out[(0, 0)][0] == alone
    assert len({out[(0, i)][0] for i in range(3)}) >= 2, "n completions should differ"
    for i in range(3):
        jsonschema.validate(json.loads(out[(0, i)][0]), schema)


def test_logprobs_and_stop_strings_work_under_a_constraint(stub):
    request = _chat("Count.", sampling=S(temperature=0, constraint=C(regex="[0-9]{1,2};[a-z]{1,3}")),
                    stopping=T(max_tokens=24, stop=[";"]), output=pb.OutputOptions(logprobs=2))
    response = stub.Generate(request, timeout=120)
    assert response.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert re.fullmatch("[0-9]{1,2}", response.text)
    assert len(response.logprobs) == len(response.token_ids)
    assert all(lp.logprob <= 0 and len(lp.top_logprobs) == 2 for lp in response.logprobs)


def test_max_tokens_mid_object_ends_with_length(stub):
    request = _chat("JSON", sampling=S(temperature=0, constraint=C(json_schema=json.dumps(SCHEMAS["nested"]))),
                    stopping=T(max_tokens=3))
    response = stub.Generate(request, timeout=120)
    assert response.finish_reason == pb.FINISH_REASON_LENGTH and len(response.token_ids) == 3


@pytest.mark.parametrize("constraint, field, words", [
    (C(regex="[a-"), "sampling.constraint.regex", "does not compile"),
    (C(json_schema="{not json"), "sampling.constraint.json_schema", "is not JSON"),
    (C(json_schema='{"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}'),
     "sampling.constraint.json_schema", "does not compile"),
    (C(grammar="root ::= undefined_rule"), "sampling.constraint.grammar", "does not compile"),
    (C(json_schema=json.dumps({"enum": ["x" * 1000] * 70})), "sampling.constraint.json_schema", "bytes; at most"),
    (C(choice=pb.ChoiceList()), "sampling.constraint.choice.choices", "at least one"),
    (C(), "sampling.constraint", "set one of"),
], ids=["regex", "schema-json", "schema-ref", "grammar", "oversize", "no-choices", "unset-kind"])
def test_bad_constraints_are_invalid_argument_naming_the_field(stub, constraint, field, words):
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(_chat("x", sampling=S(constraint=constraint), stopping=T(max_tokens=4)), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violation_fields(err.value), err.value.details()
    assert words in err.value.details()
    ok = stub.Generate(_chat("x", sampling=S(constraint=C(regex="ok")), stopping=T(max_tokens=4)), timeout=60)
    assert ok.text == "ok"  # the server keeps serving, constraints included


def test_a_constraint_refuses_ignore_eos_and_min_tokens(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(_chat("x", sampling=S(constraint=C(regex="a+")), stopping=T(ignore_eos=True, min_tokens=2,
                                                                                    max_tokens=4)), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violation_fields(err.value)) == {"stopping.ignore_eos", "stopping.min_tokens"}


def test_capabilities_list_the_constraint_kinds_and_tool_formats(stub):
    caps = stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30)
    assert list(caps.constraint_kinds) == ["json_schema", "json_object", "regex", "choice", "grammar"]
    assert list(caps.tool_call_formats) == ["hermes", "llama3_json"]
    assert caps.max_constraint_bytes == 64 * 1024 and caps.max_tools == 64
