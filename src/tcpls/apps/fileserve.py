"""File transfer over tcpls: ``tcpls serve --files DIR`` and ``tcpls get``.

One file per stream. The client writes one request line and ends its
direction (FIN)::

    GET /path\\r\\n

The server answers with one header line, then ends the stream (FIN):

* ``OK <size>\\r\\n`` followed by exactly ``size`` bytes, the file's content.
  ``size`` is a decimal number of at most 20 digits.
* ``ERR <code> <reason>\\r\\n`` and nothing else. The codes are ``400`` (a bad
  request: not ``GET /path``, or too long), ``404`` (no regular file of that
  name under the served directory, paths that leave it included) and ``500``
  (the file exists but the server could not read it). ``reason`` is a short
  UTF-8 text for people.

The request line and the header line are each at most 4096 and 512 bytes, CRLF
included; neither end buffers more than that while looking for the line end,
so a hostile peer cannot make the other one hold an unbounded line.

With the size in the header the client tells the cases apart: fewer bytes than
announced before the FIN, or the session failing before the end, is a
truncation (:class:`TransferTruncated`); an ``ERR`` line is the server's
refusal (:class:`FileNotFoundOnServer`, :class:`ServerReadError`,
:class:`FileRequestRejected`); anything else is a peer that is not a tcpls
file server (:class:`NotAFileServer`). The server sends the file in 1 MiB
pieces with backpressure, so serving a large file needs little memory; if the
file shrinks or a read fails midway, the server ends the stream early and the
client sees a truncation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from tcpls.aio.session import Session
from tcpls.aio.streams import StreamReader, StreamWriter
from tcpls.errors import ConfigurationError, TCPLSError

__all__ = [
    "DownloadResult",
    "FileNotFoundOnServer",
    "FileRequestRejected",
    "FileServerError",
    "FileTransferError",
    "NotAFileServer",
    "OutputError",
    "ServerReadError",
    "TransferTruncated",
    "download",
    "file_request",
    "make_file_handler",
    "resolve_path",
]

# named as before the move to tcpls.apps, so that --debug lines and logging setups keep working
logger = logging.getLogger("tcpls.fileserve")

#: Longest request line, CRLF included.
MAX_REQUEST = 4096
#: Longest answer header line, CRLF included.
MAX_HEADER = 512
_CHUNK = 1 << 20
_OK = re.compile(rb"OK ([0-9]{1,20})\r\n")
_ERR = re.compile(rb"ERR ([0-9]{3}) ?([^\r\n]*)\r\n")


# ------------------------------------------------------------------------ errors


class FileTransferError(TCPLSError):
    """A file transfer failed; ``path`` is the file asked for."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class FileServerError(FileTransferError):
    """The server answered ``ERR <code> <reason>``."""

    def __init__(self, path: str, code: int, reason: str, message: str = "") -> None:
        super().__init__(
            path, message or f"the server refused {path}: {reason or 'no reason given'} ({code})"
        )
        self.code = code
        self.reason = reason


class FileNotFoundOnServer(FileServerError):
    """``ERR 404``: the server has no regular file of that name."""

    def __init__(self, path: str, reason: str = "") -> None:
        super().__init__(path, 404, reason, f"the server has no file {path}")


class ServerReadError(FileServerError):
    """``ERR 500``: the file exists but the server could not read it."""

    def __init__(self, path: str, reason: str = "") -> None:
        super().__init__(
            path, 500, reason, f"the server could not read {path}: {reason or 'no reason given'}"
        )


class FileRequestRejected(FileServerError):
    """``ERR 400``: the server found the request malformed."""

    def __init__(self, path: str, reason: str = "") -> None:
        super().__init__(
            path,
            400,
            reason,
            f"the server rejected the request for {path}: {reason or 'bad request'}",
        )


class TransferTruncated(FileTransferError):
    """The stream ended, or the session failed, before ``expected`` bytes arrived.

    ``received`` bytes did arrive (and were written out); ``cause`` is the
    session's error when the session failed rather than the stream ending early.
    """

    def __init__(
        self, path: str, received: int, expected: int, cause: BaseException | None = None
    ) -> None:
        message = (
            f"the transfer of {path} was cut short: "
            f"{format_size(received)} of {format_size(expected)} received"
        )
        if cause is not None and str(cause):
            message += f" ({cause})"
        super().__init__(path, message)
        self.received = received
        self.expected = expected
        self.cause = cause


class NotAFileServer(FileTransferError):
    """The peer answered something that is not a file transfer header, or nothing."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, f"the server is not a tcpls file server ({reason})")
        self.reason = reason


class OutputError(FileTransferError):
    """Writing the received bytes out failed (a local error: full disk, closed pipe)."""

    def __init__(self, path: str, error: OSError) -> None:
        self.strerror = error.strerror or str(error) or "write failed"
        super().__init__(path, f"cannot write the received data of {path}: {self.strerror}")


def format_size(count: int) -> str:
    """``632.0 MiB`` (binary units, one decimal) or ``17 B``."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


# ------------------------------------------------------------------------ lines


class _NoLine(Exception):
    """No line end within the limit (``too_long``) or before the stream ended."""

    def __init__(self, partial: bytes, too_long: bool) -> None:
        super().__init__("line too long" if too_long else "stream ended")
        self.partial = partial
        self.too_long = too_long


async def _read_line(reader: StreamReader, limit: int) -> tuple[bytes, bytes]:
    """One line of at most ``limit`` bytes (``\\n`` included) and the bytes read after it.

    Never holds more than ``limit + 1`` bytes: a peer sending no line end gets
    :class:`_NoLine` instead of filling memory.
    """
    buffer = bytearray()
    while True:
        chunk = await reader.read(limit + 1 - len(buffer))
        if not chunk:
            raise _NoLine(bytes(buffer), too_long=False)
        buffer += chunk
        end = buffer.find(b"\n")
        if end >= 0:
            if end + 1 > limit:
                raise _NoLine(bytes(buffer), too_long=True)
            return bytes(buffer[: end + 1]), bytes(buffer[end + 1 :])
        if len(buffer) > limit:
            raise _NoLine(bytes(buffer), too_long=True)


def _printable(text: str) -> str:
    """``text`` without control characters (a reason from the peer goes to a terminal)."""
    return "".join(c if c.isprintable() else "?" for c in text).strip()


# ------------------------------------------------------------------------ server


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
    """A session handler serving the files under ``directory`` (see the module docstring)."""
    root = Path(directory).resolve()
    if not root.is_dir():
        raise ConfigurationError(f"not a directory: {directory}")

    async def serve_stream(reader: StreamReader, writer: StreamWriter) -> None:
        # a client going away affects only its own stream
        with contextlib.suppress(TCPLSError, OSError):
            await _serve_request(root, reader, writer)

    async def handler(session: Session) -> None:
        async with asyncio.TaskGroup() as group:
            async for reader, writer in session:
                group.create_task(serve_stream(reader, writer))

    return handler


async def _refuse(writer: StreamWriter, code: int, reason: str) -> None:
    head = f"ERR {code} ".encode()
    text = _printable(reason).encode()[: MAX_HEADER - len(head) - 2]
    writer.write(head + text.decode("utf-8", "ignore").encode() + b"\r\n")
    writer.write_eof()
    await writer.wait_closed()


async def _serve_request(root: Path, reader: StreamReader, writer: StreamWriter) -> None:
    try:
        line, _ = await _read_line(reader, MAX_REQUEST)
    except _NoLine as exc:
        if exc.too_long:
            logger.warning("refused a request longer than %d bytes", MAX_REQUEST)
            await _refuse(writer, 400, f"request longer than {MAX_REQUEST} bytes")
        elif exc.partial:
            await _refuse(writer, 400, "request without a line end")
        return
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    method, _, path = text.partition(" ")
    if method != "GET" or not path.startswith("/"):
        logger.warning("bad request %s", _printable(text[:200]))
        await _refuse(writer, 400, "expected GET /path")
        return
    shown = _printable(path[:200])
    try:
        target = resolve_path(root, path)
        if target is None or not target.is_file():
            logger.warning("GET %s: no such file", shown)
            await _refuse(writer, 404, "no such file")
            return
        handle: BinaryIO = open(target, "rb")  # noqa: SIM115 - closed below
        try:
            size = _regular_file_size(handle)
        except BaseException:
            handle.close()
            raise
    except (ValueError, RuntimeError):  # a NUL byte in the path, a symbolic link loop
        logger.warning("GET %s: no such file", shown)
        await _refuse(writer, 404, "no such file")
        return
    except OSError as exc:
        reason = exc.strerror or "cannot open the file"
        logger.warning("GET %s: cannot read: %s", shown, reason)
        await _refuse(writer, 500, reason)
        return
    with handle:
        if size is None:
            logger.warning("GET %s: not a regular file", shown)
            await _refuse(writer, 404, "no such file")
            return
        writer.write(f"OK {size}\r\n".encode())
        await _send_body(handle, size, shown, writer)
    writer.write_eof()
    await writer.wait_closed()


def _regular_file_size(handle: BinaryIO) -> int | None:
    """The size of the open file, or ``None`` when it is not a regular file."""
    info = os.fstat(handle.fileno())
    return info.st_size if stat.S_ISREG(info.st_mode) else None


async def _send_body(handle: BinaryIO, size: int, path: str, writer: StreamWriter) -> None:
    """Send ``size`` bytes of ``handle``; stop early (a truncation for the client) on failure."""
    loop = asyncio.get_running_loop()
    left = size
    while left > 0:
        try:
            chunk = await loop.run_in_executor(None, handle.read, min(_CHUNK, left))
        except OSError as exc:
            logger.warning("GET %s: read failed midway: %s", path, exc.strerror)
            return
        if not chunk:
            logger.warning("GET %s: the file shrank while it was sent", path)
            return
        writer.write(chunk)
        left -= len(chunk)
        await writer.drain()


# ------------------------------------------------------------------------ client


class _Writable(Protocol):
    def write(self, data: bytes, /) -> Any: ...


@dataclass
class DownloadResult:
    """What :func:`download` received: the whole file, checked against the announced size."""

    #: The path asked for (with its leading ``/``).
    path: str
    #: The size the server announced; equal to :attr:`bytes` after a successful download.
    size: int = 0
    #: Bytes received and written out.
    bytes: int = 0
    #: Seconds from the server's header to the end of the stream.
    seconds: float = 0.0
    #: SHA-256 of the bytes received, in hexadecimal.
    sha256: str = ""


def _parse_header(line: bytes, path: str) -> int:
    """The size of an ``OK`` header; the matching exception for ``ERR`` or anything else."""
    ok = _OK.fullmatch(line)
    if ok is not None:
        return int(ok.group(1))
    err = _ERR.fullmatch(line)
    if err is None:
        raise NotAFileServer(path, "its answer is not a file transfer header")
    code = int(err.group(1))
    reason = _printable(err.group(2).decode("utf-8", "replace"))
    if code == 404:
        raise FileNotFoundOnServer(path, reason)
    if code == 500:
        raise ServerReadError(path, reason)
    if code == 400:
        raise FileRequestRejected(path, reason)
    raise FileServerError(path, code, reason)


def file_request(path: str) -> bytes:
    """The request line that asks a file server for ``path`` (checked)."""
    if not path.startswith("/"):
        path = "/" + path
    if any(c in path for c in "\r\n\0"):
        raise FileTransferError(path, "a file path cannot contain line breaks or NUL bytes")
    request = f"GET {path}\r\n".encode()
    if len(request) > MAX_REQUEST:
        raise FileTransferError(path, f"the path is longer than {MAX_REQUEST - 6} bytes")
    return request


async def download(
    session: Session,
    path: str,
    out: BinaryIO | _Writable,
    *,
    on_progress: Callable[[int], Any] | None = None,
    on_start: Callable[[int], Any] | None = None,
    answer_timeout: float | None = None,
    request_sent: bool = False,
) -> DownloadResult:
    """Fetch ``path`` over a new stream of ``session`` into ``out`` (anything with ``write``).

    ``request_sent``: the session's first stream already carries
    :func:`file_request` ``(path)`` (sent as early data with ``tcpls.connect``).

    ``on_start(size)`` is called with the size the server announced,
    ``on_progress(received)`` after each piece. ``answer_timeout`` bounds the
    wait for the server's header (``None``: no bound). Returns the
    :class:`DownloadResult` only when every announced byte arrived; raises
    :class:`FileNotFoundOnServer`, :class:`ServerReadError` or
    :class:`FileRequestRejected` when the server refuses, :class:`TransferTruncated`
    when fewer bytes arrive (the bytes that did arrive were written to ``out``),
    :class:`NotAFileServer` when the peer does not speak this protocol, and
    :class:`OutputError` when ``out.write`` fails. A session that fails before
    the header raises its own error (a :class:`~tcpls.errors.TCPLSError` or
    :class:`OSError`).
    """
    request = file_request(path)
    if not path.startswith("/"):
        path = "/" + path
    reader, writer = await session.open_stream()
    if not request_sent:
        writer.write(request)
    writer.write_eof()
    try:
        async with asyncio.timeout(answer_timeout):
            line, rest = await _read_line(reader, MAX_HEADER)
    except TimeoutError:
        reason = f"no answer to the request within {answer_timeout:g} s"
        raise NotAFileServer(path, reason) from None
    except _NoLine as exc:
        if exc.too_long or exc.partial:
            raise NotAFileServer(path, "its answer is not a file transfer header") from None
        raise NotAFileServer(path, "it ended the stream without answering") from None
    if line == request:
        raise NotAFileServer(path, "it sent the request back, like an echo server")
    size = _parse_header(line, path)
    result = DownloadResult(path, size=size)
    if on_start is not None:
        on_start(size)
    digest = hashlib.sha256()
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    chunk = rest
    while True:
        if not chunk:
            try:
                chunk = await reader.read(_CHUNK)
            except (TCPLSError, OSError) as exc:
                if result.bytes < size:
                    raise TransferTruncated(path, result.bytes, size, exc) from exc
                break  # every byte arrived; only the end of the stream was lost
            if not chunk:
                break
        if result.bytes + len(chunk) > size:
            raise FileTransferError(
                path, f"the server sent more than the {size} bytes it announced for {path}"
            )
        digest.update(chunk)
        try:
            await loop.run_in_executor(None, out.write, chunk)
        except OSError as exc:
            raise OutputError(path, exc) from exc
        result.bytes += len(chunk)
        chunk = b""
        if on_progress is not None:
            on_progress(result.bytes)
    result.seconds = time.monotonic() - start
    if result.bytes < size:
        raise TransferTruncated(path, result.bytes, size)
    result.sha256 = digest.hexdigest()
    return result
