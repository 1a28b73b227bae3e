"""Offline validation of the custom resources k8s/ uses (PodMonitor, InferencePool), which
kubernetes-validate does not know: each against the structural schema of its CRD (tests/deploy/crds),
with unknown fields rejected as the API server's pruning would drop them silently."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parent / "crds"


def _schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the openAPIV3Schema of that version."""
    found = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version, schema in crd["versions"].items():
            found[(f"{crd['group']}/{version}", crd["kind"])] = schema
    return found


SCHEMAS = _schemas()


def is_custom(doc: dict[str, Any]) -> bool:
    return (doc.get("apiVersion"), doc.get("kind")) in SCHEMAS


def _unknown_fields(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Fields the schema does not declare (where it does not preserve unknown fields)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    problems = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                problems.append(f"{path}.{key}: unknown field")
            else:
                problems += _unknown_fields(item, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            problems += _unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problems += _unknown_fields(item, schema["items"], f"{path}[{i}]")
    return problems


def problems(doc: dict[str, Any]) -> list[str]:
    """Everything wrong with `doc` by its CRD's schema; empty when it is valid."""
    schema = SCHEMAS[(doc["apiVersion"], doc["kind"])]
    found = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
             for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    return found + _unknown_fields(doc, schema, "")
