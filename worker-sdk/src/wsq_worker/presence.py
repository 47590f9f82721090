"""Who is connected, read straight from the gateways' registry in Redis (protocol/README.md, Presence).

The decoding is the protocol core's (``wsq_protocol.presence``, shared with the gateway's HTTP
API); ``Publisher`` and ``AsyncPublisher`` run the reads.
"""

from __future__ import annotations

from wsq_protocol.presence import ConnectionInfo, decode_connection_info, decode_members

__all__ = ["ConnectionInfo", "decode_connection_info", "decode_members"]
