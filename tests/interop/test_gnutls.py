"""Interop with GnuTLS (gnutls-cli and gnutls-serv): plain TLS 1.3 fallback both ways."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

import tcpls
from tcpls.devcert import DevPKI
from tests.helpers import ThreadServer, free_port, wait_port

pytestmark = pytest.mark.interop

_TLS13_ONLY = "NORMAL:-VERS-ALL:+VERS-TLS1.3"


def _gnutls(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (make test installs gnutls-bin as root)")
    return path


@pytest.fixture
def our_server(pki: DevPKI) -> Iterator[ThreadServer]:
    config = tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
    with ThreadServer(config) as srv:
        yield srv


def test_gnutls_cli_against_our_server(pki: DevPKI, our_server: ThreadServer) -> None:
    cli = _gnutls("gnutls-cli")
    proc = subprocess.Popen(
        [
            cli,
            "--x509cafile",
            str(pki.ca_file),
            "--priority",
            _TLS13_ONLY,
            "-p",
            str(our_server.port),
            "localhost",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    marker = os.urandom(8).hex().encode()
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        seen = b""
        deadline = time.monotonic() + 10
        sent = False
        while marker + b"\n" not in seen.split(b"- Simple Client Mode:")[-1]:
            if time.monotonic() > deadline:
                raise AssertionError(f"no echo from our server; gnutls-cli said {seen!r}")
            if not sent and b"Handshake was completed" in seen:
                proc.stdin.write(marker + b"\n")
                proc.stdin.flush()
                sent = True
            chunk = proc.stdout.read(65536)
            if chunk:
                seen += chunk
            else:
                time.sleep(0.02)
        assert b"TLS1.3" in seen
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def gnutls_server(pki: DevPKI) -> Iterator[int]:
    serv = _gnutls("gnutls-serv")
    port = free_port()
    proc = subprocess.Popen(
        [
            serv,
            "--echo",
            "--x509certfile",
            str(pki.cert_file),
            "--x509keyfile",
            str(pki.key_file),
            "--priority",
            _TLS13_ONLY,
            "-p",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield port
    finally:
        proc.kill()
        proc.wait()


def test_our_client_against_gnutls_serv(pki: DevPKI, gnutls_server: int) -> None:
    config = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")

    async def run() -> None:
        async with tcpls.connect("127.0.0.1", gnutls_server, config=config) as session:
            assert not session.tcpls_negotiated  # GnuTLS ignores the tcpls extension
            reader, writer = await session.open_stream()
            payload = os.urandom(100_000).hex().encode()[:100_000] + b"\n"
            writer.write(payload)
            await writer.drain()
            echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
            assert echoed == payload

    asyncio.run(run())
