"""Who is connecting: HS256 JWTs, checked before the WebSocket upgrade."""

from __future__ import annotations

import jwt
from aiohttp import web

from wsq_gateway.errors import AuthenticationError
from wsq_gateway.logs import GATEWAY, get_logger
from wsq_protocol.ids import user_id_problem

log = get_logger(GATEWAY)

MIN_SECRET_BYTES = 32  # RFC 7518 section 3.2: an HS256 key at least as long as the hash
ALGORITHMS = ["HS256"]  # pinned: a token's own "alg" header is never trusted (no "none")


class Authenticator:
    """Turns an upgrade request into a user id (None for anonymous connections)."""

    def __init__(self, secret: str | None, *, audience: str | None = None, issuer: str | None = None) -> None:
        self._secret = secret
        self._audience = audience
        self._issuer = issuer
        if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
            log.warning("WSQ_JWT_SECRET is shorter than 32 bytes: tokens are easier to forge")

    @property
    def required(self) -> bool:
        return self._secret is not None

    def user_id(self, request: web.Request) -> str | None:
        if self._secret is None:
            return None
        token = request.query.get("token")
        if token is None:
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer" and value:
                token = value.strip()
        if not token:
            raise AuthenticationError("a token is required (?token= or Authorization: Bearer)")
        if not token.isascii():  # a JWT is base64url and dots; aiohttp keeps other bytes as surrogates
            raise AuthenticationError("invalid token: a JWT is ASCII text")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError(f"invalid token: {exc}") from None
        sub = claims["sub"]
        problem = user_id_problem(sub)
        if problem is not None:  # refused here, before it reaches a Redis key or a log line
            raise AuthenticationError(f"the token's sub is not a usable user id: {problem}")
        assert isinstance(sub, str)
        return sub
