"""The ASGI application: WebSockets at ``/ws`` (daphne), the ``echo-worker`` channel (runworker)."""

# mypy: disable-error-code="import-not-found,import-untyped"
# Django and Channels exist only in bench/.venv-peers.

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peers.channels_app.settings")
django.setup()

from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from bench.peers.channels_app.consumers import WORKER_CHANNEL, EchoWorker, Gateway  # noqa: E402

application = ProtocolTypeRouter(
    {
        "websocket": URLRouter([path("ws", Gateway.as_asgi())]),
        "channel": ChannelNameRouter({WORKER_CHANNEL: EchoWorker.as_asgi()}),
    }
)
