"""0-RTT early data against real peers (and a replay of a 0-RTT first flight).

1. ``openssl s_client -sess_in F -early_data FILE`` to ``tcpls serve --early-data``,
   in TCPLS mode (the server falls back to plain TLS) and with ``--no-tcpls``;
2. ``gnutls-cli --resume --earlydata=FILE`` to an in-process server, which tells how many
   bytes came early (``gnutls-cli -d 4`` logs its EndOfEarlyData: the server accepted);
3. ``tcpls connect --session F --early-data`` to ``openssl s_server -early_data``;
4. servers that decline early data: every byte still arrives, once;
5. a replayed 0-RTT first flight (ClientHello and early data, recorded by a proxy) gets
   a full handshake: the application sees the early bytes once.

A missing peer skips its tests with the reason. Every wait has its own deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tcpls
from tcpls.devcert import DevPKI

pytestmark = [pytest.mark.interop, pytest.mark.timeout(20)]

TCPLS = [sys.executable, "-m", "tcpls"]
#: How long one peer may take for one step (handshake, echo, exit).
STEP = 6.0
#: GnuTLS, TLS 1.3 only.
GNUTLS_TLS13 = "NORMAL:-VERS-ALL:+VERS-TLS1.3"
#: Early data the servers of these tests accept per resumed session.
MAX_EARLY = 16384

# TLS record content types and the extensions looked for in a ServerHello
HANDSHAKE, APPLICATION_DATA = 22, 23
SERVER_HELLO = 2
EXT_PRE_SHARED_KEY, EXT_SUPPORTED_VERSIONS = 41, 43


# ------------------------------------------------------------------------------- peers


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        package = "gnutls-bin" if tool.startswith("gnutls") else tool
        pytest.skip(f"{tool} is not installed (make test installs {package} as root)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = STEP) -> None:
    """Wait until something listens on ``port`` (fails early if ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"exited early ({proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port}") from None
            time.sleep(0.05)


def _marker(tag: str) -> bytes:
    """A line no TLS trace can contain by chance (letters outside hex, random part)."""
    return f"{tag}-{os.urandom(6).hex()}-end\n".encode()


def _text(path: Path) -> str:
    return path.read_bytes().decode(errors="replace") if path.exists() else ""


def _wait_in_file(path: Path, needles: tuple[str, ...], timeout: float = STEP) -> str:
    deadline = time.monotonic() + timeout
    while not all(n in (text := _text(path)) for n in needles):
        if time.monotonic() > deadline:
            raise AssertionError(f"{needles!r} not all in {path.name}: {text[-3000:]!r}")
        time.sleep(0.05)
    return text


class Peer:
    """A client process with piped stdin and merged stdout/stderr; what it printed so far
    is ``out``."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.out = b""
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._eof = False

    def _read(self, left: float) -> None:
        select.select([self._fd], [], [], min(max(left, 0.0), 0.2))
        try:
            chunk = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._eof = True
        self.out += chunk

    def until(self, *needles: bytes, timeout: float = STEP) -> bytes:
        """Read until every one of ``needles`` was printed; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not all(n in self.out for n in needles):
            left = deadline - time.monotonic()
            if left <= 0 or self._eof:
                why = "exited" if self._eof else f"not all seen in {timeout} s"
                raise AssertionError(f"{needles!r}: {why}; got {self.out[-4000:]!r}")
            self._read(left)
        return self.out

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def finish(self, timeout: float = STEP) -> int:
        """Close standard input, read until the process exits; its exit code."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        deadline = time.monotonic() + timeout
        while not self._eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"did not exit in {timeout} s; got {self.out[-4000:]!r}")
            self._read(left)
        return self.proc.wait(max(0.1, deadline - time.monotonic()))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stdin):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@contextlib.contextmanager
def _peer(argv: list[str]) -> Iterator[Peer]:
    peer = Peer(argv)
    try:
        yield peer
    finally:
        peer.kill()


@contextlib.contextmanager
def _server(
    argv: list[str], port: int, log: Path, *, keep_stdin: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process whose output goes to ``log``, listening on ``port`` when yielded,
    killed afterwards. ``keep_stdin``: a pipe that stays open (``openssl s_server`` without
    ``-rev``/``-www`` reads its standard input and stops at its end)."""
    stdin = subprocess.PIPE if keep_stdin else subprocess.DEVNULL
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=out)
    try:
        try:
            wait_port(port, proc)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{argv[:3]} did not start: {exc}; {_text(log)}") from None
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()


@contextlib.contextmanager
def _tcpls_serve(pki: DevPKI, log: Path, *args: str) -> Iterator[int]:
    """``tcpls serve --echo ARGS...`` on a free loopback port; yields the port."""
    port = free_port()
    argv = [*TCPLS, "serve", "--cert", str(pki.cert_file), "--key", str(pki.key_file),
            "--host", "127.0.0.1", "--port", str(port), "--echo", *args]  # fmt: skip
    with _server(argv, port, log):
        yield port


def _s_server(pki: DevPKI, port: int, *args: str) -> list[str]:
    exe = _need("openssl")
    return [exe, "s_server", "-accept", str(port), "-tls1_3", "-cert", str(pki.cert_file),
            "-key", str(pki.key_file), *args]  # fmt: skip


def _s_client_argv(pki: DevPKI, port: int, *args: str) -> list[str]:
    exe = _need("openssl")
    return [exe, "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-CAfile",
            str(pki.ca_file), "-servername", "localhost", "-verify_return_error",
            "-no_ign_eof", "-nocommands", *args]  # fmt: skip


def _s_client_ticket(pki: DevPKI, port: int, sess: Path) -> None:
    """A first, full handshake with ``s_client -sess_out``: its ticket lands in ``sess``."""
    line = _marker("full")
    with _peer(_s_client_argv(pki, port, "-sess_out", str(sess))) as client:
        client.send(line)
        # the echo comes after the tickets (sent right after the handshake); s_client
        # prints them when it exits
        client.until(line)
        code = client.finish()
    assert code == 0, client.out[-3000:]
    assert f"Max Early Data: {MAX_EARLY}".encode() in client.out, client.out[-3000:]
    assert sess.exists() and sess.stat().st_size > 0


def _s_client_0rtt(
    pki: DevPKI, port: int, sess: Path, early_file: Path, early: bytes, after: bytes
) -> bytes:
    """``s_client -sess_in F -early_data FILE``, then ``after`` once the handshake is done;
    returns everything it printed once both came back."""
    argv = _s_client_argv(pki, port, "-sess_in", str(sess), "-early_data", str(early_file))
    with _peer(argv) as client:
        client.until(b"Early data was ")  # printed when the handshake completed
        client.send(after)
        client.until(early, after)
        code = client.finish()
        assert code == 0, client.out[-3000:]
        return client.out


def _tcpls_connect(port: int, *args: str, payload: bytes, cafile: Path) -> tuple[bytes, bytes]:
    """``tcpls connect -v ARGS...`` with ``payload`` on its standard input: its standard
    output and standard error (it must succeed)."""
    argv = [*TCPLS, "connect", "-v", "--server-name", "localhost", "--cafile", str(cafile)]
    done = subprocess.run(
        [*argv, *args, "127.0.0.1", str(port)],
        input=payload,
        capture_output=True,
        timeout=STEP + 2,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr


# ------------------------------------------------------------------ in-process server


@dataclasses.dataclass
class Received:
    """One stream an in-process server received: its bytes and how many came early."""

    data: bytes = b""
    early: int = 0


@dataclasses.dataclass
class Served:
    """One session an in-process server served."""

    resumed: bool
    early_accepted: bool
    tcpls: bool


class ServerThread:
    """``tcpls.serve`` on its own event loop in a thread: every stream is echoed, and what
    each one received (and how many of its first bytes came early) is kept."""

    def __init__(self, pki: DevPKI, *, tcpls_mode: bool = True, max_early: int = MAX_EARLY):
        self._config = tcpls.ServerConfig(
            certfile=str(pki.cert_file),
            keyfile=str(pki.key_file),
            tcpls=tcpls_mode,
            max_early_data=max_early,
        )
        self._lock = threading.Lock()
        self._streams: list[Received] = []
        self._sessions: list[Served] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.port = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="early-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(STEP):
            raise AssertionError("the in-process server did not start")
        if self.error is not None:
            raise self.error

    @property
    def streams(self) -> list[Received]:
        with self._lock:
            return [dataclasses.replace(r) for r in self._streams]

    @property
    def sessions(self) -> list[Served]:
        with self._lock:
            return list(self._sessions)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by close()
            self.error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with await tcpls.serve(self._handle, "127.0.0.1", 0, config=self._config) as srv:
            self.port = srv.port
            self._ready.set()
            await self._stop.wait()

    async def _handle(self, session: tcpls.Session) -> None:
        with self._lock:
            self._sessions.append(
                Served(
                    session.session_resumed, session.early_data_accepted, session.tcpls_negotiated
                )
            )
        async with asyncio.TaskGroup() as group:
            async for reader, writer in session:
                group.create_task(self._echo(reader, writer))

    async def _echo(self, reader: tcpls.StreamReader, writer: tcpls.StreamWriter) -> None:
        got = Received()
        with self._lock:
            self._streams.append(got)
        try:
            while data := await reader.read(65536):
                with self._lock:
                    got.data += data
                    got.early = max(got.early, reader.early_data_bytes)
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.wait_closed()
        except (tcpls.TCPLSError, OSError):
            pass  # a client that leaves without closing its stream

    def close(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(STEP)
        assert not self._thread.is_alive(), "the in-process server does not stop"
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def _server_thread(pki: DevPKI, *, tcpls_mode: bool = True) -> Iterator[ServerThread]:
    server = ServerThread(pki, tcpls_mode=tcpls_mode)
    try:
        yield server
    finally:
        server.close()


def _count(streams: list[Received], payload: bytes) -> int:
    return sum(r.data.count(payload) for r in streams)


def _settle(server: ServerThread, payload: bytes, timeout: float = STEP) -> list[Received]:
    """The server's streams once one of them received ``payload`` (its echo may reach the
    client just before the server's copy is kept)."""
    deadline = time.monotonic() + timeout
    while not _count(streams := server.streams, payload):
        if time.monotonic() > deadline:
            raise AssertionError(f"{payload!r} never reached the server: {streams!r}")
        time.sleep(0.02)
    return streams


# ------------------------------------------------------------------- 1. openssl s_client


@pytest.mark.parametrize("mode", ["tcpls", "no-tcpls"])
def test_s_client_early_data_accepted_by_tcpls_serve(
    mode: str, pki: DevPKI, tmp_path: Path
) -> None:
    """s_client is plain TLS: the default server falls back; ``--no-tcpls`` is plain only."""
    _need("openssl")
    args = ["--early-data", str(MAX_EARLY)] + (["--no-tcpls"] if mode == "no-tcpls" else [])
    sess, early_file = tmp_path / "s_client.sess", tmp_path / "early.txt"
    early, after = _marker("zero-rtt"), _marker("after-handshake")
    early_file.write_bytes(early)
    with _tcpls_serve(pki, tmp_path / "serve.log", *args) as port:
        _s_client_ticket(pki, port, sess)
        out = _s_client_0rtt(pki, port, sess, early_file, early, after)
    assert b"Reused, TLSv1.3" in out, out[-3000:]
    assert b"Early data was accepted" in out, out[-3000:]
    # each comes back once, the early bytes first
    assert out.count(early) == 1 and out.count(after) == 1, out[-3000:]
    assert out.index(early) < out.index(after)


# ------------------------------------------------------------------------ 2. gnutls-cli

#: What ``gnutls-cli -d 4`` logs when it sends EndOfEarlyData, which a client sends only
#: when the server accepted its early data (RFC 8446 §4.5; gnutls-cli prints no verdict).
GNUTLS_EOED = b"END OF EARLY DATA was queued"


@pytest.mark.parametrize("tcpls_mode", [True, False], ids=["tcpls", "no-tcpls"])
def test_gnutls_cli_early_data_accepted(tcpls_mode: bool, pki: DevPKI, tmp_path: Path) -> None:
    cli = _need("gnutls-cli")
    early_file = tmp_path / "early.txt"
    early, after = _marker("gnutls-early"), _marker("gnutls-after")
    early_file.write_bytes(early)
    with _server_thread(pki, tcpls_mode=tcpls_mode) as server:
        argv = [cli, "-d", "4", "--x509cafile", str(pki.ca_file), "--priority", GNUTLS_TLS13,
                "--resume", "--waitresumption", f"--earlydata={early_file}",
                "-p", str(server.port), "localhost"]  # fmt: skip
        with _peer(argv) as client:
            client.until(b"*** This is a resumed session", early)
            client.send(after)
            out = client.until(early, after)
            code = client.finish()
        assert code == 0, out[-3000:]
        streams = _settle(server, after)
        sessions = server.sessions
    # the first connection carried nothing; the resumed one had the early bytes, then more
    assert GNUTLS_EOED in out, out[-4000:]
    assert out.count(early) == 1 and out.count(after) == 1
    assert out.index(early) < out.index(after)
    assert [s for s in streams if s.data] == [Received(early + after, len(early))]
    assert [(s.resumed, s.early_accepted, s.tcpls) for s in sessions] == [
        (False, False, False),
        (True, True, False),
    ]


# ------------------------------------------------------- 3. tcpls connect to s_server


def test_tcpls_connect_early_data_accepted_by_s_server(pki: DevPKI, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "s_server.log"
    ticket = tmp_path / "tcpls.session"
    first, early = _marker("first-run"), _marker("s-server-early")
    with _server(_s_server(pki, port, "-early_data"), port, log, keep_stdin=True):
        stdout, stderr = _tcpls_connect(
            port, "--session", str(ticket), "--early-data", payload=first, cafile=pki.ca_file
        )
        assert b"resumed: no" in stderr and b"early data: not accepted" in stderr, stderr
        assert ticket.exists() and ticket.stat().st_size > 0, stderr
        _wait_in_file(log, (first.decode(),))
        stdout, stderr = _tcpls_connect(
            port, "--session", str(ticket), "--early-data", payload=early, cafile=pki.ca_file
        )
        # s_server prints a header line, then the early bytes; the header goes through a
        # buffered BIO and the bytes straight to its output, so the log may have either first
        text = _wait_in_file(log, ("End of early data", early.decode()))
    assert b"resumed: yes" in stderr, stderr
    assert b"early data: accepted" in stderr, stderr
    assert stdout == b""  # s_server sends nothing back
    assert text.count("Early data received:") == 1, text[-3000:]
    assert "Early data was rejected" not in text
    assert text.count(early.decode()) == 1, text[-3000:]


# --------------------------------------------------- 4. servers that decline early data


@pytest.mark.parametrize(
    "tickets", ["no-max-early-data", "max-early-data"], ids=["plain", "tickets-allow-0rtt"]
)
def test_tcpls_connect_early_data_declined_by_s_server(
    tickets: str, pki: DevPKI, tmp_path: Path
) -> None:
    """s_server without ``-early_data`` does not read early data. With ``-max_early_data``
    its tickets allow some, so the client sends it: the server resumes, declines it, and
    the client sends the bytes again after the handshake."""
    port, log = free_port(), tmp_path / "s_server.log"
    ticket = tmp_path / "tcpls.session"
    args = ["-trace"]
    if tickets == "max-early-data":
        args += ["-max_early_data", str(MAX_EARLY)]
    first, second = _marker("first-run"), _marker("declined")
    with _server(_s_server(pki, port, *args), port, log, keep_stdin=True):
        _tcpls_connect(
            port, "--session", str(ticket), "--early-data", payload=first, cafile=pki.ca_file
        )
        _wait_in_file(log, (first.decode(),))
        stdout, stderr = _tcpls_connect(
            port, "--session", str(ticket), "--early-data", payload=second, cafile=pki.ca_file
        )
        text = _wait_in_file(log, (second.decode(), "CONNECTION CLOSED"))
    assert stdout == b""
    assert b"resumed: yes" in stderr, stderr
    assert b"early data: not accepted" in stderr, stderr
    assert text.count(second.decode()) == 1, text[-3000:]
    # s_server -trace shows the ClientHellos: the resumed one offered early data only
    # when the ticket allowed it
    offered = text.count("extension_type=early_data(42), length=0")
    assert offered == (1 if tickets == "max-early-data" else 0), text[-6000:]


@pytest.mark.parametrize("mode", ["tcpls", "no-tcpls"])
def test_tcpls_connect_early_data_declined_by_tcpls_serve(
    mode: str, pki: DevPKI, tmp_path: Path
) -> None:
    """A ticket of a server that accepts early data, shown to one that does not (and does
    not know the ticket): a full handshake, and the bytes go after it, once."""
    plain = ["--no-tcpls"] if mode == "no-tcpls" else []
    ticket = tmp_path / "tcpls.session"
    args = ("--session", str(ticket), "--early-data", *plain)
    first, second = _marker("first-run"), _marker("declined")
    with _tcpls_serve(pki, tmp_path / "a.log", "--early-data", str(MAX_EARLY), *plain) as port:
        stdout, _ = _tcpls_connect(port, *args, payload=first, cafile=pki.ca_file)
        assert stdout == first
    with _tcpls_serve(pki, tmp_path / "b.log", *plain) as port:
        stdout, stderr = _tcpls_connect(port, *args, payload=second, cafile=pki.ca_file)
    assert stdout == second  # echoed exactly once
    assert b"resumed: no" in stderr, stderr
    assert b"early data: not accepted" in stderr, stderr
    protocol = b"protocol: plain TLS 1.3" if plain else b"protocol: TCPLS"
    assert protocol in stderr, stderr


# -------------------------------------------------------------- 5. a replayed first flight


def _records(data: bytes) -> list[tuple[int, bytes]]:
    """The complete TLS records at the start of ``data``: (content type, fragment)."""
    records, offset = [], 0
    while offset + 5 <= len(data):
        kind, _, length = struct.unpack_from("!BHH", data, offset)
        if offset + 5 + length > len(data):
            break
        records.append((kind, data[offset + 5 : offset + 5 + length]))
        offset += 5 + length
    return records


class FirstFlightProxy:
    """A one-connection TCP proxy in a thread that keeps the client's first flight: every
    byte it sends before the server answers, which for a 0-RTT client is its ClientHello
    and its early data records. It waits for a complete application_data record (early
    data) and a quiet moment before it forwards anything, so the flight is whole."""

    def __init__(self, upstream: int) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(STEP)
        self.port: int = self._listener.getsockname()[1]
        self.first_flight = b""
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="proxy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            client, _ = self._listener.accept()
            with client, socket.create_connection(("127.0.0.1", self._upstream)) as server:
                self.first_flight = self._flight(client)
                server.sendall(self.first_flight)
                self._relay(client, server)
        except BaseException as exc:  # reported by wait()
            self.error = exc

    @staticmethod
    def _flight(client: socket.socket) -> bytes:
        data = b""
        deadline = time.monotonic() + STEP
        quiet = 0.3
        while time.monotonic() < deadline:
            early = any(kind == APPLICATION_DATA for kind, _ in _records(data))
            ready, _, _ = select.select([client], [], [], quiet if early else 0.1)
            if not ready:
                if early:
                    return data
                continue
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
        return data  # no early data came: the test sees it in the records

    @staticmethod
    def _relay(client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        deadline = time.monotonic() + 2 * STEP
        while peers and time.monotonic() < deadline:
            ready, _, _ = select.select(list(peers), [], [], 0.2)
            for sock in ready:
                chunk = sock.recv(65536)
                other = peers[sock]
                if not chunk:
                    with contextlib.suppress(OSError):
                        other.shutdown(socket.SHUT_WR)
                    del peers[sock]
                    continue
                other.sendall(chunk)

    def wait(self) -> bytes:
        self._thread.join(2 * STEP + 2)
        assert not self._thread.is_alive(), "the proxy hangs"
        if self.error is not None:
            raise self.error
        return self.first_flight

    def close(self) -> None:
        self._listener.close()


def _server_hello_extensions(sock: socket.socket) -> list[int]:
    """Read the server's first record, a ServerHello; the types of its extensions."""
    data = b""
    deadline = time.monotonic() + STEP
    while not _records(data):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no ServerHello in {STEP} s: {data!r}")
        select.select([sock], [], [], left)
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"the server closed the replayed connection: {data!r}")
        data += chunk
    kind, body = _records(data)[0]
    assert kind == HANDSHAKE and body[0] == SERVER_HELLO, data[:64]
    # type(1) length(3) legacy_version(2) random(32) session_id<1> cipher_suite(2)
    # compression(1) extensions<2>
    offset = 4 + 2 + 32
    offset += 1 + body[offset] + 2 + 1
    (end,) = struct.unpack_from("!H", body, offset)
    offset += 2
    end += offset
    types = []
    while offset < end:
        ext_type, ext_len = struct.unpack_from("!HH", body, offset)
        types.append(ext_type)
        offset += 4 + ext_len
    return types


def _replay(port: int, flight: bytes) -> list[int]:
    """Send ``flight`` on a new connection (an attacker has no keys: it cannot go further
    than the server's first flight); the ServerHello's extension types."""
    with socket.create_connection(("127.0.0.1", port), timeout=STEP) as sock:
        sock.sendall(flight)
        types = _server_hello_extensions(sock)
        # leave the server time to read (and skip) the replayed early data records
        deadline = time.monotonic() + 0.5
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if ready and not sock.recv(65536):
                break
    return types


@pytest.mark.parametrize("client", ["tcpls", "tcpls-plain", "s_client"])
def test_replayed_first_flight_is_refused_0rtt(client: str, pki: DevPKI, tmp_path: Path) -> None:
    """A 0-RTT client's ClientHello and early data, recorded by a proxy and sent again on
    a new connection: the ticket was used, so the replay gets a full handshake (no
    pre_shared_key in the ServerHello) and its early data is skipped: the application
    sees the early bytes once, from the original connection."""
    if client == "s_client":
        _need("openssl")
    plain = ["--no-tcpls"] if client == "tcpls-plain" else []
    early, after = _marker("replayed-early"), _marker("after")
    sess = tmp_path / "ticket"
    with _server_thread(pki, tcpls_mode=client == "tcpls") as server:
        proxy = FirstFlightProxy(server.port)
        try:
            if client == "s_client":
                early_file = tmp_path / "early.txt"
                early_file.write_bytes(early)
                _s_client_ticket(pki, server.port, sess)
                out = _s_client_0rtt(pki, proxy.port, sess, early_file, early, after)
                assert b"Early data was accepted" in out, out[-3000:]
                payload = early + after
            else:
                first = _marker("first-run")
                args = ("--session", str(sess), "--early-data", *plain)
                _tcpls_connect(server.port, *args, payload=first, cafile=pki.ca_file)
                stdout, stderr = _tcpls_connect(
                    proxy.port, *args, payload=early, cafile=pki.ca_file
                )
                assert stdout == early
                assert b"early data: accepted" in stderr, stderr
                payload = early
            flight = proxy.wait()
        finally:
            proxy.close()
        original = _settle(server, payload)
        kinds = [kind for kind, _ in _records(flight)]
        assert kinds[0] == HANDSHAKE and APPLICATION_DATA in kinds, kinds
        extensions = _replay(server.port, flight)
        time.sleep(0.3)  # anything the replay made the server deliver would be there now
        streams, sessions = server.streams, server.sessions
    assert EXT_SUPPORTED_VERSIONS in extensions
    assert EXT_PRE_SHARED_KEY not in extensions, "the replayed ticket was accepted again"
    assert streams == original
    assert _count(streams, early) == 1, streams
    (carrier,) = [s for s in streams if early in s.data]
    assert carrier.data == payload and carrier.early == len(early)
    # the replay never completed its handshake: no session for it
    assert [(s.resumed, s.early_accepted) for s in sessions] == [(False, False), (True, True)]
    assert all(s.tcpls is (client == "tcpls") for s in sessions)
