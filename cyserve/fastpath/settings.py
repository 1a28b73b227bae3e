"""Settings declared once: a dataclass field with its default, its help, its environment
variable, its CLI flag and its bounds (`setting(...)`).

The engine's settings are `EngineConfig`'s fields (engine_config.py), the server's are
`ServerConfig`'s (cyserve/service/config.py, which extends EngineConfig). Everything else is
derived from these declarations: `cyserve serve` flags and `--help`, `CYSERVE_*` parsing, the
range checks (`check_settings`) and the table in
docs/settings.md. This module is plain data: it knows nothing of argparse or the environment.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """`"536870912"`, `"512MiB"`, `"2G"`, `"1.5GiB"` -> a byte count (K/M/G/T are powers of 1000)."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"not a byte size: {text!r} (examples: 536870912, 512MiB, 2GB)")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "").lower()])


def parse_bool(text: str) -> bool:
    """`1/true/yes/on` or `0/false/no/off`, any case."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


@dataclass(frozen=True)
class Setting:
    """How one config field is set from outside, and which values it takes."""

    help: str
    env: str  # the CYSERVE_* variable
    parse: Callable[[str], Any]  # text of the variable or flag -> value
    flag: str = ""  # "" = --field-name; a bool setting is a switch that sets the opposite of its default
    metavar: str | None = None
    default_text: str = ""  # the default in words, for --help and the docs ("" = the value itself)
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False  # (minimum, maximum] instead of [minimum, maximum]
    choices: tuple[str, ...] = ()

    def check(self, name: str, value: Any) -> None:
        """Raise ValueError naming the setting when `value` is outside its bounds (None passes:
        "the default decides")."""
        if value is None:
            return
        if self.choices and value not in self.choices:
            raise ValueError(f"{name} must be one of {', '.join(self.choices)}, got {value!r}")
        lo, hi = self.minimum, self.maximum
        below = lo is not None and (value <= lo if self.exclusive_minimum else value < lo)
        above = hi is not None and value > hi
        if not (below or above):
            return
        if lo is not None and hi is not None:
            interval = f"({lo:g}, {hi:g}]" if self.exclusive_minimum else f"{lo:g}..{hi:g}"
            raise ValueError(f"{name} must be in {interval}, got {value}")
        raise ValueError(f"{name} must be at least {lo:g}, got {value}")


def setting(default: Any, help: str, env: str, parse: Callable[[str], Any] = str, **spec: Any) -> Any:
    """A dataclass field declared as a setting (see `Setting` for the keywords)."""
    return dataclasses.field(default=default, metadata={"setting": Setting(help, env, parse, **spec)})


def settings_of(config_type: type) -> list[tuple[dataclasses.Field, Setting]]:
    """The fields of a config dataclass that are settings, in declaration order."""
    return [(f, f.metadata["setting"]) for f in dataclasses.fields(config_type) if "setting" in f.metadata]


def check_settings(config: Any) -> None:
    """Every setting of `config` within its bounds, or ValueError naming the first that is not."""
    for f, spec in settings_of(type(config)):
        spec.check(f.name, getattr(config, f.name))
