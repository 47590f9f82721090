"""The gateway's pure protocol core against protocol/: schemas and golden examples (the keys:
protocol/tests/test_keys.py)."""

from __future__ import annotations

import json
import string
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.http_websocket import WebSocketWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsq_devkit.contract import PROTOCOL_DIR, example_ids, examples, is_valid
from wsq_gateway.wire import wire_text_frame
from wsq_protocol.codes import ErrorCode
from wsq_protocol.commands import (
    connection_send,
    decode_command,
    detach_command,
    relay_command,
    resume_command,
    resumed_command,
)
from wsq_protocol.errors import CommandError, FrameError
from wsq_protocol.events import event_fields, request_text
from wsq_protocol.frames import connected_frame, decode_client_frame, pong_frame, with_seq
from wsq_protocol.frames import encode_error_frame as error_frame
from wsq_protocol.ids import new_connection_id, new_node_id, new_resume_token, node_of, parse_resume_token

VALID_CLIENT = examples("valid", "client-frame")
INVALID_CLIENT = examples("invalid", "client-frame")


@pytest.mark.parametrize("path", VALID_CLIENT, ids=example_ids(VALID_CLIENT))
def test_valid_client_frames_decode(path: Path) -> None:
    text = path.read_bytes()
    frame = decode_client_frame(text)
    doc = json.loads(text)
    assert frame.action == doc["action"]
    assert frame.data == doc.get("data")
    assert frame.id == doc.get("id")


@pytest.mark.parametrize("path", INVALID_CLIENT, ids=example_ids(INVALID_CLIENT))
def test_invalid_client_frames_get_the_code_in_their_name(path: Path) -> None:
    expected = ErrorCode(path.name.split(".")[0])
    with pytest.raises(FrameError) as caught:
        decode_client_frame(path.read_bytes().rstrip(b"\n"))
    assert caught.value.code is expected
    assert caught.value.message


def test_frame_error_keeps_a_readable_id() -> None:
    with pytest.raises(FrameError) as caught:
        decode_client_frame(b'{"action": "bad action", "id": "q1"}')
    assert caught.value.frame_id == "q1"
    with pytest.raises(FrameError) as caught:
        decode_client_frame(b'{"action": "x", "id": 5}')
    assert caught.value.frame_id is None


def test_invalid_utf8_is_invalid_json() -> None:
    with pytest.raises(FrameError) as caught:
        decode_client_frame(b'{"action": "x", "data": "\xff"}')
    assert caught.value.code is ErrorCode.INVALID_JSON


@given(st.binary(max_size=200))
def test_random_bytes_are_accepted_or_rejected_with_a_code(raw: bytes) -> None:
    try:
        decode_client_frame(raw)
    except FrameError as exc:
        code = exc.code
    else:
        return
    assert code in ErrorCode


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=70),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
NAMES = st.from_regex(r"\$?[A-Za-z0-9_.:-]{0,65}", fullmatch=True) | st.sampled_from(["$ping", "$error"])
FIELDS = {"action": NAMES | JSON_VALUES, "data": JSON_VALUES, "id": st.text(max_size=66) | JSON_VALUES}


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.fixed_dictionaries({}, optional={**FIELDS, "extra": JSON_VALUES}))
def test_decoder_agrees_with_the_schema(doc: dict[str, object]) -> None:
    raw = orjson.dumps(doc)
    try:
        decode_client_frame(raw)
    except FrameError:
        assert not is_valid("client-frame", doc)
    else:
        assert is_valid("client-frame", doc)


@pytest.mark.parametrize(
    "frame",
    [
        connected_frame("gw-1.q2uE4nK0m5Zr8VtY1xWb7A", None),
        connected_frame("gw-1.q2uE4nK0m5Zr8VtY1xWb7A", "42"),
        connected_frame(
            "gw-1.q2uE4nK0m5Zr8VtY1xWb7A",
            "42",
            resume_token=new_resume_token("gw-1.q2uE4nK0m5Zr8VtY1xWb7A"),
            resume_window_s=120.0,
        ),
        connected_frame(
            "gw-1.q2uE4nK0m5Zr8VtY1xWb7A",
            None,
            resume_token=new_resume_token("gw-1.q2uE4nK0m5Zr8VtY1xWb7A"),
            resume_window_s=0.5,
            resumed=True,
            recovered=False,
        ),
        with_seq(pong_frame(None, "p1"), 1),
        with_seq(b'{"action":"a","data":{"x":[1]},"id":"r"}  \n', 12345678901),
        pong_frame(None, "p1"),
        pong_frame({"t": 1}, None),
        *(error_frame(code, "message", "id-1") for code in ErrorCode),
        error_frame(ErrorCode.INVALID_JSON, "frame is not valid JSON"),
    ],
)
def test_gateway_frames_follow_the_server_schema(frame: bytes) -> None:
    assert is_valid("server-frame", orjson.loads(frame))


def test_every_error_code_is_in_the_schema() -> None:
    for code in ErrorCode:
        assert is_valid("server-frame", {"action": "$error", "data": {"code": code.value, "message": ""}})


# Events as the gateway writes them (a retried message's "attempt" is written by workers).
GATEWAY_EVENTS = [p for p in examples("valid", "event") if "attempt" not in json.loads(p.read_text())]


@pytest.mark.parametrize("path", GATEWAY_EVENTS, ids=example_ids(GATEWAY_EVENTS))
def test_event_fields_reproduce_the_golden_events(path: Path) -> None:
    golden = json.loads(path.read_text())
    built = event_fields(
        golden["type"],
        connection_id=golden["connection_id"],
        node=golden["node"],
        user_id=golden.get("user_id"),
        ts_ms=int(golden["ts"]),
        addr=golden["addr"],
        frame=golden.get("frame"),
        close_code=int(golden["close_code"]) if "close_code" in golden else None,
        hook=golden.get("hook") == "1",
        request=golden.get("request"),
    )
    assert built == golden
    assert is_valid("event", built)


def test_request_text_reproduces_the_golden_request() -> None:
    golden = json.loads((PROTOCOL_DIR / "examples/valid/event/connect-request.json").read_text())
    parts = json.loads(golden["request"])
    assert request_text(parts["path"], parts["query"], parts["headers"]) == golden["request"]


def _as_stream_entry(doc: dict[str, str]) -> dict[bytes, bytes]:
    return {key.encode(): value.encode() for key, value in doc.items()}


@pytest.mark.parametrize("path", examples("valid", "command"), ids=example_ids(examples("valid", "command")))
def test_valid_commands_decode(path: Path) -> None:
    golden = json.loads(path.read_text())
    command = decode_command(_as_stream_entry(golden))
    assert command.type == golden["type"]
    assert command.target == golden["target"]
    assert command.to == golden.get("to")
    assert command.exclude == golden.get("exclude")
    assert command.group == golden.get("group")
    if command.type == "send":
        assert command.frame == golden["frame"].encode()
    if command.type == "disconnect":
        assert command.code == int(golden["code"])
        assert command.reason == golden.get("reason", "")
    if command.type == "relay":
        assert command.frame == golden["frame"].encode()
    if command.type == "resume":
        assert (command.token, command.after, command.node, command.user_id) == (
            golden["token"],
            int(golden["after"]),
            golden["node"],
            golden.get("user_id"),
        )
    if command.type == "resumed":
        assert (command.epoch, command.recovered, command.frame) == (
            int(golden["epoch"]),
            golden["recovered"] == "1",
            golden["frames"].encode(),
        )
    if command.type == "detach":
        assert (command.epoch, command.code) == (int(golden["epoch"]), int(golden["code"]))


def test_session_commands_round_trip_and_follow_the_schema() -> None:
    cid = "gw-1.q2uE4nK0m5Zr8VtY1xWb7A"
    built: list[dict[str, str] | dict[str, str | bytes]] = [
        resume_command(cid, "Zt3mW9xQ1vB7nK5pL2rY8A", 7, "gw-2", "ann"),
        resume_command(cid, "Zt3mW9xQ1vB7nK5pL2rY8A", 0, "gw-2", None),
        resumed_command(cid, 3, "ann", True, b'[{"action":"a","data":null,"seq":8}]'),
        resumed_command(cid, 0),
        relay_command(cid, b'{"action":"a","data":null,"seq":9}'),
        detach_command(cid, 3, 1006),
    ]
    for fields in built:
        text = {key: value.decode() if isinstance(value, bytes) else value for key, value in fields.items()}
        assert is_valid("command", text), text
        command = decode_command(_as_stream_entry(text))
        assert command.type == fields["type"]
        assert command.to == cid
    assert decode_command(_as_stream_entry(detach_command(cid, 3, 1006))).code == 1006
    refused = {
        key: value.decode() if isinstance(value, bytes) else value
        for key, value in resumed_command(cid, 0).items()
    }
    assert not decode_command(_as_stream_entry(refused)).recovered


def test_resume_tokens_name_their_connection() -> None:
    cid = "gw-1.q2uE4nK0m5Zr8VtY1xWb7A"
    token = new_resume_token(cid)
    parsed = parse_resume_token(token)
    assert parsed is not None
    assert parsed[0] == cid
    assert token == f"{cid}.{parsed[1]}"
    assert new_resume_token(cid) != token  # 128 random bits each
    for bad in (cid, f"{cid}.short", f"x.{token}", "", None, 7, f"{token}."):
        assert parse_resume_token(bad) is None


def test_with_seq_numbers_a_frame_as_its_last_field() -> None:
    assert with_seq(b'{"action":"a","data":null}', 3) == b'{"action":"a","data":null,"seq":3}'
    assert orjson.loads(with_seq(b'{"action":"a","data":{"b":"}"},"id":"x"}\n', 41)) == {
        "action": "a",
        "data": {"b": "}"},
        "id": "x",
        "seq": 41,
    }


# The gateway writes a command's frame verbatim without decoding it (publishers encode
# frames; re-validating them would cost every delivery a JSON parse), and looks group names
# up without re-checking their syntax (publishers do). An accept naming an unusable user id is
# decoded, then its connection closed with 3011 (test_identities.py).
NOT_CHECKED_BY_GATEWAY = {
    "frame-not-a-server-frame.json",
    "bad-group-name.json",
    "accept-unusable-user-id.json",
}
INVALID_COMMANDS = [p for p in examples("invalid", "command") if p.name not in NOT_CHECKED_BY_GATEWAY]


@pytest.mark.parametrize("path", INVALID_COMMANDS, ids=example_ids(INVALID_COMMANDS))
def test_invalid_commands_are_rejected(path: Path) -> None:
    with pytest.raises(CommandError):
        decode_command(_as_stream_entry(json.loads(path.read_text())))


@pytest.mark.parametrize(
    "fields",
    [
        {b"type": b"send", b"target": b"connection", b"to": b"\xff", b"frame": b"{}"},
        {b"type": b"send", b"target": b"group", b"to": b"g", b"exclude": b"gw-1.\xff", b"frame": b"{}"},
        {b"type": b"join", b"target": b"connection", b"to": b"gw-1.a", b"group": b"\xc3"},
        {b"type": b"accept", b"target": b"connection", b"to": b"gw-1.a", b"user_id": b"\xfe"},
    ],
)
def test_text_fields_that_are_not_utf8_are_rejected(fields: dict[bytes, bytes]) -> None:
    """A command error (logged and skipped), not a UnicodeDecodeError that would end the reader."""
    with pytest.raises(CommandError, match="is not valid UTF-8"):
        decode_command({b"v": b"1", **fields})


def _flat(doc: dict[str, str]) -> list[bytes]:
    """A command's fields and values as XREAD returns them: one flat list, in written order."""
    return [item.encode() for pair in doc.items() for item in pair]


def _agrees_with_decode_command(flat: list[bytes]) -> bool:
    """connection_send() recognises only what decode_command() reads as the same send."""
    fast = connection_send(flat)
    if fast is None:
        return True
    try:
        command = decode_command(dict(zip(flat[::2], flat[1::2], strict=True)))
    except CommandError:
        return False
    return (command.type, command.target, command.to, command.frame) == ("send", "connection", *fast)


ALL_COMMANDS = examples("valid", "command") + examples("invalid", "command")


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=example_ids(ALL_COMMANDS))
def test_the_fast_path_for_a_send_to_one_connection_agrees_with_the_decoder(path: Path) -> None:
    assert _agrees_with_decode_command(_flat(json.loads(path.read_text())))


@pytest.mark.parametrize("name", ["reply.json", "send-connection.json"])
def test_the_sdks_sends_to_one_connection_take_the_fast_path(name: str) -> None:
    golden = json.loads((PROTOCOL_DIR / "examples/valid/command" / name).read_text())
    assert connection_send(_flat(golden)) == (golden["to"], golden["frame"].encode())


_field_bytes = st.one_of(
    st.sampled_from([b"v", b"1", b"2", b"type", b"send", b"join", b"target", b"connection", b"group"]),
    st.sampled_from([b"to", b"frame", b"exclude", b"", b"\xff", b"gw-1.a"]),
    st.binary(max_size=4),
)


@given(changes=st.dictionaries(st.integers(0, 11), st.one_of(st.none(), _field_bytes), max_size=3))
def test_the_fast_path_agrees_with_the_decoder_on_mutated_sends(changes: dict[int, bytes | None]) -> None:
    flat = _flat(json.loads((PROTOCOL_DIR / "examples/valid/command/reply.json").read_text()))
    for position, value in sorted(changes.items(), reverse=True):
        if value is None:
            del flat[position : position + 2]  # a field and its value gone (or nothing, past the end)
        elif position < len(flat):
            flat[position] = value
        else:
            flat += [value, b"x"]
    if len(flat) % 2 == 0 and len(set(flat[::2])) == len(flat) // 2:  # what a stream entry can be
        assert _agrees_with_decode_command(flat)


def test_connection_ids_name_their_node_and_are_unguessable() -> None:
    node = new_node_id()
    ids = {new_connection_id(node) for _ in range(10_000)}
    assert len(ids) == 10_000
    for cid in list(ids)[:100]:
        assert node_of(cid) == node
        suffix = cid.rsplit(".", 1)[1]
        assert len(suffix) == 22  # 128 bits of base64url
        assert set(suffix) <= set(string.ascii_letters + string.digits + "-_")
        assert is_valid("server-frame", orjson.loads(connected_frame(cid, None)))


@pytest.mark.parametrize("bad", ["", "nodot", "a.b", "gw-1.tooshort", "bad node.q2uE4nK0m5Zr8VtY1xWb7A"])
def test_node_of_rejects_what_is_not_a_connection_id(bad: str) -> None:
    with pytest.raises(ValueError, match="not a wsq connection id"):
        node_of(bad)


class _CapturingTransport:
    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
async def test_wire_frames_are_byte_for_byte_what_aiohttp_writes(length: int) -> None:
    payload = b"x" * length
    transport = _CapturingTransport()
    writer = WebSocketWriter(SimpleNamespace(_paused=False), transport, use_mask=False)  # type: ignore[arg-type]
    await writer.send_frame(payload, WSMsgType.TEXT)
    assert wire_text_frame(payload) == transport.written
