"""A session that ends cleanly, with several connections, does not try to reconnect."""

from __future__ import annotations

import asyncio
import logging

import pytest

import tcpls
from tcpls.apps.echo import echo_handler
from tcpls.devcert import DevPKI


@pytest.mark.parametrize("closer", ["client", "server"])
def test_a_clean_close_with_joined_connections_does_not_reconnect(
    pki: DevPKI, caplog: pytest.LogCaptureFixture, closer: str
) -> None:
    server_config = tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
    client_config = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")

    async def one_stream(session: tcpls.Session) -> None:
        """Echo the first stream, then end the session (the server closes first)."""
        reader, writer = await session.accept_stream()
        writer.write(await reader.read())
        writer.write_eof()
        await writer.drain()

    handler = echo_handler if closer == "client" else one_stream

    async def run() -> None:
        async with await tcpls.serve(handler, "127.0.0.1", 0, config=server_config) as server:
            session = await tcpls.connect("127.0.0.1", server.port, config=client_config)
            await session.join("127.0.0.1", server.port)
            await session.join("127.0.0.1", server.port)
            reader, writer = await session.open_stream()
            writer.write(b"ping")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"ping"
            if closer == "server":
                await asyncio.sleep(0.3)  # the server's close reaches every connection
            await session.aclose(timeout=5)
            await asyncio.sleep(0.2)
            assert session.error is None

    with caplog.at_level(logging.INFO, logger="tcpls"):
        asyncio.run(run())
    assert "reconnect" not in caplog.text
