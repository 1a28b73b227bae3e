"""Tool calls: the request's tools and tool choice checked, shown to the model through its chat
template, turned into an output constraint when a call is required, and parsed out of the output.

Formats, by the chat template they come with:
  hermes       <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call> blocks (Qwen, Hermes and
               ChatML models such as SmolLM2); the default for templates that name no format.
  llama3_json  one JSON object {"name": ..., "parameters": {...}}, maybe after <|python_tag|>
               (Llama 3.1+ templates).
A template that does not read `tools` gets them described in a system message, in the hermes
format; one that does not read `tool_calls` sees an assistant's calls written as hermes blocks in
its content, and tool results as <tool_response> blocks of a user turn when it knows no tool role.
"""
from __future__ import annotations

import json
import re
import secrets
from typing import Any

from cyserve.fastpath.structured import MAX_CONSTRAINT_BYTES, Constraint, ToolCallSpec
from cyserve.service.validation import FieldViolation
from cyserve.v1 import generation_pb2 as pb

FORMATS = ("hermes", "llama3_json")
MAX_TOOLS = 64
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HERMES_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
Mode = pb.ToolChoice.Mode


def tool_call_format(template_source: str) -> str:
    """The tool-call format a chat template's model writes."""
    if "<|python_tag|>" in template_source or "ipython" in template_source:
        return "llama3_json"
    return "hermes"


def formats_for(template_source: str) -> list[str]:
    """Capabilities.tool_call_formats: this model's format first, then the others parsed."""
    first = tool_call_format(template_source)
    return [first] + [f for f in FORMATS if f != first]


def mode_of(request: pb.GenerateRequest) -> int:
    mode = request.tool_choice.mode if request.HasField("tool_choice") else Mode.MODE_UNSPECIFIED
    return Mode.MODE_AUTO if mode == Mode.MODE_UNSPECIFIED else mode


def tool_violations(request: pb.GenerateRequest) -> list[FieldViolation]:
    """Problems of tools, tool_choice and messages' tool calls."""
    v: list[FieldViolation] = []
    names = [t.name for t in request.tools]
    if request.tools and not request.messages:
        v.append(FieldViolation("tools", "apply only to messages (a chat)"))
    if len(request.tools) > MAX_TOOLS:
        v.append(FieldViolation("tools", f"has {len(request.tools)} tools; at most {MAX_TOOLS}"))
    for i, tool in enumerate(request.tools[:MAX_TOOLS]):
        if not _NAME.fullmatch(tool.name):
            v.append(FieldViolation(f"tools[{i}].name", "must be 1-64 characters from A-Z a-z 0-9 _ . -"))
        elif tool.name in names[:i]:
            v.append(FieldViolation(f"tools[{i}].name", f"repeats {tool.name!r}: tool names must be unique"))
        v += _parameters_violations(f"tools[{i}].parameters_json", tool.parameters_json)
    v += _choice_violations(request, names)
    for i, message in enumerate(request.messages):
        for j, call in enumerate(message.tool_calls):
            if not _is_json_object(call.arguments_json or "{}"):
                v.append(FieldViolation(f"messages[{i}].tool_calls[{j}].arguments_json", "must be a JSON object"))
    return v[:16]


def _parameters_violations(field: str, text: str) -> list[FieldViolation]:
    if not text:
        return []
    if len(text.encode("utf-8")) > MAX_CONSTRAINT_BYTES:
        return [FieldViolation(field, f"is over {MAX_CONSTRAINT_BYTES} bytes (Capabilities.max_constraint_bytes)")]
    if not _is_json_object(text):
        return [FieldViolation(field, "must be a JSON Schema object in JSON text")]
    return []


def _choice_violations(request: pb.GenerateRequest, names: list[str]) -> list[FieldViolation]:
    if not request.HasField("tool_choice"):
        return []
    choice = request.tool_choice
    if choice.mode != Mode.MODE_UNSPECIFIED and not request.tools:
        return [FieldViolation("tool_choice", "needs tools: send the functions the model may call")]
    if choice.mode == Mode.MODE_FUNCTION:
        if choice.function_name not in names:
            return [FieldViolation("tool_choice.function_name", (
                f"{choice.function_name!r} names no tool of this request; use one of {', '.join(names)}"))]
    elif choice.function_name:
        return [FieldViolation("tool_choice.function_name", "applies only to mode MODE_FUNCTION")]
    if choice.mode in (Mode.MODE_REQUIRED, Mode.MODE_FUNCTION) and request.sampling.HasField("constraint"):
        return [FieldViolation("tool_choice", "a required call constrains the output already: leave "
                                              "sampling.constraint unset")]
    return []


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def tool_constraint(request: pb.GenerateRequest, fmt: str) -> Constraint | None:
    """The constraint a required or named call puts on the output; None otherwise."""
    mode = mode_of(request)
    if not request.tools or mode not in (Mode.MODE_REQUIRED, Mode.MODE_FUNCTION):
        return None
    tools = [t for t in request.tools if mode == Mode.MODE_REQUIRED or t.name == request.tool_choice.function_name]
    return ToolCallSpec(fmt, tuple((t.name, t.parameters_json) for t in tools)).to_constraint("tool_choice")


# ---- the prompt -------------------------------------------------------------------------------

def tools_for_template(request: pb.GenerateRequest) -> list[dict[str, Any]]:
    """The tools as chat templates expect them (OpenAI's function objects)."""
    return [{"type": "function", "function": {
        "name": t.name, "description": t.description,
        "parameters": json.loads(t.parameters_json) if t.parameters_json else {"type": "object", "properties": {}}}}
        for t in request.tools]


def _hermes_block(name: str, arguments: Any) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "\n</tool_call>"


def _system_text(tools: list[dict[str, Any]]) -> str:
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return ("You may call one or more functions to assist with the user query. The functions are listed "
            f"within <tools></tools> tags:\n<tools>\n{listing}\n</tools>\nFor each function call, return a "
            "JSON object with the function name and arguments within <tool_call></tool_call> tags:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def template_messages(request: pb.GenerateRequest, source: str, roles: frozenset[str]
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages as template variables, and `tools` for the template (None: no tools, or the
    template does not read them and the tools went into a system message instead)."""
    reads_tools = re.search(r"\btools\b", source) is not None
    reads_calls = "tool_calls" in source
    messages: list[dict[str, Any]] = []
    for m in request.messages:
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.name:
            message["name"] = m.name
        if m.tool_call_id:
            message["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            calls = [{"id": c.id, "type": "function", "function": {
                "name": c.name, "arguments": json.loads(c.arguments_json or "{}")}} for c in m.tool_calls]
            if reads_calls:
                message["tool_calls"] = calls
            else:
                blocks = [_hermes_block(c["function"]["name"], c["function"]["arguments"]) for c in calls]
                message["content"] = "\n".join(([m.content] if m.content else []) + blocks)
        if m.role == "tool" and "tool" not in roles:
            message = {"role": "user", "content": f"<tool_response>\n{m.content}\n</tool_response>"}
        messages.append(message)
    if not request.tools:
        return messages, None
    tools = tools_for_template(request)
    if reads_tools:
        return messages, tools
    text = _system_text(tools)
    if messages and messages[0]["role"] == "system":
        messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + text}
    else:
        messages.insert(0, {"role": "system", "content": text})
    return messages, None


# ---- the output -------------------------------------------------------------------------------

def _call(name: Any, arguments: Any, names: set[str]) -> pb.ToolCall | None:
    if not isinstance(name, str) or name not in names or not isinstance(arguments, dict):
        return None
    return pb.ToolCall(id="call_" + secrets.token_hex(12), name=name,
                       arguments_json=json.dumps(arguments, ensure_ascii=False))


def parse_tool_calls(text: str, fmt: str, names: set[str]) -> list[pb.ToolCall]:
    """The calls to known functions written in `text`, in order; empty when there are none (text
    that is not a well-formed call is left as text)."""
    found: list[pb.ToolCall] = []
    if fmt == "hermes":
        for block in _HERMES_BLOCK.findall(text):
            try:
                data = json.loads(block)
            except ValueError:
                continue
            if isinstance(data, dict):
                call = _call(data.get("name"), data.get("arguments", data.get("parameters", {})), names)
                if call is not None:
                    found.append(call)
        return found
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return []
    try:
        data = json.loads(body)
    except ValueError:
        return []
    if isinstance(data, dict):
        call = _call(data.get("name"), data.get("parameters", data.get("arguments", {})), names)
        if call is not None:
            found.append(call)
    return found
