"""Structured output and tool calls through the OpenAI-compatible HTTP API, with the official
client: response_format, vLLM's guided_* parameters, tools and tool_choice, streamed and not."""
from __future__ import annotations

import json
import re

import jsonschema

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                           "population": {"type": "integer", "minimum": 0, "maximum": 10**8}},
          "required": ["city", "population"]}
ASK = [{"role": "user", "content": "Name a city and its population as JSON."}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 12}}, "required": ["city"]}}}


def _model(client) -> str:
    return client.models.list().data[0].id


def test_response_format_json_schema_and_json_object(openai_client):
    model = _model(openai_client)
    r = openai_client.chat.completions.create(
        model=model, messages=ASK, max_tokens=40, temperature=0.7, seed=3, n=2,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}})
    for choice in r.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    r = openai_client.chat.completions.create(model=model, messages=ASK, max_tokens=40, temperature=0,
                                              response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_guided_regex_and_choice_on_both_endpoints(openai_client):
    model = _model(openai_client)
    r = openai_client.completions.create(model=model, prompt="Code:", max_tokens=12, temperature=1.0, seed=1,
                                         extra_body={"guided_regex": "[A-Z]{3}-[0-9]{2}"})
    assert re.fullmatch("[A-Z]{3}-[0-9]{2}", r.choices[0].text)
    r = openai_client.chat.completions.create(model=model, messages=ASK, max_tokens=6, temperature=1.0, seed=2,
                                              extra_body={"guided_choice": ["yes", "no"]})
    assert r.choices[0].message.content in ("yes", "no")


def test_required_tool_call_comes_back_as_tool_calls(openai_client):
    model = _model(openai_client)
    ask = [{"role": "user", "content": "What is the weather in Lima?"}]
    r = openai_client.chat.completions.create(model=model, messages=ask, tools=[WEATHER], tool_choice="required",
                                              max_tokens=40, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    # the call and its result go back in, as OpenAI clients send them
    follow = ask + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                    {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18}'}]
    again = openai_client.chat.completions.create(model=model, messages=follow, tools=[WEATHER], tool_choice="none",
                                                  max_tokens=8, temperature=0)
    assert again.choices[0].finish_reason in ("stop", "length") and not again.choices[0].message.tool_calls


def test_a_streamed_tool_call_ends_with_its_delta(openai_client):
    model = _model(openai_client)
    stream = openai_client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=40, temperature=0,
        stream=True)
    chunks = list(stream)
    calls = [tc for c in chunks for ch in c.choices for tc in (ch.delta.tool_calls or [])]
    assert [c.function.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].function.arguments)["city"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
