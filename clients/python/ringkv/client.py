"""The HTTP client of ringkv's data API (``/v1/kv``, ``/v1/counter``, ``/v1/set``)."""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import json
import select
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from email.message import Message
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .errors import (
    InvalidRequest,
    ProtocolError,
    RingkvError,
    Unavailable,
    error_from_response,
    parse_error_body,
)
from .model import Context, Value

__all__ = ["Client", "Key"]

#: A key: bytes as they are, or text (encoded as UTF-8).
Key = Union[bytes, bytearray, memoryview, str]

_BytesLike = Union[bytes, bytearray, memoryview]

_CONTEXT_HEADER = "X-Ringkv-Context"
_USER_AGENT = "ringkv-python/0.1.0"
# Request bodies go out in pieces this big, watching for an early answer between.
_CHUNK = 64 * 1024
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1

# Failures that mean a kept-alive connection was closed under us.
_DROPPED: Tuple[type, ...] = (
    ConnectionResetError,  # includes http.client.RemoteDisconnected
    BrokenPipeError,
    ConnectionAbortedError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


@dataclass(frozen=True)
class _Response:
    status: int
    reason: str
    headers: Message
    body: bytes


def _key_bytes(key: Key) -> bytes:
    if isinstance(key, str):
        raw = key.encode("utf-8")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
    else:
        raise TypeError(f"a key is bytes or str, not {type(key).__name__}")
    if not raw:
        raise ValueError("the key is empty")
    return raw


def _key_path(key: Key) -> str:
    """The key percent-encoded: every byte outside the unreserved set, "/" too."""
    raw = _key_bytes(key)
    if raw in (b".", b".."):
        # Dot segments could be resolved away by something on the way.
        return "%2E" * len(raw)
    return urllib.parse.quote(raw, safe="")


def _body_bytes(what: str, data: _BytesLike) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what} is bytes, not {type(data).__name__}")


def _context_text(context: Union[Context, str]) -> str:
    text = context.text if isinstance(context, Context) else context
    if not isinstance(text, str):
        raise TypeError(f"a context is a ringkv.Context, not {type(context).__name__}")
    if not text or not text.isascii() or not text.isprintable() or " " in text:
        raise InvalidRequest(
            "invalid_context", "a context is non-empty printable ASCII without spaces", None
        )
    return text


def _options(**opts: Optional[int]) -> List[Tuple[str, str]]:
    out = []
    for name, v in opts.items():
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{name} is an int, not {type(v).__name__}")
        out.append((name, str(v)))
    return out


def _readable(sock: socket.socket) -> bool:
    """Whether `sock` has something to read (or hung up) right now."""
    if hasattr(select, "poll"):
        p = select.poll()
        p.register(sock, select.POLLIN | select.POLLPRI)
        return bool(p.poll(0))
    r, _, _ = select.select([sock], [], [], 0)
    return bool(r)


def _wait_io(sock: socket.socket, timeout: Optional[float]) -> Tuple[bool, bool]:
    """Waits until `sock` is readable or writable: (readable, writable)."""
    if hasattr(select, "poll"):
        p = select.poll()
        p.register(sock, select.POLLIN | select.POLLOUT)
        events = p.poll(None if timeout is None else int(timeout * 1000))
        mask = 0
        for _, ev in events:
            mask |= ev
        readable = bool(mask & (select.POLLIN | select.POLLHUP | select.POLLERR))
        return readable, bool(mask & select.POLLOUT)
    r, w, x = select.select([sock], [sock], [sock], timeout)
    return bool(r or x), bool(w)


def _context_from(resp: _Response) -> Context:
    # Empty is a context too (no causal history: a delete of a key never written).
    text = resp.headers.get(_CONTEXT_HEADER)
    if text is None:
        raise ProtocolError(
            "protocol", f"a {resp.status} answer without an {_CONTEXT_HEADER} header", resp.status
        )
    return Context(text.strip())


def _json(resp: _Response) -> Dict[str, Any]:
    try:
        parsed = json.loads(resp.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError("protocol", f"a {resp.status} answer that is not JSON: {e}", resp.status) from e
    if not isinstance(parsed, dict):
        raise ProtocolError("protocol", f"a {resp.status} answer that is not a JSON object", resp.status)
    return parsed


def _b64_list(resp: _Response, parsed: Mapping[str, Any], field: str) -> List[bytes]:
    items = parsed.get(field)
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ProtocolError("protocol", f"{field!r} is not a list of base64 strings", resp.status)
    try:
        return [base64.b64decode(i, validate=True) for i in items]
    except (binascii.Error, ValueError) as e:
        raise ProtocolError("protocol", f"{field!r} holds bad base64: {e}", resp.status) from e


def _int_of(resp: _Response, parsed: Mapping[str, Any], field: str) -> int:
    v = parsed.get(field)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ProtocolError("protocol", f"{field!r} is not an integer", resp.status)
    return v


def _not_found(resp: _Response) -> bool:
    if resp.status != 404:
        return False
    return parse_error_body(resp.status, resp.reason, resp.body).get("error") == "not_found"


class Client:
    """A client of one ringkv node's HTTP data API.

    One kept-alive connection, used by one request at a time (calls from several
    threads wait for each other; use a client per thread for parallelism). A read
    whose kept-alive connection turns out closed is sent again once on a new one;
    a write never is: when its outcome is unknown the call raises
    :class:`Unavailable` with ``indeterminate=True``.

    ``url``: ``http://HOST:PORT`` or ``https://HOST:PORT`` (a TLS node speaks both
    on one port, but serves data over TLS only); ``token``: a bearer token for a
    node with an auth file; ``ca_file``: the CA (PEM) that signed the node's
    certificate (https only; the system's CAs otherwise); ``timeout``: seconds a
    connect, send or receive may take (raised to ``timeout_ms`` + 1 s for a
    request that passes a longer ``timeout_ms``).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:7480",
        token: Optional[str] = None,
        ca_file: Optional[str] = None,
        timeout: float = 10.0,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"the URL must be http:// or https://, not {url!r}")
        if not parts.hostname:
            raise ValueError(f"the URL has no host: {url!r}")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"the URL takes no query, fragment or user: {url!r}")
        if ca_file is not None and scheme != "https":
            raise ValueError("ca_file needs an https:// URL")
        if token is not None and (not token or not token.isascii() or not token.isprintable()):
            raise ValueError("the token is non-empty printable ASCII")
        if timeout <= 0:
            raise ValueError("timeout is positive")
        self._host: str = parts.hostname
        self._port: int = parts.port or (443 if scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._tls: Optional[ssl.SSLContext] = (
            ssl.create_default_context(cafile=ca_file) if scheme == "https" else None
        )
        self._token = token
        self._timeout = float(timeout)
        self._conn: Optional[http.client.HTTPConnection] = None
        self._lock = threading.Lock()
        self.url = url

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the kept-alive connection (a later call opens another)."""
        with self._lock:
            self._drop()

    # ----- registers -----

    def get(
        self,
        key: Key,
        r: Optional[int] = None,
        pr: Optional[int] = None,
        timeout_ms: Optional[int] = None,
    ) -> Optional[Value]:
        """The register at `key`: its value(s) and context, or ``None`` when it does
        not exist (never written, or deleted)."""
        resp = self._request(
            "GET", "/v1/kv/", key, _options(r=r, pr=pr, timeout_ms=timeout_ms), idempotent=True
        )
        if resp.status == 200:
            return Value([resp.body], _context_from(resp))
        if resp.status == 300:
            parsed = _json(resp)
            values = _b64_list(resp, parsed, "values")
            text = parsed.get("context")
            context = Context(text) if isinstance(text, str) and text else _context_from(resp)
            return Value(values, context)
        if _not_found(resp):
            return None
        raise self._error(resp)

    def put(
        self,
        key: Key,
        value: _BytesLike,
        context: Optional[Context] = None,
        w: Optional[int] = None,
        pw: Optional[int] = None,
        timeout_ms: Optional[int] = None,
    ) -> Context:
        """Writes `value` at `key`, superseding what the read of `context` saw
        (without one the write is blind: a sibling of concurrent values).
        Returns the new context."""
        headers = {"Content-Type": "application/octet-stream"}
        if context is not None:
            headers[_CONTEXT_HEADER] = _context_text(context)
        resp = self._request(
            "PUT",
            "/v1/kv/",
            key,
            _options(w=w, pw=pw, timeout_ms=timeout_ms),
            body=_body_bytes("a value", value),
            headers=headers,
        )
        if resp.status in (200, 201, 204):
            return _context_from(resp)
        raise self._error(resp)

    def delete(
        self,
        key: Key,
        context: Optional[Context] = None,
        w: Optional[int] = None,
        pw: Optional[int] = None,
        timeout_ms: Optional[int] = None,
    ) -> Context:
        """Deletes the register at `key`: what the read of `context` saw, or
        everything visible now without one. Returns the context of the delete."""
        headers = {}
        if context is not None:
            headers[_CONTEXT_HEADER] = _context_text(context)
        resp = self._request(
            "DELETE",
            "/v1/kv/",
            key,
            _options(w=w, pw=pw, timeout_ms=timeout_ms),
            headers=headers,
        )
        if resp.status in (200, 204):
            return _context_from(resp)
        raise self._error(resp)

    # ----- counters -----

    def counter(
        self,
        key: Key,
        r: Optional[int] = None,
        pr: Optional[int] = None,
        timeout_ms: Optional[int] = None,
    ) -> Optional[int]:
        """The counter at `key`, or ``None`` when it does not exist."""
        resp = self._request(
            "GET", "/v1/counter/", key, _options(r=r, pr=pr, timeout_ms=timeout_ms), idempotent=True
        )
        if resp.status == 200:
            return _int_of(resp, _json(resp), "value")
        if _not_found(resp):
            return None
        raise self._error(resp)

    def counter_add(
        self,
        key: Key,
        delta: int,
        w: Optional[int] = None,
        pw: Optional[int] = None,
        timeout_ms: Optional[int] = None,
    ) -> int:
        """Adds `delta` (negative to subtract) to the counter at `key`, creating it
        at 0 first; returns its value after the add as the coordinating node sees it."""
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise TypeError(f"delta is an int, not {type(delta).__name__}")
        if not _I64_MIN <= delta <= _I64_MAX:
            raise ValueError("delta is out of the i64 range")
        resp = self._request(
            "POST",
            "/v1/counter/",
            key,
            _options(w=w, pw=pw, timeout_ms=timeout_ms),
            body=json.dumps({"add": delta}).encode("ascii"),
            headers={"Content-Type": "application/json"},
        )
        if resp.status == 200:
            return _int_of(resp, _json(resp), "value")
        raise self._error(resp)

    # ----- sets -----

    def set_members(
        self,
        key: Key,
        r: Optional[int] = None,
        pr: Optional[int] = None,
        timeout_ms: Optional[int] = None,
    ) -> Optional[List[bytes]]:
        """The members of the set at `key`, sorted by bytes, or ``None`` when the
        set does not exist."""
        resp = self._request(
            "GET", "/v1/set/", key, _options(r=r, pr=pr, timeout_ms=timeout_ms), idempotent=True
        )
        if resp.status == 200:
            return _b64_list(resp, _json(resp), "members")
        if _not_found(resp):
            return None
        raise self._error(resp)

    def set_add(
        self,
        key: Key,
        member: _BytesLike,
        w: Optional[int] = None,
        pw: Optional[int] = None,
        timeout_ms: Optional[int] = None,
    ) -> None:
        """Adds `member` to the set at `key` (creating the set)."""
        resp = self._request(
            "POST",
            "/v1/set/",
            key,
            _options(w=w, pw=pw, timeout_ms=timeout_ms),
            body=_body_bytes("a member", member),
            headers={"Content-Type": "application/octet-stream"},
        )
        if resp.status in (200, 204):
            return
        raise self._error(resp)

    def set_remove(
        self,
        key: Key,
        member: _BytesLike,
        w: Optional[int] = None,
        pw: Optional[int] = None,
        timeout_ms: Optional[int] = None,
    ) -> bool:
        """Removes `member` from the set at `key`; whether it was there."""
        params = [("member", _body_bytes("a member", member))]
        params += _options(w=w, pw=pw, timeout_ms=timeout_ms)
        resp = self._request("DELETE", "/v1/set/", key, params)
        if resp.status == 200:
            removed = _json(resp).get("removed")
            if not isinstance(removed, bool):
                raise ProtocolError("protocol", "'removed' is not a boolean", resp.status)
            return removed
        raise self._error(resp)

    # ----- operations routes -----

    def health(self) -> Dict[str, Any]:
        """``/v1/cluster/health``: the cluster as the node sees it (JSON object)."""
        resp = self._request("GET", "/v1/cluster/health", None, [], idempotent=True)
        if resp.status == 200:
            return _json(resp)
        raise self._error(resp)

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200."""
        return self._request("GET", "/readyz", None, [], idempotent=True).status == 200

    # ----- transport -----

    def _error(self, resp: _Response) -> RingkvError:
        return error_from_response(resp.status, resp.reason, resp.body)

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _connect(self, timeout: float) -> Tuple[http.client.HTTPConnection, bool]:
        """The connection to use and whether it served requests before."""
        conn = self._conn
        if conn is not None and (conn.sock is None or _readable(conn.sock)):
            # Closed after its last response, or the server hung up (or sent
            # something unasked): nothing was sent on it, open another.
            self._drop()
            conn = None
        if conn is not None:
            conn.sock.settimeout(timeout)
            return conn, True
        if self._tls is not None:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise Unavailable(
                "connection", f"cannot connect to {self._host}:{self._port}: {e}", None, False
            ) from e
        self._conn = conn
        return conn, False

    def _request(
        self,
        method: str,
        route: str,
        key: Optional[Key],
        params: List[Tuple[str, Union[str, bytes]]],
        body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
        idempotent: bool = False,
    ) -> _Response:
        path = self._prefix + route + ("" if key is None else _key_path(key))
        if params:
            path += "?" + "&".join(
                f"{name}={urllib.parse.quote(value, safe='')}" for name, value in params
            )
        all_headers = {"User-Agent": _USER_AGENT}
        if self._token is not None:
            all_headers["Authorization"] = f"Bearer {self._token}"
        all_headers.update(headers or {})
        timeout = self._timeout
        for name, value in params:
            if name == "timeout_ms":
                timeout = max(timeout, int(value) / 1000 + 1)
        with self._lock:
            attempt = 0
            while True:
                attempt += 1
                conn, reused = self._connect(timeout)
                try:
                    return self._exchange(conn, method, path, body, all_headers)
                except (OSError, http.client.HTTPException) as e:
                    self._drop()
                    if idempotent and reused and attempt == 1 and isinstance(e, _DROPPED):
                        continue  # the kept-alive connection was closed: once more
                    timed_out = isinstance(e, socket.timeout)
                    outcome = (
                        "" if idempotent else "; the write may or may not have been applied"
                    )
                    raise Unavailable(
                        "timeout" if timed_out else "connection",
                        f"{method} {route}: {'no answer in time' if timed_out else 'connection lost'}"
                        f" ({type(e).__name__}: {e}){outcome}",
                        None,
                        indeterminate=not idempotent,
                    ) from e

    def _exchange(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        path: str,
        body: Optional[bytes],
        headers: Mapping[str, str],
    ) -> _Response:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        early = self._send_body(conn, body) if body else None
        if early:
            # The answer began while the body was going out (read on TLS).
            assert conn.sock is not None
            resp = http.client.HTTPResponse(_Prefixed(early, conn.sock), method=method)  # type: ignore[arg-type]
            resp.begin()
        else:
            resp = conn.getresponse()
        data = resp.read()
        if early is not None:
            # The server answered before taking the whole body: the connection is
            # in the middle of a request, never reuse it.
            self._drop()
        return _Response(resp.status, resp.reason, resp.msg, data)

    def _send_body(self, conn: http.client.HTTPConnection, body: bytes) -> Optional[bytes]:
        """Sends `body`: ``None`` when all of it went out, else (the server answered
        or hung up first) the bytes of the answer already read (maybe none).

        A server refusing a body (413) answers early and may stop reading: its
        answer is read then, instead of blocking on (or failing) the rest.
        """
        sock = conn.sock
        assert sock is not None
        view = memoryview(body)
        sent = 0
        timeout = sock.gettimeout()
        try:
            while sent < len(view):
                readable, writable = _wait_io(sock, timeout)
                if readable:
                    if not isinstance(sock, ssl.SSLSocket):
                        return b""
                    # On TLS, records come unasked (session tickets): only
                    # application data is an answer.
                    got = _tls_read_now(sock, timeout)
                    if got is not None:
                        return got
                    continue
                if not writable:
                    raise socket.timeout("timed out sending the request body")
                sent += sock.send(view[sent : sent + _CHUNK])
        except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            # The server may have answered before it hung up: read that answer
            # (if there is none, reading fails as a lost connection).
            return b""
        return None


def _tls_read_now(sock: ssl.SSLSocket, timeout: Optional[float]) -> Optional[bytes]:
    """Application data readable right now (b"" at the end of the stream), or
    ``None`` when only TLS records that carry none were waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return None
    finally:
        sock.settimeout(timeout)


class _PrefixReader(io.RawIOBase):
    """Bytes already read, then the rest of a stream."""

    def __init__(self, prefix: bytes, rest: io.BufferedIOBase) -> None:
        self._prefix = prefix
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._prefix:
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._rest.read1(len(b))
        b[: len(data)] = data
        return len(data)


class _Prefixed:
    """A socket as http.client.HTTPResponse sees it, with `prefix` read already."""

    def __init__(self, prefix: bytes, sock: socket.socket) -> None:
        self._prefix = prefix
        self._sock = sock

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_PrefixReader(self._prefix, self._sock.makefile("rb")))
