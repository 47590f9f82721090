"""The API's methods: each takes its validated ``params`` (a JSON object) and returns its result.

The commands are the protocol core's (``wsq_protocol.publishing``, as the worker SDK's
``AsyncPublisher`` builds and runs them): the same routes, writes, at-most-once sending and
``PublishError`` codes. Every argument is checked with the protocol's own rules (``wsq_protocol.ids``)
before anything is sent; a bad one is an ``ApiError`` naming the field.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from wsq_gateway.api.errors import ApiError, publish_failure
from wsq_protocol import codec
from wsq_protocol.cluster import AsyncClient
from wsq_protocol.errors import PublishError
from wsq_protocol.frames import push_frame
from wsq_protocol.history import (
    DEFAULT_LIMIT,
    HistorySettings,
    check_limit,
    check_since,
    check_size,
    check_ttl_s,
    history_settings_from_env,
)
from wsq_protocol.ids import check_close, check_group, check_user_id, is_action_name, node_of
from wsq_protocol.keys import Keys
from wsq_protocol.publishing import (
    AsyncPublishing,
    MembershipWrite,
    Route,
    history_push_error,
    publish_error,
)
from wsq_protocol.status import read_status

__all__ = ["MAX_BATCH", "METHODS", "Api"]

MAX_BATCH = 1000
"""The most commands one ``batch`` may hold."""
TARGETS = ("connection", "user", "group", "all")


class Api:
    """What the methods use: the publishing core on the gateway's Redis client."""

    def __init__(self, client: AsyncClient, keys: Keys, node_timeout_s: float) -> None:
        self.client = client
        self.keys = keys
        self.publishing = AsyncPublishing(client, keys)
        self.node_timeout_s = node_timeout_s
        # What send's history keeps unless the call says (WSQ_HISTORY_SIZE, WSQ_HISTORY_TTL_S).
        self.history = history_settings_from_env()


Params = Mapping[str, Any]
Method = Callable[[Api, Params], Awaitable[dict[str, Any]]]


# Checking params.


def _fields(params: Params, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    missing = [name for name in required if name not in params]
    if missing:
        raise ApiError("invalid_params", f"missing field(s): {', '.join(missing)}")
    unknown = sorted(set(params) - set(required) - set(optional))
    if unknown:
        raise ApiError("invalid_params", f"unknown field(s): {', '.join(unknown)}")


def _string(params: Params, name: str) -> str:
    value = params[name]
    if not isinstance(value, str):
        raise ApiError("invalid_params", f"{name} must be a string")
    return value


def _connection_id(params: Params, name: str) -> str:
    value = _string(params, name)
    try:
        node_of(value)
    except ValueError as exc:
        raise ApiError("invalid_connection_id", f"{name}: {exc}") from None
    return value


def _user_id(params: Params, name: str) -> str:
    try:
        return check_user_id(_string(params, name))
    except ValueError as exc:
        raise ApiError("invalid_user_id", f"{name}: {exc}") from None


def _group(params: Params, name: str) -> str:
    try:
        return check_group(_string(params, name))
    except ValueError as exc:
        raise ApiError("invalid_group", f"{name}: {exc}") from None


def _route(api: Api, params: Params) -> Route:
    """The route of ``target`` and ``to``."""
    target = params["target"]
    if target not in TARGETS:
        raise ApiError("invalid_params", f"target must be one of {', '.join(TARGETS)}")
    if target == "all":
        if params.get("to") is not None:
            raise ApiError("invalid_params", 'target "all" takes no "to"')
        return Route.everyone(api.keys)
    if "to" not in params:
        raise ApiError("invalid_params", f'target "{target}" needs "to"')
    if target == "connection":
        return Route.connection(api.keys, _connection_id(params, "to"))
    if target == "user":
        return Route.user(api.keys, _user_id(params, "to"))
    return Route.group(api.keys, _group(params, "to"))


# The methods.


def _history(api: Api, params: Params, route: Route) -> HistorySettings | None:
    """The settings of send's history append, None without ``"history": true``."""
    history = params.get("history", False)
    if not isinstance(history, bool):
        raise ApiError("invalid_params", "history must be true or false")
    size, ttl_s = params.get("history_size"), params.get("history_ttl_s")
    if not history:
        if size is not None or ttl_s is not None:
            raise ApiError("invalid_params", 'history_size and history_ttl_s go with "history": true')
        return None
    if route.target != "group":
        raise ApiError("invalid_params", 'history is for target "group" only')
    try:
        return HistorySettings(
            api.history.size if size is None else check_size(size),
            api.history.ttl_s if ttl_s is None else check_ttl_s(ttl_s),
        )
    except ValueError as exc:
        raise ApiError("invalid_params", str(exc)) from None


async def send(api: Api, params: Params) -> dict[str, Any]:
    _fields(
        params, ("target", "action"), ("to", "data", "exclude", "history", "history_size", "history_ttl_s")
    )
    route = _route(api, params)
    action = _string(params, "action")
    if not is_action_name(action):
        raise ApiError("invalid_action", f"not an action name: {action!r}")
    exclude = None
    if params.get("exclude") is not None:
        if route.target != "group":
            raise ApiError("invalid_params", 'exclude is for target "group" only')
        exclude = _connection_id(params, "exclude")
    history = _history(api, params, route)
    try:
        frame = push_frame(action, params.get("data"))
    except (TypeError, ValueError) as exc:
        raise ApiError("invalid_data", f"data: {exc}") from None
    write = route.send(frame, exclude)
    if history is None:
        return {"written": await api.publishing.execute(write)}
    # The history entry first, then the push: separate writes (wsq_protocol.history).
    append = route.history_append(action, codec.dumps(params.get("data")), history)
    offset = await api.publishing.append_history(append)
    try:
        written = await api.publishing.execute(write)
    except PublishError as exc:
        raise history_push_error(offset, exc) from exc
    return {"written": written, "offset": offset}


async def disconnect(api: Api, params: Params) -> dict[str, Any]:
    _fields(params, ("target",), ("to", "code", "reason"))
    route = _route(api, params)
    code, reason = params.get("code", 1000), params.get("reason", "")
    try:
        check_close(code, reason)
    except (TypeError, ValueError) as exc:
        raise ApiError("invalid_close", str(exc)) from None
    return {"written": await api.publishing.execute(route.disconnect(code, reason))}


async def join(api: Api, params: Params) -> dict[str, Any]:
    _fields(params, ("connection_id", "group"))
    write = MembershipWrite.join(api.keys, _connection_id(params, "connection_id"), _group(params, "group"))
    return {"joined": bool(await api.publishing.execute(write))}


async def leave(api: Api, params: Params) -> dict[str, Any]:
    _fields(params, ("connection_id", "group"))
    write = MembershipWrite.leave(api.keys, _connection_id(params, "connection_id"), _group(params, "group"))
    return {"left": bool(await api.publishing.execute(write))}


async def connections(api: Api, params: Params) -> dict[str, Any]:
    _fields(params, ("user_id",))
    return {"connections": await api.publishing.connections(_user_id(params, "user_id"))}


async def is_online(api: Api, params: Params) -> dict[str, Any]:
    _fields(params, ("user_id",))
    return {"online": await api.publishing.is_online(_user_id(params, "user_id"))}


async def group_members(api: Api, params: Params) -> dict[str, Any]:
    _fields(params, ("group",))
    return {"connections": await api.publishing.group_members(_group(params, "group"))}


async def connection_info(api: Api, params: Params) -> dict[str, Any]:
    _fields(params, ("connection_id",))
    info = await api.publishing.connection_info(_connection_id(params, "connection_id"))
    if info is None:
        return {"connection": None}
    since = info.connected_since.astimezone(UTC)
    return {
        "connection": {
            "connection_id": info.connection_id,
            "node": info.node,
            "user_id": info.user_id,
            "connected_since": since.isoformat().replace("+00:00", "Z"),
            "addr": info.addr,
            "groups": sorted(info.groups),
        }
    }


async def history(api: Api, params: Params) -> dict[str, Any]:
    _fields(params, ("group",), ("since", "limit"))
    group = _group(params, "group")
    try:
        since = check_since(params.get("since"))
        limit = check_limit(params.get("limit", DEFAULT_LIMIT))
    except ValueError as exc:
        raise ApiError("invalid_params", str(exc)) from None
    page = await api.publishing.history(group, since, limit)
    return page.as_json()


async def stats(api: Api, params: Params) -> dict[str, Any]:
    _fields(params, ())
    try:
        return await read_status(api.client, api.keys, node_timeout_ms=int(api.node_timeout_s * 1000))
    except (RedisError, RedisClusterException) as exc:
        raise publish_failure(publish_error(exc, read=True)) from exc


METHODS: dict[str, Method] = {
    "send": send,
    "disconnect": disconnect,
    "join": join,
    "leave": leave,
    "connections": connections,
    "is_online": is_online,
    "group_members": group_members,
    "connection_info": connection_info,
    "history": history,
    "stats": stats,
}
"""Every method but ``batch`` (server.py), which runs these."""
