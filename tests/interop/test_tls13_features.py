"""TLS 1.3 features of the handshake engine against real peers (and tcpls against tcpls).

HelloRetryRequest, X25519MLKEM768, PSK resumption with a ticket file, and client
certificates, each shown both ways where the peer allows it: the ``openssl`` CLI (3.0),
GnuTLS's ``gnutls-cli``/``gnutls-serv``, pyOpenSSL on cryptography's bundled OpenSSL
(>= 3.5, for X25519MLKEM768), ``tcpls serve``/``tcpls connect`` as processes and the
library in-process. A missing peer skips its tests with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import tcpls
from tcpls.apps.echo import echo_handler
from tcpls.devcert import DevPKI

try:
    from OpenSSL import SSL

    HAVE_PYOPENSSL = True
except ImportError:  # pragma: no cover - pyOpenSSL is a test-only peer
    HAVE_PYOPENSSL = False

# Every wait below has its own deadline (a few seconds); this is the backstop.
pytestmark = [pytest.mark.interop, pytest.mark.timeout(20)]

TCPLS = [sys.executable, "-m", "tcpls"]
#: How long one peer may take for one step (handshake, echo, exit).
STEP = 8.0
#: GnuTLS, TLS 1.3 only.
GNUTLS_TLS13 = "NORMAL:-VERS-ALL:+VERS-TLS1.3"
PQ_GROUP = "X25519MLKEM768"
CLIENT_CN = "tcpls test client"

T = TypeVar("T")


class ClientCert(NamedTuple):
    cert_file: Path
    key_file: Path
    cert: x509.Certificate


# ------------------------------------------------------------------------------- peers


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        package = "gnutls-bin" if tool.startswith("gnutls") else tool
        pytest.skip(f"{tool} is not installed (make test installs {package} as root)")
    return path


# The three helpers below are like tests/helpers.py's, kept here so that
# `mypy --strict` on this file does not follow into that module.


def need_openssl() -> str:
    return _need("openssl")


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


def _read_output(
    proc: subprocess.Popen[bytes], needles: tuple[bytes, ...], timeout: float = STEP
) -> bytes:
    """What ``proc`` prints on its (merged) stdout until every one of ``needles`` appeared,
    or until it exits; fails the test after ``timeout`` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    out = b""
    deadline = time.monotonic() + timeout
    while not all(n in out for n in needles):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needles!r} not all seen in {timeout} s; got {out[-3000:]!r}")
        select.select([fd], [], [], min(left, 0.2))
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:  # the process closed its output: it is exiting
            break
        out += chunk
    return out


def _finish(proc: subprocess.Popen[bytes], out: bytes, timeout: float = STEP) -> bytes:
    """Close ``proc``'s standard input, read what it prints until it exits, and wait."""
    assert proc.stdout is not None
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the peer did not exit in {timeout} s; got {out[-3000:]!r}")
        select.select([fd], [], [], min(left, 0.2))
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            break
        out += chunk
    proc.wait(max(0.1, deadline - time.monotonic()))
    return out


@contextlib.contextmanager
def _process(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A client process with piped stdin and merged stdout/stderr, killed afterwards."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()


@contextlib.contextmanager
def _server(argv: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server process whose output goes to ``log``, listening on ``port`` when yielded,
    killed afterwards."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        try:
            wait_port(port, proc)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{argv[:3]} did not start: {exc}; {_text(log)}") from None
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _text(path: Path) -> str:
    return path.read_bytes().decode(errors="replace") if path.exists() else ""


def _wait_in_file(path: Path, needle: str, timeout: float = STEP) -> str:
    deadline = time.monotonic() + timeout
    while needle not in (text := _text(path)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not in {path.name}: {text[-3000:]!r}")
        time.sleep(0.05)
    return text


@contextlib.contextmanager
def _tcpls_serve(pki: DevPKI, log: Path, *args: str) -> Iterator[int]:
    """``tcpls serve --echo ARGS...`` on a free loopback port; yields the port."""
    port = free_port()
    argv = [*TCPLS, "serve", "--cert", str(pki.cert_file), "--key", str(pki.key_file),
            "--host", "127.0.0.1", "--port", str(port), "--echo", *args]  # fmt: skip
    with _server(argv, port, log):
        yield port


def _s_server(pki: DevPKI, port: int, *args: str) -> list[str]:
    exe = need_openssl()
    return [exe, "s_server", "-accept", str(port), "-tls1_3", "-cert", str(pki.cert_file),
            "-key", str(pki.key_file), *args]  # fmt: skip


def _gnutls_serv(pki: DevPKI, port: int, priority: str = GNUTLS_TLS13) -> list[str]:
    exe = _need("gnutls-serv")
    return [exe, "--echo", "--x509certfile", str(pki.cert_file), "--x509keyfile",
            str(pki.key_file), "--priority", priority, "-p", str(port)]  # fmt: skip


def _s_client(
    pki: DevPKI,
    port: int,
    *args: str,
    payload: bytes | None = None,
    expect: tuple[bytes, ...] = (),
) -> tuple[int, bytes]:
    """``openssl s_client`` (not quiet: it prints the session) to our server: send
    ``payload`` and wait for its echo and every ``expect``, or until it exits by itself
    (a refused handshake). Returns its exit code and everything it printed."""
    exe = need_openssl()
    argv = [exe, "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-CAfile",
            str(pki.ca_file), "-servername", "localhost", "-verify_return_error",
            "-no_ign_eof", "-nocommands", *args]  # fmt: skip
    with _process(argv) as proc:
        assert proc.stdin is not None
        needles = expect
        if payload is not None:
            proc.stdin.write(payload)
            proc.stdin.flush()
            needles = (*expect, payload)
        out = _read_output(proc, needles)
        out = _finish(proc, out)
        return proc.returncode, out


def _tcpls_connect(
    port: int, *args: str, payload: bytes = b"", cafile: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``tcpls connect -v`` with ``payload`` on its standard input."""
    argv = [*TCPLS, "connect", "-v", "--server-name", "localhost"]
    if cafile is not None:
        argv += ["--cafile", str(cafile)]
    return subprocess.run(
        [*argv, *args, "127.0.0.1", str(port)],
        input=payload,
        capture_output=True,
        timeout=STEP + 4,
        check=False,
    )


def _run(coro_fn: Callable[[], Coroutine[Any, Any, None]], timeout: float = 15.0) -> None:
    """Run an in-process scenario on a fresh event loop, within ``timeout`` seconds."""

    async def bounded() -> None:
        await asyncio.wait_for(coro_fn(), timeout)

    asyncio.run(bounded())


def _server_config(
    pki: DevPKI, *, groups: list[str] | None = None, client_cafile: Path | None = None
) -> tcpls.ServerConfig:
    return tcpls.ServerConfig(
        certfile=str(pki.cert_file),
        keyfile=str(pki.key_file),
        groups=groups,
        client_cafile=str(client_cafile) if client_cafile else None,
    )


def _client_config(pki: DevPKI, client: ClientCert | None = None) -> tcpls.ClientConfig:
    return tcpls.ClientConfig(
        cafile=str(pki.ca_file),
        server_name="localhost",
        certfile=str(client.cert_file) if client else None,
        keyfile=str(client.key_file) if client else None,
    )


async def _echo_line(session: tcpls.Session, line: bytes) -> None:
    reader, writer = await session.open_stream()
    writer.write(line)
    await writer.drain()
    assert await asyncio.wait_for(reader.readline(), STEP) == line


class Recorder:
    """An echo handler for an in-process server that keeps the sessions it served."""

    def __init__(self) -> None:
        self.sessions: list[tcpls.Session] = []

    async def __call__(self, session: tcpls.Session) -> None:
        self.sessions.append(session)
        await echo_handler(session)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tls13-logs")


@pytest.fixture(scope="module")
def tcpls_serve(pki: DevPKI, logs: Path) -> Iterator[int]:
    """One ``tcpls serve --echo`` process for the module (its ticket keys live as long)."""
    with _tcpls_serve(pki, logs / "tcpls-serve.log") as port:
        yield port


# ---------------------------------------------------------------- 1. HelloRetryRequest


@pytest.mark.parametrize("groups", ["P-521:X25519", "ffdhe2048:X25519"])
def test_hrr_s_client_against_tcpls_serve(groups: str, pki: DevPKI, tcpls_serve: int) -> None:
    """s_client's only key share is for a group we do not take: we ask for X25519 again."""
    line = _marker("hrr")
    code, out = _s_client(pki, tcpls_serve, "-groups", groups, "-trace", payload=line)
    assert code == 0, out[-3000:]
    # -trace shows each handshake message: a HelloRetryRequest makes a second ClientHello
    assert out.count(b"ClientHello, Length=") == 2, out[-6000:]
    assert b"Server Temp Key: X25519" in out
    assert out.count(line) == 1  # echoed by tcpls serve --echo


def test_hrr_our_client_against_s_server_p384(pki: DevPKI, tmp_path: Path) -> None:
    """Our default shares (X25519MLKEM768, x25519) do not suit a P-384-only s_server."""
    port, log = free_port(), tmp_path / "s_server.log"
    with _server(_s_server(pki, port, "-groups", "P-384", "-rev", "-trace"), port, log):
        done = _tcpls_connect(port, payload=b"retry\n", cafile=pki.ca_file)
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"yrter\n"  # s_server -rev
        assert b"group: secp384r1" in done.stderr
        text = _wait_in_file(log, "ServerHello")
    assert text.count("ClientHello, Length=") == 2, text[-6000:]


def test_hrr_our_client_against_gnutls_serv_p384(pki: DevPKI, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "gnutls-serv.log"
    priority = GNUTLS_TLS13 + ":-GROUP-ALL:+GROUP-SECP384R1"
    with _server(_gnutls_serv(pki, port, priority), port, log):
        done = _tcpls_connect(port, payload=b"retry\n", cafile=pki.ca_file)
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"retry\n"
        assert b"group: secp384r1" in done.stderr
        assert "Using curve: SECP384R1" in _wait_in_file(log, "Using curve")


def test_hrr_between_tcpls_endpoints_keeps_tcpls(pki: DevPKI) -> None:
    """TCPLS survives a HelloRetryRequest (the second ClientHello offers it again)."""
    recorder = Recorder()

    async def run() -> None:
        config = _server_config(pki, groups=["secp384r1"])
        async with await tcpls.serve(recorder, "127.0.0.1", 0, config=config) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=_client_config(pki)) as s:
                await _echo_line(s, b"after a retry\n")
                assert s.tcpls_negotiated and s.group == "secp384r1"
                (served,) = recorder.sessions
                assert served.tcpls_negotiated and served.group == "secp384r1"

    _run(run)


# ------------------------------------------------------------------- 2. X25519MLKEM768


def _need_pyopenssl_pq() -> None:
    if not HAVE_PYOPENSSL:
        pytest.skip("pyOpenSSL is not installed (a test-only peer: pip install pyOpenSSL)")
    version = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    if SSL.OPENSSL_VERSION_NUMBER < 0x30500000:
        pytest.skip(f"pyOpenSSL runs on {version}: X25519MLKEM768 needs OpenSSL >= 3.5")
    if not hasattr(SSL.Connection, "get_group_name"):
        pytest.skip("this pyOpenSSL has no Connection.get_group_name()")


def _ssl_io(sock: socket.socket, fn: Callable[[], T], deadline: float) -> T:
    """Call a pyOpenSSL method on a non-blocking socket until it stops wanting I/O."""
    while True:
        try:
            return fn()
        except SSL.WantReadError:
            want: tuple[list[socket.socket], list[socket.socket]] = ([sock], [])
        except SSL.WantWriteError:
            want = ([], [sock])
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("pyOpenSSL peer: no progress")
        select.select(*want, [], left)


def _ssl_read_all(conn: SSL.Connection, sock: socket.socket, deadline: float) -> bytes:
    """Everything until the peer's close_notify."""
    data = b""
    while True:
        try:
            data += _ssl_io(sock, lambda: conn.recv(65536), deadline)
        except SSL.ZeroReturnError:
            return data


def _pyopenssl_context(pki: DevPKI, *, server: bool) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    if server:
        ctx.use_certificate_chain_file(str(pki.cert_file))
        ctx.use_privatekey_file(str(pki.key_file))
    else:
        ctx.load_verify_locations(str(pki.ca_file))
        ctx.set_verify(SSL.VERIFY_PEER, lambda *_: True)  # OpenSSL's verdict stands
    return ctx


def _pyopenssl_client(pki: DevPKI, port: int, payload: bytes) -> tuple[str | None, bytes]:
    """A pyOpenSSL client (OpenSSL's default groups: X25519MLKEM768 first): send
    ``payload``, end our direction, read until the server's close; return the group and
    what came back."""
    deadline = time.monotonic() + STEP
    with socket.create_connection(("127.0.0.1", port), timeout=STEP) as sock:
        sock.setblocking(False)
        conn = SSL.Connection(_pyopenssl_context(pki, server=False), sock)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        _ssl_io(sock, conn.do_handshake, deadline)
        assert conn.get_protocol_version_name() == "TLSv1.3"
        group = conn.get_group_name()
        _ssl_io(sock, lambda: conn.sendall(payload), deadline)
        echoed = b""
        while len(echoed) < len(payload):
            echoed += _ssl_io(sock, lambda: conn.recv(65536), deadline)
        _ssl_io(sock, conn.shutdown, deadline)  # close_notify: the echo ends in turn
        echoed += _ssl_read_all(conn, sock, deadline)
        return group, echoed


class PyOpenSSLServer:
    """A one-connection pyOpenSSL TLS 1.3 server in a thread: it reads until the client's
    close_notify, sends the data back upper-cased and closes."""

    def __init__(self, pki: DevPKI) -> None:
        self._ctx = _pyopenssl_context(pki, server=True)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(STEP)
        self.port: int = self._listener.getsockname()[1]
        self.group: str | None = None
        self.received = b""
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            deadline = time.monotonic() + STEP
            sock, _ = self._listener.accept()
            with sock:
                sock.setblocking(False)
                conn = SSL.Connection(self._ctx, sock)
                conn.set_accept_state()
                _ssl_io(sock, conn.do_handshake, deadline)
                self.group = conn.get_group_name()
                self.received = _ssl_read_all(conn, sock, deadline)
                _ssl_io(sock, lambda: conn.sendall(self.received.upper()), deadline)
                _ssl_io(sock, conn.shutdown, deadline)
        except BaseException as exc:  # reported by wait()
            self.error = exc

    def wait(self) -> None:
        self._thread.join(STEP + 2)
        assert not self._thread.is_alive(), "the pyOpenSSL server hangs"
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self._listener.close()


def test_pq_our_client_against_pyopenssl_server(pki: DevPKI) -> None:
    _need_pyopenssl_pq()
    server = PyOpenSSLServer(pki)
    try:
        done = _tcpls_connect(server.port, payload=b"kyber\n", cafile=pki.ca_file)
        server.wait()
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"KYBER\n"
    assert f"group: {PQ_GROUP}".encode() in done.stderr
    assert server.group == PQ_GROUP
    assert server.received == b"kyber\n"


def test_pq_pyopenssl_client_against_tcpls_serve(pki: DevPKI, tcpls_serve: int) -> None:
    _need_pyopenssl_pq()
    payload = _marker("mlkem")
    group, echoed = _pyopenssl_client(pki, tcpls_serve, payload)
    assert group == PQ_GROUP
    assert echoed == payload


def test_pq_pyopenssl_client_server_side_group(pki: DevPKI) -> None:
    """The same against an in-process server, whose session tells the group too."""
    _need_pyopenssl_pq()
    recorder = Recorder()

    async def run() -> None:
        async with await tcpls.serve(recorder, "127.0.0.1", 0, config=_server_config(pki)) as srv:
            payload = b"pq both ways\n"
            group, echoed = await asyncio.to_thread(_pyopenssl_client, pki, srv.port, payload)
            assert (group, echoed) == (PQ_GROUP, payload)
            (served,) = recorder.sessions
            assert served.group == PQ_GROUP and not served.tcpls_negotiated

    _run(run)


def test_pq_is_the_default_between_tcpls_endpoints(pki: DevPKI) -> None:
    recorder = Recorder()

    async def run() -> None:
        async with await tcpls.serve(recorder, "127.0.0.1", 0, config=_server_config(pki)) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=_client_config(pki)) as s:
                await _echo_line(s, b"hybrid\n")
                assert s.tcpls_negotiated and s.group == PQ_GROUP
                (served,) = recorder.sessions
                assert served.tcpls_negotiated and served.group == PQ_GROUP

    _run(run)


# ---------------------------------------------------------------------- 3. Resumption


def test_resumption_s_client_sess_out_sess_in(
    pki: DevPKI, tcpls_serve: int, tmp_path: Path
) -> None:
    sess = tmp_path / "s_client.sess"
    # the echo comes after the tickets (sent right after the handshake), so s_client has
    # stored one by the time it prints the echo (it reports it when it exits)
    code, first = _s_client(pki, tcpls_serve, "-sess_out", str(sess), payload=_marker("one"))
    assert code == 0, first[-3000:]
    assert b"Post-Handshake New Session Ticket arrived" in first
    assert b"New, TLSv1.3" in first
    assert sess.exists() and sess.stat().st_size > 0
    code, second = _s_client(pki, tcpls_serve, "-sess_in", str(sess), payload=_marker("two"))
    assert code == 0, second[-3000:]
    assert b"Reused, TLSv1.3" in second, second[-3000:]


def test_resumption_gnutls_cli_resume(pki: DevPKI, tcpls_serve: int) -> None:
    cli = _need("gnutls-cli")
    done = subprocess.run(
        [
            cli,
            "--x509cafile",
            str(pki.ca_file),
            "--priority",
            GNUTLS_TLS13,
            "--resume",
            "-p",
            str(tcpls_serve),
            "localhost",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=STEP + 4,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert b"Resume Handshake was completed" in out
    assert b"This is a resumed session" in out, out[-3000:]


@pytest.mark.parametrize("peer", ["openssl", "gnutls"])
def test_resumption_tcpls_connect_session_file(peer: str, pki: DevPKI, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / f"{peer}.log"
    argv = _s_server(pki, port, "-rev") if peer == "openssl" else _gnutls_serv(pki, port)
    expected = b"emuser\n" if peer == "openssl" else b"resume\n"  # s_server -rev reverses
    ticket_file = tmp_path / "tcpls.session"
    with _server(argv, port, log):
        first = _tcpls_connect(
            port, "--session", str(ticket_file), payload=b"resume\n", cafile=pki.ca_file
        )
        assert first.returncode == 0, first.stderr
        assert first.stdout == expected
        assert b"resumed: no" in first.stderr
        assert ticket_file.exists() and ticket_file.stat().st_size > 0, first.stderr
        second = _tcpls_connect(
            port, "--session", str(ticket_file), payload=b"resume\n", cafile=pki.ca_file
        )
        assert second.returncode == 0, second.stderr
        assert second.stdout == expected
        assert b"resumed: yes" in second.stderr, second.stderr


def test_resumption_between_tcpls_endpoints_then_join(pki: DevPKI) -> None:
    """A resumed session is still TCPLS: it has join tokens, and a joined connection alone
    carries the data once the first one is retired."""
    recorder = Recorder()

    async def run() -> None:
        async with await tcpls.serve(recorder, "127.0.0.1", 0, config=_server_config(pki)) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=_client_config(pki)) as s:
                await _echo_line(s, b"full handshake\n")
                assert s.tcpls_negotiated and not s.session_resumed
                ticket = s.session_ticket
            assert ticket is not None
            config = dataclasses.replace(_client_config(pki), session_ticket=ticket)
            async with tcpls.connect("127.0.0.1", srv.port, config=config) as s:
                assert s.session_resumed and s.tcpls_negotiated
                while len(recorder.sessions) < 2:  # the handler starts on our Finished
                    await asyncio.sleep(0.005)  # (bounded by _run's timeout)
                served = recorder.sessions[1]
                assert served.session_resumed and served.tcpls_negotiated
                assert s.spare_tokens > 0
                info = await s.join("127.0.0.1", srv.port, timeout=STEP)
                assert s.connections_joined == 1
                await s.retire(0, timeout=STEP)
                assert [c.id for c in s.connections] == [info.id]
                await _echo_line(s, b"resumed, over the joined connection\n")
                assert served.connections_joined == 1

    _run(run)


# ----------------------------------------------------------------- 4. Client certificates


def _make_client_cert(ca: DevPKI, directory: Path) -> ClientCert:
    """An ECDSA client certificate signed by ``ca``, with a subjectAltName and the
    clientAuth extended key usage."""
    ca_cert = x509.load_pem_x509_certificate(ca.ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.ca_key_file.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CLIENT_CN)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("client.tcpls.test")]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "client.pem", directory / "client.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return ClientCert(cert_file, key_file, cert)


@pytest.fixture(scope="module")
def client_cert(pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> ClientCert:
    return _make_client_cert(pki, tmp_path_factory.mktemp("client-cert"))


@pytest.fixture(scope="module")
def foreign_client_cert(other_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> ClientCert:
    """A client certificate from a CA the servers do not trust."""
    return _make_client_cert(other_pki, tmp_path_factory.mktemp("foreign-client-cert"))


@pytest.fixture(scope="module")
def tcpls_serve_client_ca(pki: DevPKI, logs: Path) -> Iterator[int]:
    """``tcpls serve --echo --client-ca CA``: every client must show a certificate."""
    with _tcpls_serve(
        pki, logs / "tcpls-serve-client-ca.log", "--client-ca", str(pki.ca_file)
    ) as port:
        yield port


def test_client_cert_s_client_accepted_by_tcpls_serve(
    pki: DevPKI, client_cert: ClientCert, tcpls_serve_client_ca: int
) -> None:
    line = _marker("client-cert")
    code, out = _s_client(
        pki,
        tcpls_serve_client_ca,
        "-cert",
        str(client_cert.cert_file),
        "-key",
        str(client_cert.key_file),
        payload=line,
    )
    assert code == 0, out[-3000:]
    assert out.count(line) == 1  # echoed: the server accepted the certificate
    assert b"alert" not in out


def test_client_cert_missing_is_certificate_required(
    pki: DevPKI, tcpls_serve_client_ca: int
) -> None:
    code, out = _s_client(pki, tcpls_serve_client_ca, payload=_marker("no-cert"))
    assert code != 0
    assert b"alert certificate required" in out, out[-3000:]
    assert b"alert number 116" in out


def test_client_cert_from_another_ca_is_unknown_ca(
    pki: DevPKI, foreign_client_cert: ClientCert, tcpls_serve_client_ca: int
) -> None:
    code, out = _s_client(
        pki,
        tcpls_serve_client_ca,
        "-cert",
        str(foreign_client_cert.cert_file),
        "-key",
        str(foreign_client_cert.key_file),
        payload=_marker("foreign"),
    )
    assert code != 0
    assert b"alert unknown ca" in out, out[-3000:]
    assert b"alert number 48" in out


def test_client_cert_tcpls_connect_accepted_by_s_server(
    pki: DevPKI, client_cert: ClientCert, tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "s_server.log"
    argv = _s_server(pki, port, "-Verify", "1", "-CAfile", str(pki.ca_file),
                     "-verify_return_error", "-rev")  # fmt: skip
    with _server(argv, port, log):
        done = _tcpls_connect(
            port,
            "--cert",
            str(client_cert.cert_file),
            "--key",
            str(client_cert.key_file),
            payload=b"mutual\n",
            cafile=pki.ca_file,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"lautum\n"
        text = _wait_in_file(log, "CONNECTION CLOSED")
    assert f"CN = {CLIENT_CN}" in text  # s_server prints the client's subject
    assert "Verification: OK" in text


def test_client_cert_from_another_ca_refused_by_s_server(
    pki: DevPKI, foreign_client_cert: ClientCert, tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "s_server.log"
    argv = _s_server(pki, port, "-Verify", "1", "-CAfile", str(pki.ca_file),
                     "-verify_return_error", "-rev")  # fmt: skip
    with _server(argv, port, log):
        done = _tcpls_connect(
            port,
            "--cert",
            str(foreign_client_cert.cert_file),
            "--key",
            str(foreign_client_cert.key_file),
            payload=b"foreign\n",
            cafile=pki.ca_file,
        )
    assert done.returncode != 0
    assert done.stdout == b""
    assert b"unknown_ca" in done.stderr, done.stderr


def test_client_cert_seen_by_in_process_server(pki: DevPKI, client_cert: ClientCert) -> None:
    """Library to library, in TCPLS mode: the server's session holds the client's
    certificate (and the client's holds the server's)."""
    recorder = Recorder()
    server_cert = x509.load_pem_x509_certificate(pki.cert_file.read_bytes())

    async def run() -> None:
        config = _server_config(pki, client_cafile=pki.ca_file)
        async with await tcpls.serve(recorder, "127.0.0.1", 0, config=config) as srv:
            client = _client_config(pki, client_cert)
            async with tcpls.connect("127.0.0.1", srv.port, config=client) as s:
                await _echo_line(s, b"who am i\n")
                assert s.tcpls_negotiated
                assert s.peer_certificate == server_cert
                (served,) = recorder.sessions
                assert served.peer_certificate == client_cert.cert
                assert served.peer_certificate is not None
                assert served.peer_certificate.subject.rfc4514_string() == f"CN={CLIENT_CN}"

    _run(run)


def test_client_cert_server_still_resumes(pki: DevPKI, client_cert: ClientCert) -> None:
    """A server that requires client certificates resumes a session of a client that
    showed one (the PSK stands for the certificate: none is asked again)."""
    recorder = Recorder()

    async def run() -> None:
        config = _server_config(pki, client_cafile=pki.ca_file)
        async with await tcpls.serve(recorder, "127.0.0.1", 0, config=config) as srv:
            client = _client_config(pki, client_cert)
            async with tcpls.connect("127.0.0.1", srv.port, config=client) as s:
                await _echo_line(s, b"first\n")
                ticket = s.session_ticket
            assert ticket is not None
            resumed = dataclasses.replace(client, session_ticket=ticket)
            async with tcpls.connect("127.0.0.1", srv.port, config=resumed) as s:
                await _echo_line(s, b"second\n")
                assert s.session_resumed and s.tcpls_negotiated
                assert recorder.sessions[1].session_resumed

    _run(run)
