"""A toolkit for attacking a live ``tcpls serve --echo`` with a hostile, authenticated client.

The pieces
==========

* :class:`ServerProcess` runs ``python -m tcpls serve --echo`` with default settings on a
  fresh loopback port and watches it from ``/proc``: current and peak RSS (``VmRSS``,
  ``VmHWM``), the peak reset (``clear_refs``, root only), CPU time (``utime + stime``).
  A watchdog thread kills the server if its RSS passes :data:`MEMORY_CAP`, so that a
  defect that grows memory without bound cannot take the machine down with it.
* :class:`HostileClient` completes a real TLS 1.3 + TCPLS handshake (our own
  :class:`~tcpls.tls.connection.TLSConnection`, client side, ``tcpls`` offered) over a
  blocking socket, then sends whatever it likes sealed with the real keys:
  :meth:`~HostileClient.send_frames`, :meth:`~HostileClient.send_record` (arbitrary record
  content), :meth:`~HostileClient.send_records` (many records, batched, stops when the
  server closes or stops reading), :meth:`~HostileClient.send_raw` (bytes on the socket:
  malformed records). It reads what the server answers: decrypted records and their
  frames, the fatal alert (:attr:`~HostileClient.alert`), close_notify, EOF.
  :meth:`~HostileClient.sync` is a barrier: a Ping, then the ACK that answers it, so
  everything sent before was processed by the server.
* :func:`good_client_echo` is the well-behaved client (``tcpls.connect``): a new session,
  a small echo on a new stream, timed.
* :class:`Arena` ties one case together: the server, the hostile clients, the baseline,
  and the checks every case ends with (a good client is served within
  :data:`GOOD_CLIENT_DEADLINE`, peak RSS under :data:`PEAK_RSS_LIMIT`, the server alive).
  Requirements are collected with :meth:`Arena.expect` and reported together, with the
  measurements, by :meth:`Arena.finish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tcpls.config import ClientConfig
from tcpls.core.endpoint import client_session
from tcpls.devcert import DevPKI
from tcpls.errors import DecodeError, PeerAlert, TCPLSError
from tcpls.tls.connection import TLSConnection
from tcpls.tls.events import (
    CloseNotifyReceived,
    ConnectionFailed,
    HandshakeCompleted,
    TransportEnded,
)
from tcpls.tls.record import TrafficKeys
from tcpls.wire.frames import (
    MAX_STREAM_DATA,
    STREAM_HEADER_SIZE,
    Ack,
    Frame,
    NewToken,
    Ping,
    StreamFrame,
    encode_frames,
    parse_frames,
    write_stream_header_into,
)

__all__ = [
    "GOOD_CLIENT_DEADLINE",
    "MEMORY_CAP",
    "PEAK_RSS_LIMIT",
    "Arena",
    "GoodClientResult",
    "HostileClient",
    "KiB",
    "MiB",
    "ServerProcess",
    "can_reset_peak",
    "client_hello_record",
    "good_client_echo",
    "good_client_echo_async",
    "new_client_tls",
    "plaintext_alert",
    "proc_status",
    "raw_exchange",
    "rewrite_client_hello",
]

KiB = 1 << 10
MiB = 1 << 20

#: Every case: the server's peak RSS (VmHWM) must stay under this.
PEAK_RSS_LIMIT = 300 * MiB
#: Every case: a fresh good client must get its echo within this many seconds.
GOOD_CLIENT_DEADLINE = 1.0
#: The watchdog kills the server above this RSS (protects the machine, not a requirement).
MEMORY_CAP = 2048 * MiB

#: Environment variable: a directory put first on the server's PYTHONPATH, to run the
#: suite against another source tree's server (``git archive REV src | tar -x -C DIR``,
#: then ``TCPLS_SERVER_PYTHONPATH=DIR/src``).
SERVER_PYTHONPATH_VARIABLE = "TCPLS_SERVER_PYTHONPATH"

ALERT_RECORD = 21
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- /proc


def proc_status(pid: int, name: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(f"{name} not in /proc/{pid}/status")


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)


def can_reset_peak() -> bool:
    """Whether this process may reset a peak RSS (``echo 5 > /proc/PID/clear_refs``).

    Root may; elsewhere it depends on the kernel and the container (tried on ourselves).
    """
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------------- server


def _accepts(port: int) -> bool:
    """Whether something accepts TCP connections on the loopback port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class ServerProcess:
    """``python -m tcpls serve --echo`` on a fresh loopback port, watched through ``/proc``."""

    def __init__(self, pki: DevPKI, workdir: Path, *, memory_cap: int = MEMORY_CAP) -> None:
        self.pki = pki
        self.workdir = workdir
        self.memory_cap = memory_cap
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        #: Set when the watchdog killed the server for passing ``memory_cap``.
        self.killed_for_memory = False
        #: Highest RSS the watchdog saw since the last :meth:`reset_peak`.
        self.watched_peak = 0
        self._stderr_path = workdir / "server-stderr.txt"
        self._env = dict(os.environ)
        extra_path = os.environ.get(SERVER_PYTHONPATH_VARIABLE)
        if extra_path:  # run another source tree's server (e.g. an older revision)
            self._env["PYTHONPATH"] = os.pathsep.join(
                p for p in (extra_path, os.environ.get("PYTHONPATH")) if p
            )
        self._stop_watch = threading.Event()
        self._watch: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server was not started"
        return self.proc.pid

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it listens (it announces it on stderr)."""
        from tests.helpers import free_port

        for _ in range(3):
            self.port = free_port()
            with open(self._stderr_path, "wb") as err:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "tcpls", "serve", "--echo",
                     "--cert", str(self.pki.cert_file), "--key", str(self.pki.key_file),
                     "--host", "127.0.0.1", "--port", str(self.port)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    env=self._env,
                )  # fmt: skip
            started = time.monotonic()
            while time.monotonic() < started + timeout:
                if "serving" in self.stderr_text() or (
                    time.monotonic() > started + 3.0 and _accepts(self.port)
                ):
                    self._watch = threading.Thread(target=self._watchdog, daemon=True)
                    self._watch.start()
                    return
                if self.proc.poll() is not None:
                    break  # port taken by someone else meanwhile: try another one
                time.sleep(0.02)
            self._kill()
        raise RuntimeError(f"the server did not start: {self.stderr_text()[-2000:]}")

    def _watchdog(self) -> None:
        while not self._stop_watch.wait(0.02):
            try:
                rss = proc_status(self.pid, "VmRSS")
            except (OSError, LookupError):
                return
            self.watched_peak = max(self.watched_peak, rss)
            if rss > self.memory_cap:
                self.killed_for_memory = True
                self._kill()
                return

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss(self) -> int:
        """Current resident memory (VmRSS), bytes."""
        return proc_status(self.pid, "VmRSS")

    def peak(self) -> int:
        """Peak resident memory since start or the last :meth:`reset_peak` (VmHWM), bytes.

        When the server is gone (killed by the watchdog), the highest RSS the watchdog saw.
        """
        try:
            return max(proc_status(self.pid, "VmHWM"), self.watched_peak)
        except (OSError, LookupError):
            return self.watched_peak

    def cpu(self) -> float:
        """CPU seconds (user + system) the server used so far."""
        return _proc_cpu(self.pid)

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (``echo 5 > clear_refs``); false if not allowed."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return False
        self.watched_peak = self.rss()
        return True

    def wait_idle(self, *, window: float = 0.25, busy: float = 0.1, timeout: float = 10.0) -> bool:
        """Wait until the server used less than ``busy`` of a core over ``window`` seconds."""
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            before = self.cpu()
            time.sleep(window)
            if self.cpu() - before < busy * window:
                return True
        return False

    def stderr_text(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """SIGINT (a graceful stop), SIGKILL if it takes more than 5 s."""
        self._stop_watch.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self._kill()
        if self._watch is not None:
            self._watch.join(1)


# ----------------------------------------------------------------------------- hostile client


def new_client_tls(pki: DevPKI) -> TLSConnection:
    """A client TLSConnection offering TCPLS, built the way the library builds its own."""
    config = ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
    return client_session(config, "localhost").connections[0].tls


class HostileClient:
    """One TCP connection to the server, driven by hand: TLS is real, the rest is ours.

    ``connection_id`` is 0 for the connection that ran the handshake, the token's
    sequence number for a joined one (:meth:`join`). Nothing is read from the socket
    unless a method says so (:meth:`pump`, :meth:`poll`, :meth:`sync`, ...): a test that
    wants the server's writes to block simply stops calling them.
    """

    def __init__(
        self,
        port: int,
        tls: TLSConnection,
        *,
        timeout: float = 10.0,
        connection_id: int = 0,
        sock: socket.socket | None = None,
    ) -> None:
        self.port = port
        self.tls = tls
        self.timeout = timeout
        self.connection_id = connection_id
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        #: Contents of the decrypted application records received, in order.
        self.records: list[bytes] = []
        self._parsed = 0
        self.handshake: HandshakeCompleted | None = None
        #: The fatal alert the server sent (``None``: none).
        self.alert: int | None = None
        #: Our TLS failed locally (a server record we could not open, ...).
        self.error: TCPLSError | None = None
        self.close_notify = False
        self.eof = False  # the server closed (FIN or RST)
        self.reset = False  # ... with a reset
        self.stalled = False  # a write blocked for longer than its timeout
        self.broken = False  # a write failed or was cut: the byte stream is unusable
        #: Highest of our record sequences the server acknowledged on this connection.
        self.acked = -1
        #: Join tokens by sequence (``tcpls_token`` is sequence 1; New Token frames the rest).
        self.tokens: dict[int, bytes] = {}
        #: Stream bytes received, in order, by stream ID; and which streams ended (FIN).
        self.stream_data: dict[int, bytearray] = {}
        self.stream_fin: set[int] = set()
        self.bytes_sent = 0

    # -- construction ----------------------------------------------------------

    @classmethod
    def connect(cls, port: int, pki: DevPKI, *, timeout: float = 10.0) -> HostileClient:
        """A new TCP connection and a full TLS 1.3 + TCPLS handshake."""
        client = cls(port, new_client_tls(pki), timeout=timeout)
        try:
            client.complete_handshake()
        except BaseException:
            client.close()
            raise
        if not client.tls.tcpls:
            client.close()
            raise AssertionError("the server did not negotiate TCPLS")
        return client

    def join(self, token: bytes, sequence: int, *, complete: bool = True) -> HostileClient:
        """A new TCP connection joining this session with ``token`` (``tcpls_join``)."""
        read_keys, write_keys = self.keys
        tls = TLSConnection.join_client(
            token,
            read_keys=read_keys,
            write_keys=write_keys,
            connection_id=sequence,
            server_name="localhost",
        )
        joined = HostileClient(self.port, tls, timeout=self.timeout, connection_id=sequence)
        if complete:
            joined.complete_handshake()
        return joined

    @property
    def keys(self) -> tuple[TrafficKeys, TrafficKeys]:
        """The session's application traffic keys ``(read, write)``."""
        return self.tls.traffic_keys()

    def complete_handshake(self) -> HandshakeCompleted:
        """Send our first flight, then read until the handshake completes (or fails)."""
        self.tls.start()
        self.flush()
        deadline = time.monotonic() + self.timeout
        while self.handshake is None:
            if self.alert is not None or self.error is not None:
                raise ConnectionError(f"handshake failed: alert {self.alert}, {self.error}")
            if self.eof:
                raise ConnectionError("the server closed the connection during the handshake")
            if time.monotonic() > deadline:
                raise TimeoutError("the handshake did not complete")
            self.pump(deadline - time.monotonic())
        if self.handshake.token is not None:
            self.tokens[1] = self.handshake.token
        return self.handshake

    # -- input -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether this connection is over: alert, local error, EOF or a broken write."""
        return self.alert is not None or self.error is not None or self.eof or self.broken

    def _feed(self, data: bytes) -> None:
        tls = self.tls
        view = memoryview(data)
        while view:  # read as an I/O layer does, taking each record as it comes
            target = tls.get_buffer()
            n = min(len(target), len(view))
            target[:n] = view[:n]
            view = view[n:]
            tls.buffer_updated(n)
            self._take(tls)
        if not data:
            self.eof = True
            tls.receive_eof()
        self._take(tls)
        self._parse_new_records()
        if not self.broken:
            with contextlib.suppress(OSError):
                self.flush()

    def _take(self, tls: TLSConnection) -> None:
        """Every event and application record ``tls`` has now, in order."""
        while True:
            self._events(tls)
            record = tls.read_record()
            if record is None and not tls.has_events:
                return
            if record is not None:
                self.records.append(bytes(record))

    def _events(self, tls: TLSConnection) -> None:
        while (event := tls.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self.handshake = event
            elif isinstance(event, ConnectionFailed):
                if isinstance(event.error, PeerAlert):
                    self.alert = event.error.alert
                else:
                    self.error = event.error
            elif isinstance(event, CloseNotifyReceived):
                self.close_notify = True
            elif isinstance(event, TransportEnded):
                self.eof = True

    def _parse_new_records(self) -> None:
        for content in self.records[self._parsed :]:
            try:
                frames = parse_frames(content)
            except (DecodeError, TCPLSError):
                continue
            for frame in frames:
                if isinstance(frame, Ack) and frame.connection_id == self.connection_id:
                    self.acked = max(self.acked, frame.highest_sequence)
                elif isinstance(frame, NewToken):
                    self.tokens[frame.sequence] = bytes(frame.token)
                elif isinstance(frame, StreamFrame):
                    buf = self.stream_data.setdefault(frame.stream_id, bytearray())
                    end = frame.offset + len(frame.data)
                    if frame.offset <= len(buf) < end:
                        buf += bytes(frame.data)[len(buf) - frame.offset :]
                    if frame.fin:
                        self.stream_fin.add(frame.stream_id)
        self._parsed = len(self.records)

    def pump(self, timeout: float | None = None) -> bool:
        """Read once (waiting at most ``timeout``) and process; false if nothing came."""
        if self.eof:
            return False
        self.sock.settimeout(max(timeout if timeout is not None else self.timeout, 0.001))
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        except OSError:
            self.reset = True
            data = b""
        self._feed(data)
        return True

    def poll(self) -> None:
        """Process whatever the server sent, without waiting."""
        while not self.eof:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable or not self.pump(0.001):
                return

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Read until ``condition()`` holds; false on timeout or when the server closed."""
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                return condition()
            self.pump(remaining)
        return True

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """Read until the server sends a fatal alert or closes the TCP connection."""
        return self.wait_until(lambda: self.alert is not None or self.eof, timeout)

    def sync(self, timeout: float = 10.0) -> bool:
        """Barrier: a record with a Ping, then wait for the ACK that covers it.

        True when the server acknowledged it (so it processed everything sent before);
        false if it closed, sent an alert, or did not answer in time.
        """
        if self.closed:
            return False
        try:
            seq = self.send_frames([Ping()])
        except (OSError, TCPLSError):
            return False
        return self.wait_until(lambda: self.acked >= seq or self.alert is not None, timeout) and (
            self.acked >= seq
        )

    def highest_received(self) -> int:
        """Sequence of the last record received from the server on this connection (-1)."""
        protection = self.tls.read_protection
        return -1 if protection is None else protection.sequence - 1

    def ack_everything(self) -> None:
        """Acknowledge every record received so far (the server then has nothing in flight)."""
        highest = self.highest_received()
        if highest >= 0:
            self.send_frames([Ack(self.connection_id, highest)])

    def echo(self, stream_id: int, data: bytes, timeout: float = 5.0) -> bytes:
        """Send ``data`` with FIN on a new stream; return what came back (until FIN)."""
        self.send_frames([StreamFrame(stream_id, 0, data, True)])
        self.wait_until(lambda: stream_id in self.stream_fin or self.closed, timeout)
        return bytes(self.stream_data.get(stream_id, b""))

    # -- output ----------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Write what our TLS has sealed (blocking at most ``timeout``, default the client's)."""
        data = self.tls.data_to_send()
        if data:
            self._write(data, timeout)

    def _write(self, data: bytes | bytearray | memoryview, timeout: float | None = None) -> None:
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            self.stalled = self.broken = True
            raise
        except OSError:
            self.broken = True
            raise
        self.bytes_sent += len(data)

    def send_raw(self, data: bytes) -> None:
        """Bytes straight to the socket (malformed records, garbage)."""
        self._write(data)

    def send_record(self, content: bytes | bytearray | memoryview) -> int:
        """Seal ``content`` as one application record and send it; return its sequence."""
        seq = self.tls.send_record(content)
        self.flush()
        return seq

    def send_frames(self, frames: Iterable[Frame]) -> int:
        """Encode ``frames`` into one record, seal and send it; return its sequence."""
        return self.send_record(encode_frames(frames))

    def send_records(
        self,
        contents: Iterable[bytes | bytearray | memoryview],
        *,
        batch_bytes: int = 1 * MiB,
        stall_timeout: float | None = None,
        read: bool = True,
    ) -> int:
        """Seal and send many records, written in batches; return how many were sent.

        Stops early when the server closes (alert, EOF, reset) or when a write blocks for
        longer than ``stall_timeout`` (default: the client timeout), which is what
        backpressure looks like (:attr:`stalled` is then set). With ``read`` the
        server's answers are processed between batches (never blocking on them).
        """
        sent = 0
        pending = 0
        tls = self.tls
        for content in contents:
            if self.closed:
                return sent
            tls.send_record(content)
            pending += 1
            if tls.pending_output >= batch_bytes:
                if not self._send_batch(stall_timeout, read):
                    return sent
                sent += pending
                pending = 0
        if pending and self._send_batch(stall_timeout, read):
            sent += pending
        return sent

    def _send_batch(self, stall_timeout: float | None, read: bool) -> bool:
        """Write the sealed records; false if the write failed or blocked too long."""
        try:
            self.flush(stall_timeout)
        except OSError:
            return False
        if read:
            self.poll()
        return True

    def stream_records(
        self, stream_id: int, total: int, *, offset: int = 0, fin: bool = False
    ) -> Iterator[memoryview]:
        """Record contents carrying ``total`` bytes of one stream from ``offset``, full-size.

        Yields views of one reused buffer (each must be sealed before the next is taken,
        as :meth:`send_records` does). The data is a fixed pattern.
        """
        buf = bytearray(MAX_STREAM_DATA + STREAM_HEADER_SIZE)
        view = memoryview(buf)
        buf[:MAX_STREAM_DATA] = (b"0123456789abcdef" * (MAX_STREAM_DATA // 16 + 1))[
            :MAX_STREAM_DATA
        ]
        end = offset + total
        pos = offset
        while pos < end:
            n = min(MAX_STREAM_DATA, end - pos)
            last = pos + n == end
            write_stream_header_into(view, n, stream_id, pos, n, fin and last)
            yield view[: n + STREAM_HEADER_SIZE]
            pos += n

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# ----------------------------------------------------------------------------- raw bytes


def plaintext_alert(description: int) -> bytes:
    """A plaintext fatal alert record, as a server sends it before keys exist."""
    return bytes([ALERT_RECORD, 3, 3, 0, 2, 2, description])


def raw_exchange(
    port: int, data: bytes, *, shutdown: bool = False, timeout: float = 5.0
) -> tuple[bytes, bool]:
    """Send raw bytes on a new connection; return (what came back until EOF, closed in time)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if shutdown:
            sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return bytes(received), False
            except OSError:
                return bytes(received), True
            if not chunk:
                return bytes(received), True
            received += chunk


def client_hello_record(pki: DevPKI) -> bytes:
    """The first flight of our client: one plaintext record holding a real ClientHello."""
    tls = new_client_tls(pki)
    tls.start()
    return tls.data_to_send()


def rewrite_client_hello(
    record: bytes,
    *,
    cipher_suites: bytes | None = None,
    supported_versions: bytes | None = None,
    cut: int = 0,
) -> bytes:
    """A ClientHello record with its cipher suites or supported_versions body replaced
    (same length: every length field stays right), a fresh random, or its last ``cut``
    bytes removed (record and handshake lengths fixed, inner vectors left truncated)."""
    msg = bytearray(record[5:])
    msg[6:38] = os.urandom(32)
    pos = 4 + 2 + 32
    pos += 1 + msg[pos]  # legacy_session_id
    suites_len = int.from_bytes(msg[pos : pos + 2], "big")
    if cipher_suites is not None:
        if len(cipher_suites) != suites_len:
            raise ValueError(f"cipher_suites must be {suites_len} bytes")
        msg[pos + 2 : pos + 2 + suites_len] = cipher_suites
    pos += 2 + suites_len
    pos += 1 + msg[pos]  # legacy_compression_methods
    end = pos + 2 + int.from_bytes(msg[pos : pos + 2], "big")
    pos += 2
    while supported_versions is not None and pos < end:
        ext_type, ext_len = struct.unpack_from(">HH", msg, pos)
        if ext_type == 43:
            if len(supported_versions) != ext_len:
                raise ValueError(f"supported_versions body must be {ext_len} bytes")
            msg[pos + 4 : pos + 4 + ext_len] = supported_versions
            break
        pos += 4 + ext_len
    if cut:
        del msg[-cut:]
        msg[1:4] = (len(msg) - 4).to_bytes(3, "big")
    return record[:3] + len(msg).to_bytes(2, "big") + bytes(msg)


# ----------------------------------------------------------------------------- good client


@dataclass(frozen=True)
class GoodClientResult:
    """How a well-behaved client fared: seconds to get its echo, or the error."""

    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.seconds <= GOOD_CLIENT_DEADLINE


async def _echo_session(port: int, cafile: str, payload: bytes) -> tuple[float, bytes]:
    import tcpls

    start = time.monotonic()
    config = tcpls.ClientConfig(cafile=cafile, server_name="localhost")
    session = await tcpls.connect("127.0.0.1", port, config=config)
    try:
        reader, writer = await session.open_stream()
        writer.write(payload)
        writer.write_eof()
        received = bytearray()
        while chunk := await reader.read(65536):
            received += chunk
        elapsed = time.monotonic() - start
    except BaseException:
        session.abort()
        raise
    with contextlib.suppress(Exception):
        await asyncio.wait_for(session.aclose(), 2.0)
    return elapsed, bytes(received)


async def good_client_echo_async(
    port: int, pki: DevPKI, *, timeout: float = 3.0
) -> GoodClientResult:
    """A fresh ``tcpls.connect`` session echoes a small message on a new stream; timed."""
    payload = b"a good client's small message " + os.urandom(8).hex().encode()
    start = time.monotonic()
    try:
        elapsed, echoed = await asyncio.wait_for(
            _echo_session(port, str(pki.ca_file), payload), timeout
        )
    except (TimeoutError, OSError, TCPLSError) as exc:
        return GoodClientResult(time.monotonic() - start, f"{type(exc).__name__}: {exc}")
    if echoed != payload:
        return GoodClientResult(elapsed, f"echo mismatch: {echoed[:80]!r}")
    return GoodClientResult(elapsed)


def good_client_echo(port: int, pki: DevPKI, *, timeout: float = 3.0) -> GoodClientResult:
    """:func:`good_client_echo_async` in its own event loop."""
    return asyncio.run(good_client_echo_async(port, pki, timeout=timeout))


# ----------------------------------------------------------------------------- one case


@dataclass
class Arena:
    """One adversarial case: a fresh server, hostile clients, measurements and checks."""

    server: ServerProcess
    pki: DevPKI
    name: str
    peak_reset: bool = False
    baseline_rss: int = 0
    baseline_cpu: float = 0.0
    measurements: dict[str, object] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    clients: list[HostileClient] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    def begin(self) -> None:
        """Mark the start of the case: reset the peak, take the baseline RSS and CPU."""
        self.peak_reset = self.server.reset_peak()
        self.baseline_rss = self.server.rss()
        self.baseline_cpu = self.server.cpu()
        self.note(baseline_rss_mib=self.baseline_rss / MiB)

    def client(self, *, timeout: float = 10.0) -> HostileClient:
        """A new hostile client, handshake done; closed when the case ends."""
        client = HostileClient.connect(self.port, self.pki, timeout=timeout)
        self.clients.append(client)
        return client

    def track(self, client: HostileClient) -> HostileClient:
        self.clients.append(client)
        return client

    def note(self, **values: object) -> None:
        """Record measurements (shown with the verdict)."""
        for key, value in values.items():
            self.measurements[key] = round(value, 3) if isinstance(value, float) else value

    def expect(self, condition: bool, message: str) -> None:
        """A requirement; all unmet ones are reported together by :meth:`finish`."""
        if not condition:
            self.failures.append(message)

    def expect_alert(self, client: HostileClient, alert: int, what: str) -> None:
        """The server must end ``client``'s connection with the fatal ``alert``."""
        client.wait_closed(5.0)
        self.note(alert=client.alert)
        self.expect(
            client.alert == alert,
            f"{what}: expected alert {alert}, got {client.alert} (eof={client.eof})",
        )

    def peak_growth(self) -> int:
        """Peak RSS of the case above the baseline RSS, bytes (needs :attr:`peak_reset`)."""
        return self.server.peak() - self.baseline_rss

    def cpu_used(self) -> float:
        """Server CPU seconds since :meth:`begin` (or the last time it was read)."""
        try:
            return self.server.cpu() - self.baseline_cpu
        except OSError:
            return float("nan")

    def finish(self, *, peak_limit: int = PEAK_RSS_LIMIT, good_client: bool = True) -> None:
        """Checks of every case, then report: raise if any requirement was not met.

        The good client comes while the case's hostile clients are still connected (the
        server must keep serving others during an attack), then they are closed.
        """
        if good_client:
            if self.server.alive():
                result = good_client_echo(self.port, self.pki)
                self.note(good_client_s=result.seconds)
                self.expect(
                    result.ok,
                    f"a fresh good client was not served within {GOOD_CLIENT_DEADLINE} s "
                    f"({result.seconds:.2f} s, {result.error})",
                )
            else:
                self.expect(False, "the server process is gone: a fresh client cannot be served")
        for client in self.clients:  # the good client came while they were still connected
            client.close()
        self.clients.clear()
        peak = self.server.peak()
        self.note(peak_rss_mib=peak / MiB)
        self.expect(
            peak < peak_limit,
            f"peak RSS {peak / MiB:.1f} MiB, limit {peak_limit / MiB:.0f} MiB",
        )
        if self.server.killed_for_memory:
            self.failures.append(f"the server passed {MEMORY_CAP / MiB:.0f} MiB and was killed")
        elif not self.server.alive():
            self.failures.append("the server process exited")
        self.report()

    def report(self) -> None:
        summary = ", ".join(f"{k}={v}" for k, v in self.measurements.items())
        print(f"\n[adversarial] {self.name}: {summary}")
        if self.failures:
            tail = self.server.stderr_text()[-1500:]
            raise AssertionError(
                f"{self.name}: "
                + "; ".join(self.failures)
                + f"\nmeasurements: {summary}"
                + (f"\nserver stderr (tail):\n{tail}" if tail.strip() else "")
            )
