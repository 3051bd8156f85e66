"""Shared test helpers: a blocking driver for the sans-I/O TLSConnection, ports, OpenSSL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tcpls.tls.connection import TLSConnection
from tcpls.tls.events import ConnectionFailed, Event, HandshakeCompleted

OPENSSL = shutil.which("openssl")


def need_openssl() -> str:
    """The openssl CLI, or skip the test with a clear reason."""
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed (make test installs it as root)")
    return OPENSSL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports that were all free at once (two
    separate ``free_port()`` calls may return the same port, or a neighbour in use)."""
    for _ in range(100):
        with contextlib.ExitStack() as held:
            first = held.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            start = int(first.getsockname()[1])
            try:
                for port in range(start + 1, start + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
            return start
    raise RuntimeError(f"no run of {count} free loopback ports")


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (in the running event loop) until ``condition()`` holds; AssertionError after
    ``timeout`` seconds. For state that arrives a moment after the call that caused it
    (the server's New Tokens, a server's handler starting)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still false after {timeout} s"
        await asyncio.sleep(0.005)


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started and still has (none when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def wait_port(
    port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pipe = proc.stdout or proc.stderr
            out = pipe.read() if pipe else b""
            raise RuntimeError(f"peer exited early ({proc.returncode}): {out[-2000:]!r}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def pull_tls(conn: TLSConnection) -> tuple[bytes, list[Event]]:
    """Everything ``conn`` has now: its application data (records read in order) and its
    events (each before the records that came after it)."""
    data = bytearray()
    events: list[Event] = []
    while True:
        while (ev := conn.next_event()) is not None:
            events.append(ev)
        record = conn.read_record()
        if record is None and not conn.has_events:
            return bytes(data), events
        if record is not None:
            data += record


def feed_tls(conn: TLSConnection, data: bytes) -> tuple[bytes, list[Event]]:
    """Feed ``data`` to ``conn`` as an I/O layer does (reads into ``get_buffer``), reading
    its records and events as they come; returns them as :func:`pull_tls` does."""
    received = bytearray()
    events: list[Event] = []
    view = memoryview(data)
    while view:
        target = conn.get_buffer()
        n = min(len(target), len(view))
        target[:n] = view[:n]
        view = view[n:]
        conn.buffer_updated(n)
        got, evs = pull_tls(conn)
        received += got
        events += evs
    return bytes(received), events


class SyncTLS:
    """Drives a TLSConnection over a blocking socket (tests only)."""

    def __init__(self, conn: TLSConnection, sock: socket.socket, timeout: float = 10.0) -> None:
        self.conn = conn
        self.sock = sock
        self.events: list[Event] = []
        self.received = bytearray()
        self.eof = False
        sock.settimeout(timeout)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self) -> None:
        """Receive once (blocking), process, flush."""
        self.flush()
        try:
            data = self.sock.recv(262144)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            self.conn.receive_eof()
            got, events = pull_tls(self.conn)
        else:
            got, events = feed_tls(self.conn, data)
        self.received += got
        self.events += events
        self.flush()

    def _drain_events(self) -> None:
        got, events = pull_tls(self.conn)
        self.received += got
        self.events += events

    def failed(self) -> ConnectionFailed | None:
        for ev in self.events:
            if isinstance(ev, ConnectionFailed):
                return ev
        return None

    def handshake(self) -> HandshakeCompleted:
        if self.conn.is_client:
            self.conn.start()
        while True:
            self._drain_events()
            for ev in self.events:
                if isinstance(ev, HandshakeCompleted):
                    self.flush()
                    return ev
                if isinstance(ev, ConnectionFailed):
                    self.flush()
                    raise ev.error
            if self.eof:
                raise ConnectionError("EOF during handshake")
            self.pump()

    def send(self, data: bytes) -> None:
        self.conn.send_data(data)
        self.flush()

    def recv_until(self, predicate: object, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        assert callable(predicate)
        while not predicate(bytes(self.received)):
            if self.eof or self.failed() or time.monotonic() > deadline:
                raise AssertionError(
                    f"condition not met; received {bytes(self.received)[-200:]!r}, "
                    f"events {self.events}"
                )
            self.pump()
        return bytes(self.received)


@contextlib.contextmanager
def openssl_server(
    args: Sequence[str], *, port: int | None = None, cwd: str | os.PathLike[str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run ``openssl s_server`` with ``args``; yield (process, port)."""
    exe = need_openssl()
    port = port or free_port()
    proc = subprocess.Popen(
        [exe, "s_server", "-accept", str(port), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
    )
    try:
        wait_port(port, proc=proc)
        yield proc, port
    finally:
        proc.kill()
        proc.wait()


def path_str(p: Path) -> str:
    return os.fspath(p)


class ThreadServer:
    """A tcpls server running in a background thread with its own event loop."""

    def __init__(self, config: object, handler: object = None, **serve_kwargs: object) -> None:
        import asyncio
        import threading

        from tcpls.apps.echo import echo_handler

        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._handler = handler or echo_handler
        self._config = config
        self._kwargs = serve_kwargs
        self.server: object = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("server did not start")
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        import asyncio

        import tcpls

        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            try:
                self.server = await tcpls.serve(
                    self._handler, "127.0.0.1", 0, config=self._config, **self._kwargs
                )
            except BaseException as exc:  # reported to the test thread
                self.error = exc
            finally:
                self._ready.set()

        self._loop.run_until_complete(start())
        if self.error is None:
            self._loop.run_forever()

    @property
    def port(self) -> int:
        return self.server.port  # type: ignore[attr-defined,no-any-return]

    def call(self, fn: object) -> object:
        """Run ``fn()`` (a coroutine function) on the server loop and return its result."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(30)  # type: ignore[operator]

    def stop(self) -> None:
        async def shutdown() -> None:
            self.server.close()  # type: ignore[attr-defined]
            await self.server.wait_closed()  # type: ignore[attr-defined]

        if self.server is not None:
            self.call(shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> ThreadServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_until_eof(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the peer sends until it closes (fails the test on a hang)."""
    sock.settimeout(timeout)
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)
