"""The HTTP API's errors: each a stable machine-readable ``code`` with its HTTP status.

Every error answers ``{"error": {"code", "message", "retryable"}}`` (protocol/openapi.json,
``Error``); ``retryable`` is true only when nothing was done and the same request may simply
be sent again (Redis unreachable). The codes of a publisher's failures are ``PublishError``'s.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from wsq_protocol.errors import PublishError

__all__ = ["ERRORS", "ApiError", "publish_failure"]


class _Kind(NamedTuple):
    status: int
    retryable: bool
    meaning: str


ERRORS: dict[str, _Kind] = {
    # The request.
    "invalid_json": _Kind(400, False, "the body is not a JSON object"),
    "unauthorized": _Kind(401, False, "no API key, or not one of WSQ_API_KEYS"),
    "not_found": _Kind(404, False, "no such method"),
    "method_not_allowed": _Kind(405, False, "the method is called with POST (the document with GET)"),
    "body_too_large": _Kind(413, False, "the body is over WSQ_API_MAX_BODY_BYTES"),
    "invalid_params": _Kind(422, False, "a field is missing, unknown or of the wrong type"),
    "invalid_connection_id": _Kind(422, False, "not a wsq connection id (node.22 characters)"),
    "invalid_user_id": _Kind(422, False, "not a user id (1-256 bytes of UTF-8, no control characters)"),
    "invalid_group": _Kind(422, False, "not a group name (1-128 of A-Z a-z 0-9 _ . : @ / -)"),
    "invalid_action": _Kind(422, False, "not an action name (1-64 of A-Z a-z 0-9 _ . : -)"),
    "invalid_data": _Kind(422, False, "data that a frame can't carry"),
    "invalid_close": _Kind(
        422, False, "a close code other than 1000 or 3000-4999, or a reason over 123 bytes"
    ),
    # Redis (PublishError.code).
    "unavailable": _Kind(503, True, "Redis could not be reached or timed out: nothing was done"),
    "refused": _Kind(502, False, "Redis refused the command: nothing was done"),
    "maybe_written": _Kind(502, False, "the connection to Redis was lost once the write was sent"),
    "partially_written": _Kind(502, False, "the command reached some of the user's or group's gateways"),
    "membership_pending": _Kind(
        502, False, "the join or leave ran, the group's set is written by its gateway within a minute"
    ),
    "shards_mismatch": _Kind(500, False, "WSQ_SHARDS differs from the deployment's"),
    "protocol_error": _Kind(502, False, "what Redis holds does not follow the protocol"),
    "internal_error": _Kind(500, False, "a bug of the gateway (logged)"),
}


class ApiError(Exception):
    """An answer other than 200: its code (a key of ``ERRORS``) and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return ERRORS[self.code].status

    def body(self) -> dict[str, Any]:
        return {
            "error": {"code": self.code, "message": self.message, "retryable": ERRORS[self.code].retryable}
        }


def publish_failure(exc: PublishError) -> ApiError:
    """The answer to a publisher's failure: its code, or ``internal_error`` for one not listed."""
    code = exc.code if exc.code in ERRORS else "internal_error"
    return ApiError(code, str(exc))
