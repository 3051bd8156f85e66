"""The one-line messages of the client commands: who is at fault, in words, never a repr.

The first three tests describe what a person should read for a CA file that is
not PEM, a certificate for another name and a server that does not speak TLS.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpls.cli.errors import describe_error
from tcpls.cli.logs import configure_logging
from tcpls.devcert import DevPKI
from tcpls.errors import (
    CertificateVerificationError,
    ConfigurationError,
    ConnectionClosedError,
    DecodeError,
    PeerAlert,
    TCPLSError,
)
from tests.aio.cli_util import TCPLS, running_server
from tests.helpers import free_port, wait_port


@pytest.fixture
def echo_port(pki: DevPKI) -> Iterator[int]:
    with running_server(pki, "--echo") as port:
        yield port


@pytest.fixture
def http_port(tmp_path: Path) -> Iterator[int]:
    """``python -m http.server``: a plain HTTP server, no TLS."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc=proc)
        yield port
    finally:
        proc.kill()
        proc.wait()


def _line(*args: str) -> str:
    proc = subprocess.run([*TCPLS, *args], input=b"", capture_output=True, timeout=30)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.decode()
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("content", [b"", b"this is not a certificate\n"], ids=["empty", "text"])
@pytest.mark.parametrize("command", ["connect", "get"])
def test_bad_ca_file_is_named(
    echo_port: int, tmp_path: Path, content: bytes, command: str
) -> None:
    cafile = tmp_path / "ca.pem"
    cafile.write_bytes(content)
    extra = ["/f", "-o", str(tmp_path / "out")] if command == "get" else []
    line = _line(command, "127.0.0.1", str(echo_port), *extra, "--cafile", str(cafile))
    assert str(cafile) in line
    assert "protocol error" not in line


@pytest.mark.parametrize("command", ["connect", "get"])
def test_name_mismatch_is_explained(
    echo_port: int, pki: DevPKI, tmp_path: Path, command: str
) -> None:
    extra = ["/f", "-o", str(tmp_path / "out")] if command == "get" else []
    line = _line(
        command, "127.0.0.1", str(echo_port), *extra,
        "--cafile", str(pki.ca_file), "--server-name", "wrong.example",
    )  # fmt: skip
    assert "wrong.example" in line
    # "... does not match wrong.example" or "... valid for localhost, not for wrong.example"
    assert re.search(r"(does not|doesn't) match|not (valid )?for wrong\.example", line), line
    assert "DNSPattern" not in line and "IPAddressPattern" not in line
    assert "(pattern=" not in line


@pytest.mark.parametrize("command", ["connect", "get"])
def test_http_server_is_not_a_tls_server(http_port: int, tmp_path: Path, command: str) -> None:
    extra = ["/f", "-o", str(tmp_path / "out")] if command == "get" else []
    line = _line(command, "127.0.0.1", str(http_port), *extra, "--insecure")
    assert "not a TLS server" in line
    assert "exceeds" not in line


# ---------------------------------------------------------------- describe_error


@pytest.mark.parametrize(
    "exc",
    [
        TCPLSError(),
        ConnectionClosedError(),
        ConfigurationError(),
        DecodeError(),
        PeerAlert(40),
        CertificateVerificationError("certificate verification failed: unknown CA"),
        OSError(),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        TimeoutError(),
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        TCPLSError("two\nlines"),
    ],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("target", ["", "example.net:443"])
def test_describe_error_is_words(exc: BaseException, target: str) -> None:
    text = describe_error(exc, target)
    assert text.strip() == text and text
    assert not text.endswith(":")
    assert "\n" not in text
    assert type(exc).__name__ not in text
    assert "Error(" not in text and "<" not in text


# ---------------------------------------------------------------------- logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    asyncio_level = logging.getLogger("asyncio").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("asyncio").setLevel(asyncio_level)


def test_warnings_are_one_clean_line(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(debug=False)
    logger = logging.getLogger("tcpls.aio.session")
    logger.warning("every connection to the server failed; reconnecting for up to %g s", 2.0)
    logger.info("not shown without --debug")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.warning("with an exception", exc_info=True)
    assert capsys.readouterr().err == (
        "tcpls: every connection to the server failed; reconnecting for up to 2 s\n"
        "tcpls: with an exception\n"
    )


def test_debug_keeps_the_details(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(debug=True)
    logging.getLogger("tcpls.aio.session").info("joined %d", 1)
    assert capsys.readouterr().err == "tcpls: INFO tcpls.aio.session: joined 1\n"


_SERVER = """
import asyncio, sys, time
import tcpls

async def handler(session):
    async for reader, writer in session:
        if sys.argv[4] == "short":  # reads a little, answers, ends the session
            await reader.readexactly(5)
            writer.write(b"enough\\n")
            writer.write_eof()
            await session.aclose()
        else:  # answers, then hangs: no ACK, no close_notify
            writer.write(b"bye\\n")
            writer.write_eof()
            await asyncio.sleep(0.3)
            time.sleep(60)

async def main():
    config = tcpls.ServerConfig(certfile=sys.argv[2], keyfile=sys.argv[3])
    server = await tcpls.serve(handler, "127.0.0.1", int(sys.argv[1]), config=config)
    await server.serve_forever()

asyncio.run(main())
"""


@contextlib.contextmanager
def _scripted_server(pki: DevPKI, behaviour: str) -> Iterator[int]:
    """:data:`_SERVER` with ``behaviour`` on a free loopback port, listening; killed after."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(port), str(pki.cert_file), str(pki.key_file),
         behaviour],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(port, proc=server)
        yield port
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize(
    ("behaviour", "stdin", "message"),
    [
        ("short", b"x" * (8 << 20), "ended the session before all of standard input was sent"),
        ("hang", b"hello", "did not finish closing the session"),
    ],
)
def test_connect_says_when_what_it_sent_may_not_have_arrived(
    pki: DevPKI, behaviour: str, stdin: bytes, message: str
) -> None:
    """``tcpls connect`` with standard input from a pipe: a server that ends the session
    before reading all of it, or that never finishes the close (no ACK, no close_notify),
    is one line and exit 1, not a silent 0 (the data may not have arrived)."""
    with _scripted_server(pki, behaviour) as port:
        proc = subprocess.run(
            [*TCPLS, "connect", "127.0.0.1", str(port), "--cafile", str(pki.ca_file),
             "--server-name", "localhost"],
            input=stdin, capture_output=True, timeout=30,
        )  # fmt: skip
    err = proc.stderr.decode().strip()
    assert proc.returncode == 1, (proc.returncode, err)
    assert message in err and f"127.0.0.1:{port}" in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_connect_exits_0_when_all_it_read_was_sent_though_stdin_stays_open(
    pki: DevPKI,
) -> None:
    """``(echo hello; sleep 30) | tcpls connect``: the server reads the five bytes,
    answers and ends the session while standard input is still open but holds nothing
    more: nothing was lost, the command exits 0 at once."""
    with _scripted_server(pki, "short") as port:
        proc = subprocess.Popen(
            [*TCPLS, "connect", "127.0.0.1", str(port), "--cafile", str(pki.ca_file),
             "--server-name", "localhost"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdin is not None
        proc.stdin.write(b"hello")
        proc.stdin.flush()  # and left open
        proc.wait(timeout=20)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.stdin.close()
    assert proc.returncode == 0, err
    assert out == b"enough\n"
