"""Passing a join's TCP connection to the worker that holds its session (design: Join handoff).

The workers of one machine share the listening port (``SO_REUSEPORT``), so the kernel
may give a join's connection to any of them. A worker that reads a join whose token
names another worker (:class:`tcpls.core.endpoint.HandOff`) sends that worker the
socket's file descriptor (``SCM_RIGHTS``) and the bytes it has read from it, over a
Unix datagram socket: each worker listens on ``<handoff_dir>/w<ID>.sock``. The
receiver reads the bytes again as if they had just arrived, and the join goes on as
any other; the client sees nothing. A connection is passed once at most.

:class:`HandoffChannel` owns the worker's Unix socket and its counters.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Callable

from tcpls.aio.ratelog import RateLimitedLog
from tcpls.core.endpoint import MAX_HANDOFF_BYTES

__all__ = ["MAX_HANDOFF_BYTES", "HandoffChannel", "handoff_path"]

logger = logging.getLogger("tcpls.aio.api")

#: Hand-offs waiting because the other worker's queue was full, and how long one waits
#: (the client's join waits meanwhile; the kernel queues only a few datagrams).
MAX_QUEUED = 1024
QUEUE_TIMEOUT = 2.0
_RETRY_INTERVAL = 0.002
#: Seconds a worker found gone is taken as gone.
_GONE_FOR = 1.0
_MAGIC = b"TCPLSH1\0"
_FD_SPACE = socket.CMSG_SPACE(array.array("i", [0]).itemsize)
# The sender's credentials, which the kernel attaches to every message (SO_PASSCRED):
# pid, uid, gid as three native ints.
_CRED_SPACE = socket.CMSG_SPACE(struct.calcsize("3i"))


def handoff_path(directory: str, worker: int) -> str:
    """The Unix socket of ``worker`` in ``directory``."""
    return os.path.join(directory, f"w{worker}.sock")


class HandoffChannel:
    """One worker's end of the hand-off: receives connections from the other workers
    and sends them those that are theirs."""

    def __init__(
        self,
        directory: str,
        worker: int,
        receive: Callable[[socket.socket, bytes], None],
        fallback: Callable[[socket.socket, bytes], None] | None = None,
    ) -> None:
        """Listen on ``directory``'s socket of ``worker``; ``receive(sock, data)`` takes
        each connection passed to this worker, ``fallback(sock, data)`` each one that
        could not be passed (default: it is closed)."""
        self._fallback = fallback
        # Workers found gone, until when they are taken as gone (no system call per join).
        self._gone: dict[int, float] = {}
        self._log = RateLimitedLog(logger)  # (a join can be replayed at will)
        self._refused_log = RateLimitedLog(logger)
        self._directory = directory
        self._path = handoff_path(directory, worker)
        self._receive = receive
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)  # a worker of a previous run with this ID
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # Only the server's user may send here, whatever the directory's mode or the
        # umask (an application may choose a shared directory): the socket file is
        # created 0600, and every message's sender is checked by its kernel-given uid.
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        umask = os.umask(0o177)
        try:
            self._sock.bind(self._path)
        finally:
            os.umask(umask)
        self._sock.setblocking(False)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Hand-offs to retry: (deadline, worker, socket we own, data).
        self._queue: deque[tuple[float, int, socket.socket, bytes]] = deque()
        self._retry: asyncio.TimerHandle | None = None
        #: Connections passed to another worker, received from one, and not passed (the
        #: other worker is gone or its queue is full: the join is refused).
        self.sent = 0
        self.received = 0
        self.failed = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start receiving in ``loop``."""
        self._loop = loop
        loop.add_reader(self._sock.fileno(), self._readable)

    def send(self, worker: int, sock: socket.socket, data: bytes) -> None:
        """Pass the connection ``sock`` (and ``data``, read from it) to ``worker``. The
        channel owns ``sock`` from now on (a duplicate of the caller's, which the
        caller closes); when the other worker cannot take it within
        :data:`QUEUE_TIMEOUT`, it goes to the fallback."""
        loop = self._loop
        gone_until = self._gone.get(worker)
        if gone_until is not None and loop is not None and loop.time() < gone_until:
            self._give_up(sock, data, worker, "it is gone")  # (known: no system call)
            return
        if len(data) > MAX_HANDOFF_BYTES or loop is None or len(self._queue) >= MAX_QUEUED:
            self._give_up(sock, data, worker, "too many waiting" if loop else "not started")
            return
        if self._queue or not self._try_send(worker, sock, data):
            self._queue.append((loop.time() + QUEUE_TIMEOUT, worker, sock, data))
            if self._retry is None:
                self._retry = loop.call_later(_RETRY_INTERVAL, self._flush)

    def _try_send(self, worker: int, sock: socket.socket, data: bytes) -> bool:
        """Whether the message went (or failed for good); ``False``: the queue was full."""
        fds = array.array("i", [sock.fileno()])
        try:
            self._sock.sendmsg(
                [_MAGIC, data],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())],
                0,
                handoff_path(self._directory, worker),
            )
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ENOBUFS):
                return False
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED) and self._loop is not None:
                if len(self._gone) >= 1024:
                    self._gone.clear()
                self._gone[worker] = self._loop.time() + _GONE_FOR
            self._give_up(sock, data, worker, exc.strerror or str(exc))
            return True
        self.sent += 1
        sock.close()  # the other worker has its own descriptor now
        return True

    def _flush(self) -> None:
        self._retry = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        while self._queue:
            deadline, worker, sock, data = self._queue[0]
            if now > deadline:
                self._queue.popleft()
                self._give_up(sock, data, worker, "its queue stayed full")
                continue
            if not self._try_send(worker, sock, data):
                break
            self._queue.popleft()
        if self._queue:
            self._retry = loop.call_later(_RETRY_INTERVAL, self._flush)

    def _give_up(self, sock: socket.socket, data: bytes, worker: int, why: str) -> None:
        self.failed += 1
        self._log.log("could not pass a connection to worker %d: %s", worker, why)
        if self._fallback is not None:
            self._fallback(sock, data)
        else:
            sock.close()

    def _readable(self) -> None:
        for _ in range(64):  # a burst at most per wakeup: the loop serves the rest too
            try:
                message, ancillary, flags, _ = self._sock.recvmsg(
                    len(_MAGIC) + MAX_HANDOFF_BYTES, _FD_SPACE + _CRED_SPACE
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("hand-off socket: %s", exc)
                return
            fds = _descriptors(ancillary)
            ok = (
                _sender_uid(ancillary) == os.getuid()
                and len(fds) == 1
                and not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
                and message.startswith(_MAGIC)
            )
            if not ok:
                for fd in fds:
                    os.close(fd)
                self._refused_log.log(
                    "ignored a hand-off message: malformed, or not from this user"
                )
                continue
            try:
                sock = socket.socket(fileno=fds[0])
            except OSError:
                os.close(fds[0])
                continue
            if sock.type != socket.SOCK_STREAM or sock.family not in (
                socket.AF_INET,
                socket.AF_INET6,
            ):
                sock.close()
                continue
            self.received += 1
            sock.setblocking(False)
            self._receive(sock, message[len(_MAGIC) :])

    def close(self) -> None:
        """Stop receiving, drop the hand-offs still waiting, and remove the socket file."""
        if self._sock.fileno() < 0:
            return  # closed already
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        while self._queue:
            self._queue.popleft()[2].close()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)


def _sender_uid(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The uid the kernel gave as the message's sender (``None``: no credentials)."""
    for level, kind, data in ancillary:
        credentials = level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
        if credentials and len(data) >= struct.calcsize("3i"):
            return int(struct.unpack_from("3i", data)[1])
    return None


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            ints = array.array("i")
            ints.frombytes(data[: len(data) - len(data) % ints.itemsize])
            fds.extend(ints)
    return fds
