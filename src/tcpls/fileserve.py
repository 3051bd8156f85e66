"""File transfer over tcpls: ``tcpls serve --files DIR`` and ``tcpls get``.

The protocol is one line per stream: the client writes ``GET /path\\r\\n``, the
server sends the file's bytes and ends the stream (FIN). A path that does not
name a readable regular file under the served directory gets an empty stream
(and a warning in the server's log). Each file is streamed in 1 MiB pieces
with backpressure, so serving a large file needs little memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

from tcpls.aio.session import Session
from tcpls.aio.streams import StreamReader, StreamWriter
from tcpls.errors import ConfigurationError, TCPLSError

__all__ = ["DownloadResult", "download", "make_file_handler", "resolve_path"]

logger = logging.getLogger(__name__)

_MAX_REQUEST = 4096
_CHUNK = 1 << 20


def resolve_path(root: Path, request_path: str) -> Path | None:
    """The file under ``root`` that ``request_path`` names, or ``None`` if it escapes ``root``."""
    relative = request_path.lstrip("/")
    candidate = (root / relative).resolve()
    try:
        candidate.relative_to(root)
    except ValueError:
        return None
    return candidate


def make_file_handler(directory: str | os.PathLike[str]) -> Callable[[Session], Awaitable[None]]:
    """A session handler serving the files under ``directory``."""
    root = Path(directory).resolve()
    if not root.is_dir():
        raise ConfigurationError(f"not a directory: {directory}")

    async def serve_stream(reader: StreamReader, writer: StreamWriter) -> None:
        with contextlib.suppress(TCPLSError, OSError, asyncio.LimitOverrunError):
            line = await reader.readuntil(b"\n")
            if len(line) > _MAX_REQUEST:
                raise ValueError("request too long")
            await _send_file(root, line, writer)

    async def handler(session: Session) -> None:
        async with asyncio.TaskGroup() as group:
            async for reader, writer in session:
                group.create_task(serve_stream(reader, writer))

    return handler


async def _send_file(root: Path, line: bytes, writer: StreamWriter) -> None:
    text = line.decode("utf-8", "replace").strip()
    method, _, path = text.partition(" ")
    target = resolve_path(root, path) if method == "GET" and path.startswith("/") else None
    handle: BinaryIO | None = None
    if target is None:
        logger.warning("bad request %r", text[:200])
    else:
        try:
            if target.is_file():
                handle = open(target, "rb")  # noqa: SIM115 - closed below
            else:
                logger.warning("no such file: %s", path)
        except OSError as exc:
            logger.warning("cannot read %s: %s", path, exc.strerror)
    try:
        if handle is not None:
            loop = asyncio.get_running_loop()
            while chunk := await loop.run_in_executor(None, handle.read, _CHUNK):
                writer.write(chunk)
                await writer.drain()
        writer.write_eof()
        await writer.wait_closed()
    finally:
        if handle is not None:
            handle.close()


class DownloadResult:
    """What :func:`download` received."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.bytes = 0
        self.seconds = 0.0
        self.sha256 = ""


async def download(
    session: Session,
    path: str,
    out: BinaryIO,
    *,
    on_progress: Callable[[int], Any] | None = None,
) -> DownloadResult:
    """Fetch ``path`` over a new stream of ``session`` into ``out``."""
    if not path.startswith("/"):
        path = "/" + path
    reader, writer = await session.open_stream()
    writer.write(f"GET {path}\r\n".encode())
    writer.write_eof()
    digest = hashlib.sha256()
    result = DownloadResult(path)
    start = time.monotonic()
    loop = asyncio.get_running_loop()
    while chunk := await reader.read(_CHUNK):
        digest.update(chunk)
        await loop.run_in_executor(None, out.write, chunk)
        result.bytes += len(chunk)
        if on_progress is not None:
            on_progress(result.bytes)
    result.seconds = time.monotonic() - start
    result.sha256 = digest.hexdigest()
    return result
