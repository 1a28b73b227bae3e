"""Compiled grammars for constraints: the one module that imports xgrammar (an optional extra,
`pip install 'cyserve[structured]'`; importing it loads torch, so it happens on first use, in a
worker thread, never at server start).

`GrammarCache` compiles a Constraint against the model's vocabulary into a `CompiledConstraint`
(LRU over (constraint, tokenizer)), and each sequence gets its own `ConstraintMatcher` from it.
Compiling runs on a small thread pool (`compile_async`), off the event loop and off the engine
thread.
"""
from __future__ import annotations

import asyncio
import collections
import importlib.util
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cyserve.fastpath.contract import TokenizerClient
from cyserve.fastpath.errors import CyserveError, InvalidRequestError
from cyserve.fastpath.structured.constraint import KINDS, MAX_CONSTRAINT_BYTES, TOOL_CALL, Constraint, ToolCallSpec
from cyserve.fastpath.structured.vocab import token_bytes

INSTALL_HINT = "pip install 'cyserve[structured]'"
DEFAULT_CACHE_SIZE = 256  # compiled grammars kept (most recently used)
TOOL_CALL_FORMATS = ("hermes", "llama3_json")


class StructuredOutputUnavailableError(CyserveError):
    """This server cannot constrain output: the grammar library is not installed."""


# Why importing the library failed, once it has: an install whose import raises (a missing or
# mismatched dependency) is found by find_spec but is as unavailable as no install at all.
_import_error: str | None = None


def available() -> bool:
    """Whether the grammar library is installed (checked without importing it) and has not
    failed to import."""
    return _import_error is None and importlib.util.find_spec("xgrammar") is not None


def supported_kinds() -> tuple[str, ...]:
    return KINDS if available() else ()


def _xgrammar() -> Any:
    global _import_error
    if not available():
        raise StructuredOutputUnavailableError(_unavailable_message())
    try:
        import xgrammar
    except ImportError as exc:
        _import_error = _first_line(exc)
        raise StructuredOutputUnavailableError(_unavailable_message()) from exc
    return xgrammar


def _unavailable_message() -> str:
    reason = f" (importing xgrammar failed: {_import_error})" if _import_error else ""
    return f"this server has no structured-output support{reason}: install it with `{INSTALL_HINT}`"


class CompiledConstraint:
    """A constraint compiled against one vocabulary; matchers for sequences come from it."""

    def __init__(self, compiled: Any, constraint: Constraint) -> None:
        self._compiled = compiled
        self.constraint = constraint

    def new_matcher(self) -> "ConstraintMatcher":
        return ConstraintMatcher(_xgrammar().GrammarMatcher(self._compiled))


class ConstraintMatcher:
    """One sequence's position in its grammar. `sync` brings it to the sequence's output so far
    (accepting new tokens, rolling back ones the sequence no longer has), so preemption and
    recompute need nothing of it; `fill` writes the next token's allowed set as a packed bitmask
    row (bit t of word t // 32: token t allowed)."""

    __slots__ = ("_matcher", "num_accepted")

    def __init__(self, matcher: Any) -> None:
        self._matcher = matcher
        self.num_accepted = 0

    def sync(self, output_token_ids: list[int]) -> None:
        n = len(output_token_ids)
        if n < self.num_accepted:
            self._matcher.rollback(self.num_accepted - n)
            self.num_accepted = n
        for token in output_token_ids[self.num_accepted:]:
            if not self._matcher.accept_token(token):
                raise RuntimeError(f"token {token} breaks the constraint it was sampled under")
            self.num_accepted += 1

    def fill(self, bitmask: Any, row: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def is_completed(self) -> bool:
        return self._matcher.is_completed()

    def reset(self) -> None:
        self._matcher.reset()
        self.num_accepted = 0


def _tool_call_grammar(xgr: Any, spec: ToolCallSpec) -> Any:
    """One call to one of the tools: Hermes `<tool_call>{"name", "arguments"}</tool_call>` or
    Llama 3's `{"name", "parameters"}` JSON object."""
    arguments = "arguments" if spec.format == "hermes" else "parameters"
    calls = [{"type": "object", "properties": {"name": {"const": name},
                                               arguments: json.loads(schema) if schema else {"type": "object"}},
              "required": ["name", arguments]} for name, schema in spec.tools]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    body = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
    if spec.format != "hermes":
        return body
    return xgr.Grammar.concat(xgr.Grammar.from_ebnf('root ::= "<tool_call>\\n"'), body,
                              xgr.Grammar.from_ebnf('root ::= "\\n</tool_call>"'))


class GrammarCache:
    """Compiles constraints for one tokenizer and keeps the most recently used compiled ones."""

    def __init__(self, tokenizer: TokenizerClient, vocab_size: int, eos_token_ids: frozenset[int],
                 max_entries: int = DEFAULT_CACHE_SIZE, num_threads: int = 2) -> None:
        self._tokenizer, self._vocab_size = tokenizer, vocab_size
        self._eos_token_ids = sorted(eos_token_ids)
        self._max_entries = max_entries
        self._entries: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self._compiler: Any = None
        self._pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="cyserve-grammar")
        self.num_compiled = 0  # compilations done (cache misses)

    def _get_compiler(self) -> Any:
        with self._lock:
            if self._compiler is None:
                xgr = _xgrammar()
                info = xgr.TokenizerInfo(token_bytes(self._tokenizer, self._vocab_size), xgr.VocabType.RAW,
                                         vocab_size=self._vocab_size, stop_token_ids=self._eos_token_ids)
                self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
            return self._compiler

    def compile(self, constraint: Constraint) -> CompiledConstraint:
        """The compiled grammar (cached); InvalidRequestError naming constraint.field when it is too
        big or does not compile, StructuredOutputUnavailableError without the library."""
        if constraint.num_bytes > MAX_CONSTRAINT_BYTES:
            raise InvalidRequestError(constraint.field, (
                f"is {constraint.num_bytes} bytes; this server compiles constraints of at most "
                f"{MAX_CONSTRAINT_BYTES} bytes (Capabilities.max_constraint_bytes)"))
        key = constraint.key
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return CompiledConstraint(hit, constraint)
        compiler = self._get_compiler()
        try:
            compiled = self._compile(compiler, constraint)
        except (RuntimeError, ValueError, TypeError) as exc:  # xgrammar's errors derive from these
            raise InvalidRequestError(constraint.field, f"does not compile: {_first_line(exc)}") from exc
        with self._lock:
            self._entries[key] = compiled
            self.num_compiled += 1
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return CompiledConstraint(compiled, constraint)

    async def compile_async(self, constraint: Constraint) -> CompiledConstraint:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.compile, constraint)

    @staticmethod
    def _compile(compiler: Any, constraint: Constraint) -> Any:
        xgr = _xgrammar()
        kind, value = constraint.kind, constraint.value
        if kind == "json_schema":
            json.loads(value)  # a ValueError names the JSON problem
            return compiler.compile_json_schema(value, any_whitespace=False, strict_mode=True)
        if kind == "json_object":
            return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False, strict_mode=False)
        if kind == "regex":
            return compiler.compile_regex(value)
        if kind == "choice":
            # each choice as an EBNF literal: JSON's string escapes are EBNF's
            return compiler.compile_grammar("root ::= " + " | ".join(json.dumps(choice) for choice in value))
        if kind == "grammar":
            return compiler.compile_grammar(value)
        if kind == TOOL_CALL:
            return compiler.compile_grammar(_tool_call_grammar(xgr, ToolCallSpec.from_constraint(constraint)))
        raise ValueError(f"unknown constraint kind {kind!r}; use one of {', '.join(KINDS)}")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 500 else text[:500] + "..."
