"""Tool calls on the default model: a required or named call is constrained to the hermes format
and parsed into GenerateResponse.tool_calls with finish reason TOOL_CALLS; tools reach the prompt;
unknown tool names and bad tools are INVALID_ARGUMENT; the parsers of both formats."""
from __future__ import annotations

import json

import grpc
import jsonschema
import pytest
from server_support import violation_fields

from cyserve.service.tool_calls import parse_tool_calls, template_messages, tool_call_format
from cyserve.v1 import generation_pb2 as pb

S, T = pb.SamplingParams, pb.StoppingCriteria
Mode = pb.ToolChoice.Mode
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                            "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"]}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}}, "required": ["zone"]}
TOOLS = [pb.Tool(name="get_weather", description="Weather in a city", parameters_json=json.dumps(WEATHER)),
         pb.Tool(name="get_time", description="Time in a zone", parameters_json=json.dumps(TIME))]


def _ask(mode: int, function_name: str = "", **kw) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        messages=[pb.ChatMessage(role="user", content="What is the weather in Paris?")], tools=TOOLS,
        tool_choice=pb.ToolChoice(mode=mode, function_name=function_name),
        sampling=S(temperature=0.7, seed=kw.pop("seed", 1)), stopping=T(max_tokens=64), **kw)


@pytest.mark.parametrize("mode, name", [(Mode.MODE_REQUIRED, ""), (Mode.MODE_FUNCTION, "get_time")])
def test_a_required_call_is_constrained_and_parsed(stub, mode, name):
    response = stub.Generate(_ask(mode, name), timeout=120)
    assert response.finish_reason == pb.FINISH_REASON_TOOL_CALLS, response.text
    assert response.text.startswith("<tool_call>\n") and response.text.endswith("\n</tool_call>")
    (call,) = response.tool_calls
    assert call.id.startswith("call_")
    assert call.name == (name or call.name) and call.name in {"get_weather", "get_time"}
    jsonschema.validate(json.loads(call.arguments_json), WEATHER if call.name == "get_weather" else TIME)


def test_none_leaves_text_unparsed(stub):
    response = stub.Generate(_ask(Mode.MODE_NONE), timeout=120)
    assert response.finish_reason in (pb.FINISH_REASON_EOS, pb.FINISH_REASON_LENGTH)
    assert not response.tool_calls


def test_tools_and_tool_turns_reach_the_prompt(stub):
    request = pb.RenderChatRequest(messages=[
        pb.ChatMessage(role="user", content="Weather in Oslo?"),
        pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(id="call_1", name="get_weather",
                                                                 arguments_json='{"city": "Oslo", "unit": "c"}')]),
        pb.ChatMessage(role="tool", tool_call_id="call_1", name="get_weather", content='{"temp": 3}'),
    ])
    plain = stub.RenderChat(request, timeout=30).prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}\n</tool_call>' in plain
    assert '<tool_response>\n{"temp": 3}\n</tool_response>' in plain
    messages = _ask(Mode.MODE_AUTO).messages
    with_tools = stub.Generate(pb.GenerateRequest(messages=messages, tools=TOOLS, stopping=T(max_tokens=1)),
                               timeout=60).params.prompt_tokens
    without = stub.Generate(pb.GenerateRequest(messages=messages, stopping=T(max_tokens=1)),
                            timeout=60).params.prompt_tokens
    assert with_tools > without + 50  # the tools' descriptions went into a system turn


@pytest.mark.parametrize("edit, field", [
    (lambda r: setattr(r.tool_choice, "function_name", "launch_rockets"), "tool_choice.function_name"),
    (lambda r: r.tools.add(name="get_time"), "tools[2].name"),
    (lambda r: r.tools.add(name="bad name!"), "tools[2].name"),
    (lambda r: r.tools.add(name="x", parameters_json="[1]"), "tools[2].parameters_json"),
    (lambda r: r.sampling.constraint.CopyFrom(pb.OutputConstraint(regex="a")), "tool_choice"),
], ids=["unknown-name", "duplicate", "bad-name", "bad-schema", "with-constraint"])
def test_bad_tools_are_invalid_argument(stub, edit, field):
    request = _ask(Mode.MODE_FUNCTION, "get_weather")
    edit(request)
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violation_fields(err.value)


def test_tool_choice_needs_tools_and_tools_need_messages(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(pb.GenerateRequest(prompt="x", tools=TOOLS[:1], tool_choice=pb.ToolChoice(
            mode=Mode.MODE_REQUIRED)), timeout=60)
    assert set(violation_fields(err.value)) == {"tools"}
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="x")],
                                         tool_choice=pb.ToolChoice(mode=Mode.MODE_REQUIRED)), timeout=60)
    assert violation_fields(err.value) == ["tool_choice"]


NAMES = {"get_weather", "get_time"}


def test_hermes_parser_takes_every_well_formed_block():
    text = ('Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "unit": "c"}}\n</tool_call>'
            '<tool_call>{"name": "get_time", "arguments": {"zone": "CET"}}</tool_call>'
            '<tool_call>{"name": "unknown", "arguments": {}}</tool_call><tool_call>{broken</tool_call>')
    calls = parse_tool_calls(text, "hermes", NAMES)
    assert [(c.name, json.loads(c.arguments_json)) for c in calls] == [
        ("get_weather", {"city": "Rome", "unit": "c"}), ("get_time", {"zone": "CET"})]
    assert len({c.id for c in calls}) == 2
    assert parse_tool_calls("no calls here", "hermes", NAMES) == []


def test_llama3_json_parser():
    (call,) = parse_tool_calls('<|python_tag|>{"name": "get_time", "parameters": {"zone": "UTC"}}', "llama3_json",
                               NAMES)
    assert call.name == "get_time" and json.loads(call.arguments_json) == {"zone": "UTC"}
    assert parse_tool_calls('{"name": "nope", "parameters": {}}', "llama3_json", NAMES) == []
    assert parse_tool_calls("The answer is 4.", "llama3_json", NAMES) == []


def test_formats_follow_the_template():
    assert tool_call_format("{{ '<|im_start|>' }}") == "hermes"
    assert tool_call_format("{%- if message.role == 'ipython' %}<|python_tag|>") == "llama3_json"


def test_a_template_that_reads_tools_gets_them_as_its_variable():
    request = _ask(Mode.MODE_AUTO)
    messages, tools = template_messages(request, "{% for t in tools %}{{ t }}{% endfor %}", frozenset({"user"}))
    assert [t["function"]["name"] for t in tools] == ["get_weather", "get_time"]
    assert messages == [{"role": "user", "content": "What is the weather in Paris?"}]
