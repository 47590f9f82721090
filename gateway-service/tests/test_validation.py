"""Edge validation's pure parts (wsq_gateway.validation): compiled once per schema text, a schema
that does not compile left unenforced, the invalid_data answer naming the path. The gateway
reading schemas from Redis and answering real frames is integration-tests/test_edge_validation.py."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from wsq_devkit.contract import is_valid
from wsq_gateway.validation import Validators, compile_schema
from wsq_protocol.action_schemas import schema_text
from wsq_protocol.codes import ErrorCode
from wsq_protocol.frames import encode_error_frame

TEXT = schema_text({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
ITEMS = schema_text({"type": "array", "items": {"type": "integer", "maximum": 9}})


def validators() -> Validators:
    return Validators(cast(Any, None), "wsq:schemas", 2.0)  # no Redis: load() is fed directly


def test_frames_are_checked_against_their_action_schema_only() -> None:
    checks = validators()
    checks.load("1", {"chat.send": TEXT, "scores": ITEMS})
    assert checks.problem("chat.send", {"text": "hi"}) is None
    assert checks.problem("free", {"anything": [1]}) is None  # no schema: not validated
    assert checks.problem("chat.send", {"text": 1}) == (
        "data of action 'chat.send' does not match its schema: data.text must be string"
    )
    absent = checks.problem("chat.send", None)  # data absent from the frame: null
    assert absent == "data of action 'chat.send' does not match its schema: data must be object"
    message = checks.problem("scores", [1, 2, 30])
    assert message is not None
    assert "data[2] must be smaller than or equal to 9" in message
    frame = json.loads(encode_error_frame(ErrorCode.INVALID_DATA, message, "req-1"))
    assert is_valid("server-frame", frame)
    assert frame["data"]["code"] == "invalid_data"
    assert frame["id"] == "req-1"


def test_a_reload_compiles_only_new_texts_and_drops_unused_ones() -> None:
    checks = validators()
    checks.load("1", {"a": TEXT, "b": TEXT})
    first = checks.by_action["a"]
    assert checks.by_action["b"] is first  # one compile per text
    checks.load("2", {"a": TEXT, "c": ITEMS})
    assert checks.by_action["a"] is first
    assert checks.version == "2"
    assert set(checks.by_action) == {"a", "c"}
    checks.load("3", {})
    assert checks.by_action == {}
    assert checks.report() == {"version": "3", "validated": [], "failed": {}}


def test_a_schema_that_does_not_compile_is_reported_and_its_frames_pass() -> None:
    checks = validators()
    # Written by hand (a worker's SDK would refuse it): an unknown type, a broken pattern.
    checks.load("4", {"bad": '{"type":"strnig"}', "regex": '{"pattern":"("}', "good": TEXT})
    assert set(checks.failed) == {"bad", "regex"}
    assert checks.problem("bad", 1) is None
    assert checks.problem("regex", "x") is None
    assert checks.report()["validated"] == ["good"]


def test_a_remote_ref_is_never_fetched() -> None:
    with pytest.raises(Exception, match="never fetch"):
        compile_schema('{"$ref": "http://127.0.0.1:9/schema.json"}')
