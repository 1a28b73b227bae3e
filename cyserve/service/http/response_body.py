"""The service's GenerateResponse messages as OpenAI objects: whole chat.completion and
text_completion bodies (`Accumulator`), and the chunks of a stream (`StreamChunks`), in OpenAI's
shapes: a role delta first, content deltas, a chunk with the finish reason, a usage chunk when
asked (`stream_options.include_usage`), then `data: [DONE]`.

Choice `index` is prompt_index * n + completion index, as OpenAI numbers the choices of a
multi-prompt completions call. Usage counts each prompt once (its n completions share it).
"""
from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from cyserve.service.http.request_body import GenerationCall
from cyserve.v1 import generation_pb2 as pb

# FinishReason -> OpenAI finish_reason ("abort" as vLLM names a stop by the server).
FINISH_REASONS = {
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_EOS: "stop",
    pb.FINISH_REASON_STOP_SEQUENCE: "stop",
    pb.FINISH_REASON_STOP_TOKEN: "stop",
    pb.FINISH_REASON_TIME_LIMIT: "length",
    pb.FINISH_REASON_CANCELLED: "abort",
    pb.FINISH_REASON_ERROR: "error",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
}
OBJECT_NAMES = {"chat": "chat.completion", "completion": "text_completion"}
CHUNK_NAMES = {"chat": "chat.completion.chunk", "completion": "text_completion"}
ID_PREFIXES = {"chat": "chatcmpl-", "completion": "cmpl-"}
DONE = b"data: [DONE]\n\n"


def new_id(kind: str) -> str:
    return ID_PREFIXES[kind] + uuid.uuid4().hex


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying `payload` as JSON."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class TokenText:
    """The text of a single token, as OpenAI's logprobs report it (decoded, not the BPE piece),
    cached per token id."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._text = functools.lru_cache(maxsize=65536)(lambda token_id: decode([token_id]))

    def __call__(self, token_id: int) -> str:
        return self._text(token_id)


class Usage:
    """Token counts over a call's completions (each prompt counted once)."""

    def __init__(self) -> None:
        self.prompt_tokens: dict[int, int] = {}
        self.cached_tokens: dict[int, int] = {}
        self.completion_tokens = 0

    def add(self, response: pb.GenerateResponse) -> None:
        if response.HasField("usage"):
            u = response.usage
            self.prompt_tokens[response.prompt_index] = u.prompt_tokens
            self.cached_tokens[response.prompt_index] = u.cached_prompt_tokens
            self.completion_tokens += u.completion_tokens

    def body(self) -> dict[str, Any]:
        prompt = sum(self.prompt_tokens.values())
        return {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": sum(self.cached_tokens.values())}}


def choice_index(call: GenerationCall, response: pb.GenerateResponse) -> int:
    return response.prompt_index * call.n + response.index


def chat_logprobs(token_text: TokenText, logprobs: Any) -> list[dict[str, Any]]:
    """OpenAI's choices[].logprobs.content entries for TokenLogprob messages."""

    def entry(lp: pb.TokenLogprob) -> dict[str, Any]:
        text = token_text(lp.token_id)
        return {"token": text, "logprob": lp.logprob, "bytes": list(text.encode())}

    return [{**entry(lp), "top_logprobs": [entry(t) for t in lp.top_logprobs]} for lp in logprobs]


class CompletionLogprobs:
    """OpenAI's legacy completions logprobs object, built token by token."""

    def __init__(self, token_text: TokenText) -> None:
        self._text = token_text
        self.tokens: list[str] = []
        self.token_logprobs: list[float] = []
        self.top_logprobs: list[dict[str, float]] = []
        self.text_offset: list[int] = []
        self._offset = 0

    def add(self, logprobs: Any) -> None:
        for lp in logprobs:
            text = self._text(lp.token_id)
            self.tokens.append(text)
            self.token_logprobs.append(lp.logprob)
            self.top_logprobs.append({self._text(t.token_id): t.logprob for t in lp.top_logprobs})
            self.text_offset.append(self._offset)
            self._offset += len(text)

    def body(self, start: int = 0) -> dict[str, Any]:
        return {"tokens": self.tokens[start:], "token_logprobs": self.token_logprobs[start:],
                "top_logprobs": self.top_logprobs[start:], "text_offset": self.text_offset[start:]}


class _Choice:
    def __init__(self, token_text: TokenText) -> None:
        self.texts: list[str] = []
        self.chat_logprobs: list[dict[str, Any]] = []
        self.completion_logprobs = CompletionLogprobs(token_text)
        self.finish_reason: str | None = None
        self.tool_calls: list[dict[str, Any]] = []


def tool_call_objects(response: pb.GenerateResponse, with_index: bool = False) -> list[dict[str, Any]]:
    """OpenAI's tool_calls entries of a message (with `index` in a stream's delta)."""
    return [{**({"index": k} if with_index else {}), "id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments_json}}
            for k, c in enumerate(response.tool_calls)]


class _CallResponse:
    """What every response body of one call shares: its id, creation time, model and usage."""

    def __init__(self, call: GenerationCall, model: str, token_text: TokenText) -> None:
        self.call = call
        self.model = model
        self.id = new_id(call.kind)
        self.created = int(time.time())
        self.usage = Usage()
        self._token_text = token_text


class Accumulator(_CallResponse):
    """A whole (non-streaming) response, from every message of a call."""

    def __init__(self, call: GenerationCall, model: str, token_text: TokenText) -> None:
        super().__init__(call, model, token_text)
        self._choices: dict[int, _Choice] = {}

    def add(self, response: pb.GenerateResponse) -> None:
        index = choice_index(self.call, response)
        choice = self._choices.get(index) or self._choices.setdefault(index, _Choice(self._token_text))
        choice.texts.append(response.text)
        if self.call.logprobs and response.logprobs:
            if self.call.kind == "chat":
                choice.chat_logprobs += chat_logprobs(self._token_text, response.logprobs)
            else:
                choice.completion_logprobs.add(response.logprobs)
        if response.finish_reason:
            choice.finish_reason = FINISH_REASONS.get(response.finish_reason, "stop")
            choice.tool_calls = tool_call_objects(response)
        self.usage.add(response)

    def body(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            c = self._choices[index]
            text = "".join(c.texts)
            if self.call.kind == "chat":
                logprobs = {"content": c.chat_logprobs} if self.call.logprobs else None
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if c.tool_calls:  # the calls' markup is not content
                    message = {"role": "assistant", "content": None, "tool_calls": c.tool_calls}
                choices.append({"index": index, "message": message,
                                "logprobs": logprobs, "finish_reason": c.finish_reason})
            else:
                logprobs = c.completion_logprobs.body() if self.call.logprobs else None
                choices.append({"index": index, "text": text, "logprobs": logprobs,
                                "finish_reason": c.finish_reason})
        return {"id": self.id, "object": OBJECT_NAMES[self.call.kind], "created": self.created,
                "model": self.model, "system_fingerprint": None, "choices": choices,
                "usage": self.usage.body()}


class StreamChunks(_CallResponse):
    """The server-sent events of a streamed call, message by message."""

    def _chunk(self, choices: list[dict[str, Any]]) -> bytes:
        payload: dict[str, Any] = {"id": self.id, "object": CHUNK_NAMES[self.call.kind],
                                   "created": self.created, "model": self.model,
                                   "system_fingerprint": None, "choices": choices}
        if self.call.include_usage:
            payload["usage"] = None
        return sse(payload)

    def opening(self) -> list[bytes]:
        """Chat: the role delta of every choice, before any content."""
        if self.call.kind != "chat":
            return []
        return [self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                              "logprobs": None, "finish_reason": None}])
                for i in range(self.call.num_completions)]

    def events(self, response: pb.GenerateResponse) -> list[bytes]:
        """The chunks of one message: its text (and logprobs), then its finish reason."""
        self.usage.add(response)
        index = choice_index(self.call, response)
        out: list[bytes] = []
        if response.text or response.logprobs:
            out.append(self._chunk([self._content(index, response)]))
        if response.finish_reason:
            reason = FINISH_REASONS.get(response.finish_reason, "stop")
            if self.call.kind == "chat":
                delta = {"tool_calls": tool_call_objects(response, True)} if response.tool_calls else {}
                choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
            else:
                choice = {"index": index, "text": "", "logprobs": None, "finish_reason": reason}
            out.append(self._chunk([choice]))
        return out

    def _content(self, index: int, response: pb.GenerateResponse) -> dict[str, Any]:
        logprobs = None
        if self.call.kind == "chat":
            if self.call.logprobs:
                logprobs = {"content": chat_logprobs(self._token_text, response.logprobs)}
            return {"index": index, "delta": {"content": response.text}, "logprobs": logprobs,
                    "finish_reason": None}
        if self.call.logprobs:
            part = CompletionLogprobs(self._token_text)
            part.add(response.logprobs)
            logprobs = part.body()
        return {"index": index, "text": response.text, "logprobs": logprobs, "finish_reason": None}

    def closing(self) -> list[bytes]:
        """The usage chunk (when asked for) and [DONE]."""
        out = []
        if self.call.include_usage:
            out.append(sse({"id": self.id, "object": CHUNK_NAMES[self.call.kind],
                            "created": self.created, "model": self.model,
                            "system_fingerprint": None, "choices": [], "usage": self.usage.body()}))
        out.append(DONE)
        return out
