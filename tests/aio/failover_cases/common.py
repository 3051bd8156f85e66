"""What the failover cases share: a test PKI and server, and moving bytes through a proxy.

The cases run as modules from the repository root (``python -m
tests.aio.failover_cases.NAME``), each printing what happened and exiting 0 when the
session recovered as it must.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import tcpls
from tcpls.devcert import DevPKI, make_test_pki


async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy ``source`` to ``sink`` until EOF or an error, then abort ``sink``."""
    with contextlib.suppress(OSError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    sink.transport.abort()


@contextlib.asynccontextmanager
async def idle_server(
    directory: str, **config: object
) -> AsyncIterator[tuple[tcpls.Server, DevPKI]]:
    """A tcpls server whose sessions just wait to be closed, and the PKI it uses."""
    pki = make_test_pki(Path(directory) / "pki")

    async def handler(session: tcpls.Session) -> None:
        await session.wait_closed()

    server_config = tcpls.ServerConfig(
        certfile=str(pki.cert_file),
        keyfile=str(pki.key_file),
        **config,  # type: ignore[arg-type]
    )
    server = await tcpls.serve(handler, "127.0.0.1", 0, config=server_config)
    try:
        yield server, pki
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 3)
