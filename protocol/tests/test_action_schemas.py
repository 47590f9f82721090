"""Declared action schemas as workers publish them: canonical text, refused declarations, the
script's arguments and the hash read back (wsq_protocol.action_schemas)."""

from __future__ import annotations

import pytest

from wsq_protocol.action_schemas import (
    MAX_SCHEMA_BYTES,
    VERSION_FIELD,
    SchemaError,
    digest,
    publish_args,
    published,
    schema_text,
)
from wsq_protocol.ids import is_action_name


def test_the_text_is_canonical_so_equal_schemas_have_one_digest() -> None:
    one = schema_text({"type": "object", "properties": {"text": {"type": "string", "title": "é"}}})
    other = schema_text({"properties": {"text": {"title": "é", "type": "string"}}, "type": "object"})
    assert one == other == '{"properties":{"text":{"title":"é","type":"string"}},"type":"object"}'
    assert digest(one) == digest(other) != digest(schema_text({"type": "object"}))
    draft = "http://json-schema.org/draft-07/schema#"
    assert schema_text({"$schema": draft, "$defs": {"a": {}}, "$ref": "#/$defs/a"})
    assert schema_text({"properties": {"$ref": {"type": "string"}}})  # a property so named


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        ([{"type": "string"}], "a JSON object"),
        ({"enum": {1, 2}}, "must be JSON"),
        ({"maximum": float("nan")}, "must be JSON"),
        ({"$schema": "https://json-schema.org/draft/2020-12/schema"}, "draft-04, -06 or -07"),
        ({"$ref": "https://example.com/schema.json"}, "inside the schema"),
        ({"items": [{"$ref": "other.json#/a"}]}, "inside the schema"),
        ({"description": "x" * MAX_SCHEMA_BYTES}, "at most"),
    ],
)
def test_what_cannot_be_published_is_refused_with_the_reason(schema: object, why: str) -> None:
    with pytest.raises(SchemaError, match=why):
        schema_text(schema)


def test_script_arguments_and_the_hash_read_back() -> None:
    assert publish_args("start", {"a": "{}", "b.c": "{}"}, ["d"]) == [
        "start",
        "2",
        "a",
        "{}",
        "b.c",
        "{}",
        "d",
    ]
    with pytest.raises(ValueError, match="action"):
        publish_args("restore", {"$ping": "{}"})
    with pytest.raises(ValueError, match="mode"):
        publish_args("always", {})
    assert not is_action_name(VERSION_FIELD)
    assert published({b"$version": b"7", b"a": b"{}", b"$other": b"?"}) == ("7", {"a": "{}"})
    assert published({}) == (None, {})
