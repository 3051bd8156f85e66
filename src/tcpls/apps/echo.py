"""The echo application: ``tcpls serve --echo`` sends every stream back to its sender."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from tcpls.errors import TCPLSError

if TYPE_CHECKING:
    from tcpls.aio.session import Session
    from tcpls.aio.streams import StreamReader, StreamWriter

__all__ = ["echo_handler", "echo_stream"]

# the command line's logger, under which these lines were always logged (``--debug`` names it)
log = logging.getLogger("tcpls.cli")


async def echo_stream(reader: StreamReader, writer: StreamWriter) -> None:
    """Send back every byte of a stream on itself; end our direction after the peer's FIN."""
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.wait_closed()
    except (TCPLSError, OSError) as exc:
        log.info("stream %d ended: %s", reader.stream_id, exc)


async def echo_handler(session: Session) -> None:
    """Echo every stream of a session."""
    async with asyncio.TaskGroup() as group:
        async for reader, writer in session:
            group.create_task(echo_stream(reader, writer))
