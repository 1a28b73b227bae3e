"""What a request asks its output to match, as the engine receives it (no grammar library here).

`Constraint.kind` is one of KINDS, the OutputConstraint field names of the contract, or
"tool_call": one call in a tool-call format (`value` is the JSON text of `ToolCallSpec`).
`field` is the request field the caller wrote it in, so a compile error can name it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")
TOOL_CALL = "tool_call"
# The most bytes of one constraint's text (a schema, a regex, a grammar, all choices): bigger ones
# are refused before compiling. Compile time grows with the grammar; this bounds it to well under
# a second on one core.
MAX_CONSTRAINT_BYTES = 64 * 1024


@dataclass(frozen=True)
class Constraint:
    kind: str
    value: str | tuple[str, ...] = ""
    field: str = "sampling.constraint"

    @property
    def key(self) -> tuple[str, str | tuple[str, ...]]:
        """What identifies its compiled grammar (the field it came from does not)."""
        return (self.kind, self.value)

    @property
    def num_bytes(self) -> int:
        if isinstance(self.value, tuple):
            return sum(len(v.encode("utf-8")) for v in self.value)
        return len(self.value.encode("utf-8"))


@dataclass(frozen=True)
class ToolCallSpec:
    """One call to one of `tools` ((name, JSON-schema text) pairs) in `format`."""

    format: str  # "hermes" or "llama3_json"
    tools: tuple[tuple[str, str], ...]

    def to_constraint(self, field: str = "tool_choice") -> Constraint:
        return Constraint(TOOL_CALL, json.dumps({"format": self.format, "tools": self.tools}), field)

    @classmethod
    def from_constraint(cls, constraint: Constraint) -> "ToolCallSpec":
        data = json.loads(constraint.value)
        return cls(data["format"], tuple((name, schema) for name, schema in data["tools"]))
