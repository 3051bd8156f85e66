"""A peer whose application stops reading is slow, not gone: its connection stays."""

from __future__ import annotations

import asyncio
import hashlib
import os

import tcpls
from tcpls.devcert import DevPKI


def test_a_peer_that_stops_reading_keeps_its_connection(pki: DevPKI) -> None:
    """The server's application does not read for 3 s: its stream buffer fills, its
    session stops reading the socket, and what the client sends next (a Ping too) waits in
    the server's kernel, unanswered. TCP delivered it, so the client must not declare the
    connection dead (it used to, after ping_after + ping_timeout, and join again)."""
    fast = tcpls.SessionTuning(ping_after=0.3, ping_timeout=0.3)
    server_config = tcpls.ServerConfig(
        certfile=str(pki.cert_file), keyfile=str(pki.key_file), tuning=fast
    )
    client_config = tcpls.ClientConfig(
        cafile=str(pki.ca_file), server_name="localhost", tuning=fast
    )
    payload = os.urandom(3 << 20)

    async def slow_reader(session: tcpls.Session) -> None:
        async for reader, writer in session:
            await asyncio.sleep(3.0)
            digest = hashlib.sha256()
            while chunk := await reader.read(1 << 20):
                digest.update(chunk)
            writer.write(digest.hexdigest().encode())
            writer.write_eof()

    async def run() -> None:
        async with await tcpls.serve(slow_reader, "127.0.0.1", 0, config=server_config) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=client_config) as session:
                reader, writer = await session.open_stream()
                writer.write(payload)
                writer.write_eof()
                answer = await asyncio.wait_for(reader.read(), 20)
                assert answer.decode() == hashlib.sha256(payload).hexdigest()
                assert [c.id for c in session.connections] == [0]  # never replaced

    asyncio.run(run())
