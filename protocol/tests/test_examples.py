"""The golden examples agree with the schemas: every valid one passes, every invalid one fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsq_devkit.contract import SCHEMAS, example_ids, examples, is_valid, validator


@pytest.mark.parametrize("schema", SCHEMAS)
def test_schema_is_valid_draft_2020_12(schema: str) -> None:
    validator(schema).check_schema(validator(schema).schema)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_every_schema_has_valid_and_invalid_examples(schema: str) -> None:
    assert examples("valid", schema)
    assert examples("invalid", schema)


VALID = [(schema, path) for schema in SCHEMAS for path in examples("valid", schema)]
INVALID = [(schema, path) for schema in SCHEMAS for path in examples("invalid", schema)]


@pytest.mark.parametrize(("schema", "path"), VALID, ids=example_ids([p for _, p in VALID]))
def test_valid_example_passes(schema: str, path: Path) -> None:
    assert is_valid(schema, json.loads(path.read_text()))


@pytest.mark.parametrize(("schema", "path"), INVALID, ids=example_ids([p for _, p in INVALID]))
def test_invalid_example_fails(schema: str, path: Path) -> None:
    try:
        doc = json.loads(path.read_text(), parse_constant=_reject)
    except ValueError:
        assert path.name.startswith("invalid_json."), "only invalid_json examples may fail to parse"
        return
    assert not path.name.startswith("invalid_json."), "an invalid_json example must not parse"
    assert not is_valid(schema, doc)


def _reject(name: str) -> None:
    raise ValueError(f"{name} is not JSON")
