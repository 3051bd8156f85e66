"""Python's ``ssl`` module against our server (plain TLS 1.3 fallback), and ours against its."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import ssl
from collections.abc import Iterator

import pytest

import tcpls
from tcpls.devcert import DevPKI
from tests.helpers import ThreadServer


@pytest.fixture
def our_server(pki: DevPKI) -> Iterator[ThreadServer]:
    config = tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
    with ThreadServer(config) as srv:
        yield srv


def _client_context(pki: DevPKI) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def test_python_ssl_client_against_our_server(pki: DevPKI, our_server: ThreadServer) -> None:
    payload = os.urandom(300_000)
    with socket.create_connection(("127.0.0.1", our_server.port)) as raw:
        with _client_context(pki).wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.3"
            # One thread, non-blocking: an SSL object used by two threads at once (one
            # reading, one writing) can crash OpenSSL (this test once died of it).
            tls.setblocking(False)
            received = bytearray()
            view, sent = memoryview(payload), 0
            while len(received) < len(payload):
                writing = [tls] if sent < len(payload) else []
                readable, writable, _ = select.select([tls], writing, [], 20)
                assert readable or writable or tls.pending(), "the echo stalled"
                if readable or tls.pending():
                    with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        chunk = tls.recv(65536)
                        if not chunk:
                            break
                        received.extend(chunk)
                if writable and sent < len(payload):
                    with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        sent += tls.send(view[sent : sent + 16384])
    assert bytes(received) == payload


def test_python_ssl_asyncio_client(pki: DevPKI, our_server: ThreadServer) -> None:
    async def run() -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", our_server.port, ssl=_client_context(pki), server_hostname="localhost"
        )
        writer.write(b"line one\nline two\n")
        await writer.drain()
        assert await reader.readline() == b"line one\n"
        assert await reader.readline() == b"line two\n"
        writer.close()
        await writer.wait_closed()

    asyncio.run(run())


def test_our_client_against_python_ssl_server(pki: DevPKI) -> None:
    """A stdlib asyncio TLS server: we fall back to plain TLS and exchange data."""

    async def run() -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(pki.cert_file), str(pki.key_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            data = await r.readline()
            w.write(data.upper())
            await w.drain()
            w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        config = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
        async with server, tcpls.connect("127.0.0.1", port, config=config) as session:
            assert not session.tcpls_negotiated
            reader, writer = await session.open_stream()
            writer.write(b"shout\n")
            assert await asyncio.wait_for(reader.read(), 10) == b"SHOUT\n"

    asyncio.run(run())
