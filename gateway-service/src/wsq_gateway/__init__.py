"""wsq gateway: holds WebSocket connections, queues client frames in Redis, delivers pushes."""

from wsq_gateway.app import create_app
from wsq_gateway.server import serve
from wsq_gateway.settings import Settings

__version__ = "0.2.0"
__all__ = ["Settings", "__version__", "create_app", "serve"]
