"""The gateway's settings. They come only from environment variables prefixed ``WSQ_``.

Each field's description is its documentation: ``wsq-gateway --help`` prints them, and
the README's settings table is checked against this class by the test suite.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wsq_protocol.cluster import check_redis_url
from wsq_protocol.ids import new_node_id, valid_node_id
from wsq_protocol.keys import DEFAULT_SHARDS, MAX_SHARDS

_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an RFC 9110 token


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WSQ_", extra="ignore", frozen=True)

    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    path: str = Field("/ws", description="URL path of the WebSocket endpoint.")
    redis_url: str = Field(
        "redis://localhost:6379/0",
        description="Redis to use (redis://, rediss:// for TLS, unix:// for a socket, with "
        "user:password@ for AUTH).",
    )
    redis_timeout_s: float = Field(
        5.0,
        gt=0,
        description="How long Redis may take to answer before the gateway counts it as stalled: "
        "/readyz turns 503, new client frames get $error unavailable and new sockets close with "
        "1013 until it answers. Frames already sent wait for Redis's verdict (docs/guarantees.md).",
    )
    redis_cluster: bool = Field(
        False,
        description="WSQ_REDIS_URL names a node of a Redis Cluster (or Valkey cluster): the gateway "
        "finds the other masters from it, follows slot moves and failovers, and reads its node "
        "stream and the broadcast stream on two connections (docs/deploy.md, 'Redis Cluster').",
    )
    key_prefix: str = Field(
        "wsq", min_length=1, description="Namespace of every Redis key, so deployments can share a Redis."
    )
    shards: int = Field(
        DEFAULT_SHARDS,
        ge=1,
        le=MAX_SHARDS,
        description="Number of shards of the Redis keys (protocol/README.md, 'Slots and shards'): "
        "the same on every gateway, worker and publisher of a deployment (checked at start). On a "
        "Redis Cluster each gateway's keys live in its shard's slot, so more shards than masters "
        "spread gateways over masters.",
    )
    node_id: str = Field(
        default_factory=new_node_id,
        description="This gateway's id, part of every connection id it issues "
        "(1-64 letters, digits, _ or -). Default: generated, unique per process.",
    )
    ssl_certfile: str | None = Field(
        None, description="PEM certificate: with SSL_KEYFILE, serve wss:// and https://."
    )
    ssl_keyfile: str | None = Field(None, description="PEM private key for SSL_CERTFILE.")
    max_message_bytes: int = Field(
        65536, ge=128, description="Largest client frame accepted; a larger one closes the socket with 1009."
    )
    max_pending_bytes: int = Field(
        1048576,
        ge=1024,
        description="Bytes queued for one slow client before it is disconnected with 3008.",
    )
    max_queued_frames: int = Field(
        10000,
        ge=1,
        description="Client frames waiting to be written to Redis, over all connections; "
        "past it, frames are answered with $error overloaded.",
    )
    max_inbound_backlog: int = Field(
        100000,
        ge=1,
        description="Events waiting for workers in the inbound stream (all gateways together); "
        "past it, client frames are answered with $error overloaded until workers catch up.",
    )
    worker_timeout_s: float = Field(
        10.0,
        ge=0,
        description="A worker that has not read the inbound stream for this long is gone (a live one "
        "reads every second, and refreshes its busy entries every WSQ_CLAIM_IDLE_MS / 3: keep this above "
        "both). While no worker is live, client frames are answered at once with $error no_workers "
        "instead of being queued (0: never; frames wait in the stream for workers, however long).",
    )
    stall_after_s: float = Field(
        30.0,
        ge=0,
        description="Workers are live but stalled when events have waited unread in this gateway's "
        "inbound partition and no worker has read one for this long (every slot busy with slow or stuck "
        "handlers): reported in /readyz (workers.stalled) and by wsq_gateway_workers_stalled; frames are "
        "still accepted (0: never reported).",
    )
    take_timeout_s: float = Field(
        0.0,
        ge=0,
        description="A client frame with an id that no worker has read this many seconds after it "
        "was queued is withdrawn from the inbound stream and answered with $error not_taken: no worker "
        "will ever run it (match it to your clients' request timeouts, e.g. 30). 0: frames wait for "
        "workers however long.",
    )
    resume_window_s: float = Field(
        120.0,
        ge=0,
        description="Session resume (protocol/README.md, 'Session resume'): a client that loses its "
        "socket (no close frame, or 1011, 1012, 1014, 3008) may come back on any gateway within this "
        "many seconds with its resume token and get the same connection id, user and groups, and "
        "every frame sent meanwhile, numbered, once, in order. Its disconnect event waits for the "
        "window to end without a resume. 0: off, every socket's end is its connection's end (no "
        "tokens, no seq).",
    )
    resume_buffer_frames: int = Field(
        1000,
        ge=1,
        description="With resume on: the most frames kept per connection for a replay (a resume "
        "that needs an older one gets recovered: false).",
    )
    resume_buffer_bytes: int = Field(
        262_144,
        ge=1024,
        description="With resume on: the most bytes of frames kept per connection for a replay.",
    )
    schemas_refresh_s: float = Field(
        2.0,
        gt=0,
        description="How often the gateway checks whether workers published new action schemas "
        "(one HGET of their version; the schemas are read again only when it moved). A worker's new "
        "schema is enforced within this long (protocol/README.md, 'Action schemas').",
    )
    rate_limit: float = Field(
        100.0,
        ge=0,
        description="Client frames per second one connection may send on average (0: no limit); "
        "frames over it are answered with $error rate_limited.",
    )
    rate_burst: int = Field(200, ge=1, description="Frames a connection may send at once above RATE_LIMIT.")
    max_connections_per_user: int = Field(
        100,
        ge=0,
        description="Open connections one user_id may hold across all gateways (0: no limit); "
        "more are refused with HTTP 429 (a burst on one gateway too: its upgrades are checked one at "
        "a time), or closed with 1008 when the user is known only after the upgrade (a connect hook "
        "naming it, or upgrades on several gateways at once that passed their checks together).",
    )
    max_connections_per_addr: int = Field(
        1000,
        ge=0,
        description="Open connections and handshakes in progress from one client address on this "
        "gateway (0: no limit); more are refused with HTTP 429, a burst of concurrent upgrades too.",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses or networks (CIDR) of reverse proxies in front of "
        "the gateway: for requests from them, the client address is taken from X-Forwarded-For.",
    )
    allowed_origins: str = Field(
        "",
        description="Comma-separated Origin values allowed to open a socket, e.g. "
        "https://app.example.com (empty or *: any). Browsers always send Origin; a request from "
        "another origin is refused with HTTP 403. Requests without Origin (non-browser clients) pass.",
    )
    heartbeat_s: float = Field(
        30.0, gt=0, description="Seconds between WebSocket pings; a client that misses the pong is closed."
    )
    drain_s: float = Field(
        10.0,
        gt=0,
        description="On SIGTERM, the most the drain may take: refuse new sockets, close open ones "
        "with 1012, write their disconnect events, leave the set of live gateways. Handlers still "
        "busy a quarter of it after their socket closed are cancelled, so the writes get the rest.",
    )
    node_heartbeat_s: float = Field(
        5.0, gt=0, description="Seconds between this gateway's heartbeats and its checks for dead gateways."
    )
    node_timeout_s: float = Field(
        20.0,
        gt=0,
        description="A gateway whose heartbeat is older than this is dead: survivors forget its "
        "connections and emit their disconnect events.",
    )
    jwt_secret: SecretStr | None = Field(
        None,
        description="HS256 secret. When set, clients must present a JWT (?token= or Authorization: "
        "Bearer); its sub becomes the user_id. When unset, connections are anonymous.",
    )
    jwt_audience: str | None = Field(None, description="When set, a token's aud must contain it.")
    jwt_issuer: str | None = Field(None, description="When set, a token's iss must equal it.")
    connect_hook: bool = Field(
        False,
        description="When true, a worker's on_connect approves each connection (and may set its "
        "user_id) before $connected is sent; refused connections are closed with the worker's code.",
    )
    forward_headers: str = Field(
        "cookie",
        description="Comma-separated request headers copied into each connect event for the "
        "workers' on_connect, e.g. cookie,user-agent (empty: none). The path and query string "
        "always go along. They are stored in Redis until a worker handles the event.",
    )
    connect_timeout_s: float = Field(
        5.0, gt=0, description="With CONNECT_HOOK: how long to wait for a worker's answer (then close 1013)."
    )
    metrics: bool = Field(
        True,
        description="Serve Prometheus metrics at GET /metrics on this port (README, 'Metrics'). The "
        "ingress and the nginx example route only the WebSocket path, so /metrics stays inside the "
        "cluster. False: no /metrics and nothing counted.",
    )
    metrics_max_actions: int = Field(
        100,
        ge=1,
        description="Distinct client actions labelled in wsq_gateway_frames_in; frames of actions "
        'first seen beyond that many are counted under action="other" (clients choose actions: '
        "the label set must stay bounded).",
    )
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated keys of the HTTP server API (README, 'HTTP server API'); each at "
        "least 16 characters, none holding a comma or whitespace. Unset: the API is off (its port is not "
        "opened). Several keys: any of them is accepted, to rotate them without downtime. Never logged.",
    )
    api_host: str = Field(
        "127.0.0.1",
        description="Address the HTTP API listens on (with API_KEYS). The default serves only this "
        "machine or pod; set 0.0.0.0 for backends elsewhere in a private network, never the public one.",
    )
    api_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="TCP port of the HTTP API (with API_KEYS): never the WebSocket PORT.",
    )
    api_max_body_bytes: int = Field(
        1048576, ge=1024, description="Largest HTTP API request body; a larger one is answered 413."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["json", "console", "auto"] = Field(
        "auto",
        description="json: one JSON object per line; console: human-readable (coloured on a "
        "terminal); auto: console when stderr is a terminal, else json.",
    )

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return check_redis_url(value)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str) -> str:
        if not valid_node_id(value):
            raise ValueError("must be 1-64 letters, digits, _ or -")
        return value

    @property
    def proxies(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(part, strict=False) for part in _items(self.trusted_proxies))

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for part in _items(value):
            ipaddress.ip_network(part, strict=False)  # ValueError: not an address or network
        return value

    @property
    def forwarded_headers(self) -> tuple[str, ...]:
        """The headers to forward, lower-case, each once."""
        return tuple(dict.fromkeys(name.lower() for name in _items(self.forward_headers)))

    @field_validator("forward_headers")
    @classmethod
    def _header_names(cls, value: str) -> str:
        for name in _items(value):
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"not a header name: {name!r}")
        return value

    @property
    def origins(self) -> frozenset[str] | None:
        """The allowed origins, or None when any origin is allowed."""
        values = frozenset(origin.rstrip("/") for origin in _items(self.allowed_origins))
        return None if not values or "*" in values else values

    @property
    def api_key_list(self) -> tuple[bytes, ...]:
        """The API keys (UTF-8), empty when the API is off."""
        if self.api_keys is None:
            return ()
        return tuple(key.encode() for key in _items(self.api_keys.get_secret_value()))

    @field_validator("api_keys")
    @classmethod
    def _api_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        keys = _items(value.get_secret_value())
        if not keys:
            return None  # WSQ_API_KEYS="": off
        for n, key in enumerate(keys, 1):  # the message never shows a key
            if len(key) < 16 or any(char.isspace() for char in key):
                raise ValueError(f"key {n} must be at least 16 characters without whitespace")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.node_timeout_s <= 2 * self.node_heartbeat_s:
            raise ValueError("WSQ_NODE_TIMEOUT_S must be more than twice WSQ_NODE_HEARTBEAT_S")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("WSQ_SSL_CERTFILE and WSQ_SSL_KEYFILE must be set together")
        if self.api_keys is not None and self.api_port == self.port and self.port != 0:
            raise ValueError("WSQ_API_PORT must differ from WSQ_PORT: the API is never on the WebSocket port")
        return self


def _items(value: str) -> list[str]:
    """The non-empty entries of a comma-separated setting, stripped."""
    return [part.strip() for part in value.split(",") if part.strip()]


def describe_settings() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) for every setting, for --help and docs."""
    rows = []
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "generated"
        elif field.default is None:
            default = "unset"
        elif field.default == "":
            default = "empty"
        else:
            default = str(field.default)
        rows.append((f"WSQ_{name.upper()}", default, field.description or ""))
    return rows
