"""``tcpls get``: download a file from ``tcpls serve --files`` (:mod:`tcpls.apps.fileserve`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import stat
import sys
from typing import Any, BinaryIO

from tcpls.cli.errors import EXIT_OK, CommandError, describe_error
from tcpls.cli.progress import ConnectionRates, start_download_progress
from tcpls.cli.sessions import open_session, save_ticket
from tcpls.errors import TCPLSError

__all__ = ["GET_ANSWER_TIMEOUT", "cmd_get"]

#: Seconds ``tcpls get`` waits for the server's answer header (beyond any reconnection).
GET_ANSWER_TIMEOUT = 10.0


async def cmd_get(args: argparse.Namespace) -> int:
    """``tcpls get``: download a file with progress and per-connection rates."""
    from tcpls.apps.fileserve import (
        FileTransferError,
        NotAFileServer,
        OutputError,
        download,
        file_request,
    )
    from tcpls.apps.perf import format_bytes, format_rate

    target = f"{args.host}:{args.port}"
    output = _Output(args.output)  # before connecting: a local problem needs no server
    try:
        early = file_request(args.path) if args.early_data else None
    except FileTransferError as exc:
        raise CommandError(str(exc)) from None
    try:
        session = await open_session(args, args.host, args.port, early)
        live = sys.stderr.isatty()
        rates = ConnectionRates(session)
        progress: Any = None
        if live:
            progress, task = start_download_progress(args.path)

        def on_start(size: int) -> None:
            if progress is not None:
                progress.update(task, total=size)

        def on_progress(done: int) -> None:
            if progress is not None:
                progress.update(task, completed=done, paths=rates.describe(format_rate))

        try:
            result = await download(
                session,
                args.path,
                output.file,
                request_sent=early is not None,
                on_start=on_start,
                on_progress=on_progress,
                answer_timeout=GET_ANSWER_TIMEOUT + args.reconnect_timeout,
            )
        except NotAFileServer as exc:
            session.abort()
            raise CommandError(f"{target} is not a tcpls file server ({exc.reason})") from None
        except OutputError as exc:
            session.abort()
            raise CommandError(f"cannot write {output.label}: {exc.strerror}") from None
        except FileTransferError as exc:
            session.abort()
            raise CommandError(str(exc)) from None
        except (TCPLSError, OSError) as exc:
            session.abort()
            raise CommandError(describe_error(exc, target)) from None
        finally:
            if progress is not None:
                progress.stop()
        output.commit()
    finally:
        output.discard()
    connections = rates.describe(format_rate, final=True)
    await session.aclose(timeout=5)
    save_ticket(args, session)
    rate = result.bytes / result.seconds if result.seconds else 0.0
    print(
        f"tcpls: {args.path}: {format_bytes(result.bytes)} in {result.seconds:.2f} s "
        f"({format_rate(rate)}){'; ' + connections if connections else ''}",
        file=sys.stderr,
    )
    if args.sha256:
        print(
            f"{result.sha256}  {args.output}", file=sys.stderr if output.is_stdout else sys.stdout
        )
    return EXIT_OK


class _Output:
    """Where ``tcpls get`` writes.

    A regular file (or a new one) is written as a temporary file in the same
    directory, renamed over the destination by :meth:`commit` only; anything
    else that exists (``/dev/null``, a FIFO) is written directly, and ``-`` is
    standard output. :meth:`discard` removes the temporary file of a download
    that did not commit.
    """

    def __init__(self, name: str) -> None:
        self.is_stdout = name == "-"
        self.label = "standard output" if self.is_stdout else name
        self._temp: str | None = None
        self._final = ""
        self._owned = False
        if self.is_stdout:
            self.file: BinaryIO = sys.stdout.buffer
            return
        self._final = os.path.realpath(name)
        try:
            info: os.stat_result | None = os.stat(self._final)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise CommandError(f"cannot write {name}: {exc.strerror}") from None
        try:
            if info is not None and stat.S_ISDIR(info.st_mode):
                raise CommandError(f"cannot write {name}: it is a directory")
            if info is not None and not stat.S_ISREG(info.st_mode):
                self.file = open(self._final, "wb")  # noqa: SIM115 - closed in discard()
            else:
                self.file = self._create_temp(info)
        except OSError as exc:
            raise CommandError(f"cannot write {name}: {exc.strerror}") from None
        self._owned = True

    def _create_temp(self, existing: os.stat_result | None) -> BinaryIO:
        directory, base = os.path.split(self._final)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        while True:
            temp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.part")
            try:
                fd = os.open(temp, flags, 0o666)  # the umask applies, as for a new file
            except FileExistsError:
                continue
            break
        self._temp = temp
        if existing is not None:
            with contextlib.suppress(OSError):
                os.fchmod(fd, stat.S_IMODE(existing.st_mode))
        return os.fdopen(fd, "wb")

    def commit(self) -> None:
        """Flush everything and put the file in place."""
        try:
            if self._owned:
                self.file.close()
            else:
                self.file.flush()
            if self._temp is not None:
                os.replace(self._temp, self._final)
                self._temp = None
        except OSError as exc:
            raise CommandError(f"cannot write {self.label}: {exc.strerror}") from None

    def discard(self) -> None:
        """Close the file; remove the temporary file unless :meth:`commit` renamed it."""
        if self._owned:
            with contextlib.suppress(OSError):
                self.file.close()
        if self._temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._temp)
            self._temp = None
