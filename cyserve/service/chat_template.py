"""Renders chat messages into a prompt with the model's own Jinja2 chat template.

Templates come from model files, so they are untrusted code: they run in Jinja2's
ImmutableSandboxedEnvironment (no attribute access to internals, no mutation of the inputs) with the
variables Hugging Face templates expect: `messages`, `add_generation_prompt`, `bos_token`,
`eos_token`, `raise_exception(msg)`, plus the `tojson` filter and `strftime_now(fmt)` many recent
templates call.
"""
from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any, NoReturn

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(Exception):
    """The messages cannot be rendered: the template rejected them or failed on them."""


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

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
        """The prompt text for `messages` (dicts with "role" and "content").

        Raises ChatTemplateError with the template's own message when it rejects the messages
        (e.g. roles that do not alternate) or fails on them.
        """
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:  # includes the sandbox's SecurityError
            raise ChatTemplateError(f"the chat template failed on these messages: {exc}") from exc
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise ChatTemplateError(
                f"the chat template failed on these messages: {type(exc).__name__}: {exc}"
            ) from exc
