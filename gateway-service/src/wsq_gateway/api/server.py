"""The HTTP server API's aiohttp application: ``POST /api/<method>`` with a JSON object, on a
listener of its own (WSQ_API_HOST, WSQ_API_PORT), never on the WebSocket port.

Every method answers 200 ``{"result": ...}`` or an error status with ``{"error": {"code",
"message", "retryable"}}`` (errors.py); ``GET /api/openapi.json`` serves protocol/openapi.json,
which documents them all, without a key. Every other request needs one of WSQ_API_KEYS, as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, compared in constant time with each.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
from typing import Any

from aiohttp import web

from wsq_gateway.api.errors import ApiError, publish_failure
from wsq_gateway.api.methods import MAX_BATCH, METHODS, Api, Params
from wsq_gateway.logs import GATEWAY as GATEWAY_LOGGER
from wsq_gateway.logs import get_logger
from wsq_gateway.metrics import GatewayMetrics
from wsq_gateway.state import Gateway
from wsq_protocol import codec
from wsq_protocol.errors import ProtocolError, PublishError
from wsq_protocol.resources import read_text

__all__ = ["API", "OPENAPI_PATH", "create_api_app"]

log = get_logger(GATEWAY_LOGGER)

OPENAPI_PATH = "/api/openapi.json"
API = web.AppKey("api", Api)
_KEYS = web.AppKey("api_keys", tuple)
_METRICS = web.AppKey("api_metrics", GatewayMetrics)
_MAX_BODY = web.AppKey("api_max_body_bytes", int)
_JSON = "application/json"


def create_api_app(gateway: Gateway) -> web.Application:
    """The API's application on ``gateway``'s Redis client and keys (WSQ_API_KEYS must be set)."""
    settings = gateway.settings
    keys = settings.api_key_list
    if not keys:
        raise ValueError("the HTTP API needs WSQ_API_KEYS")
    app = web.Application(client_max_size=settings.api_max_body_bytes, middlewares=[_middleware])
    app[API] = Api(gateway.redis, gateway.keys, settings.node_timeout_s)
    app[_KEYS] = keys
    app[_MAX_BODY] = settings.api_max_body_bytes
    if gateway.metrics is not None:
        app[_METRICS] = gateway.metrics
    for name in [*METHODS, "batch"]:
        app.router.add_post(f"/api/{name}", _handler(name), name=name)
    app.router.add_get(OPENAPI_PATH, _openapi, name="openapi")
    app.on_cleanup.append(_close)
    return app


async def _close(app: web.Application) -> None:
    await app[API].publishing.aclose()


def _authorized(request: web.Request) -> bool:
    """Whether the request carries one of the keys: compared with every key, in constant time
    (no early exit says which key, or how much of one, matched)."""
    scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
    given = bearer.strip() if scheme.lower() == "bearer" else request.headers.get("X-API-Key", "")
    if not given:
        return False
    given_bytes = given.encode("utf-8", "surrogateescape")
    matched = False
    for key in request.app[_KEYS]:
        matched |= hmac.compare_digest(given_bytes, key)
    return matched


def _error_response(error: ApiError) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="wsq"'} if error.code == "unauthorized" else None
    return web.json_response(error.body(), status=error.status, headers=headers, dumps=codec.dumps)


@web.middleware
async def _middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Authentication, then every failure as a JSON error (never a traceback), each answer counted."""
    route = request.match_info.route.name if request.match_info.route is not None else None
    try:
        if route != "openapi" and not _authorized(request):
            raise ApiError("unauthorized", "an API key is needed: Authorization: Bearer <key>")
        response: web.StreamResponse = await handler(request)
    except ApiError as exc:
        response = _error_response(exc)
    except web.HTTPMethodNotAllowed as exc:
        response = _error_response(
            ApiError("method_not_allowed", f"use {', '.join(sorted(exc.allowed_methods))}")
        )
    except web.HTTPNotFound:
        response = _error_response(ApiError("not_found", f"no such method: {request.path}"))
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[_MAX_BODY]
        response = _error_response(ApiError("body_too_large", f"the body is over {limit} bytes"))
    except web.HTTPException as exc:  # nothing else is raised; a JSON body all the same
        response = web.json_response(
            {"error": {"code": "invalid_params", "message": exc.reason, "retryable": False}},
            status=exc.status,
        )
    except Exception:
        log.exception("api request failed", path=request.path)
        response = _error_response(ApiError("internal_error", "the gateway failed to run the request"))
    if _METRICS in request.app:
        request.app[_METRICS].api_request(route or "unknown", response.status)
    return response


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(text=_openapi_text(), content_type=_JSON)


@functools.cache
def _openapi_text() -> str:
    """protocol/openapi.json (read once)."""
    return read_text("openapi.json")


def _handler(name: str) -> Any:
    async def handle(request: web.Request) -> web.Response:
        params = await _params(request)
        api = request.app[API]
        if name == "batch":
            result: dict[str, Any] = {"results": await _batch(api, params)}
        else:
            result = await _run(api, name, params)
        return web.json_response({"result": result}, dumps=codec.dumps)

    return handle


async def _params(request: web.Request) -> Params:
    """The body: a JSON object (an empty body is ``{}``)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        params = codec.loads(raw)
    except ValueError as exc:
        raise ApiError("invalid_json", f"the body is not JSON: {exc}") from None
    if not isinstance(params, dict):
        raise ApiError("invalid_json", "the body must be a JSON object")
    return params


async def _run(api: Api, name: str, params: Params) -> dict[str, Any]:
    """One method's result; its failure as an ``ApiError``."""
    try:
        return await METHODS[name](api, params)
    except PublishError as exc:
        raise publish_failure(exc) from exc
    except ProtocolError as exc:
        raise ApiError("protocol_error", str(exc)) from exc


async def _batch(api: Api, params: Params) -> list[dict[str, Any]]:
    """Each command's ``{"result"}`` or ``{"error"}``, in order. They run together: their writes
    go to Redis in one pipeline (those to users and groups after reading their gateways)."""
    if set(params) != {"commands"} or not isinstance(params["commands"], list):
        raise ApiError("invalid_params", 'a batch is {"commands": [{"method", "params"}, ...]}')
    commands = params["commands"]
    if not 1 <= len(commands) <= MAX_BATCH:
        raise ApiError("invalid_params", f"a batch holds 1 to {MAX_BATCH} commands")
    for n, command in enumerate(commands):
        if (
            not isinstance(command, dict)
            or not set(command) <= {"method", "params"}
            or "method" not in command
        ):
            raise ApiError("invalid_params", f'commands[{n}] must be {{"method", "params"}}')
        if not isinstance(command["method"], str) or command["method"] not in METHODS:
            raise ApiError("invalid_params", f"commands[{n}]: unknown method {command['method']!r}")
        if not isinstance(command.get("params", {}), dict):
            raise ApiError("invalid_params", f"commands[{n}].params must be an object")

    async def one(command: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"result": await _run(api, command["method"], command.get("params", {}))}
        except ApiError as exc:
            return exc.body()

    return list(await asyncio.gather(*(one(command) for command in commands)))
