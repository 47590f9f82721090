"""wsq's protocol core, shared by the gateway (``wsq-gateway``) and the worker SDK (``wsq-worker``).

Everything both sides of the wire must agree on is written once, here, and checked against
the language-neutral files beside it in ``protocol/`` (schemas, golden examples, ``keys.json``,
``lua/``):

=================  =========================================================================
``codes``          error codes, close codes, protocol version, limits
``errors``         ``WsqError``, ``ProtocolError``, ``FrameError``, ``CommandError``
``ids``            node and connection ids, action, group, user and frame id rules
``codec``          the JSON codec (orjson when installed, else the stdlib)
``frames``         client frames (decode) and server frames (encode)
``events``         inbound events: encode (gateways), decode (workers)
``commands``       outbound commands: encode (workers, publishers), decode (gateways)
``keys``           ``Keys(prefix)``: every Redis key name, from ``keys.json``
``action_schemas`` per-action JSON Schemas as workers publish them and gateways read them
``scripts``        the Lua scripts of ``lua/``, called by ``EVALSHA``
``pipe``           the Redis pipe, command templates, batch deadlines, checked packing
``cluster``        single Redis or Redis Cluster: telling them apart, the client each needs
``routing``        the pipe on a cluster: one slot's master (``SlotPipe``), or per master
                   (``RoutedPipe``), redirects and fail-overs followed
``batching``       one tick batcher with a pluggable failure policy; the shared backoff
``preflight``      is this Redis usable at all? (start-up checks of both packages)
``publishing``     pushes, disconnects, joins and leaves (routes, writes, the asyncio core
                   running them at most once), shared by the SDK's publishers and the
                   gateway's HTTP API; ``presence`` decodes its reads, ``status`` reads a
                   deployment's state
=================  =========================================================================

No module here does I/O at import time; only ``pipe``, ``routing``, ``cluster``, ``batching``,
``preflight``, ``publishing`` and ``status`` talk to Redis, through redis-py.
"""

from wsq_protocol.codes import PROTOCOL_VERSION, CloseCode, ErrorCode
from wsq_protocol.errors import CommandError, FrameError, ProtocolError, WsqError
from wsq_protocol.keys import Keys

__all__ = [
    "PROTOCOL_VERSION",
    "CloseCode",
    "CommandError",
    "ErrorCode",
    "FrameError",
    "Keys",
    "ProtocolError",
    "WsqError",
]
