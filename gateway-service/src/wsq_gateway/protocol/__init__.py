"""The gateway's pure protocol core: frames, ids, Redis envelopes and key names. No I/O.

Everything here is checked against ``protocol/`` (schemas and golden examples) by the
test suite.
"""

from wsq_gateway.protocol.envelopes import Command, decode_command, event_fields
from wsq_gateway.protocol.frames import (
    ClientFrame,
    connected_frame,
    decode_client_frame,
    error_frame,
    pong_frame,
)
from wsq_gateway.protocol.ids import new_connection_id, new_node_id, node_of, valid_node_id
from wsq_gateway.protocol.keys import Keys

__all__ = [
    "ClientFrame",
    "Command",
    "Keys",
    "connected_frame",
    "decode_client_frame",
    "decode_command",
    "error_frame",
    "event_fields",
    "new_connection_id",
    "new_node_id",
    "node_of",
    "pong_frame",
    "valid_node_id",
]
