"""The gateway's HTTP server API (README, "HTTP server API"; protocol/openapi.json): push,
disconnect, groups, presence and stats for backends that speak HTTP only, on a listener of its
own, with API keys."""

from wsq_gateway.api.server import API, OPENAPI_PATH, create_api_app

__all__ = ["API", "OPENAPI_PATH", "create_api_app"]
