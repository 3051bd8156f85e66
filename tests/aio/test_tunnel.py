"""``tcpls tunnel``: TCP connections carried over one TCPLS session (tcpls.apps.tunnel).

The command-line tests run ``tcpls tunnel server`` and ``tcpls tunnel client`` as
processes, with ``python -m http.server`` and curl (through ``--listen`` and through
``--socks``), or small TCP servers in threads of the test as destinations. The
protocol tests (hostile streams, limits) run a :class:`TunnelServer` in the test's own
event loop and speak to it over raw streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tcpls
from tcpls.apps.tunnel import (
    HELLO,
    HELLO_OK,
    AllowList,
    Destination,
    NotATunnelServer,
    TunnelRefused,
    TunnelServer,
    canonical_host,
    connect_request,
    parse_answer,
    parse_destination,
    socks,
)
from tcpls.apps.tunnel import protocol as tunnel_protocol
from tcpls.apps.tunnel import server as tunnel_server
from tcpls.devcert import DevPKI
from tests.aio.cli_util import TCPLS
from tests.helpers import free_port, free_ports, wait_port

CURL = shutil.which("curl")


def need_curl() -> str:
    if CURL is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    return CURL


# ----------------------------------------------------------------- processes


class Proc:
    """A process whose standard error lines are collected as they come."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()

    def wait_line(self, text: str, timeout: float = 15) -> str:
        """The first line containing ``text`` (waiting for it)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._thread.is_alive()):
                    raise AssertionError(f"no line with {text!r}; stderr: {self.lines}")
                self._changed.wait(min(left, 0.2))

    def stop(self) -> int:
        """Interrupt the process as a user would; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._thread.join(5)
        tracebacks = [i for i, line in enumerate(self.lines) if "Traceback" in line]
        assert not tracebacks, "\n".join(self.lines[max(0, tracebacks[0] - 3) :][:40])
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._thread.join(5)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.kill()


def start_server(
    procs: list[Proc], pki: DevPKI, *allow: str, port: int = 0, extra: tuple[str, ...] = ()
) -> int:
    """``tcpls tunnel server`` allowing ``allow``, listening when this returns; its port."""
    port = port or free_port()
    argv = [*TCPLS, "tunnel", "server", "--cert", str(pki.cert_file), "--key", str(pki.key_file),
            "--host", "127.0.0.1", "--port", str(port), *extra]  # fmt: skip
    for entry in allow:
        argv += ["--allow", entry]
    proc = Proc(argv)
    procs.append(proc)
    proc.wait_line("serving on")
    return port


def start_client(
    procs: list[Proc], pki: DevPKI, server_port: int, *args: str, ready: str = "through"
) -> Proc:
    """``tcpls tunnel client`` to the server on ``server_port``, listening when it returns."""
    argv = [*TCPLS, "tunnel", "client", "127.0.0.1", str(server_port), "--cafile",
            str(pki.ca_file), "--reconnect-timeout", "0", *args]  # fmt: skip
    proc = Proc(argv)
    procs.append(proc)
    if ready:
        proc.wait_line(ready)
    return proc


@pytest.fixture(scope="module")
def website(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, str]]:
    """``python -m http.server`` serving ``file.bin`` (8 MiB): port, directory, sha256."""
    root = tmp_path_factory.mktemp("www")
    data = os.urandom(8 << 20)
    (root / "file.bin").write_bytes(data)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(port)
        yield port, root, hashlib.sha256(data).hexdigest()
    finally:
        proc.kill()
        proc.wait()


def curl(*args: str, output: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [need_curl(), "-sS", "--max-time", "60", "-o", str(output), *args],
        capture_output=True,
        timeout=90,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tunnel_connections(port: int) -> int:
    """Established TCP connections to the local ``port`` (``ss``)."""
    out = subprocess.run(
        ["ss", "-t", "-n", "-H", "state", "established", f"( dport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len(out.splitlines())


# ----------------------------------------------------------------- TCP peers in threads


class Peer:
    """A TCP server on 127.0.0.1 running ``handle(conn, peer)`` for each connection in a
    thread; ``peer`` collects what the handler wants the test to see."""

    def __init__(self, handle: Callable[[socket.socket, Peer], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.handle = handle
        self.events: list[str] = []
        self.received = bytearray()
        self.done = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.handle(conn, self)
            except OSError as exc:
                self.events.append(f"error {exc.__class__.__name__}")
            finally:
                self.done.set()

    def close(self) -> None:
        self.listener.close()


def read_all(conn: socket.socket, into: bytearray) -> str:
    """Read until EOF or an error: ``"eof"``, or the error's class name."""
    try:
        while chunk := conn.recv(1 << 16):
            into += chunk
    except OSError as exc:
        return exc.__class__.__name__
    return "eof"


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for peer in made:
        peer.close()


def local(port: int, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


# ================================================================= curl through the tunnel


def test_curl_through_listen_and_socks(
    procs: list[Proc], pki: DevPKI, website: tuple[int, Path, str], tmp_path: Path
) -> None:
    """curl downloads intact through --listen, and through --socks with a name and with
    an address; the connections (four at once, too) share one session, with its join."""
    web, _, digest = website
    server = start_server(procs, pki, f"127.0.0.1:{web}", f"localhost:{web}")
    listen = free_ports(2)
    proxy = listen + 1
    client = start_client(
        procs, pki, server, "--listen", str(listen), "--to", f"127.0.0.1:{web}",
        "--socks", f"127.0.0.1:{proxy}", "--join", f"127.0.0.1:{server}",
    )  # fmt: skip
    client.wait_line("SOCKS5 proxy on")
    url = f"http://127.0.0.1:{listen}/file.bin"
    ways = {
        "listen": [url],
        "socks5h": ["--socks5-hostname", f"127.0.0.1:{proxy}", f"http://localhost:{web}/file.bin"],
        "socks5": ["--socks5", f"127.0.0.1:{proxy}", f"http://127.0.0.1:{web}/file.bin"],
    }
    for name, args in ways.items():
        out = tmp_path / f"{name}.bin"
        done = curl(*args, output=out)
        assert done.returncode == 0, (name, done.stderr)
        assert sha256(out) == digest, name
    parallel = [
        subprocess.Popen([need_curl(), "-sS", "-o", str(tmp_path / f"p{i}.bin"), url])
        for i in range(4)
    ]
    assert [p.wait(60) for p in parallel] == [0] * 4
    assert all(sha256(tmp_path / f"p{i}.bin") == digest for i in range(4))
    assert tunnel_connections(server) == 2  # one session (and its join) all along
    assert client.proc.poll() is None
    assert client.lines[2:] == [], client.lines  # nothing said but the two banners
    assert client.stop() == 0


def test_refused_destination_is_one_line_and_the_client_goes_on(
    procs: list[Proc], pki: DevPKI, website: tuple[int, Path, str], tmp_path: Path
) -> None:
    web, _, digest = website
    server = start_server(procs, pki, f"127.0.0.1:{web}")
    listen = free_ports(2)
    proxy = listen + 1
    client = start_client(
        procs, pki, server, "--listen", str(listen), "--to", "127.0.0.1:22",
        "--socks", str(proxy),
    )  # fmt: skip
    client.wait_line("SOCKS5 proxy on")
    started = time.monotonic()
    with local(listen) as sock:
        sock.sendall(b"SSH-2.0-test\r\n")
        assert sock.recv(100) == b""  # closed, nothing from the server
    assert time.monotonic() - started < 5
    line = client.wait_line("refused")
    assert line == (
        "tcpls: tunnel to 127.0.0.1:22 refused by the server: "
        "127.0.0.1:22 is not on the server's allow list"
    )
    # SOCKS: curl hears "not allowed by ruleset"; one more line
    done = curl(
        "--socks5-hostname", f"127.0.0.1:{proxy}", "http://localhost:9/", output=tmp_path / "x"
    )
    assert done.returncode == 97, done.stderr
    assert b"(2)" in done.stderr  # reply code 2: connection not allowed by ruleset
    client.wait_line("localhost:9 is not on")
    assert len(client.lines) == 4, client.lines  # two banners, two refusals
    # the client goes on
    assert client.proc.poll() is None
    out = tmp_path / "ok.bin"
    done = curl("--socks5", f"127.0.0.1:{proxy}", f"http://127.0.0.1:{web}/file.bin", output=out)
    assert done.returncode == 0 and sha256(out) == digest
    assert client.stop() == 0


@pytest.mark.parametrize(
    ("destination", "words"),
    [
        ("127.0.0.1:{free}", "127.0.0.1:{free} refused the connection"),
        ("nothing.invalid:80", "cannot resolve nothing.invalid"),
    ],
)
def test_dead_destination_closes_cleanly(
    procs: list[Proc], pki: DevPKI, destination: str, words: str
) -> None:
    free = free_ports(2)
    destination, words = destination.format(free=free), words.format(free=free)
    server = start_server(procs, pki, destination)
    listen = free + 1
    client = start_client(procs, pki, server, "--listen", str(listen), "--to", destination)
    started = time.monotonic()
    with local(listen) as sock:
        sock.sendall(b"hello")
        assert sock.recv(100) == b""
    assert time.monotonic() - started < 8
    assert words in client.wait_line("refused by the server")
    assert client.proc.poll() is None
    assert client.stop() == 0


def test_connect_timeout_is_bounded(procs: list[Proc], pki: DevPKI) -> None:
    """A destination that never answers the SYN: refused after --connect-timeout."""
    # a listener with a full backlog that never accepts: further SYNs go unanswered
    blocked = socket.socket()
    blocked.bind(("127.0.0.1", 0))
    blocked.listen(0)
    port = blocked.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        server = start_server(procs, pki, f"127.0.0.1:{port}", extra=("--connect-timeout", "1"))
        listen = free_port()
        client = start_client(
            procs, pki, server, "--listen", str(listen), "--to", f"127.0.0.1:{port}"
        )
        started = time.monotonic()
        with local(listen) as sock:
            assert sock.recv(100) == b""
        assert time.monotonic() - started < 6
        line = client.wait_line("refused by the server")
        assert "timed out after 1 s" in line, line
        assert client.stop() == 0
    finally:
        for s in [blocked, *fillers]:
            s.close()


# ================================================================= ends of connections


def test_half_close_both_ways(procs: list[Proc], pki: DevPKI, peers: list[Peer]) -> None:
    """A client that sends then shuts down its write side gets the whole answer; a server
    that sends then shuts down its write side still gets what the client sends after."""

    def digest_after_eof(conn: socket.socket, peer: Peer) -> None:
        data = bytearray()
        peer.events.append(read_all(conn, data))
        conn.sendall(hashlib.sha256(data).hexdigest().encode() + b" %d" % len(data))

    def greet_then_listen(conn: socket.socket, peer: Peer) -> None:
        conn.sendall(b"G" * 1_000_000)
        conn.shutdown(socket.SHUT_WR)
        peer.events.append(read_all(conn, peer.received))

    summer, greeter = Peer(digest_after_eof), Peer(greet_then_listen)
    peers += [summer, greeter]
    server = start_server(procs, pki, f"127.0.0.1:{summer.port}", f"127.0.0.1:{greeter.port}")
    one = free_ports(2)
    two = one + 1
    start_client(procs, pki, server, "--listen", str(one), "--to", f"127.0.0.1:{summer.port}")
    start_client(procs, pki, server, "--listen", str(two), "--to", f"127.0.0.1:{greeter.port}")

    upload = os.urandom(3_000_000)
    with local(one) as sock:
        sock.sendall(upload)
        sock.shutdown(socket.SHUT_WR)
        answer = bytearray()
        assert read_all(sock, answer) == "eof"
    assert bytes(answer) == hashlib.sha256(upload).hexdigest().encode() + b" 3000000"
    assert summer.events == ["eof"]

    with local(two) as sock:
        greeting = bytearray()
        assert read_all(sock, greeting) == "eof"  # the server's direction ended ...
        assert greeting == b"G" * 1_000_000
        later = os.urandom(500_000)
        sock.sendall(later)  # ... and ours still goes
        sock.shutdown(socket.SHUT_WR)
        assert greeter.done.wait(10)
    assert greeter.events == ["eof"]
    assert bytes(greeter.received) == later


def test_destination_reset_closes_the_local_connection(
    procs: list[Proc], pki: DevPKI, peers: list[Peer]
) -> None:
    """A destination that resets: the local connection gets the bytes sent before, then
    its end, and is closed for writing too (STOP), so a client still sending stops."""

    def send_then_reset(conn: socket.socket, peer: Peer) -> None:
        conn.sendall(b"x" * 100_000)
        time.sleep(0.3)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    peer = Peer(send_then_reset)
    peers.append(peer)
    server = start_server(procs, pki, f"127.0.0.1:{peer.port}")
    listen = free_port()
    start_client(procs, pki, server, "--listen", str(listen), "--to", f"127.0.0.1:{peer.port}")
    with local(listen) as sock:
        got = bytearray()
        assert read_all(sock, got) == "eof"
        assert got == b"x" * 100_000
        deadline = time.monotonic() + 5
        with pytest.raises(OSError):  # BrokenPipe or ConnectionReset: it is closed
            while time.monotonic() < deadline:
                sock.sendall(b"still talking" * 1000)
                time.sleep(0.05)


def test_local_reset_closes_the_destination(
    procs: list[Proc], pki: DevPKI, peers: list[Peer]
) -> None:
    """A local application that goes away mid-download: the destination, which would send
    forever, sees its connection closed within seconds (STOP)."""

    def send_forever(conn: socket.socket, peer: Peer) -> None:
        try:
            while True:
                conn.sendall(b"y" * 65536)
        except OSError as exc:
            peer.events.append(exc.__class__.__name__)
            raise

    peer = Peer(send_forever)
    peers.append(peer)
    server = start_server(procs, pki, f"127.0.0.1:{peer.port}")
    listen = free_port()
    start_client(procs, pki, server, "--listen", str(listen), "--to", f"127.0.0.1:{peer.port}")
    sock = local(listen)
    got = 0
    while got < 2_000_000:
        got += len(sock.recv(1 << 16))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset
    assert peer.done.wait(10), "the destination still sends"
    assert peer.events and peer.events[0] in ("BrokenPipeError", "ConnectionResetError")


def test_shutdown_with_open_tunnels_resets_them(
    procs: list[Proc], pki: DevPKI, peers: list[Peer]
) -> None:
    """A tunnel client that stops while it carries a connection: the destination sees a
    reset, not an end of file that would look like a complete upload."""

    def listen_only(conn: socket.socket, peer: Peer) -> None:
        peer.events.append(read_all(conn, peer.received))

    peer = Peer(listen_only)
    peers.append(peer)
    server = start_server(procs, pki, f"127.0.0.1:{peer.port}")
    listen = free_port()
    client = start_client(
        procs, pki, server, "--listen", str(listen), "--to", f"127.0.0.1:{peer.port}"
    )
    with local(listen) as sock:
        sock.sendall(b"half an upload")
        deadline = time.monotonic() + 5
        while len(peer.received) < 14 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.stop() == 0
        assert peer.done.wait(10)
    assert peer.events == ["ConnectionResetError"]


# ================================================================= sessions and limits


def test_not_a_tunnel_server(procs: list[Proc], pki: DevPKI) -> None:
    from tests.aio.cli_util import start_server as start_tcpls_server

    echo, port = start_tcpls_server(pki, "--echo")
    try:
        done = subprocess.run(
            [*TCPLS, "tunnel", "client", "127.0.0.1", str(port), "--cafile", str(pki.ca_file),
             "--listen", str(free_port()), "--to", "127.0.0.1:80"],
            capture_output=True, timeout=30,
        )  # fmt: skip
    finally:
        echo.kill()
        echo.wait()
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == [
        f"tcpls: 127.0.0.1:{port} is not a tcpls tunnel server "
        "(it sent the hello back, like an echo server)"
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["client", "127.0.0.1", "1", "--listen", "8080"],
        ["client", "127.0.0.1", "1", "--to", "127.0.0.1:80"],
        ["client", "127.0.0.1", "1"],
        ["client", "127.0.0.1", "1", "--listen", "1", "--to", "::1:80"],
        ["server", "--cert", "c", "--key", "k"],
        ["server", "--cert", "c", "--key", "k", "--allow", "host"],
        ["server", "--cert", "c", "--key", "k", "--allow", "127.1:80"],
    ],
)
def test_usage_errors(args: list[str]) -> None:
    done = subprocess.run([*TCPLS, "tunnel", *args], capture_output=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert b"Traceback" not in done.stderr


def test_session_opened_again_after_it_failed(
    procs: list[Proc], pki: DevPKI, website: tuple[int, Path, str], tmp_path: Path
) -> None:
    """The tunnel server dies and comes back: the next connection gets a new session.
    The --session ticket is saved as sessions end, and a new client resumes with it."""
    web, _, digest = website
    ticket = tmp_path / "s.ticket"
    server = start_server(procs, pki, f"127.0.0.1:{web}")
    listen = free_port()
    args = ("--listen", str(listen), "--to", f"127.0.0.1:{web}", "--session", str(ticket))
    client = start_client(procs, pki, server, *args, "--debug")
    assert client.wait_line("tunnel session opened").endswith("(1 so far)")
    assert ticket.exists()
    out = tmp_path / "one.bin"
    assert curl(f"http://127.0.0.1:{listen}/file.bin", output=out).returncode == 0
    procs[0].kill()  # the server dies
    client.wait_line("the tunnel session ended")
    start_server(procs, pki, f"127.0.0.1:{web}", port=server)
    out = tmp_path / "two.bin"
    done = curl(f"http://127.0.0.1:{listen}/file.bin", output=out)
    assert done.returncode == 0, (done.stderr, client.lines[-20:])
    assert sha256(out) == digest
    # a new server knows none of the old tickets: a full handshake
    assert client.wait_line("tunnel session opened (2").endswith("(2 so far)")
    assert client.stop() == 0  # saves the second session's ticket
    again = start_client(procs, pki, server, *args, "--debug")
    assert again.wait_line("tunnel session opened").endswith("(1 so far, resumed)")
    out = tmp_path / "three.bin"
    assert curl(f"http://127.0.0.1:{listen}/file.bin", output=out).returncode == 0
    assert sha256(out) == digest
    assert again.stop() == 0


def test_client_limit(procs: list[Proc], pki: DevPKI, peers: list[Peer]) -> None:
    def echo(conn: socket.socket, peer: Peer) -> None:
        while data := conn.recv(1024):
            conn.sendall(data)

    peer = Peer(echo)
    peers.append(peer)
    server = start_server(procs, pki, f"127.0.0.1:{peer.port}")
    listen = free_port()
    client = start_client(
        procs, pki, server, "--listen", str(listen), "--to", f"127.0.0.1:{peer.port}",
        "--max-tunnels", "1",
    )  # fmt: skip
    with local(listen) as first:
        first.sendall(b"one")
        assert first.recv(10) == b"one"
        with local(listen) as second:
            with pytest.raises(ConnectionResetError):
                second.sendall(b"two")
                second.recv(10)
        client.wait_line("closed a local connection: 1 are carried already")
        for _ in range(100):  # a local flood: refused, and at most a line a second
            with contextlib.suppress(OSError), local(listen) as more:
                more.sendall(b"x")
        first.sendall(b"still")
        assert first.recv(10) == b"still"
        time.sleep(0.5)
        refusals = [line for line in client.lines if "closed a local connection" in line]
        assert 1 <= len(refusals) <= 3, refusals


# ================================================================= the protocol, in-process


def _configs(pki: DevPKI) -> tuple[tcpls.ServerConfig, tcpls.ClientConfig]:
    tuning = tcpls.SessionTuning(user_timeout=0.5, rejoin_timeout=0)
    return (
        tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file), tuning=tuning),
        tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost", tuning=tuning),
    )


async def _answer(reader: tcpls.StreamReader) -> bytes:
    """Everything the server sends on a stream, until it ends it."""
    return await asyncio.wait_for(reader.read(), 10)


def test_hostile_streams_are_refused_alone(
    pki: DevPKI, peers: list[Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Malformed, oversized, unfinished and second-hello requests each get an ERR and the
    end of their stream; a tunnel open meanwhile in the same session carries on."""
    monkeypatch.setattr(tunnel_server, "REQUEST_TIMEOUT", 0.5)

    def echo(conn: socket.socket, peer: Peer) -> None:
        while data := conn.recv(1 << 16):
            conn.sendall(data)

    peer = Peer(echo)
    peers.append(peer)
    server_config, client_config = _configs(pki)
    tunnel = TunnelServer(AllowList([f"127.0.0.1:{peer.port}"]))

    async def main() -> dict[str, bytes]:
        async with await tcpls.serve(tunnel.handle, "127.0.0.1", 0, config=server_config) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=client_config) as session:
                control = await session.open_stream()
                control[1].write(HELLO)
                assert await control[0].readline() == HELLO_OK
                good_reader, good = await session.open_stream()
                good.write(connect_request(Destination("127.0.0.1", peer.port)))
                assert await good_reader.readline() == b"OK\r\n"
                good.write(b"before ")
                answers = {}
                requests = {
                    "long": b"C" * 2000,
                    "long_line": b"CONNECT " + b"a" * 600 + b":80\r\n",
                    "garbage": b"GET / HTTP/1.1\r\n\r\n",
                    "binary": b"\x00\xff\r\n",
                    "port0": b"CONNECT 127.0.0.1:0\r\n",
                    "v6_bare": b"CONNECT ::1:80\r\n",
                    "hello_again": HELLO,
                    "slow": b"CONNECT 127.0.0.1",  # and nothing more
                    "denied": connect_request(Destination("127.0.0.1", 22)),
                }
                for name, request in requests.items():
                    reader, writer = await session.open_stream()
                    writer.write(request)
                    answers[name] = await _answer(reader)
                    writer.write_eof()
                good.write(b"after")
                good.write_eof()
                assert await asyncio.wait_for(good_reader.read(), 10) == b"before after"
                assert not session.closed
                return answers

    answers = asyncio.run(asyncio.wait_for(main(), 60))
    for name in ("long", "long_line", "garbage", "binary", "port0", "v6_bare", "hello_again"):
        assert answers[name].startswith(b"ERR bad-request "), (name, answers[name])
        assert answers[name].endswith(b"\r\n") and answers[name].count(b"\n") == 1
    assert answers["long"] == b"ERR bad-request bad request: a line longer than 512 bytes\r\n"
    assert b"put an IPv6 address in brackets" in answers["v6_bare"]
    assert answers["slow"] == b"ERR timeout no request within 0.5 s\r\n"
    assert answers["denied"] == b"ERR denied 127.0.0.1:22 is not on the server's allow list\r\n"


def test_server_limit_per_session(pki: DevPKI, peers: list[Peer]) -> None:
    def hold(conn: socket.socket, peer: Peer) -> None:
        read_all(conn, bytearray())

    peer = Peer(hold)
    peers.append(peer)
    server_config, client_config = _configs(pki)
    tunnel = TunnelServer(AllowList([f"127.0.0.1:{peer.port}"]), max_tunnels=2)
    request = connect_request(Destination("127.0.0.1", peer.port))

    async def main() -> list[bytes]:
        async with await tcpls.serve(tunnel.handle, "127.0.0.1", 0, config=server_config) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=client_config) as session:
                control = await session.open_stream()  # not counted against the limit
                control[1].write(HELLO)
                assert await control[0].readline() == HELLO_OK
                answers = []
                streams = []
                for _ in range(3):
                    reader, writer = await session.open_stream()
                    writer.write(request)
                    streams.append((reader, writer))
                    answers.append(await asyncio.wait_for(reader.readline(), 10))
                assert tunnel.connected == 2
                for _, writer in streams:
                    writer.write_eof()
                return answers

    answers = asyncio.run(asyncio.wait_for(main(), 30))
    assert answers[:2] == [b"OK\r\n", b"OK\r\n"]
    assert answers[2] == b"ERR busy too many tunneled connections in this session (2)\r\n"


# ================================================================= pieces


def test_destinations_and_the_allow_list() -> None:
    assert parse_destination("Example.COM.:443") == Destination("example.com", 443)
    assert parse_destination("[0:0::1]:80") == Destination("::1", 80)
    assert str(Destination("::1", 80)) == "[::1]:80"
    assert canonical_host("010.1.2.3".removeprefix("0")) == "10.1.2.3"
    assert canonical_host("[fe80::1%eth0]") == "fe80::1%eth0"
    # a zone may not carry what would break the request line (a SOCKS name could)
    for zone in ("1]:80\r\nINJECTED", "a b", "x" * 40):
        with pytest.raises(ValueError):
            canonical_host(f"[::1%{zone}]")
    for bad in ("host", "host:", ":80", "a b:80", "host:0", "host:65536", "host:+80",
                "::1:80", "127.1:80", "-x.com:80", "x..com:80", "host:٨٠",
                "[::1%1\r\nX]:80"):  # fmt: skip
        with pytest.raises(ValueError):
            parse_destination(bad)
    allow = AllowList(["LocalHost:8080", "[::1]:*", "10.0.0.1:22"])
    assert allow.allows(Destination("localhost", 8080))
    assert not allow.allows(Destination("localhost", 8081))
    assert not allow.allows(Destination("127.0.0.1", 8080))  # names are not resolved
    assert allow.allows(Destination("::1", 1)) and allow.allows(Destination("::1", 65535))
    assert allow.allows(parse_destination("10.0.0.1:22"))
    with pytest.raises(ValueError, match="bad allow-list entry 'x:y'"):
        AllowList(["x:y"])


def test_answers() -> None:
    parse_answer(b"OK\r\n")
    with pytest.raises(TunnelRefused) as info:
        parse_answer(b"ERR denied x:1 is not allowed\x1b[2J\r\n")
    assert (info.value.code, info.value.reason) == ("denied", "x:1 is not allowed?[2J")
    for line in (b"OK\n", b"HTTP/1.1 200 OK\r\n", b"ERR\r\n", b""):
        with pytest.raises(NotATunnelServer):
            parse_answer(line)
    assert socks.reply_code("denied") == 2 and socks.reply_code("refused") == 5
    assert socks.reply_code(None) == 1 and socks.reply_code("busy") == 1


@pytest.mark.parametrize(
    ("request_bytes", "reply", "error"),
    [
        (b"\x04\x01", b"", "not a SOCKS5 client"),
        (b"\x05\x01\x02", b"\x05\xff", "no method without authentication"),
        (b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", b"\x05\x00" + socks.reply(7),
         "only CONNECT"),
        (b"\x05\x01\x00\x05\x01\x00\x09", b"\x05\x00" + socks.reply(8), "address type 9"),
        (b"\x05\x01\x00\x05\x01\x00\x03\x03a b\x00\x50", b"\x05\x00" + socks.reply(4), "bad name"),
        (b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00", b"\x05\x00" + socks.reply(1),
         "port 0"),
    ],
)  # fmt: skip
def test_socks_requests_we_do_not_do(request_bytes: bytes, reply: bytes, error: str) -> None:
    async def main() -> tuple[bytes, str]:
        reader = asyncio.StreamReader()
        reader.feed_data(request_bytes)
        reader.feed_eof()
        written = bytearray()

        class Writer:
            def write(self, data: bytes) -> None:
                written.extend(data)

        with pytest.raises(socks.SocksError) as info:
            await socks.read_request(reader, Writer())  # type: ignore[arg-type]
        return bytes(written), str(info.value)

    written, message = asyncio.run(main())
    assert written == reply
    assert error in message


def test_socks_request_kinds() -> None:
    async def parse(data: bytes) -> Destination:
        reader = asyncio.StreamReader()
        reader.feed_data(b"\x05\x02\x02\x00\x05\x01\x00" + data)

        class Writer:
            def write(self, data: bytes) -> None:
                pass

        return await socks.read_request(reader, Writer())  # type: ignore[arg-type]

    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert asyncio.run(parse(b"\x01\x0a\x00\x00\x01\x1f\x90")) == Destination("10.0.0.1", 8080)
    assert asyncio.run(parse(b"\x04" + v6 + b"\x00\x50")) == Destination("2001:db8::1", 80)
    assert asyncio.run(parse(b"\x03\x0bExample.ORG\x01\xbb")) == Destination("example.org", 443)
    assert tunnel_protocol.MAX_LINE == 512


def test_a_connection_nobody_reads_is_reset_and_the_others_go_on(
    pki: DevPKI, peers: list[Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A destination that stops reading while its tunnel keeps sending holds up the
    session's TCP connections, hence every other connection of the session: after
    STALL_TIMEOUT (1 s here, 15 s by default) the stuck connection is reset and its
    stream drained, and the echo on another connection of the session answers."""
    from tcpls.apps.tunnel import relay as tunnel_relay

    monkeypatch.setattr(tunnel_relay, "STALL_TIMEOUT", 1.0)
    release = threading.Event()

    def never_read(conn: socket.socket, peer: Peer) -> None:
        release.wait(30)
        try:
            while conn.recv(1 << 20):
                pass
            peer.events.append("end of file")
        except OSError as exc:  # the tunnel reset it
            peer.events.append(exc.__class__.__name__)

    def echo(conn: socket.socket, peer: Peer) -> None:
        while data := conn.recv(1 << 16):
            conn.sendall(data)

    stuck, echoer = Peer(never_read), Peer(echo)
    peers += [stuck, echoer]
    server_config, client_config = _configs(pki)
    tunnel = TunnelServer(AllowList([f"127.0.0.1:{stuck.port}", f"127.0.0.1:{echoer.port}"]))

    async def main() -> float:
        async with await tcpls.serve(tunnel.handle, "127.0.0.1", 0, config=server_config) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=client_config) as session:
                control = await session.open_stream()
                control[1].write(HELLO)
                assert await control[0].readline() == HELLO_OK
                stuck_reader, to_stuck = await session.open_stream()
                to_stuck.write(connect_request(Destination("127.0.0.1", stuck.port)))
                assert await stuck_reader.readline() == b"OK\r\n"
                to_stuck.write(os.urandom(16 << 20))  # far more than TCP and buffers hold
                await asyncio.sleep(0.5)
                started = time.monotonic()
                echo_reader, to_echo = await session.open_stream()
                to_echo.write(connect_request(Destination("127.0.0.1", echoer.port)))
                assert await asyncio.wait_for(echo_reader.readline(), 10) == b"OK\r\n"
                to_echo.write(b"still moving")
                to_echo.write_eof()
                assert await asyncio.wait_for(echo_reader.read(), 10) == b"still moving"
                return time.monotonic() - started

    took = asyncio.run(asyncio.wait_for(main(), 60))
    release.set()
    assert took < 8, took
    stuck.done.wait(5)
    assert stuck.events == ["ConnectionResetError"], stuck.events


def test_connections_waiting_for_a_session_that_cannot_open_fail_together() -> None:
    """Five local connections wait while the tunnel server cannot be reached (each attempt
    takes a handshake timeout, 0.5 s here): the attempt made while they waited fails them
    all, instead of each trying in turn (the fifth used to learn it after five timeouts);
    a connection that comes afterwards tries again."""
    from tcpls.apps.tunnel.client import TunnelClient

    attempts = 0

    async def unreachable(hello: bytes) -> tcpls.Session:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.5)
        raise TimeoutError("the TLS handshake with the tunnel server timed out")

    async def main() -> float:
        client = TunnelClient(unreachable)
        started = time.monotonic()
        results = await asyncio.gather(*(client.start() for _ in range(5)), return_exceptions=True)
        took = time.monotonic() - started
        assert all(isinstance(r, TimeoutError) for r in results), results
        with pytest.raises(TimeoutError):
            await client.start()  # later: tried again
        return took

    took = asyncio.run(main())
    assert attempts == 2 and took < 2.0, (attempts, took)
