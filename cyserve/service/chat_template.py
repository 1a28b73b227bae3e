"""Renders chat messages into a prompt with the model's own Jinja2 chat template.

Templates come from model files, so they are untrusted code: they run in Jinja2's
ImmutableSandboxedEnvironment (no attribute access to internals, no mutation of the inputs) with the
variables Hugging Face templates expect: `messages`, `add_generation_prompt`, `bos_token`,
`eos_token`, `raise_exception(msg)`, plus the `tojson` filter and `strftime_now(fmt)` many recent
templates call.

Message content is text, never markup: `render_parts` says which stretches of the prompt are a
message's content, and `prompt_pieces` splits the prompt at the special tokens the template itself
wrote, so that special-token text inside content (e.g. "<|im_end|>") is tokenized as plain text
and cannot forge a turn.
"""
from __future__ import annotations

import datetime
import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


# The roles every chat template is taken to know (ChatMessage.role); a template that compares a
# role with other names (e.g. 'tool', 'ipython') knows those too.
STANDARD_ROLES = frozenset({"system", "user", "assistant"})
_ROLE_LITERAL = re.compile(r"""role['"]?\]?\s*(?:==|!=)\s*['"]([A-Za-z_][\w-]*)['"]""")


class ChatTemplateError(Exception):
    """The messages cannot be rendered: the template rejected them or failed on them."""


@dataclass(frozen=True)
class RenderedChat:
    """A rendered conversation: its text, and the same text as (text, is_content) parts, where
    is_content marks a message's content. `parts` is None when the template transforms content
    (e.g. trims it), so that content cannot be located in the prompt."""

    text: str
    parts: tuple[tuple[str, bool], ...] | None


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(str(message))


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    # Like transformers' override: no HTML escaping, unicode kept, keys in insertion order.
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=False)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        extensions=[jinja2.ext.loopcontrols],
        undefined=jinja2.Undefined,
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """A compiled chat template. Thread-safe: render() may run in worker threads."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        """Compile `source`; raises ChatTemplateError if it is not valid Jinja2."""
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from exc
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    @property
    def roles(self) -> frozenset[str]:
        """The roles this template knows: the standard ones and any it compares a role with."""
        return STANDARD_ROLES | frozenset(_ROLE_LITERAL.findall(self.source))

    def render_parts(self, messages: Sequence[dict[str, Any]],
                     add_generation_prompt: bool, tools: list[dict[str, Any]] | None = None) -> RenderedChat:
        """render(), plus where each message's content lies in the prompt (see RenderedChat).

        Each content is first rendered as an unguessable placeholder; the placeholders are then
        replaced by the contents, and the result must equal the plain rendering.
        """
        text = self.render(messages, add_generation_prompt, tools)
        nonce = secrets.token_hex(8)
        marks = [f"\ue000{nonce}:{i}\ue001" for i in range(len(messages))]
        marked = self.render([{**m, "content": mark} for m, mark in zip(messages, marks)],
                             add_generation_prompt, tools)
        parts: list[tuple[str, bool]] = []
        for i, piece in enumerate(re.split(f"\ue000{nonce}:(\\d+)\ue001", marked)):
            if i % 2:
                parts.append((messages[int(piece)]["content"], True))
            elif piece:
                parts.append((piece, False))
        if "".join(part for part, _ in parts) != text:
            return RenderedChat(text, None)
        return RenderedChat(text, tuple(parts))

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool,
               tools: list[dict[str, Any]] | None = None) -> str:
        """The prompt text for `messages` (dicts with "role" and "content", and maybe "tool_calls",
        "tool_call_id", "name"); `tools`, when given, is the template's `tools` variable.

        Raises ChatTemplateError with the template's own message when it rejects the messages
        (e.g. roles that do not alternate) or fails on them.
        """
        try:
            extra = {"tools": tools} if tools is not None else {}
            return self._template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:  # includes the sandbox's SecurityError
            raise ChatTemplateError(f"the chat template failed on these messages: {exc}") from exc
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise ChatTemplateError(
                f"the chat template failed on these messages: {type(exc).__name__}: {exc}"
            ) from exc


def special_token_pattern(special_tokens: Iterable[str]) -> re.Pattern[str] | None:
    """A regex matching any of `special_tokens` (longest first); None when there are none."""
    texts = sorted({t for t in special_tokens if t}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, texts))) if texts else None


def prompt_pieces(parts: Sequence[tuple[str, bool]],
                  special: re.Pattern[str] | None) -> list[tuple[str, bool]]:
    """(text, is_special_token) pieces of a rendered prompt: special tokens only where the template
    wrote them (parts with is_content False); everything else, content included, is plain text,
    adjacent plain text joined (so the prompt tokenizes as the whole would, without forgery)."""
    pieces: list[tuple[str, bool]] = []
    plain: list[str] = []
    for text, is_content in parts:
        if is_content or special is None:
            plain.append(text)
            continue
        pos = 0
        for match in special.finditer(text):
            plain.append(text[pos:match.start()])
            if any(plain):
                pieces.append(("".join(plain), False))
            plain = []
            pieces.append((match.group(), True))
            pos = match.end()
        plain.append(text[pos:])
    if any(plain):
        pieces.append(("".join(plain), False))
    return pieces
