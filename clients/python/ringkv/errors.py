"""Errors raised by the ringkv client.

Every error is a :class:`RingkvError` with the server's error ``kind`` (the
``"error"`` field of its JSON body), a human ``message`` and the HTTP ``status``
(``None`` when the error arose in the client: a lost connection, a response
that does not follow the protocol, siblings met by :attr:`Value.value`).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Type

__all__ = [
    "RingkvError",
    "InvalidRequest",
    "Unauthorized",
    "Forbidden",
    "Conflict",
    "WrongKind",
    "TooManySiblings",
    "SiblingsError",
    "CounterOverflow",
    "TooLarge",
    "Unavailable",
    "QuorumNotReached",
    "ServerError",
    "ProtocolError",
]


class RingkvError(Exception):
    """Base of every error the client raises."""

    def __init__(self, kind: str, message: str, status: Optional[int] = None) -> None:
        super().__init__(kind, message, status)
        #: The error kind: the server's (``"wrong_kind"``, ``"quorum_not_reached"``...)
        #: or the client's (``"connection"``, ``"timeout"``, ``"protocol"``, ``"siblings"``).
        self.kind = kind
        #: What went wrong, for humans.
        self.message = message
        #: The HTTP status, or ``None`` when no response said so.
        self.status = status

    def __str__(self) -> str:
        if self.status is None:
            return f"{self.kind}: {self.message}"
        return f"{self.status} {self.kind}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind!r}, {self.message!r}, {self.status!r})"

    def __reduce__(self) -> Any:
        # Keep the extra attributes of subclasses through pickling.
        return (type(self), (self.kind, self.message, self.status), dict(self.__dict__))


class InvalidRequest(RingkvError):
    """400: ``bad_request``, ``invalid_context`` or ``invalid_options``."""


class Unauthorized(RingkvError):
    """401: no token, or a token the node does not know."""


class Forbidden(RingkvError):
    """403: ``forbidden`` (the token's role is too small) or ``tls_required``."""


class Conflict(RingkvError):
    """409: the request conflicts with what the key holds."""


class WrongKind(Conflict):
    """409 ``wrong_kind``: e.g. a counter operation on a key holding a register."""


class TooManySiblings(Conflict):
    """409 ``too_many_siblings``: resolve the key's siblings (read, then put with the context)."""


class SiblingsError(Conflict):
    """The key has several concurrent values where one was asked for.

    Raised by :attr:`ringkv.Value.value` (``status`` is ``None`` then, and
    ``values`` holds the siblings) or for a 409 ``siblings`` answer.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        status: Optional[int] = None,
        values: Optional[List[bytes]] = None,
    ) -> None:
        super().__init__(kind, message, status)
        #: The siblings, when known.
        self.values: List[bytes] = list(values) if values is not None else []


class CounterOverflow(Conflict):
    """409 ``counter_overflow``: the add would leave the i64 range."""


class TooLarge(RingkvError):
    """413: the key, value or object is over the node's limit."""


class Unavailable(RingkvError):
    """The request could not be served: a 503, or the connection failed.

    ``indeterminate`` is true when a write may or may not have been applied (its
    response was lost, or a quorum failed after some replicas took it): read the
    key before trying again. The client never resends such a write by itself.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        status: Optional[int] = None,
        indeterminate: bool = False,
    ) -> None:
        super().__init__(kind, message, status)
        #: Whether the write may have been applied.
        self.indeterminate = bool(indeterminate)


class QuorumNotReached(Unavailable):
    """503 ``quorum_not_reached``: fewer replicas than required answered."""

    def __init__(
        self,
        kind: str,
        message: str,
        status: Optional[int] = None,
        indeterminate: bool = False,
        required: int = 0,
        succeeded: int = 0,
        attempted: int = 0,
    ) -> None:
        super().__init__(kind, message, status, indeterminate)
        #: Replicas the quorum needed.
        self.required = required
        #: Replicas that succeeded.
        self.succeeded = succeeded
        #: Replicas asked.
        self.attempted = attempted

    def __str__(self) -> str:
        return (
            f"{super().__str__()} (required {self.required}, succeeded {self.succeeded}, "
            f"attempted {self.attempted}, indeterminate {self.indeterminate})"
        )


class ServerError(RingkvError):
    """Another 5xx: ``storage``, ``corrupt``, or a proxy's error."""


class ProtocolError(RingkvError):
    """The server answered something this client does not understand."""


_CONFLICTS: Dict[str, Type[Conflict]] = {
    "wrong_kind": WrongKind,
    "too_many_siblings": TooManySiblings,
    "siblings": SiblingsError,
    "counter_overflow": CounterOverflow,
}

_BY_STATUS: Dict[int, Type[RingkvError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    413: TooLarge,
}


def _int_field(body: Mapping[str, Any], name: str) -> int:
    v = body.get(name)
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def parse_error_body(status: int, reason: str, body: bytes) -> Dict[str, Any]:
    """The JSON object of an error response, or a stand-in when it is not JSON."""
    try:
        parsed = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        if not isinstance(parsed.get("message"), str):
            parsed["message"] = reason or parsed["error"]
        return parsed
    text = body[:300].decode("utf-8", "replace").strip()
    return {"error": f"http_{status}", "message": text or reason or f"HTTP {status}"}


def error_from_response(status: int, reason: str, body: bytes) -> RingkvError:
    """The error an error response (4xx/5xx, or an unexpected status) stands for."""
    parsed = parse_error_body(status, reason, body)
    kind: str = parsed["error"]
    message: str = parsed["message"]
    if status == 409:
        return _CONFLICTS.get(kind, Conflict)(kind, message, status)
    if status in _BY_STATUS:
        return _BY_STATUS[status](kind, message, status)
    if status == 503:
        if kind == "quorum_not_reached":
            return QuorumNotReached(
                kind,
                message,
                status,
                indeterminate=parsed.get("indeterminate") is True,
                required=_int_field(parsed, "required"),
                succeeded=_int_field(parsed, "succeeded"),
                attempted=_int_field(parsed, "attempted"),
            )
        return Unavailable(kind, message, status)
    if 500 <= status <= 599:
        return ServerError(kind, message, status)
    return RingkvError(kind, message, status)
