"""OpenAI request bodies of /v1/chat/completions and /v1/completions, turned into the
GenerateRequest messages the gRPC service takes, so that both protocols share one validation, one
chat-template path and one engine path.

Every problem is a RequestValidationError whose fields are OpenAI parameter names (`top_p`,
`messages[1].content`, `stop[0]`); `openai_param` translates the proto paths the shared validation
reports into those names. Fields OpenAI clients send that cyserve does not implement yet are
refused in one table, UNSUPPORTED_PARAMS, never silently ignored; unknown fields are ignored, as
OpenAI-compatible servers do (SDKs add their own).

Structured output: `response_format` (json_object, json_schema) and vLLM's `guided_json`,
`guided_regex`, `guided_choice` and `guided_grammar` become SamplingParams.constraint; `tools` and
`tool_choice` become GenerateRequest.tools and .tool_choice; messages carry `tool_calls`,
`tool_call_id` and `name`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from cyserve.service.validation import SEED_MASK, FieldViolation, RequestValidationError
from cyserve.v1 import generation_pb2 as pb

Kind = Literal["chat", "completion"]

# OpenAI's newer name for the system role; templates know only "system".
ROLE_ALIASES = {"developer": "system"}

# Parameters that ask for something cyserve does not do yet, with the values that ask for
# nothing (accepted).
UNSUPPORTED_PARAMS: dict[str, tuple[Any, ...]] = {
    "functions": (None, []),
    "function_call": (None, "none"),
    "suffix": (None, ""),
    "echo": (None, False),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
}
UNSUPPORTED_WHY = {
    "functions": "the legacy function calling is not supported; send tools instead",
    "function_call": "the legacy function calling is not supported; send tool_choice instead",
    "suffix": "is not supported; leave it out",
    "echo": "is not supported; leave it out or send false",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
}


@dataclass
class GenerationCall:
    """One HTTP generation call: a GenerateRequest per prompt, and how to answer."""

    kind: Kind
    model: str
    requests: list[pb.GenerateRequest]
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False  # chat: logprobs=true; completions: logprobs set
    max_tokens_param: str = "max_tokens"  # which name the caller used, for error messages
    constraint_param: str = "response_format"  # likewise, of the constraint
    violations: list[FieldViolation] = field(default_factory=list)

    @property
    def num_completions(self) -> int:
        return self.n * len(self.requests)


def openai_param(proto_field: str, call: GenerationCall | None = None) -> str:
    """The OpenAI parameter a shared-validation field path stands for: `sampling.top_p` ->
    `top_p`, `stopping.max_tokens` -> `max_tokens` (or `max_completion_tokens` if the caller
    used it), `output.logprobs` -> `top_logprobs` (chat) or `logprobs`, `prompt_token_ids` ->
    `prompt`."""
    name = re.sub(r"^(sampling|stopping|output)\.", "", proto_field)
    name = re.sub(r"^requests\[(\d+)\]\.", "", name)
    if name.startswith("logit_bias"):
        return "logit_bias"
    if name == "max_tokens" and call is not None:
        return call.max_tokens_param
    if name == "logprobs":
        return "top_logprobs" if call is not None and call.kind == "chat" else "logprobs"
    if name.startswith("prompt_token_ids"):
        return "prompt"
    if name.startswith("constraint"):
        return call.constraint_param if call is not None else "response_format"
    if name.startswith("tool_choice"):
        return "tool_choice"
    return {"include_stop": "include_stop_str_in_output"}.get(name, name)


def chat_call(body: Any) -> GenerationCall:
    """The call a /v1/chat/completions body asks for; raises RequestValidationError."""
    p = _Params(_object(body))
    call = _call("chat", p)
    request = pb.GenerateRequest()
    messages = p.take("messages", list, required=True)
    if messages is not None:
        if not messages:
            p.problem("messages", "must hold at least one message")
        for i, message in enumerate(messages):
            _add_message(p, request, i, message)
    _fill(p, call, request)
    _fill_tools(p, request)
    if p.take("logprobs", bool):
        call.logprobs = True
        request.output.logprobs = p.take("top_logprobs", int, minimum=0) or 0
    elif p.body.get("top_logprobs") is not None:
        p.problem("top_logprobs", "needs logprobs true")
    call.requests = [request]
    return _done(p, call)


def completion_call(body: Any, max_prompts: int) -> GenerationCall:
    """The call a /v1/completions body asks for (a prompt or a list of prompts, as text or token
    ids); raises RequestValidationError."""
    p = _Params(_object(body))
    call = _call("completion", p)
    template = pb.GenerateRequest()
    _fill(p, call, template)
    logprobs = p.take("logprobs", int, minimum=0)
    if logprobs is not None:
        call.logprobs = True
        template.output.logprobs = logprobs
    best_of = p.take("best_of", int, minimum=1)
    if best_of is not None and best_of != call.n:
        p.problem("best_of", f"must equal n ({call.n}): best_of > n is not supported")
    prompts = _prompts(p, max_prompts)
    for prompt in prompts:
        request = pb.GenerateRequest()
        request.CopyFrom(template)
        if isinstance(prompt, str):
            request.prompt = prompt
        else:
            request.prompt_token_ids.extend(prompt)
        call.requests.append(request)
    return _done(p, call)


class _Params:
    """Typed reads of an OpenAI body; problems are collected, not raised one by one."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.violations: list[FieldViolation] = []

    def problem(self, name: str, description: str) -> None:
        self.violations.append(FieldViolation(name, description))

    def take(self, name: str, kind: type, *, required: bool = False, minimum: float | None = None,
             where: dict[str, Any] | None = None, label: str | None = None) -> Any:
        """body[name] when it is a `kind` (int accepted for float; null = absent), else None
        with a problem recorded."""
        source = self.body if where is None else where
        label = label or name
        value = source.get(name)
        if value is None:
            if required:
                self.problem(label, "is required")
            return None
        if not _is(value, kind):
            self.problem(label, f"must be {_KIND_NAMES[kind]}, got {_json_type(value)}")
            return None
        if minimum is not None and value < minimum:
            self.problem(label, f"must be at least {minimum:g}, got {value}")
            return None
        return float(value) if kind is float else value


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
               list: "an array", dict: "an object"}


def _is(value: Any, kind: type) -> bool:
    if kind in (int, float) and isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _json_type(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (str, "a string"), (int, "an integer"), (float, "a number"),
                       (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return "null"


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestValidationError([FieldViolation("body", "must be a JSON object")])
    return body


def _call(kind: Kind, p: _Params) -> GenerationCall:
    call = GenerationCall(kind=kind, model=p.take("model", str, required=True) or "", requests=[])
    call.stream = bool(p.take("stream", bool))
    options = p.take("stream_options", dict)
    if options is not None:
        if not call.stream:
            p.problem("stream_options", "applies only with stream true")
        call.include_usage = bool(p.take("include_usage", bool, where=options,
                                         label="stream_options.include_usage"))
    for name, accepted in UNSUPPORTED_PARAMS.items():
        if name in p.body and p.body[name] not in accepted:
            p.problem(name, UNSUPPORTED_WHY[name])
    return call


def _fill(p: _Params, call: GenerationCall, request: pb.GenerateRequest) -> None:
    """The sampling and stopping parameters both endpoints share, into `request`."""
    s, st = request.sampling, request.stopping
    for name, target in (("temperature", s), ("top_p", s), ("presence_penalty", s),
                         ("frequency_penalty", s), ("repetition_penalty", s), ("min_p", s)):
        value = p.take(name, float)
        if value is not None:
            setattr(target, name, value)
    top_k = p.take("top_k", int)
    if top_k is not None:
        s.top_k = 0 if top_k == -1 else top_k  # vLLM's -1 = no cut
        if top_k < -1:
            p.problem("top_k", f"must be -1 or 0 (no cut) or more, got {top_k}")
    n = p.take("n", int, minimum=1)
    if n is not None:
        call.n = n
        s.n = n
    seed = p.take("seed", int)
    if seed is not None:
        s.seed = seed & SEED_MASK
    _fill_logit_bias(p, s)
    _fill_constraint(p, call, s)
    for name in ("max_completion_tokens", "max_tokens"):
        value = p.take(name, int, minimum=1)
        if value is not None:
            st.max_tokens = value
            call.max_tokens_param = name
            break
    min_tokens = p.take("min_tokens", int, minimum=0)
    if min_tokens is not None:
        st.min_tokens = min_tokens
    st.ignore_eos = bool(p.take("ignore_eos", bool))
    st.include_stop = bool(p.take("include_stop_str_in_output", bool))
    _fill_stop(p, st)
    ids = p.take("stop_token_ids", list)
    if ids is not None:
        st.stop_token_ids.extend(_token_ids(p, "stop_token_ids", ids))
    p.take("user", str)  # accepted, not used: cyserve keeps no per-user state
    request_id = p.take("request_id", str)
    if request_id:
        request.request_id = request_id


def _fill_logit_bias(p: _Params, sampling: pb.SamplingParams) -> None:
    bias = p.take("logit_bias", dict)
    for key, value in (bias or {}).items():
        if not (isinstance(key, str) and key.isdigit()):
            p.problem("logit_bias", f"keys must be token ids, got {key!r}")
        elif not _is(value, float):
            p.problem("logit_bias", f"values must be numbers, got {_json_type(value)} for {key}")
        else:
            sampling.logit_bias[int(key)] = float(value)


def _fill_stop(p: _Params, stopping: pb.StoppingCriteria) -> None:
    stop = p.body.get("stop")
    if stop is None:
        return
    if isinstance(stop, str):
        stopping.stop.append(stop)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stopping.stop.extend(stop)
    else:
        p.problem("stop", "must be a string or an array of strings")


def _token_ids(p: _Params, name: str, ids: list[Any]) -> list[int]:
    if all(_is(t, int) and 0 <= t < 1 << 32 for t in ids):
        return list(ids)
    p.problem(name, "must be an array of token ids (integers >= 0)")
    return []


def _add_message(p: _Params, request: pb.GenerateRequest, i: int, message: Any) -> None:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        p.problem(where, f"must be an object with role and content, got {_json_type(message)}")
        return
    role = p.take("role", str, required=True, where=message, label=f"{where}.role") or ""
    content = _content_text(p, message.get("content"), f"{where}.content")
    added = request.messages.add(role=ROLE_ALIASES.get(role, role), content=content)
    added.tool_call_id = p.take("tool_call_id", str, where=message, label=f"{where}.tool_call_id") or ""
    added.name = p.take("name", str, where=message, label=f"{where}.name") or ""
    for j, call in enumerate(p.take("tool_calls", list, where=message, label=f"{where}.tool_calls") or []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            p.problem(f"{where}.tool_calls[{j}]", "must be {\"id\", \"type\": \"function\", \"function\": "
                                                  "{\"name\", \"arguments\"}}")
            continue
        arguments = function.get("arguments") or "{}"
        added.tool_calls.add(id=str(call.get("id") or ""), name=function["name"],
                             arguments_json=arguments if isinstance(arguments, str) else json.dumps(arguments))


def _fill_constraint(p: _Params, call: GenerationCall, sampling: pb.SamplingParams) -> None:
    """response_format, or one of vLLM's guided_* parameters, as sampling.constraint."""
    given = [name for name in ("response_format", "guided_json", "guided_regex", "guided_choice", "guided_grammar")
             if p.body.get(name) is not None and p.body.get(name) != {"type": "text"}]
    if len(given) > 1:
        p.problem(given[1], f"set one of {' and '.join(given)}, not both")
    if not given:
        return
    name = call.constraint_param = given[0]
    value = p.body[name]
    c = sampling.constraint
    if name == "response_format":
        kind = value.get("type") if isinstance(value, dict) else None
        schema = (value.get("json_schema") or {}).get("schema") if isinstance(value, dict) else None
        if kind == "json_object":
            c.json_object = True
        elif kind == "json_schema" and isinstance(schema, dict):
            c.json_schema = json.dumps(schema)
        else:
            p.problem(name, 'must be {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", '
                            '"json_schema": {"name": ..., "schema": {...}}}')
    elif name == "guided_json":
        if isinstance(value, (dict, str)):
            c.json_schema = value if isinstance(value, str) else json.dumps(value)
        else:
            p.problem(name, "must be a JSON schema (an object or its JSON text)")
    elif name == "guided_choice":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            c.choice.choices.extend(value)
        else:
            p.problem(name, "must be an array of strings")
    else:
        text = p.take(name, str)
        if text is not None:
            setattr(c, "regex" if name == "guided_regex" else "grammar", text)


_TOOL_MODES = {"auto": pb.ToolChoice.MODE_AUTO, "none": pb.ToolChoice.MODE_NONE,
               "required": pb.ToolChoice.MODE_REQUIRED}


def _fill_tools(p: _Params, request: pb.GenerateRequest) -> None:
    """tools ({"type": "function", "function": {name, description, parameters}}) and tool_choice."""
    for i, tool in enumerate(p.take("tools", list) or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            p.problem(f"tools[{i}]", 'must be {"type": "function", "function": {"name", "description", "parameters"}}')
            continue
        parameters = function.get("parameters")
        request.tools.add(name=str(function.get("name") or ""), description=str(function.get("description") or ""),
                          parameters_json=json.dumps(parameters) if isinstance(parameters, dict) else "")
    choice = p.body.get("tool_choice")
    if choice is None:
        return
    if isinstance(choice, str) and choice in _TOOL_MODES:
        request.tool_choice.mode = _TOOL_MODES[choice]
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        request.tool_choice.mode = pb.ToolChoice.MODE_FUNCTION
        request.tool_choice.function_name = choice["function"]["name"]
    else:
        p.problem("tool_choice", 'must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}')


def _content_text(p: _Params, content: Any, where: str) -> str:
    """Message content as text: a string, null (an assistant turn with tool calls), or an array
    of text parts joined."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else _json_type(part)
                p.problem(f"{where}[{j}]", f"only text parts are supported, got {kind!r}")
        return "".join(texts)
    p.problem(where, f"must be a string or an array of text parts, got {_json_type(content)}")
    return ""


def _prompts(p: _Params, max_prompts: int) -> list[str | list[int]]:
    """The prompts of a completions body: a string, an array of strings, an array of token ids,
    or an array of such arrays."""
    prompt = p.body.get("prompt")
    if prompt is None:
        p.problem("prompt", "is required")
        return []
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, list) or not prompt:
        p.problem("prompt", "must be a string, an array of strings, an array of token ids, or an "
                            "array of arrays of token ids, and not empty")
        return []
    if all(_is(t, int) for t in prompt):
        return [_token_ids(p, "prompt", prompt)]
    if len(prompt) > max_prompts:
        p.problem("prompt", f"holds {len(prompt)} prompts; at most {max_prompts} per call")
        return []
    prompts: list[str | list[int]] = []
    for i, item in enumerate(prompt):
        if isinstance(item, str):
            prompts.append(item)
        elif isinstance(item, list) and item:
            prompts.append(_token_ids(p, f"prompt[{i}]", item))
        else:
            p.problem(f"prompt[{i}]", "must be a string or a non-empty array of token ids")
    return prompts


def _done(p: _Params, call: GenerationCall) -> GenerationCall:
    if p.violations:
        raise RequestValidationError(p.violations)
    return call
