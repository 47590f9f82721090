"""wsq's Python client: connect to a wsq gateway, send requests and get their replies, listen
to pushes, reconnect with backoff when the connection drops, and resume the connection's
session (same connection id, the frames sent meanwhile) when the gateway offers it.

    async with wsq_client.connect("wss://gateway.example/ws", token=jwt) as client:
        print(await client.request("echo", {"text": "hi"}))
        client.on("chat_message", print)
"""

from wsq_client.client import Client, Push, StateChange, connect
from wsq_client.exceptions import (
    ClientClosed,
    ConnectionLost,
    RequestTimeout,
    ServerError,
    SessionLost,
    WsqClientError,
)
from wsq_client.policy import RECONNECT_CLOSE_CODES, SESSION_RESUMED, Backoff

__all__ = [
    "RECONNECT_CLOSE_CODES",
    "SESSION_RESUMED",
    "Backoff",
    "Client",
    "ClientClosed",
    "ConnectionLost",
    "Push",
    "RequestTimeout",
    "ServerError",
    "SessionLost",
    "StateChange",
    "WsqClientError",
    "connect",
]
