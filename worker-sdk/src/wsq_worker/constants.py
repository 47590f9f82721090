"""The consumer group and stream caps the SDK writes with; Redis key names are the protocol
core's ``wsq_protocol.keys.Keys`` (from protocol/keys.json), settings are ``settings.py``."""

from __future__ import annotations

from wsq_protocol.codes import BROADCAST_STREAM_MAXLEN, NODE_STREAM_MAXLEN
from wsq_protocol.keys import CONSUMER_GROUP

__all__ = ["BROADCAST_STREAM_MAXLEN", "CONSUMER_GROUP", "NODE_STREAM_MAXLEN"]
