"""Python client of ringkv's HTTP data API (standard library only).

    >>> from ringkv import Client
    >>> kv = Client("http://127.0.0.1:7480")
    >>> ctx = kv.put("greeting", b"hello")
    >>> kv.get("greeting").value
    b'hello'
"""

from .client import Client, Key
from .errors import (
    Conflict,
    CounterOverflow,
    Forbidden,
    InvalidRequest,
    ProtocolError,
    QuorumNotReached,
    RingkvError,
    ServerError,
    SiblingsError,
    TooLarge,
    TooManySiblings,
    Unauthorized,
    Unavailable,
    WrongKind,
)
from .model import Context, Value

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Key",
    "Context",
    "Value",
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
