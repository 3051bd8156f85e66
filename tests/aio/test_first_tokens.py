"""Joins right after the handshake, before the server's New Tokens have arrived."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

import tcpls
from tcpls.devcert import DevPKI
from tcpls.errors import TCPLSError

#: One-way delay of the proxy (a 60 ms round trip).
DELAY = 0.03


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            await asyncio.sleep(DELAY)
            writer.write(data)
    except OSError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def _slow_path(port: int) -> AsyncIterator[int]:
    """A TCP proxy to 127.0.0.1:``port`` that delays each read by :data:`DELAY`."""

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:
        yield proxy.sockets[0].getsockname()[1]
    finally:
        proxy.close()


async def _idle(session: tcpls.Session) -> None:
    async for _reader, _writer in session:
        pass


def _configs(
    pki: DevPKI, max_connections: int = 4
) -> tuple[tcpls.ServerConfig, tcpls.ClientConfig]:
    return (
        tcpls.ServerConfig(
            certfile=str(pki.cert_file), keyfile=str(pki.key_file), max_connections=max_connections
        ),
        tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost"),
    )


def test_joins_right_after_connect_wait_for_the_tokens_on_their_way(pki: DevPKI) -> None:
    """At connect() the client holds the first token only; two joins at once both
    succeed: the second waits for the New Tokens the server sends a round trip later."""
    server_config, client_config = _configs(pki)

    async def run() -> None:
        async with await tcpls.serve(_idle, "127.0.0.1", 0, config=server_config) as srv:
            async with _slow_path(srv.port) as port:
                async with tcpls.connect("127.0.0.1", port, config=client_config) as session:
                    assert session.spare_tokens == 1  # the one in tcpls_token
                    first, second = await asyncio.gather(
                        session.join("127.0.0.1", port), session.join("127.0.0.1", port)
                    )
                    assert {first.id, second.id} == {1, 2}
                    assert len(session.connections) == 3

    asyncio.run(run())


def test_a_join_past_the_servers_limit_still_fails_at_once(pki: DevPKI) -> None:
    """Once the first round trips are over, no spare token means the server's limit: the
    join fails at once with a clear error, not after its timeout."""
    server_config, client_config = _configs(pki, max_connections=2)

    async def run() -> None:
        async with await tcpls.serve(_idle, "127.0.0.1", 0, config=server_config) as srv:
            async with _slow_path(srv.port) as port:
                async with tcpls.connect("127.0.0.1", port, config=client_config) as session:
                    await session.join("127.0.0.1", port)
                    await asyncio.sleep(1.0)  # well past the first round trips
                    started = time.monotonic()
                    with pytest.raises(TCPLSError, match="no join token left"):
                        await session.join("127.0.0.1", port, timeout=10)
                    assert time.monotonic() - started < 0.1

    asyncio.run(run())
