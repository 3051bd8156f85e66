"""Userspace path emulator: moves IP packets between TUN devices with rate, delay and loss.

The kernel of the lab machines has no ``netem``, so paths that need a one-way delay are
emulated here. For each such path there is one TUN device in the client namespace and one in
the server namespace; every IP packet read from one is written to the other after:

* drop-tail admission into a queue of ``queue_bytes`` waiting to be serialised;
* serialisation at ``rate_bps`` (bits per second of IP packet bytes; ``None``: no limit);
* random loss with probability ``loss`` (the lost packet still used the link);
* the one-way propagation ``delay_s``.

Both directions are independent and symmetric. The forwarder runs as its own process so that
it is never starved by the GIL of a busy test process. This module uses the standard library
only: the lab runs it by file name (``python -I .../tcpls/lab/forwarder.py``) so that starting
it does not import the ``tcpls`` package. It enters the namespaces itself to create its TUN
devices, which vanish when it exits, even on SIGKILL. It is controlled through a Unix stream
socket carrying one JSON request line and one JSON reply line per connection (``stats``,
``blackhole``, ``ping``, ``quit``; see :mod:`tcpls.lab.control`). With ``--lifeline FD`` it
exits when that pipe reaches end of file, i.e. when the process that owns the lab dies.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import json
import math
import os
import random
import selectors
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["MARKER", "Forwarder", "ForwarderPath", "main", "open_tun"]

MARKER = "tcpls/lab/forwarder.py"
"""Part of the command line of every forwarder process (to recognise them by pid)."""

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_PR_SET_TIMERSLACK = 29
# A packet is released when it is due within this many seconds: select() wakes up a few tens
# of microseconds late, so this keeps the mean delay on target.
_EARLY = 50e-6
_READ_BATCH = 64
_MAX_PACKET = 65535


@dataclass(frozen=True)
class ForwarderPath:
    """Configuration of one emulated path of the forwarder."""

    index: int
    client_ns: str
    server_ns: str
    client_dev: str
    server_dev: str
    rate_bps: float | None
    delay_s: float
    loss: float
    queue_bytes: int

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ForwarderPath:
        """Build from :meth:`to_json` output."""
        rate = data["rate_bps"]
        return cls(
            index=int(data["index"]),
            client_ns=str(data["client_ns"]),
            server_ns=str(data["server_ns"]),
            client_dev=str(data["client_dev"]),
            server_dev=str(data["server_dev"]),
            rate_bps=None if rate is None else float(rate),
            delay_s=float(data["delay_s"]),
            loss=float(data["loss"]),
            queue_bytes=int(data["queue_bytes"]),
        )


def open_tun(name: str) -> int:
    """Create TUN device ``name`` (IFF_TUN | IFF_NO_PI) and return its non-blocking fd.

    The device lives in the network namespace of the calling thread and disappears when the
    fd is closed.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI)
        fcntl.ioctl(fd, _TUNSETIFF, ifr)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Direction:
    """One direction of one path: drop-tail queue, serialisation, loss and delay."""

    __slots__ = (
        "blackhole",
        "busy_until",
        "byte_time",
        "delay",
        "dropped_cut",
        "dropped_loss",
        "dropped_queue",
        "dst_fd",
        "forwarded",
        "forwarded_bytes",
        "limit_time",
        "loss",
        "name",
        "queue",
        "received",
        "rng",
        "src_fd",
        "write_errors",
    )

    def __init__(
        self, name: str, src_fd: int, dst_fd: int, path: ForwarderPath, rng: random.Random
    ) -> None:
        self.name = name
        self.src_fd = src_fd
        self.dst_fd = dst_fd
        self.rng = rng
        self.byte_time = 8.0 / path.rate_bps if path.rate_bps else 0.0
        self.limit_time = path.queue_bytes * self.byte_time
        self.delay = path.delay_s
        self.loss = path.loss
        self.queue: deque[tuple[float, bytes]] = deque()
        self.busy_until = 0.0
        self.blackhole = False
        self.received = 0
        self.forwarded = 0
        self.forwarded_bytes = 0
        self.dropped_loss = 0
        self.dropped_queue = 0
        self.dropped_cut = 0
        self.write_errors = 0

    def receive(self, packet: bytes, now: float) -> None:
        self.received += 1
        if self.blackhole:
            self.dropped_cut += 1
            return
        if self.byte_time:
            start = self.busy_until if self.busy_until > now else now
            tx_time = len(packet) * self.byte_time
            if start - now + tx_time > self.limit_time:
                self.dropped_queue += 1
                return
            self.busy_until = start + tx_time
            due = self.busy_until + self.delay
        else:
            due = now + self.delay
        if self.loss and self.rng.random() < self.loss:
            self.dropped_loss += 1
            return
        self.queue.append((due, packet))

    def deliver(self, now: float) -> float:
        """Write every packet that is due; return when the next one is due (or inf)."""
        queue = self.queue
        limit = now + _EARLY
        while queue:
            due, packet = queue[0]
            if due > limit:
                return due
            queue.popleft()
            try:
                os.write(self.dst_fd, packet)
            except OSError:
                self.write_errors += 1
            else:
                self.forwarded += 1
                self.forwarded_bytes += len(packet)
        return math.inf

    def flush(self) -> None:
        self.dropped_cut += len(self.queue)
        self.queue.clear()
        self.busy_until = 0.0

    def stats(self) -> dict[str, int]:
        return {
            "received": self.received,
            "forwarded": self.forwarded,
            "forwarded_bytes": self.forwarded_bytes,
            "dropped_loss": self.dropped_loss,
            "dropped_queue": self.dropped_queue,
            "dropped_cut": self.dropped_cut,
            "write_errors": self.write_errors,
            "queued": len(self.queue),
        }


class Forwarder:
    """The forwarding loop (a ``selectors.SelectSelector``, whose timeouts are sub-millisecond).

    ``tun_fds`` maps a path index to its (client fd, server fd). ``control`` is a listening
    Unix stream socket or ``None``; ``lifeline`` a pipe read end or ``None``.
    """

    def __init__(
        self,
        paths: Sequence[ForwarderPath],
        tun_fds: dict[int, tuple[int, int]],
        control: socket.socket | None = None,
        lifeline: int | None = None,
        seed: int | None = None,
    ) -> None:
        rng = random.Random(seed)
        self._paths = {p.index: p for p in paths}
        self._directions: dict[int, tuple[_Direction, _Direction]] = {}
        for path in paths:
            client_fd, server_fd = tun_fds[path.index]
            self._directions[path.index] = (
                _Direction("c2s", client_fd, server_fd, path, rng),
                _Direction("s2c", server_fd, client_fd, path, rng),
            )
        self._control = control
        self._lifeline = lifeline
        self._stop = False
        self._started = time.time()

    def run(self) -> None:
        """Forward packets until ``quit`` is requested or the lifeline closes."""
        sel = selectors.SelectSelector()
        all_directions: list[_Direction] = []
        for pair in self._directions.values():
            for direction in pair:
                sel.register(direction.src_fd, selectors.EVENT_READ, direction)
                all_directions.append(direction)
        if self._control is not None:
            self._control.setblocking(False)
            sel.register(self._control, selectors.EVENT_READ, "control")
        if self._lifeline is not None:
            sel.register(self._lifeline, selectors.EVENT_READ, "lifeline")
        read = os.read
        monotonic = time.monotonic
        try:
            while not self._stop:
                now = monotonic()
                next_due = math.inf
                for direction in all_directions:
                    if direction.queue:
                        due = direction.deliver(now)
                        if due < next_due:
                            next_due = due
                timeout = None if next_due == math.inf else next_due - monotonic() - _EARLY
                events = sel.select(timeout)
                now = monotonic()
                for key, _ in events:
                    data = key.data
                    if isinstance(data, _Direction):
                        fd = data.src_fd
                        for _ in range(_READ_BATCH):
                            try:
                                packet = read(fd, _MAX_PACKET)
                            except BlockingIOError:
                                break
                            except OSError:
                                # EIO/EBADFD while the device is down: nothing to read.
                                break
                            if not packet:
                                break
                            data.receive(packet, now)
                    elif data == "control":
                        self._serve_control()
                    elif data == "lifeline":
                        assert self._lifeline is not None
                        try:
                            if not os.read(self._lifeline, 4096):
                                self._stop = True
                        except BlockingIOError:
                            pass
        finally:
            sel.close()

    def _serve_control(self) -> None:
        assert self._control is not None
        try:
            conn, _ = self._control.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(1.0)
            try:
                buf = b""
                while not buf.endswith(b"\n") and len(buf) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                try:
                    reply = self.handle_request(json.loads(buf.decode() or "null"))
                except (ValueError, KeyError, TypeError) as exc:
                    reply = {"ok": False, "error": f"bad request: {exc}"}
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    def handle_request(self, request: Any) -> dict[str, Any]:
        """Execute one control request (a dict with ``op``) and return the reply."""
        if not isinstance(request, dict):
            raise ValueError("request must be a JSON object")
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "stats":
            return {"ok": True, "pid": os.getpid(), "paths": self.stats()}
        if op == "blackhole":
            index = int(request["path"])
            if index not in self._directions:
                return {"ok": False, "error": f"no forwarded path {index}"}
            on = bool(request["on"])
            for direction in self._directions[index]:
                direction.blackhole = on
                if on:
                    direction.flush()
            return {"ok": True}
        if op == "quit":
            self._stop = True
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def stats(self) -> list[dict[str, Any]]:
        """Per-path counters for both directions."""
        out: list[dict[str, Any]] = []
        for index, (c2s, s2c) in sorted(self._directions.items()):
            out.append(
                {
                    "index": index,
                    "blackhole": c2s.blackhole,
                    "c2s": c2s.stats(),
                    "s2c": s2c.stats(),
                }
            )
        return out


# ---------------------------------------------------------------------------------------------
# Child side.


_CLONE_NEWNET = 0x40000000


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


@contextlib.contextmanager
def _in_namespace(ns_name: str) -> Iterator[None]:
    """Move this (single-threaded) process into ``ns_name`` for the block, then back."""
    libc = _libc()

    def setns(fd: int) -> None:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns_name}: {os.strerror(err)}")

    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{ns_name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target)
            try:
                yield
            finally:
                setns(original)
        finally:
            os.close(target)
    finally:
        os.close(original)


def _set_timer_slack(nanoseconds: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        _libc().prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(nanoseconds), 0, 0, 0)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the forwarder process (started by the lab, not by users)."""
    parser = argparse.ArgumentParser(
        prog="forwarder.py",
        description="TUN-based path emulator of the tcpls network lab (started by the lab).",
    )
    parser.add_argument("--config", required=True, help="JSON: {'paths': [ForwarderPath...]}")
    parser.add_argument("--control", required=True, help="Unix socket path to listen on")
    parser.add_argument("--lifeline", type=int, help="exit when this pipe fd reaches EOF")
    parser.add_argument("--seed", type=int, help="seed of the loss generator")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _set_timer_slack(1000)
    tun_fds: dict[int, tuple[int, int]] = {}
    control: socket.socket | None = None
    try:
        paths = [ForwarderPath.from_json(p) for p in json.loads(args.config)["paths"]]
        for path in paths:
            with _in_namespace(path.client_ns):
                client_fd = open_tun(path.client_dev)
            with _in_namespace(path.server_ns):
                server_fd = open_tun(path.server_dev)
            tun_fds[path.index] = (client_fd, server_fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.control)
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control.bind(args.control)
        os.chmod(args.control, 0o600)
        control_inode = os.stat(args.control).st_ino
        control.listen(16)
        if args.lifeline is not None:
            os.set_blocking(args.lifeline, False)
    except Exception as exc:
        message = str(exc).replace("\n", " ")
        if isinstance(exc, OSError) and exc.errno == errno.EBUSY:
            message = f"TUN device busy: {message}"
        print(f"error: {type(exc).__name__}: {message}", flush=True)
        return 1
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        Forwarder(paths, tun_fds, control, args.lifeline, args.seed).run()
    finally:
        control.close()
        with contextlib.suppress(OSError):
            if os.stat(args.control).st_ino == control_inode:  # not a successor's socket
                os.unlink(args.control)
        for client_fd, server_fd in tun_fds.values():
            os.close(client_fd)
            os.close(server_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
