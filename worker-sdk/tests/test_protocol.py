"""The pure protocol core against protocol/: every golden example, the schemas and keys.json."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker_harness import Schemas

from wsq_devkit.contract import PROTOCOL_DIR, example_ids, examples, key_templates
from wsq_protocol import codec
from wsq_worker import AsyncPublisher, Context, Meta, constants
from wsq_worker.exceptions import ProtocolError, Refuse, Retry, WsqError
from wsq_worker.protocol import (
    ERROR_CODES,
    HANDLER_ERROR,
    UNKNOWN_ACTION,
    Event,
    Request,
    accept_command,
    check_group,
    checked_reply_frame,
    decode_event,
    disconnect_command,
    error_frame,
    is_group_name,
    join_command,
    leave_command,
    node_of,
    push_frame,
    refuse_command,
    reply_frame,
    send_command,
)

CONNECTION_ID = "gw-3f2a9c1d.q2uE4nK0m5Zr8VtY1xWb7A"


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def message_event(frame_text: str) -> dict[str, str]:
    return {
        "v": "1",
        "type": "message",
        "connection_id": CONNECTION_ID,
        "node": "gw-3f2a9c1d",
        "ts": "1",
        "frame": frame_text,
    }


# Inbound events.

VALID_EVENTS = examples("valid", "event")
INVALID_EVENTS = examples("invalid", "event")


@pytest.mark.parametrize("path", VALID_EVENTS, ids=example_ids(VALID_EVENTS))
def test_valid_event_examples_decode(path: Path, schemas: Schemas) -> None:
    fields = load(path)
    schemas.check("event", fields)
    event = decode_event(fields)
    assert event.type == fields["type"]
    assert event.connection_id == fields["connection_id"]
    assert event.node == fields["node"]
    assert event.user_id == fields.get("user_id")
    assert event.ts == int(fields["ts"])
    assert event.addr == fields.get("addr", "")
    if event.type == "message":
        frame = json.loads(fields["frame"])
        assert (event.action, event.data, event.id) == (frame["action"], frame.get("data"), frame.get("id"))
    else:
        assert (event.action, event.data, event.id) == (None, None, None)
    assert event.close_code == (int(fields["close_code"]) if "close_code" in fields else None)
    assert event.attempt == int(fields.get("attempt", "1"))
    assert event.hook == ("hook" in fields)
    if "request" in fields:
        request = json.loads(fields["request"])
        assert event.request == Request(request["path"], request["query"], request["headers"])
    else:
        assert event.request is None


@pytest.mark.parametrize("path", VALID_EVENTS, ids=example_ids(VALID_EVENTS))
def test_valid_event_examples_decode_from_bytes(path: Path) -> None:
    """Redis replies are bytes unless the client decodes them."""
    fields = load(path)
    raw = {key.encode(): value.encode() for key, value in fields.items()}
    assert decode_event(raw) == decode_event(fields)


@pytest.mark.parametrize("path", INVALID_EVENTS, ids=example_ids(INVALID_EVENTS))
def test_invalid_event_examples_are_rejected(path: Path, schemas: Schemas) -> None:
    fields = load(path)
    assert not schemas.is_valid("event", fields), "the example itself should be invalid"
    with pytest.raises(ProtocolError):
        decode_event(fields)


def test_a_connect_request_gives_its_query_and_cookies() -> None:
    event = decode_event(load(PROTOCOL_DIR / "examples/valid/event/connect-request.json"))
    assert event.request is not None
    assert event.request.query == {"room": "lobby"}
    assert event.request.cookies == {"session": "8f3c2a"}
    request = Request("/ws", "a=1&b=x%20y&a=2&empty=", {"cookie": 'theme=dark; sid="q w"'})
    assert request.query == {"a": "2", "b": "x y", "empty": ""}
    assert request.cookies == {"theme": "dark", "sid": "q w"}
    assert Request("/ws", "", {}).cookies == {}


def test_message_event_decodes_every_field() -> None:
    event = decode_event(load(PROTOCOL_DIR / "examples/valid/event/message.json"))
    assert event == Event(
        type="message",
        connection_id=CONNECTION_ID,
        node="gw-3f2a9c1d",
        user_id="42",
        ts=1795852800456,
        addr="203.0.113.7",
        action="chat_text",
        data={"text": "hello"},
        id="req-1",
    )


VALID_CLIENT_FRAMES = examples("valid", "client-frame")
INVALID_CLIENT_FRAMES = examples("invalid", "client-frame")


@pytest.mark.parametrize("path", VALID_CLIENT_FRAMES, ids=example_ids(VALID_CLIENT_FRAMES))
def test_message_events_accept_every_valid_client_frame(path: Path) -> None:
    text = path.read_text()
    event = decode_event(message_event(text))
    frame = json.loads(text)
    assert (event.action, event.data, event.id) == (frame["action"], frame.get("data"), frame.get("id"))


@pytest.mark.parametrize("path", INVALID_CLIENT_FRAMES, ids=example_ids(INVALID_CLIENT_FRAMES))
def test_message_events_reject_every_invalid_client_frame(path: Path) -> None:
    # The gateway never forwards these; a worker still refuses them.
    with pytest.raises(ProtocolError):
        decode_event(message_event(path.read_text()))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"extra": "x"}, "unknown event field"),
        ({"ts": "12a"}, "malformed event field 'ts'"),
        ({"ts": "1" * 17}, "malformed event field 'ts'"),
        ({"connection_id": "gw-1.short"}, "malformed event field 'connection_id'"),
        ({"node": "gw:1"}, "malformed event field 'node'"),
        ({"close_code": "1000"}, "a message event has no close_code"),
        ({"frame": '{"action": "x", "id": null}'}, "the frame id is null"),
        ({"frame": '{"action": "x", "data": Infinity}'}, "not valid JSON"),
        ({"attempt": "0"}, "malformed event field 'attempt'"),
        ({"attempt": "01"}, "malformed event field 'attempt'"),
        ({"attempt": "10000"}, "malformed event field 'attempt'"),
        ({"attempt": "²"}, "malformed event field 'attempt'"),
        ({"hook": "1"}, "a message event has no hook"),
    ],
)
def test_malformed_events_are_rejected(change: dict[str, str], reason: str) -> None:
    fields = message_event('{"action": "x"}') | change
    with pytest.raises(ProtocolError, match=reason):
        decode_event(fields)


def test_attempt_and_hook_decode() -> None:
    assert decode_event(message_event('{"action": "x"}') | {"attempt": "9999"}).attempt == 9999
    connect = {key: value for key, value in message_event("").items() if key != "frame"} | {"type": "connect"}
    assert decode_event(connect) == Event("connect", CONNECTION_ID, "gw-3f2a9c1d", None, 1, "")
    assert decode_event(connect | {"hook": "1"}).hook is True
    with pytest.raises(ProtocolError, match="malformed event field 'hook'"):
        decode_event(connect | {"hook": "true"})
    with pytest.raises(ProtocolError, match="a connect event has no attempt"):
        decode_event(connect | {"attempt": "2"})
    disconnect = connect | {"type": "disconnect", "close_code": "1000"}
    with pytest.raises(ProtocolError, match="a disconnect event has no hook"):
        decode_event(disconnect | {"hook": "1"})
    with pytest.raises(ProtocolError, match="a disconnect event has no attempt"):
        decode_event(disconnect | {"attempt": "2"})


def test_missing_event_fields_are_rejected() -> None:
    for name in ("connection_id", "node", "ts", "type", "v"):
        fields = message_event('{"action": "x"}')
        del fields[name]
        with pytest.raises(ProtocolError):
            decode_event(fields)


def test_non_utf8_values_are_rejected() -> None:
    raw = {key.encode(): value.encode() for key, value in message_event('{"action": "x"}').items()}
    raw[b"frame"] = b'{"action": "\xff"}'
    with pytest.raises(ProtocolError, match="UTF-8"):
        decode_event(raw)


_field_values = st.one_of(
    st.sampled_from(["1", "2", "", "message", "connect", CONNECTION_ID, "gw-1", "gw:1", "12a", "1" * 17]),
    st.sampled_from(['{"action": "x", "id": "r"}', '{"action": "x", "id": null}', "[]", "{", '{"x": 1}']),
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\n"), max_size=8),
)
_field_names = st.sampled_from(
    ["v", "type", "connection_id", "node", "ts", "user_id", "addr", "frame", "attempt", "x"]
)


@settings(max_examples=400, deadline=None)
@given(changes=st.dictionaries(_field_names, st.one_of(st.none(), _field_values), max_size=3))
def test_bytes_and_text_fields_decode_alike(changes: dict[str, str | None]) -> None:
    """Entries read from Redis (bytes) take a faster path for message events: same outcome,
    the same event or the same error, as the same fields given as text."""
    fields = message_event('{"action": "x", "data": [1], "id": "r"}') | {"user_id": "42", "addr": "::1"}
    for name, value in changes.items():
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    raw = {name.encode(): value.encode() for name, value in fields.items()}
    outcomes: list[Event | str] = []
    for given_fields in (fields, raw):
        try:
            outcomes.append(decode_event(given_fields))
        except ProtocolError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]


def test_protocol_error_is_a_wsq_error() -> None:
    assert issubclass(ProtocolError, WsqError)


_frame_values = st.one_of(
    st.text(max_size=70),
    st.sampled_from(["chat_text", "$ping", "$error", "a" * 64, "a" * 65, "", "x y", "r-1"]),
    st.integers(),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
_frames = st.dictionaries(st.sampled_from(["action", "data", "id", "extra"]), _frame_values, max_size=4)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(frame=_frames)
def test_decoding_agrees_with_the_schemas(frame: dict[str, Any], schemas: Schemas) -> None:
    """decode_event accepts a message event exactly when the schemas do (frame included)."""
    assert_decodes_as_the_schema_says(message_event(json.dumps(frame)), schemas)


def assert_decodes_as_the_schema_says(fields: dict[str, str], schemas: Schemas) -> None:
    try:
        decode_event(fields)
    except ProtocolError:
        accepted = False
    else:
        accepted = True
    assert accepted == schemas.is_valid("event", fields), schemas.errors("event", fields)


# No newlines: Python's re (jsonschema) lets "$" match before a final newline, ECMA 262 does not,
# and the decoder follows ECMA (fullmatch): "1\n" is no attempt.
_optional_fields = st.dictionaries(
    st.sampled_from(["attempt", "hook"]),
    st.one_of(
        st.sampled_from(["1", "2", "0", "01", "9999", "10000", "true", ""]),
        st.text(st.characters(blacklist_characters="\n"), max_size=5),
    ),
    max_size=2,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(event_type=st.sampled_from(["message", "connect", "disconnect"]), extra=_optional_fields)
def test_attempt_and_hook_agree_with_the_schemas(
    event_type: str, extra: dict[str, str], schemas: Schemas
) -> None:
    fields = message_event('{"action": "x"}') | {"type": event_type} | extra
    if event_type != "message":
        del fields["frame"]
    if event_type == "disconnect":
        fields["close_code"] = "1000"
    assert_decodes_as_the_schema_says(fields, schemas)


# Outbound commands and server frames.

# Commands gateways send each other (session resume): workers and publishers never write them
# (gateway-service/tests/test_protocol.py checks their encoders against the examples).
BETWEEN_GATEWAYS = ("resume", "resumed", "relay", "detach")
VALID_COMMANDS = [p for p in examples("valid", "command") if load(p)["type"] not in BETWEEN_GATEWAYS]
INVALID_COMMANDS = [p for p in examples("invalid", "command") if load(p)["type"] not in BETWEEN_GATEWAYS]


def encode_like(frame_text: str) -> str:
    """Re-encode a server frame with our encoders, from its action, data and id."""
    frame = json.loads(frame_text)
    if frame["action"] == "$error":
        return error_frame(frame["data"]["code"], frame["data"]["message"], frame.get("id"))
    if "id" in frame:
        return reply_frame(frame["action"], frame["data"], frame["id"])
    return push_frame(frame["action"], frame["data"])


@pytest.mark.parametrize("path", VALID_COMMANDS, ids=example_ids(VALID_COMMANDS))
def test_valid_command_examples_round_trip(path: Path, schemas: Schemas) -> None:
    """Our encoders produce every valid command example byte for byte, frame included."""
    example = load(path)
    schemas.check("command", example)
    target, to = example["target"], example.get("to")
    if example["type"] == "send":
        assert encode_like(example["frame"]) == example["frame"]
        command = send_command(target, to, encode_like(example["frame"]), example.get("exclude"))
    elif example["type"] == "disconnect":
        command = disconnect_command(target, to, int(example["code"]), example.get("reason", ""))
    elif example["type"] == "accept":
        command = accept_command(to, example.get("user_id"))
    elif example["type"] == "refuse":
        command = refuse_command(to, int(example["code"]), example.get("reason", ""))
    elif example["type"] == "join":
        command = join_command(to, example["group"])
    else:
        command = leave_command(to, example["group"])
    assert command == example
    assert list(command) == list(example), "same field order as the example"


# How each invalid command example is refused by our encoders (None: they can't produce it).
REFUSED_COMMANDS: dict[str, Any] = {
    "all-with-to.json": lambda: send_command("all", "x", push_frame("a")),
    "bad-group-name.json": lambda: send_command("group", "room lobby", push_frame("a")),
    "connection-without-to.json": lambda: send_command("connection", None, push_frame("a")),
    "disconnect-bad-code.json": lambda: disconnect_command("connection", CONNECTION_ID, 1006),
    "exclude-outside-group.json": lambda: send_command("all", None, push_frame("a"), CONNECTION_ID),
    "unknown-target.json": lambda: send_command("room", "lobby", push_frame("a")),  # type: ignore[arg-type]
    # push_frame always writes "data", and send_command always writes "frame" and never "group".
    "frame-not-a-server-frame.json": None,
    "send-without-frame.json": None,
    "send-with-group-field.json": None,
    # join_command and leave_command always write target "connection" and the group.
    "join-a-user.json": None,
    "join-without-group.json": None,
    # accept_command and refuse_command always write target "connection" (so "to" must be a
    # connection id), refuse_command always writes a code, and only accept_command a user_id.
    "accept-a-user.json": lambda: accept_command("42"),
    "accept-unusable-user-id.json": lambda: accept_command(CONNECTION_ID, "ann\x07"),
    "refuse-without-code.json": None,
    "user-id-on-send.json": None,
    # send_command writes no session field.
    "send-with-epoch.json": None,
}


@pytest.mark.parametrize("path", INVALID_COMMANDS, ids=example_ids(INVALID_COMMANDS))
def test_invalid_command_examples_cannot_be_encoded(path: Path, schemas: Schemas) -> None:
    assert not schemas.is_valid("command", load(path)), "the example itself should be invalid"
    assert path.name in REFUSED_COMMANDS, "new invalid example: say how the encoders refuse it"
    encode = REFUSED_COMMANDS[path.name]
    if encode is not None:
        with pytest.raises(
            ValueError, match=r"target|close code|needs a non-empty|has no|group|connection id|user id"
        ):
            encode()


VALID_SERVER_FRAMES = examples("valid", "server-frame")
# $connected and $pong are written by the gateway itself.
WORKER_SERVER_FRAMES = [
    path
    for path in VALID_SERVER_FRAMES
    # The gateway's own frames, and numbered ones (seq: gateways')
    if load(path)["action"] not in ("$connected", "$pong", "$history") and "seq" not in load(path)
]


@pytest.mark.parametrize("path", VALID_SERVER_FRAMES, ids=example_ids(VALID_SERVER_FRAMES))
def test_valid_server_frame_examples_are_valid(path: Path, schemas: Schemas) -> None:
    schemas.check("server-frame", load(path))


@pytest.mark.parametrize("path", WORKER_SERVER_FRAMES, ids=example_ids(WORKER_SERVER_FRAMES))
def test_valid_server_frame_examples_round_trip(path: Path) -> None:
    assert json.loads(encode_like(path.read_text())) == load(path)


def test_unknown_error_code_is_refused() -> None:
    # examples/invalid/server-frame/error-unknown-code.json
    with pytest.raises(ValueError, match="unknown error code"):
        error_frame("oops", "?")


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_every_error_code_encodes_to_a_valid_frame(code: str, schemas: Schemas) -> None:
    schemas.check("server-frame", json.loads(error_frame(code, "message", "r1")))
    schemas.check("server-frame", json.loads(error_frame(code, "message")))


def test_error_codes_match_the_schema() -> None:
    schema = load(PROTOCOL_DIR / "schemas/server-frame.schema.json")
    assert set(schema["$defs"]["error_code"]["enum"]) == ERROR_CODES


@pytest.mark.parametrize(
    "data", [None, 0, -1.5, "text", "héllo ✓ 👋", [1, "2", None], {"nested": {"list": [True, False]}}]
)
def test_encoded_frames_and_commands_are_valid(data: Any, schemas: Schemas) -> None:
    frames = [
        push_frame("chat_text", data),
        reply_frame("a:b-c.d_e", data, "r" * 64),
        error_frame(HANDLER_ERROR, "the handler failed", "x"),
        error_frame(UNKNOWN_ACTION, 'no handler for action "nope"'),
    ]
    for frame in frames:
        schemas.check("server-frame", json.loads(frame))
        for target, to in (("connection", CONNECTION_ID), ("user", "42"), ("all", None)):
            schemas.check("command", send_command(target, to, frame))  # type: ignore[arg-type]
    assert json.loads(push_frame("chat_text", data)) == {"action": "chat_text", "data": data}


def test_frames_are_compact_utf8_json() -> None:
    assert push_frame("say", "héllo ✓") == '{"action":"say","data":"héllo ✓"}'
    assert reply_frame("say", None, "r1") == '{"action":"say","data":null,"id":"r1"}'
    assert (
        error_frame(HANDLER_ERROR, "m") == '{"action":"$error","data":{"code":"handler_error","message":"m"}}'
    )


@pytest.mark.parametrize("action", ["", "a" * 65, "chat text", "$error", "$connected", "é", None, 5])
def test_push_refuses_malformed_action_names(action: Any) -> None:
    with pytest.raises(ValueError, match="action must be"):
        push_frame(action, None)


@pytest.mark.parametrize("action", ["a", "a" * 64, "A-z_0.9:x"])
def test_push_accepts_valid_action_names(action: str) -> None:
    assert json.loads(push_frame(action))["action"] == action


@pytest.mark.parametrize("frame_id", ["", "x" * 65, 7, None])
def test_reply_refuses_malformed_ids(frame_id: Any) -> None:
    with pytest.raises(ValueError, match="frame id"):
        reply_frame("a", None, frame_id)


def test_data_json_cannot_encode_is_refused() -> None:
    with pytest.raises(TypeError):
        push_frame("a", object())
    with pytest.raises(TypeError):
        push_frame("a", {1, 2})


@pytest.mark.parametrize("code", [1000, 3000, 3008, 4000, 4999])
def test_disconnect_accepts_application_close_codes(code: int, schemas: Schemas) -> None:
    command = disconnect_command("connection", CONNECTION_ID, code, "bye")
    schemas.check("command", command)
    assert command["code"] == str(code)


class _AppCode(int, enum.Enum):  # not an IntEnum: its str() is "_AppCode.LOGGED_OUT"
    LOGGED_OUT = 4001


class _AppIntCode(enum.IntEnum):
    KICKED = 4002


@pytest.mark.parametrize(("code", "text"), [(_AppCode.LOGGED_OUT, "4001"), (_AppIntCode.KICKED, "4002")])
def test_an_enum_close_code_is_written_as_its_number(code: int, text: str, schemas: Schemas) -> None:
    for command in (
        disconnect_command("connection", CONNECTION_ID, code, "bye"),
        refuse_command(CONNECTION_ID, code, "no"),
    ):
        schemas.check("command", command)
        assert command["code"] == text


@pytest.mark.parametrize("code", [999, 1001, 1006, 1011, 2999, 5000, True, "4000"])
def test_disconnect_refuses_other_close_codes(code: Any) -> None:
    with pytest.raises(ValueError, match="close code"):
        disconnect_command("connection", CONNECTION_ID, code)


def test_disconnect_reason_is_at_most_123_utf8_bytes(schemas: Schemas) -> None:
    schemas.check("command", disconnect_command("connection", CONNECTION_ID, 4000, "x" * 123))
    schemas.check("command", disconnect_command("connection", CONNECTION_ID, 4000, "é" * 61))  # 122 bytes
    with pytest.raises(ValueError, match="123 bytes"):
        disconnect_command("connection", CONNECTION_ID, 4000, "x" * 124)
    with pytest.raises(ValueError, match="123 bytes"):
        disconnect_command("connection", CONNECTION_ID, 4000, "é" * 62)  # 62 characters, 124 bytes


def test_disconnect_defaults() -> None:
    assert disconnect_command("connection", CONNECTION_ID) == {
        "v": "1",
        "type": "disconnect",
        "target": "connection",
        "to": CONNECTION_ID,
        "code": "1000",
        "reason": "",
    }


@pytest.mark.parametrize(
    ("target", "to"), [("connection", CONNECTION_ID), ("user", "42"), ("group", "room:lobby"), ("all", None)]
)
def test_disconnect_every_target(target: Any, to: str | None, schemas: Schemas) -> None:
    command = disconnect_command(target, to, 4001, "logged out")
    schemas.check("command", command)
    expected = {
        "v": "1",
        "type": "disconnect",
        "target": target,
        "to": to,
        "code": "4001",
        "reason": "logged out",
    }
    assert command == {key: value for key, value in expected.items() if value is not None}


def test_disconnect_refuses_malformed_targets() -> None:
    with pytest.raises(ValueError, match="has no"):
        disconnect_command("all", "x")
    with pytest.raises(ValueError, match="needs a non-empty"):
        disconnect_command("user", None)
    with pytest.raises(ValueError, match="group name"):
        disconnect_command("group", "room lobby")


@pytest.mark.parametrize("target", ["connection", "user", "all"])
def test_exclude_is_only_for_groups(target: Any) -> None:
    to = {"connection": CONNECTION_ID, "user": "42", "all": None}[target]
    with pytest.raises(ValueError, match='exclude is only for target "group"'):
        send_command(target, to, push_frame("a"), exclude=CONNECTION_ID)


def test_send_to_a_group_with_exclude(schemas: Schemas) -> None:
    command = send_command("group", "room:lobby", push_frame("a"), exclude=CONNECTION_ID)
    schemas.check("command", command)
    assert list(command) == ["v", "type", "target", "to", "exclude", "frame"]
    with pytest.raises(ValueError, match="not a wsq connection id"):
        send_command("group", "room:lobby", push_frame("a"), exclude="gw-1")


def test_accept_command(schemas: Schemas) -> None:
    assert accept_command(CONNECTION_ID) == {
        "v": "1",
        "type": "accept",
        "target": "connection",
        "to": CONNECTION_ID,
    }
    with_user = accept_command(CONNECTION_ID, "alice")
    schemas.check("command", with_user)
    assert with_user["user_id"] == "alice"
    with pytest.raises(ValueError, match="user id"):
        accept_command(CONNECTION_ID, "")
    with pytest.raises(ValueError, match="not a wsq connection id"):
        accept_command("gw-1")


@pytest.mark.parametrize(
    ("code", "reason"), [(1000, ""), (3000, "x" * 123), (4003, "é" * 61), (4999, "banned")]
)
def test_refuse_command(code: int, reason: str, schemas: Schemas) -> None:
    command = refuse_command(CONNECTION_ID, code, reason)
    schemas.check("command", command)
    assert list(command) == ["v", "type", "target", "to", "code", "reason"]
    assert (command["code"], command["reason"]) == (str(code), reason)


@pytest.mark.parametrize(
    ("code", "reason"), [(1011, ""), (1001, ""), (2999, ""), (5000, ""), (4000, "x" * 124)]
)
def test_refuse_command_refuses_bad_codes_and_reasons(code: int, reason: str) -> None:
    with pytest.raises(ValueError, match=r"close code|123 bytes"):
        refuse_command(CONNECTION_ID, code, reason)
    with pytest.raises(ValueError, match=r"close code|123 bytes"):
        Refuse(reason, code)


def test_retry_and_refuse_exceptions() -> None:
    assert Retry().delay == 0.0
    assert Retry(1).delay == 1.0
    assert str(Retry(0.25)) == "retry in 0.25s"
    for delay in (-1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="Retry delay"):
            Retry(delay)  # type: ignore[arg-type]
    refuse = Refuse("banned", 4001)
    assert (refuse.reason, refuse.code, str(refuse)) == ("banned", 4001, "4001 banned")
    assert (Refuse().reason, Refuse().code) == ("", 4003)
    with pytest.raises(TypeError, match="reason must be a str"):
        Refuse(4001)  # type: ignore[arg-type]
    # The application raises them; they are not errors of wsq_worker.
    assert not issubclass(Retry, WsqError)
    assert not issubclass(Refuse, WsqError)


@pytest.mark.parametrize("build", [join_command, leave_command])
def test_join_and_leave_commands(build: Any, schemas: Schemas) -> None:
    command = build(CONNECTION_ID, "a/b@c.d:e-f_0")
    schemas.check("command", command)
    assert command == {
        "v": "1",
        "type": build.__name__.removesuffix("_command"),
        "target": "connection",
        "to": CONNECTION_ID,
        "group": "a/b@c.d:e-f_0",
    }
    with pytest.raises(ValueError, match="not a wsq connection id"):
        build("42", "room")
    with pytest.raises(ValueError, match="group name"):
        build(CONNECTION_ID, "")


GROUP_NAMES = ["a", "g" * 128, "room:lobby", "a/b@c.d:e-f_0", "", "g" * 129, "room lobby", "é", "a#b", "٣"]


@pytest.mark.parametrize("group", GROUP_NAMES)
def test_group_names_follow_the_schema(group: str, schemas: Schemas) -> None:
    """is_group_name and check_group agree with the schema's $defs.group pattern."""
    join = {"v": "1", "type": "join", "target": "connection", "to": CONNECTION_ID, "group": group}
    send = {"v": "1", "type": "send", "target": "group", "to": group, "frame": push_frame("a")}
    assert schemas.is_valid("command", join) == is_group_name(group) == schemas.is_valid("command", send)
    if is_group_name(group):
        assert check_group(group) == group
    else:
        with pytest.raises(ValueError, match="group name"):
            check_group(group)


def test_group_names_end_at_the_end() -> None:
    # Python's $ would match before a final newline: the pattern is used with fullmatch().
    assert not is_group_name("room\n")


@pytest.mark.parametrize("group", [None, 5, b"room"])
def test_group_names_are_strings(group: Any) -> None:
    assert not is_group_name(group)
    with pytest.raises(ValueError, match="group name"):
        check_group(group)


def test_node_of() -> None:
    assert node_of(CONNECTION_ID) == "gw-3f2a9c1d"
    assert node_of("a.bcdefghijklmnopqrstuvw") == "a"


@pytest.mark.parametrize(
    "connection_id",
    [
        "",
        "gw-1",
        "gw-1.",
        ".q2uE4nK0m5Zr8VtY1xWb7A",
        "gw.1.q2uE4nK0m5Zr8VtY1xWb7A",
        "gw-1.short",
        "gw:1.q2uE4nK0m5Zr8VtY1xWb7A",
    ],
)
def test_node_of_refuses_malformed_ids(connection_id: str) -> None:
    with pytest.raises(ValueError, match="not a wsq connection id"):
        node_of(connection_id)


# The codec: orjson when installed, else the stdlib, with the same output.


@pytest.mark.parametrize(
    "path", VALID_COMMANDS + VALID_SERVER_FRAMES, ids=example_ids(VALID_COMMANDS + VALID_SERVER_FRAMES)
)
def test_stdlib_and_orjson_encode_alike(path: Path) -> None:
    value = load(path)
    assert codec._stdlib_dumps(value) == codec.dumps(value)
    assert codec._stdlib_loads(codec.dumps(value)) == value


class Colour(enum.StrEnum):
    RED = "red"


class Size(enum.IntEnum):
    BIG = 3


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    "value", [2**70, -(2**64), Colour.RED, {"size": Size.BIG}, (1, "é"), {"a": [None, True, 1.5]}]
)
def test_codecs_encode_the_same_types_alike(value: Any) -> None:
    assert codec.dumps(value) == codec._stdlib_dumps(value)
    assert codec.dumps_utf8(value) == codec._stdlib_dumps_utf8(value) == codec.dumps(value).encode()


@pytest.mark.parametrize("value", [datetime.datetime(2026, 1, 1), Point(1), {1, 2}, object(), b"bytes"])
def test_codecs_refuse_the_same_types(value: Any) -> None:
    with pytest.raises(TypeError):
        codec._stdlib_dumps(value)
    with pytest.raises(TypeError):
        codec.dumps(value)
    with pytest.raises(TypeError):
        codec.dumps_utf8(value)


@pytest.mark.parametrize(
    "encode",
    [
        codec.dumps,
        codec._stdlib_dumps,
        codec.dumps_utf8,
        codec._stdlib_dumps_utf8,
        lambda data: push_frame("say", data),
    ],
    ids=["dumps", "stdlib-dumps", "dumps_utf8", "stdlib-dumps_utf8", "push_frame"],
)
def test_codecs_refuse_a_lone_surrogate(encode: Callable[[Any], Any]) -> None:
    """JSON text can hold one, escaped or not; UTF-8, and so a frame, can't."""
    with pytest.raises(ValueError, match="surrogates not allowed"):
        encode({"text": "\ud800"})


@pytest.mark.parametrize("data", [None, {"text": "héllo", "n": [1, 2.5, True]}, "日本"])
def test_checked_reply_frame_is_reply_frame_in_utf8(data: Any) -> None:
    assert checked_reply_frame("chat.send", data, "req-1") == reply_frame("chat.send", data, "req-1").encode()


def test_works_without_orjson() -> None:
    """orjson is optional: without it the stdlib's json encodes the same frames."""
    script = (
        "import sys; sys.modules['orjson'] = None\n"
        "from wsq_protocol import codec\nfrom wsq_worker import protocol\n"
        "assert codec.BACKEND == 'json', codec.BACKEND\n"
        "print(protocol.push_frame('say', {'text': 'héllo'}))\n"
        "event = protocol.decode_event({'v': '1', 'type': 'message', 'connection_id': "
        f"'{CONNECTION_ID}', 'node': 'gw', 'ts': '1', 'frame': '{{\"action\": \"a\", \"data\": [1]}}'}})\n"
        "print(event.data)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ['{"action":"say","data":{"text":"héllo"}}', "[1]"]


def test_stdlib_codec_refuses_nan() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        codec._stdlib_dumps(float("nan"))
    with pytest.raises(ValueError, match="NaN is not valid JSON"):
        codec._stdlib_loads('{"a": NaN}')


# Redis keys.


def test_the_sdk_writes_with_the_consumer_group_and_caps_of_the_protocol() -> None:
    # Key names themselves: protocol/tests/test_keys.py (the SDK builds them with wsq_protocol.keys).
    assert key_templates()["consumer_group"] == constants.CONSUMER_GROUP == "workers"
    assert (constants.NODE_STREAM_MAXLEN, constants.BROADCAST_STREAM_MAXLEN) == (100_000, 1_000)


def test_meta_is_read_only_and_compares_by_value() -> None:
    at = datetime.datetime(2026, 11, 28, 8, 0, 0, 123000, tzinfo=datetime.UTC)
    built = Meta("gw-1", at, "203.0.113.7")
    from_event = Meta._of_event("gw-1", 1795852800123, "203.0.113.7", None)  # as the worker makes it
    assert from_event.received_at == at
    assert from_event == built
    assert hash(from_event) == hash(built)
    assert repr(built) == (
        "Meta(node='gw-1', received_at=datetime.datetime(2026, 11, 28, 8, 0, 0, 123000, "
        "tzinfo=datetime.timezone.utc), client_addr='203.0.113.7', close_code=None)"
    )
    assert Meta("gw-1", at, "203.0.113.7", 1006) != built
    with pytest.raises(AttributeError):
        built.node = "gw-2"  # type: ignore[misc]


async def test_context_of_event_sets_what_init_sets() -> None:
    """The worker's constructor (positional, once per event) and ``Context(...)`` agree."""
    request = Request("/ws", "room=1", {"x-forwarded-for": "203.0.113.7"})
    ts, addr = 1795852800123, "203.0.113.7"
    event = Event("message", CONNECTION_ID, "gw-1", "42", ts, addr, "chat", {"a": 1}, "r1", request=request)
    publisher, loop = AsyncPublisher(redis_url="redis://127.0.0.1:1/0"), asyncio.get_running_loop()

    async def send_frame(frame: str) -> None:
        pass

    built = Context(
        connection_id=CONNECTION_ID,
        user_id="42",
        action="chat",
        id="r1",
        meta=Meta("gw-1", datetime.datetime.fromtimestamp(ts / 1000, tz=datetime.UTC), addr),
        publisher=publisher,
        send_frame=send_frame,
        loop=loop,
        attempt=3,
        request=request,
    )
    from_event = Context._of_event(event, 3, publisher, send_frame, loop)
    for name in Context.__slots__:
        assert getattr(from_event, name) == getattr(built, name), name
