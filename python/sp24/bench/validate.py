"""A small validator for the JSON-Schema-like subset used by schema.json (no jsonschema dependency):
type, const, enum, required, properties, additionalProperties, items, minimum, $ref."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

SCHEMA_PATH = Path(__file__).with_name("schema.json")

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


@lru_cache(maxsize=1)
def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _resolve(ref: str, root: dict) -> dict:
    if not ref.startswith("#/"):
        raise ValueError(f"sp24.bench.validate: only local $ref ('#/...') is supported, got {ref!r}")
    node = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def errors(value, schema: dict, root: dict | None = None, path: str = "$") -> list[str]:
    """Every violation of `schema` by `value`, as 'path: message' strings (empty list: valid)."""
    root = schema if root is None else root
    if "$ref" in schema:
        return errors(value, _resolve(schema["$ref"], root), root, path)
    out = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        unknown = [t for t in types if t not in _TYPES]
        if unknown:
            raise ValueError(f"sp24.bench.validate: unknown type(s) {unknown} in the schema at {path}")
        if not any(_TYPES[t](value) for t in types):
            return [f"{path}: expected {' or '.join(types)}, got {type(value).__name__} {value!r:.60}"]
    if "const" in schema and value != schema["const"]:
        out.append(f"{path}: expected {schema['const']!r}, got {value!r:.60}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: expected one of {schema['enum']}, got {value!r:.60}")
    if "minimum" in schema and _TYPES["number"](value) and value < schema["minimum"]:
        out.append(f"{path}: must be >= {schema['minimum']}, got {value}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                out.append(f"{path}: missing required key {key!r}")
        props = schema.get("properties", {})
        for key, v in value.items():
            if key in props:
                out += errors(v, props[key], root, f"{path}.{key}")
            elif schema.get("additionalProperties", True) is False:
                out.append(f"{path}: unexpected key {key!r}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            out += errors(v, schema["items"], root, f"{path}[{i}]")
    return out


def result_errors(doc) -> list[str]:
    """Schema violations of a bench result document plus the rules a schema subset cannot say:
    the per-command row keys, and for status "ok" rows, numeric times with p10 <= median <= p90."""
    schema = load_schema()
    out = errors(doc, schema)
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        return out
    need = schema["definitions"]["x-row-required"].get(doc.get("command"), [])
    for i, row in enumerate(doc["rows"]):
        if not isinstance(row, dict):
            continue  # already reported by the schema
        for key in need:
            if key not in row:
                out.append(f"$.rows[{i}]: {doc['command']} rows need {key!r} (row {row.get('name')!r})")
        if row.get("status") == "ok":
            times = [row.get(k) for k in ("median_us", "p10_us", "p90_us")]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in times):
                out.append(f"$.rows[{i}]: status 'ok' needs numeric median_us/p10_us/p90_us, got {times}")
            elif not times[1] <= times[0] <= times[2]:
                out.append(f"$.rows[{i}]: need p10_us <= median_us <= p90_us, got {times[1]}, {times[0]}, {times[2]}")
        elif row.get("status") in ("unavailable", "error") and not row.get("reason"):
            out.append(f"$.rows[{i}]: status {row['status']!r} needs a 'reason'")
    return out


def validate_result(doc) -> None:
    """Raise ValueError listing every problem of a bench result document."""
    errs = result_errors(doc)
    if errs:
        raise ValueError("sp24.bench: result does not match sp24/bench/schema.json:\n  " + "\n  ".join(errs[:20]))
