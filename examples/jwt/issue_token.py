"""Issue the token a wsq gateway checks: how your web application lets its users connect.

A gateway run with ``WSQ_JWT_SECRET`` accepts a WebSocket only with an HS256 JWT, in the query
(``ws://gateway:8000/ws?token=...``) or in ``Authorization: Bearer ...``. It reads these claims
(gateway-service/src/wsq_gateway/auth.py):

``sub``  required: the user id the connection gets (``ctx.user_id`` in the workers,
         ``Publisher.to_user()``): 1-256 bytes of UTF-8 without control characters.
``exp``  when the token expires (checked when present; always set one). It is checked at the
         upgrade only: an open connection outlives its token.
``nbf``, ``iat``  checked when present (not before / issued at).
``aud``  required when the gateway has ``WSQ_JWT_AUDIENCE``: must contain it.
``iss``  required when the gateway has ``WSQ_JWT_ISSUER``: must equal it.

The web application, which knows who is logged in, signs a short-lived token with the
gateway's secret and hands it to the page, which opens the socket with it. As a function::

    from issue_token import issue_token
    token = issue_token("ada", secret, ttl_s=300)

or from a shell, with the gateway's own variables (WSQ_JWT_SECRET, and WSQ_JWT_AUDIENCE and
WSQ_JWT_ISSUER when the gateway sets them)::

    WSQ_JWT_SECRET=... python examples/jwt/issue_token.py ada --ttl 300
    websocat "ws://localhost:8000/ws?token=$(WSQ_JWT_SECRET=... python examples/jwt/issue_token.py ada)"
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime, timedelta

import jwt

ALGORITHM = "HS256"  # the only one the gateway accepts
MIN_SECRET_BYTES = 32  # as the gateway: a shorter HS256 key is easier to forge


def issue_token(
    user_id: str,
    secret: str,
    *,
    ttl_s: float = 300.0,
    audience: str | None = None,
    issuer: str | None = None,
    now: datetime | None = None,
) -> str:
    """A token for ``user_id`` the gateway with ``WSQ_JWT_SECRET=secret`` (and this audience and
    issuer, when it checks them) accepts for ``ttl_s`` seconds."""
    if not user_id:
        raise ValueError("the user id is empty")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"the secret is shorter than {MIN_SECRET_BYTES} bytes")
    issued = now or datetime.now(UTC)
    claims: dict[str, object] = {"sub": user_id, "iat": issued, "exp": issued + timedelta(seconds=ttl_s)}
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Print a JWT for USER_ID that a wsq gateway with the same WSQ_JWT_SECRET "
        "(and WSQ_JWT_AUDIENCE, WSQ_JWT_ISSUER) accepts.",
    )
    parser.add_argument("user_id", metavar="USER_ID", help="the token's sub: the connection's user id")
    parser.add_argument("--ttl", type=float, default=300.0, metavar="SECONDS", help="lifetime (default 300)")
    args = parser.parse_args(argv)
    secret = os.environ.get("WSQ_JWT_SECRET", "")
    if not secret:
        parser.error("set WSQ_JWT_SECRET to the gateway's secret")
    try:
        token = issue_token(
            args.user_id,
            secret,
            ttl_s=args.ttl,
            audience=os.environ.get("WSQ_JWT_AUDIENCE") or None,
            issuer=os.environ.get("WSQ_JWT_ISSUER") or None,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
