"""Structured output: constraints on what a request may generate (JSON schema, any JSON object,
regex, a choice of strings, an EBNF grammar, a tool call), compiled into grammars whose token masks
the samplers apply each step. Only `grammars` imports the grammar library (xgrammar, an extra)."""
from cyserve.fastpath.structured.constraint import KINDS, MAX_CONSTRAINT_BYTES, Constraint, ToolCallSpec
from cyserve.fastpath.structured.masks import TokenMasks, token_masks

__all__ = ["KINDS", "MAX_CONSTRAINT_BYTES", "Constraint", "TokenMasks", "ToolCallSpec", "token_masks"]
