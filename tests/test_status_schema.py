# SPDX-License-Identifier: MIT
"""`status --json` against its documented schema (docs/status.schema.json): every object of a
state dir with scripts in every state validates, and every field the command prints is in the
schema. The validator covers the subset of JSON Schema (2020-12) the schema uses, and refuses a
schema keyword it does not know rather than ignore it (jsonschema is not a dependency of the
suite)."""

import json
import os
import re
from pathlib import Path

import pytest

from migration import cli
from migration.commands import status

SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "status.schema.json"

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_ANNOTATIONS = {"$schema", "title", "description"}


def errors(value, schema, where="$"):
    """Why `value` does not validate against `schema` (an empty list when it does)."""
    out = []
    for key in schema:
        if key not in _ANNOTATIONS and key not in _CHECKS:
            raise AssertionError(f"{where}: schema keyword {key} is not supported by this test")
    for key, arg in schema.items():
        if key in _CHECKS:
            out += _CHECKS[key](value, arg, schema, where)
    return out


def _type(value, arg, _schema, where):
    names = arg if isinstance(arg, list) else [arg]
    return [] if any(_TYPES[n](value) for n in names) else [f"{where}: not {arg}"]


def _properties(value, arg, schema, where):
    if not isinstance(value, dict):
        return []
    out = []
    for key, sub in arg.items():
        if key in value:
            out += errors(value[key], sub, f"{where}.{key}")
    if schema.get("additionalProperties") is False:
        out += [f"{where}: unknown field {k}" for k in value if k not in arg]
    return out


def _required(value, arg, _schema, where):
    if not isinstance(value, dict):
        return []
    return [f"{where}: no {k}" for k in arg if k not in value]


def _items(value, arg, _schema, where):
    if not isinstance(value, list):
        return []
    return [e for i, v in enumerate(value) for e in errors(v, arg, f"{where}[{i}]")]


def _all_of(value, arg, _schema, where):
    return [e for sub in arg for e in errors(value, sub, where)]


def _if(value, arg, schema, where):
    if errors(value, arg, where):
        return []
    return errors(value, schema.get("then", {}), where)


_CHECKS = {
    "type": _type,
    "properties": _properties,
    "additionalProperties": lambda v, a, s, w: [],  # with properties
    "required": _required,
    "items": _items,
    "allOf": _all_of,
    "if": _if,
    "then": lambda v, a, s, w: [],  # with if
    "enum": lambda v, a, s, w: [] if v in a else [f"{w}: {v!r} not one of {a}"],
    "const": lambda v, a, s, w: [] if v == a and type(v) is type(a) else [f"{w}: not {a!r}"],
    "pattern": lambda v, a, s, w: (
        [] if not isinstance(v, str) or re.search(a, v) else [f"{w}: {v!r} does not match {a}"]
    ),
    "minimum": lambda v, a, s, w: [] if not _TYPES["number"](v) or v >= a else [f"{w}: {v} < {a}"],
}


@pytest.fixture(scope="module")
def schema():
    with open(SCHEMA) as f:
        return json.load(f)


def test_the_validator_catches_what_the_schema_forbids(schema):
    good = {"schema_version": 1, "name": "10-a", "sha256": "0" * 64, "state": "pending",
            "attempts": 0}  # fmt: skip
    assert errors([good], schema) == []
    for bad in ({**good, "state": "done"}, {**good, "extra": 1}, {**good, "attempts": "1"},
                {**good, "sha256": "x"}, {**good, "schema_version": 2},
                {**good, "state": "applied"},  # applied without its times
                {k: v for k, v in good.items() if k != "name"}):  # fmt: skip
        assert errors([bad], schema), bad


@pytest.mark.skipif(os.geteuid() != 0, reason="the state dir's trust checks: root")
def test_status_json_of_every_state_validates(tmp_path, capsys, schema):
    from test_monitoring import Device, every_state

    d = every_state(Device(tmp_path), oneway=True)
    capsys.readouterr()
    assert cli.main(d.argv("status", "--json")) == 1
    rows = json.loads(capsys.readouterr().out)
    assert {r["state"] for r in rows} == {"applied", "failed", "refused", "pending", "interrupted"}
    assert errors(rows, schema) == []
    printed = {key for row in rows for key in row}
    assert printed >= {"package", "version", "oneway", "log", "reason", "exit_code"}
    assert all(r["schema_version"] == status.SCHEMA_VERSION for r in rows)
    assert cli.main(d.argv("status", "--format", "json")) == 1
    assert json.loads(capsys.readouterr().out) == rows
