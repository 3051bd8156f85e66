"""``tcpls connect``: standard input to the server, the server's bytes to standard output."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import sys
import termios
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from tcpls.cli.errors import EXIT_OK, CommandError, describe_error
from tcpls.cli.sessions import open_session, save_ticket
from tcpls.errors import TCPLSError

if TYPE_CHECKING:
    from tcpls.aio.session import Session

__all__ = ["cmd_connect"]

#: The command line's logger (every module of it logs as ``tcpls.cli``).
log = logging.getLogger("tcpls.cli")


class _Stdin:
    """Standard input in chunks, read by a daemon thread; knows whether bytes of it were
    read (or wait in its pipe or file) and not handed on yet.

    A read blocked in a thread of the default executor would keep ``asyncio.run``
    from returning (it waits for that executor) until standard input ends, so a
    failed session would hang the command; a daemon thread does not. At most a
    few chunks are read ahead.
    """

    def __init__(self, chunk_size: int = 65536) -> None:
        self._chunk_size = chunk_size
        self._queue: asyncio.Queue[bytes | OSError] = asyncio.Queue()
        self._queued = 0  # bytes read and not taken yet
        self._started = False
        self._eof = False
        # the raw descriptor: a daemon thread blocked inside sys.stdin.buffer would hold
        # its lock at interpreter shutdown, which is fatal
        self._fd = sys.stdin.fileno()

    def unsent(self) -> bool:
        """Whether standard input holds bytes not handed on: read ahead, or waiting in its
        pipe or file (an input left open with nothing in it holds none)."""
        if self._eof:
            return False
        if self._queued:
            return True
        try:
            waiting = fcntl.ioctl(self._fd, termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return False
        return int.from_bytes(waiting, sys.byteorder) > 0

    def _arrived(self, item: bytes | OSError) -> None:
        if isinstance(item, bytes):
            self._queued += len(item)
        self._queue.put_nowait(item)

    def _start(self) -> threading.Semaphore:
        loop = asyncio.get_running_loop()
        room = threading.Semaphore(4)
        fd, size = self._fd, self._chunk_size

        def pump() -> None:
            while True:
                room.acquire()
                item: bytes | OSError
                try:
                    item = os.read(fd, size)
                except OSError as exc:
                    item = exc
                try:
                    loop.call_soon_threadsafe(self._arrived, item)
                except RuntimeError:  # the loop is closed: the command is over
                    return
                if not isinstance(item, bytes) or not item:
                    return

        threading.Thread(target=pump, name="tcpls-stdin", daemon=True).start()
        return room

    async def chunks(self) -> AsyncIterator[bytes]:
        """The chunks, until EOF (:class:`CommandError` if standard input fails)."""
        assert not self._started, "standard input is read once"
        self._started = True
        room = self._start()
        while True:
            item = await self._queue.get()
            room.release()
            if isinstance(item, OSError):
                raise CommandError(f"cannot read standard input: {item.strerror or item}")
            self._queued -= len(item)
            if not item:
                self._eof = True
                return
            yield item


async def cmd_connect(args: argparse.Namespace) -> int:
    """``tcpls connect``: standard input to the server, the server's bytes to standard output."""
    target = f"{args.host}:{args.port}"
    stdin = _Stdin()
    chunks = stdin.chunks()
    first: bytes | None = None
    if args.early_data:
        # the first chunk of standard input is the request sent as early data
        first = await anext(chunks, b"") or None
    session = await open_session(args, args.host, args.port, first)
    mode = "TCPLS" if session.tcpls_negotiated else "plain TLS 1.3 (peer has no TCPLS)"
    log.info("connected to %s: %s, %s", target, mode, session.cipher_suite)
    if args.verbose:
        _describe(session, target)
    reader, writer = await session.open_stream()

    async def upload() -> None:
        async for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()

    out = sys.stdout.buffer
    upload_task = asyncio.create_task(upload())
    try:
        while data := await reader.read(256 * 1024):
            out.write(data)
            out.flush()
    except (TCPLSError, OSError) as exc:
        upload_task.cancel()
        session.abort()
        raise CommandError(describe_error(exc, target)) from None
    failure = upload_task.exception() if upload_task.done() else None
    if isinstance(failure, CommandError):
        raise failure
    if failure is not None:
        raise CommandError(describe_error(failure, target))
    upload_task.cancel()
    await session.aclose(timeout=5)
    if session.error is not None:  # our close did not complete: the peer may lack data
        raise CommandError(
            f"{target} did not finish closing the session ({describe_error(session.error)}): "
            "what was sent may not all have arrived"
        )
    if stdin.unsent():
        raise CommandError(f"{target} ended the session before all of standard input was sent")
    save_ticket(args, session)
    if args.verbose:
        resumption = "resumable (ticket saved)" if args.session and session.session_ticket else ""
        if resumption:
            print(f"session: {resumption}", file=sys.stderr)
    return EXIT_OK


def _describe(session: Session, target: str) -> None:
    """The session's parameters, one per line, on standard error (``connect -v``)."""
    mode = "TCPLS" if session.tcpls_negotiated else "plain TLS 1.3"
    lines = [
        f"connected: {target}",
        f"protocol: {mode}",
        f"cipher suite: {session.cipher_suite}",
        f"group: {session.group or 'none (PSK only)'}",
        f"resumed: {'yes' if session.session_resumed else 'no'}",
        f"early data: {'accepted' if session.early_data_accepted else 'not accepted'}",
    ]
    certificate = session.peer_certificate
    if certificate is not None:
        lines.append(f"server certificate: {certificate.subject.rfc4514_string()}")
    print("\n".join(lines), file=sys.stderr, flush=True)
