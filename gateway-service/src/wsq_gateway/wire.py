"""WebSocket wire framing the gateway does itself, for fan-out."""

from __future__ import annotations


def wire_text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked WebSocket text frame (RFC 6455 section 5.2), as a server
    sends it: the same bytes for every recipient, so a fan-out encodes it once."""
    length = len(payload)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 65536:
        header = bytes((0x81, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + length.to_bytes(8, "big")
    return header + payload
