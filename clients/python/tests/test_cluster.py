"""The Python client against a real 3-node ringkv cluster.

Needs ``RINGKV_BIN``: the path of a ``ringkv`` binary with the HTTP data API
(``cargo test`` sets it from tests/python_client.rs). Without it the module is
skipped. Set ``RINGKV_KEEP_TEST_DIR=1`` to keep the nodes' directories and logs.

One cluster serves the whole module; the quorum test stops two of its nodes, so
it runs last (unittest orders classes by name: ``Test9QuorumLast`` sorts after
``Test1Data``). ``Test5SecureNode`` runs a node of its own (auth file and TLS).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ringkv import (  # noqa: E402
    Client,
    Conflict,
    Context,
    Forbidden,
    InvalidRequest,
    QuorumNotReached,
    RingkvError,
    SiblingsError,
    TooLarge,
    Unauthorized,
    Unavailable,
    WrongKind,
)

BIN = os.environ.get("RINGKV_BIN", "")
if not BIN:
    raise unittest.SkipTest(
        "RINGKV_BIN is not set: point it at a ringkv binary to run the cluster tests "
        "(cargo test --test python_client does)"
    )

#: Bound on starting the cluster (readiness, then every node seeing 3 alive members).
START_LIMIT = 60.0
#: Bound on a node's exit after SIGTERM, before SIGKILL.
STOP_LIMIT = 10.0
#: Poll period of the waits.
POLL = 0.2

_handed_out: set = set()


def _free(port: int, udp: bool) -> bool:
    """Whether `port` on 127.0.0.1 is free for TCP (and UDP, when asked)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", port))
            if udp:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False


def free_port(udp: bool) -> int:
    """A port free on 127.0.0.1 (TCP, and UDP if `udp`), never handed out before here."""
    for _ in range(500):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out and _free(port, udp):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port in 500 tries")


def _child_env() -> Dict[str, str]:
    # serve reads RINGKV_* variables (seeds, listen addresses...): none of the
    # caller's may leak into the test's nodes.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGKV_")}
    env["RUST_LOG"] = "info"
    return env


def _die_with_parent() -> None:
    """In the child: SIGKILL when this test process dies (Linux), so no node outlives it."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:
            pass


class Node:
    """One `ringkv serve` process."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.log_path = self.dir / "serve.log"
        self.port = free_port(udp=True)  # --listen: RPC on TCP, gossip on UDP
        self.http_port = free_port(udp=False)
        self.proc: Optional[subprocess.Popen] = None

    @property
    def listen(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, extra: List[str]) -> None:
        """`ringkv serve` on this node's directory and ports, with `extra` flags."""
        args = [
            BIN,
            "serve",
            "--data-dir",
            str(self.dir / "data"),
            "--listen",
            self.listen,
            "--http-listen",
            f"127.0.0.1:{self.http_port}",
            "--shutdown-delay",
            "0s",
            *extra,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                preexec_fn=_die_with_parent,
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> Optional[int]:
        """SIGTERM by PID, a bounded wait, then SIGKILL; the exit code (None if killed)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        try:
            os.kill(proc.pid, signal.SIGTERM)
            return proc.wait(timeout=STOP_LIMIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_LIMIT)
            return None
        except ProcessLookupError:
            return proc.wait(timeout=STOP_LIMIT)

    def kill(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            try:
                self.proc.wait(timeout=STOP_LIMIT)
            except subprocess.TimeoutExpired:
                pass

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class Cluster:
    """Three nodes sharing a secret, n2 and n3 seeded with n1."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="ringkv-pyclient-")
        self.root = Path(self.tmp)
        self.secret_file = self.root / "secret"
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("python client test cluster secret, 40+ bytes\n")
        os.chmod(self.secret_file, 0o600)
        self.nodes: List[Node] = []
        #: Set once a test stops nodes on purpose.
        self.degraded = False
        self.closed = False

    def start(self) -> None:
        """Starts the nodes and waits (bounded) for a formed cluster; on a lost port
        race (another process took a port), tries again with new ports."""
        for attempt in range(1, 4):
            base = self.root / f"try{attempt}"
            self.nodes = [Node(f"n{i}", base) for i in (1, 2, 3)]
            for node in self.nodes:
                extra = [
                    "--node-id",
                    node.name,
                    "--cluster-secret-file",
                    str(self.secret_file),
                    "--probe-ms",
                    "200",
                ]
                if node is not self.nodes[0]:
                    extra += ["--seed", self.nodes[0].listen]
                node.start(extra)
            try:
                self._wait_formed(time.monotonic() + START_LIMIT)
                return
            except RuntimeError:
                race = any(
                    not n.running() and "Address already in use" in n.log_tail(200)
                    for n in self.nodes
                )
                self.stop_all()
                if not race or attempt == 3:
                    raise

    def _wait_formed(self, deadline: float) -> None:
        clients = [Client(n.url, timeout=2.0) for n in self.nodes]
        try:
            pending = list(range(len(self.nodes)))
            while pending:  # readiness: /readyz answers 200
                for i in list(pending):
                    self._check_alive(i)
                    try:
                        if clients[i].ready():
                            pending.remove(i)
                    except RingkvError:
                        pass
                if pending:
                    self._check_deadline(deadline, f"/readyz of {[f'n{i + 1}' for i in pending]}")
                    time.sleep(POLL)
            last: List[Any] = []
            while True:  # formed: every node sees 3 members alive, one ring epoch
                last = []
                for i, c in enumerate(clients):
                    self._check_alive(i)
                    try:
                        h = c.health()
                        last.append(
                            (h.get("members"), h.get("members_alive"), h.get("ring_epoch"))
                        )
                    except RingkvError as e:
                        last.append(str(e))
                epochs = {x[2] for x in last if isinstance(x, tuple)}
                if (
                    all(isinstance(x, tuple) and x[0] == 3 and x[1] == 3 for x in last)
                    and len(epochs) == 1
                    and epochs != {""}
                ):
                    return
                self._check_deadline(
                    deadline, f"members_alive == 3 on every node (members, alive, epoch): {last}"
                )
                time.sleep(POLL)
        finally:
            for c in clients:
                c.close()

    def _check_alive(self, i: int) -> None:
        n = self.nodes[i]
        if not n.running():
            raise RuntimeError(
                f"{n.name} exited ({n.proc.returncode if n.proc else '?'}):\n{n.log_tail()}"
            )

    def _check_deadline(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n.name} ---\n{n.log_tail()}" for n in self.nodes)
            raise RuntimeError(f"timed out after {START_LIMIT:.0f} s waiting for {what}\n{logs}")

    def stop_all(self) -> None:
        for n in self.nodes:
            try:
                n.stop()
            except Exception:
                n.kill()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stop_all()
        if os.environ.get("RINGKV_KEEP_TEST_DIR"):
            print(f"\nringkv test directory kept: {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def kill_all(self) -> None:
        """Last resort at exit (an interrupted run)."""
        for n in self.nodes:
            n.kill()


CLUSTER: Optional[Cluster] = None


def setUpModule() -> None:
    global CLUSTER
    if not (os.path.isfile(BIN) and os.access(BIN, os.X_OK)):
        raise RuntimeError(f"RINGKV_BIN={BIN!r} is not an executable file")
    CLUSTER = Cluster()
    atexit.register(CLUSTER.kill_all)
    # Registered before anything starts: runs even if setUpModule fails below.
    unittest.addModuleCleanup(CLUSTER.close)
    started = time.monotonic()
    CLUSTER.start()
    print(f"\ncluster formed in {time.monotonic() - started:.1f} s", file=sys.stderr)


class _ClusterCase(unittest.TestCase):
    """A client per node (a, b, c on n1, n2, n3) and keys unique to the test."""

    def setUp(self) -> None:
        assert CLUSTER is not None
        if CLUSTER.degraded:
            self.skipTest("the cluster was already degraded by the quorum test")
        self.clients = [Client(n.url, timeout=15.0) for n in CLUSTER.nodes]
        for c in self.clients:
            self.addCleanup(c.close)

    def key(self, suffix: str = "") -> bytes:
        return f"{self.id()}{suffix}".encode()


class Test1Data(_ClusterCase):
    def test_binary_keys_and_values_round_trip(self) -> None:
        a, b, c = self.clients
        # Every byte, a "/" of its own, and an empty value.
        key = bytes(range(256)) + b"/then/" + self.key()
        ctx = a.put(key, b"")
        self.assertIsInstance(ctx, Context)
        got = b.get(key)
        self.assertIsNotNone(got)
        assert got is not None
        self.assertEqual(got.values, [b""])
        self.assertEqual(got.value, b"")
        self.assertFalse(got.has_siblings)
        self.assertIsInstance(got.context, Context)

        # Every byte in a value, read through the third node.
        value = bytes(range(256)) * 3 + b"\x00"
        key2 = b"\xff\x00/" + self.key()
        a.put(key2, value)
        read = c.get(key2)
        assert read is not None
        self.assertEqual(read.value, value)

        # "/" and a literal "%2F" in a key are different keys.
        slash, escaped = self.key("/x/y"), self.key("%2Fx%2Fy")
        a.put(slash, b"slash")
        b.put(escaped, b"escaped")
        self.assertEqual(c.get(slash).value, b"slash")  # type: ignore[union-attr]
        self.assertEqual(c.get(escaped).value, b"escaped")  # type: ignore[union-attr]

        # A str key is its UTF-8 bytes.
        text = f"ключ/ü {self.id()}?#&="
        b.put(text, b"utf8")
        self.assertEqual(a.get(text.encode("utf-8")).value, b"utf8")  # type: ignore[union-attr]

        # Dot segments are keys like any other.
        for dots in (".", ".."):
            a.put(dots, dots.encode())
            self.assertEqual(b.get(dots).value, dots.encode())  # type: ignore[union-attr]

        self.assertIsNone(c.get(self.key("/never-written")))

    def test_siblings_then_resolved_with_context(self) -> None:
        a, b, c = self.clients
        key = self.key()
        # Two blind writes through two nodes: concurrent, so siblings.
        a.put(key, b"one")
        b.put(key, b"two")
        read = a.get(key)
        assert read is not None
        self.assertTrue(read.has_siblings)
        self.assertEqual(sorted(read.values), [b"one", b"two"])
        with self.assertRaises(SiblingsError) as cm:
            read.value
        self.assertEqual(sorted(cm.exception.values), [b"one", b"two"])
        self.assertIsInstance(cm.exception, Conflict)

        # A write with the read's context supersedes both.
        b.put(key, b"merged", context=read.context)
        final = c.get(key)
        assert final is not None
        self.assertEqual(final.values, [b"merged"])
        self.assertEqual(final.value, b"merged")
        self.assertFalse(final.has_siblings)

    def test_delete_with_context(self) -> None:
        a, b, c = self.clients
        key = self.key()
        a.put(key, b"doomed")
        read = b.get(key)
        assert read is not None
        deleted = c.delete(key, context=read.context)
        self.assertIsInstance(deleted, Context)
        self.assertIsNone(a.get(key))
        self.assertIsNone(b.get(key))
        # The delete's context supersedes the delete.
        b.put(key, b"again", context=deleted)
        again = c.get(key)
        assert again is not None
        self.assertEqual(again.values, [b"again"])

    def test_counters(self) -> None:
        a, b, c = self.clients
        key = self.key()
        self.assertIsNone(c.counter(key))
        self.assertEqual(a.counter_add(key, 5), 5)
        b.counter_add(key, -2)
        self.assertEqual(c.counter(key), 3)

        register = self.key("/register")
        # w=3: every replica holds the register before the counter op (a replica
        # without it yet would take the add, see the report on the kind race).
        a.put(register, b"not a counter", w=3)
        with self.assertRaises(WrongKind) as cm:
            b.counter_add(register, 1)
        self.assertEqual((cm.exception.status, cm.exception.kind), (409, "wrong_kind"))
        self.assertIsInstance(cm.exception, Conflict)
        self.assertEqual(c.get(register).value, b"not a counter")  # type: ignore[union-attr]

    def test_sets(self) -> None:
        a, b, c = self.clients
        key = self.key()
        self.assertIsNone(c.set_members(key))
        a.set_add(key, b"a")
        b.set_add(key, b"b")
        self.assertEqual(c.set_members(key), [b"a", b"b"])
        self.assertTrue(c.set_remove(key, b"a"))
        self.assertEqual(a.set_members(key), [b"b"])
        self.assertFalse(b.set_remove(key, b"absent"))
        self.assertEqual(c.set_members(key), [b"b"])

        # A binary member travels in the body (add) and in the query (remove).
        odd = bytes([0, 0x2F, 0x25, 0x26, 0x3D, 0xFF])
        b.set_add(key, odd)
        self.assertEqual(a.set_members(key), sorted([b"b", odd]))
        self.assertTrue(a.set_remove(key, odd))
        self.assertEqual(c.set_members(key), [b"b"])

    def test_oversized_value_is_refused(self) -> None:
        a, b, _ = self.clients
        key = self.key()
        with self.assertRaises(TooLarge) as cm:
            a.put(key, b"\xab" * (5 * 1024 * 1024))
        self.assertEqual((cm.exception.status, cm.exception.kind), (413, "too_large"))
        self.assertIsNone(a.get(key))  # the same client goes on working
        self.assertIsNone(b.get(key))
        a.put(key, b"small")
        self.assertEqual(b.get(key).value, b"small")  # type: ignore[union-attr]

    def test_garbage_context_is_refused(self) -> None:
        a, b, c = self.clients
        key = self.key()
        a.put(key, b"kept")
        for garbage in ("garbage", "A" * 64, "not*base64!"):
            with self.subTest(context=garbage):
                with self.assertRaises(InvalidRequest) as cm:
                    b.put(key, b"replaced", context=Context(garbage))
                self.assertEqual(
                    (cm.exception.status, cm.exception.kind), (400, "invalid_context")
                )
        with self.assertRaises(InvalidRequest) as cm:
            b.delete(key, context=Context("garbage"))
        self.assertEqual(cm.exception.kind, "invalid_context")
        self.assertEqual(c.get(key).values, [b"kept"])  # type: ignore[union-attr]

    def test_invalid_options_are_refused(self) -> None:
        a, _, _ = self.clients
        key = self.key()
        for opts in ({"r": 0}, {"r": 4}, {"timeout_ms": 0}):
            with self.subTest(**opts):
                with self.assertRaises(InvalidRequest) as cm:
                    a.get(key, **opts)
                self.assertEqual(
                    (cm.exception.status, cm.exception.kind), (400, "invalid_options")
                )


def _ringkv(*args: str) -> str:
    """Runs a ringkv command (bounded); its stdout."""
    out = subprocess.run(
        [BIN, *args], capture_output=True, text=True, timeout=30, env=_child_env()
    )
    if out.returncode != 0:
        raise RuntimeError(f"ringkv {' '.join(args)} failed ({out.returncode}): {out.stderr}")
    return out.stdout


class Test5SecureNode(unittest.TestCase):
    """A node of its own with an auth file and TLS: tokens, roles, https with a CA file."""

    node: Node
    root: Path
    tokens: Dict[str, str]

    @classmethod
    def setUpClass(cls) -> None:
        cls.root = Path(tempfile.mkdtemp(prefix="ringkv-pyclient-tls-"))
        # Cleanups run last-in first-out: the node stops before its directory goes.
        cls.addClassCleanup(shutil.rmtree, cls.root, True)
        _ringkv("certs", "init", "--dir", str(cls.root))
        _ringkv("certs", "node", "--dir", str(cls.root), "n1")
        cls.tokens = {}
        auth_lines = []
        for role in ("read", "write"):
            token, line = _ringkv("token", "create", "--role", role).splitlines()[:2]
            cls.tokens[role] = token.strip()
            auth_lines.append(line)
        auth = cls.root / "auth"
        auth.write_text("\n".join(auth_lines) + "\n")
        os.chmod(auth, 0o600)
        cls.node = Node("n1", cls.root)
        cls.addClassCleanup(cls.node.stop)
        atexit.register(cls.node.kill)
        cls.node.start(
            [
                "--auth-file",
                str(auth),
                "--tls-cert",
                str(cls.root / "n1.crt"),
                "--tls-key",
                str(cls.root / "n1.key"),
                "--tls-ca",
                str(cls.root / "ca.crt"),
            ]
        )
        deadline = time.monotonic() + START_LIMIT
        with Client(cls.node.url, timeout=2.0) as probe:  # /readyz stays plaintext
            while True:
                if not cls.node.running():
                    raise RuntimeError(f"the TLS node exited:\n{cls.node.log_tail()}")
                try:
                    if probe.ready():
                        return
                except RingkvError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the TLS node is not ready:\n{cls.node.log_tail()}")
                time.sleep(POLL)

    def client(self, role: Optional[str], https: bool = True) -> Client:
        url = self.node.url if not https else self.node.url.replace("http://", "https://")
        c = Client(
            url,
            token=self.tokens[role] if role else None,
            ca_file=str(self.root / "ca.crt") if https else None,
            timeout=15.0,
        )
        self.addCleanup(c.close)
        return c

    def test_tokens_and_roles(self) -> None:
        writer, reader = self.client("write"), self.client("read")
        writer.put("secure", b"v")
        self.assertEqual(reader.get("secure").value, b"v")  # type: ignore[union-attr]
        with self.assertRaises(Unauthorized) as cm:
            self.client(None).get("secure")
        self.assertEqual((cm.exception.status, cm.exception.kind), (401, "unauthorized"))
        with self.assertRaises(Forbidden) as cm2:
            reader.put("secure", b"w")
        self.assertEqual((cm2.exception.status, cm2.exception.kind), (403, "forbidden"))
        with self.assertRaises(Forbidden) as cm2:
            reader.counter_add("secure-counter", 1)
        self.assertEqual(writer.counter_add("secure-counter", 2), 2)
        self.assertEqual(reader.counter("secure-counter"), 2)

    def test_plaintext_data_refused(self) -> None:
        with self.assertRaises(Forbidden) as cm:
            self.client("write", https=False).get("secure")
        self.assertEqual((cm.exception.status, cm.exception.kind), (403, "tls_required"))

    def test_oversized_value_over_tls(self) -> None:
        writer = self.client("write")
        with self.assertRaises(TooLarge):
            writer.put("secure-big", b"\x01" * (5 * 1024 * 1024))
        self.assertIsNone(writer.get("secure-big"))
        writer.put("secure-big", b"small")
        self.assertEqual(writer.get("secure-big").value, b"small")  # type: ignore[union-attr]


class Test9QuorumLast(_ClusterCase):
    """Stops n2 and n3: must run after every other test of the module."""

    def test_quorum_not_reached_with_two_nodes_down(self) -> None:
        assert CLUSTER is not None
        n1, n2, n3 = CLUSTER.nodes
        key = self.key()
        a = Client(n1.url, timeout=30.0)
        self.addCleanup(a.close)
        a.put(key, b"before")

        CLUSTER.degraded = True
        for n in (n2, n3):
            code = n.stop()
            self.assertFalse(n.running(), f"{n.name} still runs")
            self.assertIsNotNone(code, f"{n.name} did not exit in {STOP_LIMIT} s of SIGTERM")

        started = time.monotonic()
        with self.assertRaises(QuorumNotReached) as cm:
            a.put(key, b"after")  # default W=2
        e = cm.exception
        print(
            f"\nput with 2 nodes down: {e} after {time.monotonic() - started:.1f} s",
            file=sys.stderr,
        )
        self.assertIsInstance(e, Unavailable)
        self.assertEqual((e.status, e.kind), (503, "quorum_not_reached"))
        self.assertEqual(e.required, 2)
        self.assertLess(e.succeeded, e.required)
        self.assertGreaterEqual(e.attempted, e.succeeded)
        self.assertIsInstance(e.indeterminate, bool)
        if e.succeeded > 0:
            self.assertTrue(e.indeterminate, "a replica took the write: its outcome is open")

        with self.assertRaises(QuorumNotReached) as cm:
            a.get(key, r=2)
        e = cm.exception
        self.assertEqual((e.status, e.kind), (503, "quorum_not_reached"))
        self.assertEqual(e.required, 2)
        self.assertLess(e.succeeded, 2)
        self.assertGreaterEqual(e.attempted, e.succeeded)

        # One replica is enough at r=1: what n1 holds (the failed write may be there).
        one = a.get(key, r=1)
        assert one is not None
        self.assertTrue(set(one.values) <= {b"before", b"after"}, one.values)


if __name__ == "__main__":
    unittest.main()
