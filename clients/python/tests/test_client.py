"""The client's transport and decoding against a scripted local HTTP server (no
ringkv needed): connection reuse, the one retry of reads on a dropped kept-alive
connection, no resend of writes, early answers to large bodies, error mapping."""

from __future__ import annotations

import base64
import json
import socket
import sys
import threading
import unittest
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ringkv import (  # noqa: E402
    Client,
    Context,
    Forbidden,
    InvalidRequest,
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


@dataclass
class Request:
    conn: int  # which connection (0, 1...)
    index: int  # which request on that connection
    method: str
    path: str
    headers: Dict[str, str]
    body: bytes = b""


# What a handler answers: the raw response (None: hang up without answering),
# and whether to close the connection after it.
Answer = Tuple[Optional[bytes], bool]


def response(status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None) -> bytes:
    reason = {200: "OK", 204: "No Content", 300: "Multiple Choices"}.get(status, "X")
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def error(status: int, kind: str, **extra: object) -> bytes:
    body = json.dumps({"error": kind, "message": f"test {kind}", **extra}).encode()
    return response(status, body, {"Content-Type": "application/json"})


@dataclass
class FakeServer:
    handler: Callable[[Request], Answer]
    read_bodies: bool = True
    requests: List[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                n = self.connections
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn, n), daemon=True).start()

    def _serve(self, conn: socket.socket, n: int) -> None:
        conn.settimeout(10)
        buf = b""
        index = 0
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
                req = Request(n, index, method, path, headers)
                length = int(headers.get("content-length", "0"))
                if self.read_bodies:
                    while len(buf) < length:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    req.body, buf = buf[:length], buf[length:]
                with self.lock:
                    self.requests.append(req)
                answer, close = self.handler(req)
                index += 1
                if answer is None:
                    return
                conn.sendall(answer)
                if close:
                    return


class ClientTransportTest(unittest.TestCase):
    def serve(self, handler: Callable[[Request], Answer], **kw: bool) -> Tuple[FakeServer, Client]:
        server = FakeServer(handler, **kw)
        self.addCleanup(server.close)
        client = Client(server.url, timeout=5.0)
        self.addCleanup(client.close)
        return server, client

    def test_connection_is_kept_alive(self) -> None:
        ok = response(200, b"v", {"X-Ringkv-Context": "ctx"})
        server, client = self.serve(lambda r: (ok, False))
        for _ in range(3):
            self.assertEqual(client.get("k").value, b"v")  # type: ignore[union-attr]
        self.assertEqual(server.connections, 1)

    def test_read_retried_once_on_dropped_connection(self) -> None:
        ok = response(200, b"v", {"X-Ringkv-Context": "ctx"})
        # The second request of the first connection is read, then dropped unanswered.
        server, client = self.serve(lambda r: (None if (r.conn, r.index) == (0, 1) else ok, False))
        client.get("k")
        self.assertEqual(client.get("k").value, b"v")  # type: ignore[union-attr]
        self.assertEqual([(r.conn, r.method) for r in server.requests], [(0, "GET"), (0, "GET"), (1, "GET")])

    def test_read_not_retried_twice(self) -> None:
        ok = response(200, b"v", {"X-Ringkv-Context": "ctx"})
        server, client = self.serve(lambda r: (None if r.conn > 0 or r.index > 0 else ok, False))
        client.get("k")
        with self.assertRaises(Unavailable) as cm:
            client.get("k")
        self.assertFalse(cm.exception.indeterminate)
        self.assertEqual(len(server.requests), 3)  # the first, then one retry

    def test_write_never_resent(self) -> None:
        ok = response(204, b"", {"X-Ringkv-Context": "ctx"})
        server, client = self.serve(lambda r: (None if (r.conn, r.index) == (0, 1) else ok, False))
        client.put("k", b"1")
        with self.assertRaises(Unavailable) as cm:
            client.put("k", b"2")
        self.assertTrue(cm.exception.indeterminate)
        self.assertEqual(cm.exception.kind, "connection")
        self.assertEqual([r.body for r in server.requests if r.method == "PUT"], [b"1", b"2"])
        # The client reconnects for the next call.
        self.assertEqual(client.put("k", b"3"), Context("ctx"))

    def test_idle_connection_closed_by_server_is_replaced(self) -> None:
        # The server hangs up after each answer (no "Connection: close"): the next
        # write goes out on a new connection, once.
        ok = response(204, b"", {"X-Ringkv-Context": "ctx"})
        server, client = self.serve(lambda r: (ok, True))
        client.put("k", b"1")
        import time

        time.sleep(0.2)  # the FIN arrives
        client.put("k", b"2")
        self.assertEqual([(r.conn, r.body) for r in server.requests], [(0, b"1"), (1, b"2")])

    def test_connection_refused_is_unavailable_and_determinate(self) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        with Client(f"http://127.0.0.1:{port}", timeout=2.0) as client:
            with self.assertRaises(Unavailable) as cm:
                client.put("k", b"v")
        self.assertFalse(cm.exception.indeterminate)
        self.assertEqual(cm.exception.kind, "connection")

    def test_early_413_on_large_body(self) -> None:
        # The server answers after the headers and hangs up without reading the body.
        server, client = self.serve(lambda r: (error(413, "too_large"), True), read_bodies=False)
        with self.assertRaises(TooLarge) as cm:
            client.put("k", b"x" * (8 * 1024 * 1024))
        self.assertEqual(cm.exception.status, 413)

    def test_key_and_member_encoding(self) -> None:
        server, client = self.serve(lambda r: (response(200, b'{"removed": true}'), False))
        key = bytes(range(256)) + b"/"
        self.assertTrue(client.set_remove(key, b"a/b&c=%", w=2, timeout_ms=500))
        path, query = server.requests[0].path.split("?")
        self.assertEqual(path, "/v1/set/" + urllib.parse.quote(key, safe=""))
        self.assertNotIn("/", path[len("/v1/set/"):])
        self.assertEqual(urllib.parse.unquote_to_bytes(path[len("/v1/set/"):]), key)
        self.assertEqual(query, "member=a%2Fb%26c%3D%25&w=2&timeout_ms=500")
        client.set_remove(".", b"")
        client.set_remove("ü", b"")
        self.assertEqual(server.requests[1].path, "/v1/set/%2E?member=")
        self.assertEqual(server.requests[2].path, "/v1/set/%C3%BC?member=")

    def test_headers(self) -> None:
        server = FakeServer(lambda r: (response(204, b"", {"X-Ringkv-Context": "new"}), False))
        self.addCleanup(server.close)
        with Client(server.url, token="s3cret") as client:
            self.assertEqual(client.put(b"k", b"v", context=Context("old")), Context("new"))
            client.delete(b"k")
        put, delete = server.requests
        self.assertEqual(put.headers["authorization"], "Bearer s3cret")
        self.assertEqual(put.headers["x-ringkv-context"], "old")
        self.assertEqual(put.headers["content-length"], "1")
        self.assertNotIn("x-ringkv-context", delete.headers)

    def test_decoding(self) -> None:
        siblings = json.dumps(
            {"context": "c2", "values": [base64.b64encode(v).decode() for v in (b"a", b"\x00")]}
        ).encode()
        answers = {
            "/v1/kv/one": response(200, b"\x00\xff", {"X-Ringkv-Context": "c1"}),
            "/v1/kv/two": response(300, siblings, {"X-Ringkv-Context": "c2"}),
            "/v1/kv/none": error(404, "not_found"),
            "/v1/counter/c": response(200, b'{"value": -7}'),
            "/v1/counter/none": error(404, "not_found"),
            "/v1/set/s": response(200, json.dumps({"members": ["AA==", "YQ=="]}).encode()),
            "/v1/set/none": error(404, "not_found"),
        }
        _, client = self.serve(lambda r: (answers[r.path], False))
        one = client.get("one")
        assert one is not None
        self.assertEqual((one.values, one.context, one.value), ([b"\x00\xff"], Context("c1"), b"\x00\xff"))
        two = client.get("two")
        assert two is not None
        self.assertTrue(two.has_siblings)
        self.assertEqual((two.values, two.context), ([b"a", b"\x00"], Context("c2")))
        with self.assertRaises(SiblingsError):
            two.value
        self.assertIsNone(client.get("none"))
        self.assertEqual(client.counter("c"), -7)
        self.assertIsNone(client.counter("none"))
        self.assertEqual(client.set_members("s"), [b"\x00", b"a"])
        self.assertIsNone(client.set_members("none"))

    def test_error_mapping(self) -> None:
        quorum = error(503, "quorum_not_reached", indeterminate=True, required=2, succeeded=1, attempted=3)
        answers = {
            "q": quorum,
            "400": error(400, "invalid_context"),
            "401": error(401, "unauthorized"),
            "403": error(403, "tls_required"),
            "409w": error(409, "wrong_kind"),
            "409s": error(409, "too_many_siblings"),
            "413": error(413, "too_large"),
            "500": error(500, "storage"),
            "503": error(503, "unavailable"),
            "502": response(502, b"bad gateway"),
        }
        _, client = self.serve(lambda r: (answers[r.path.rsplit("/", 1)[1]], False))
        with self.assertRaises(QuorumNotReached) as cm:
            client.put("q", b"v")
        e = cm.exception
        self.assertEqual((e.status, e.indeterminate, e.required, e.succeeded, e.attempted), (503, True, 2, 1, 3))
        for key, cls, kind in [
            ("400", InvalidRequest, "invalid_context"),
            ("401", Unauthorized, "unauthorized"),
            ("403", Forbidden, "tls_required"),
            ("409w", WrongKind, "wrong_kind"),
            ("409s", TooManySiblings, "too_many_siblings"),
            ("413", TooLarge, "too_large"),
            ("500", ServerError, "storage"),
            ("503", Unavailable, "unavailable"),
            ("502", ServerError, "http_502"),
        ]:
            with self.subTest(key=key):
                with self.assertRaises(cls) as cm2:
                    client.put(key, b"v")
                err: RingkvError = cm2.exception
                self.assertEqual(err.kind, kind)
                self.assertEqual(err.status, int(key[:3]))

    def test_argument_checks(self) -> None:
        client = Client("http://127.0.0.1:1")
        with self.assertRaises(ValueError):
            client.get(b"")
        with self.assertRaises(TypeError):
            client.put("k", "text")  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            client.get("k", r=True)
        with self.assertRaises(InvalidRequest):
            client.put("k", b"v", context=Context("a\r\nb"))
        with self.assertRaises(ValueError):
            client.counter_add("k", 2**63)
        with self.assertRaises(ValueError):
            Client("ftp://x")
        with self.assertRaises(ValueError):
            Client("http://x", ca_file="/ca.pem")


if __name__ == "__main__":
    unittest.main()
