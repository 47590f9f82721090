"""server_frame_problem, what gateways check of a send command's frame, agrees with the schema
on every golden example: server frames and the frames the command examples carry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsq_protocol.frames import FRAME_INVALID, FRAME_NOT_JSON, server_frame_problem

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _paths(kind: str, schema: str) -> list[Path]:
    return sorted((EXAMPLES / kind / schema).glob("*.json"))


def _written_by_gateways(path: Path) -> bool:
    """A numbered frame, or a $connected with resume fields: only gateways write those."""
    doc = json.loads(path.read_text())
    return "seq" in doc or (
        doc["action"] == "$connected" and doc["data"].keys() != {"connection_id", "user_id"}
    )


@pytest.mark.parametrize("path", _paths("valid", "server-frame"), ids=lambda p: p.name)
def test_valid_server_frames_pass(path: Path) -> None:
    if _written_by_gateways(path):
        problem = server_frame_problem(path.read_bytes())  # a publisher may not send it
        assert problem is not None
        assert problem[0] == FRAME_INVALID
        if "seq" in json.loads(path.read_text()):  # but a session's home relays it
            assert server_frame_problem(path.read_bytes(), stamped=True) is None
        return
    assert server_frame_problem(path.read_bytes()) is None
    assert server_frame_problem(path.read_text()) is None


@pytest.mark.parametrize("path", _paths("invalid", "server-frame"), ids=lambda p: p.name)
def test_invalid_server_frames_fail(path: Path) -> None:
    problem = server_frame_problem(path.read_bytes())
    assert problem is not None
    assert problem[0] == FRAME_INVALID


@pytest.mark.parametrize("path", _paths("valid", "command"), ids=lambda p: p.name)
def test_frames_of_valid_commands_pass(path: Path) -> None:
    command = json.loads(path.read_text())
    frame = command.get("frame")
    if frame is not None:
        assert server_frame_problem(frame.encode(), stamped=command["type"] == "relay") is None


def test_the_invalid_command_example_frame_fails() -> None:
    command = json.loads((EXAMPLES / "invalid" / "command" / "frame-not-a-server-frame.json").read_text())
    problem = server_frame_problem(command["frame"])
    assert problem is not None
    assert problem[0] == FRAME_INVALID


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", FRAME_NOT_JSON),
        (b"not json", FRAME_NOT_JSON),
        (b"\xff", FRAME_NOT_JSON),
        (b'{"action":"a","data":NaN}', FRAME_NOT_JSON),
        (b"null", FRAME_INVALID),
        (b'[{"action":"a","data":null}]', FRAME_INVALID),
        (b'{"data":null}', FRAME_INVALID),
        (b'{"action":1,"data":null}', FRAME_INVALID),
        (b'{"action":"","data":null}', FRAME_INVALID),
        (b'{"action":"a b","data":null}', FRAME_INVALID),
        (b'{"action":"$ping","data":null}', FRAME_INVALID),
        (b'{"action":"a","data":null,"id":""}', FRAME_INVALID),
        (b'{"action":"a","data":null,"id":null}', FRAME_INVALID),
        (b'{"action":"a","data":null,"x":1}', FRAME_INVALID),
        (b'{"action":"$error","data":{"code":"invalid_json"}}', FRAME_INVALID),
        (b'{"action":"$connected","data":{"connection_id":"x","user_id":null}}', FRAME_INVALID),
        (b'{"action":"$history","data":null}', FRAME_INVALID),
        (b'{"action":"$history","data":{"messages":{},"complete":true,"gap":false}}', FRAME_INVALID),
        (b'{"action":"$history","data":{"messages":[],"complete":1,"gap":false}}', FRAME_INVALID),
        (b'{"action":"$history","data":{"messages":[],"complete":true,"gap":false,"x":1}}', FRAME_INVALID),
    ],
)
def test_what_is_not_a_server_frame(frame: bytes, reason: str) -> None:
    problem = server_frame_problem(frame)
    assert problem is not None
    assert problem[0] == reason


@pytest.mark.parametrize(
    "frame",
    [
        b'{"action":"a","data":null}',  # no seq
        b'{"action":"a","data":null,"seq":0}',
        b'{"action":"a","data":null,"seq":"1"}',
        b'{"action":"a","data":null,"seq":1.5}',
        b'{"action":"a","data":null,"seq":1,"x":1}',
    ],
)
def test_what_is_not_a_relayed_frame(frame: bytes) -> None:
    problem = server_frame_problem(frame, stamped=True)
    assert problem is not None
    assert problem[0] == FRAME_INVALID


def test_pushes_of_any_data_pass() -> None:
    for data in ("null", "1", '"s"', "[1,{}]", '{"deep":{"er":[true]}}'):
        assert server_frame_problem(f'{{"action":"a.b:c-d_e","data":{data},"id":"r1"}}'.encode()) is None
