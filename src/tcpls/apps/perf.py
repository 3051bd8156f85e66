"""``tcpls perf``: goodput measurement between two hosts, modelled on iperf3.

The server (``tcpls perf -s``) accepts sessions; the client opens ``-P``
streams. Each stream starts with one request line from the client::

    TCPLSPERF2 {"direction": "upload"|"download", "seconds": T, "bytes": N}\\n

(``seconds`` or ``bytes`` may be ``null``, but not both). The server answers at once
with the line ``TCPLSPERF2 OK\\n``, or with ``{"error": "<reason>"}\\n`` and the
end of the stream for a request it cannot serve. Then:

* upload: the client sends until the time or byte limit, then ends the stream;
  the server counts and answers with a JSON line ``{"bytes": n, "seconds": s}``
  and ends the stream;
* download (``-R``): the server sends until the limit, then ends the stream.

The immediate answer lets a client tell within seconds that its peer is not a
perf server (an echo server sends the request back, ``openssl s_server`` sends
nothing), and a timed test is bounded as a whole: its length, plus the wait for
the answer, plus a few seconds of grace. The client shows a live progress
display and a final table, or one JSON object with ``--json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tcpls.aio.session import Session
from tcpls.aio.streams import StreamReader, StreamWriter
from tcpls.errors import TCPLSError

__all__ = [
    "NotAPerfServer",
    "PerfError",
    "PerfRefused",
    "PerfResult",
    "PerfTimeout",
    "StreamResult",
    "perf_handler",
    "run_client",
]

#: The start of every request line and of the server's acceptance (the protocol's version).
MAGIC = b"TCPLSPERF2 "
#: The server's answer to a request it accepts.
ACCEPTED = MAGIC + b"OK\n"
_BLOCK = os.urandom(1 << 20)
_MAX_REQUEST = 4096


class PerfError(TCPLSError):
    """A perf test failed for a reason of the perf protocol."""


class NotAPerfServer(PerfError):
    """The peer did not answer the perf request like a perf server; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the server is not a tcpls perf server ({reason})")
        self.reason = reason


class PerfRefused(PerfError):
    """The perf server refused the request (``{"error": reason}``), e.g. another version."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the perf server refused the test: {reason}")
        self.reason = reason


class PerfTimeout(PerfError):
    """A timed test went on past its length plus the grace period."""


@dataclass
class StreamResult:
    """What one stream carried."""

    stream_id: int
    bytes: int = 0
    seconds: float = 0.0
    #: Bytes the receiving end counted (the server's count for uploads).
    confirmed: int | None = None

    @property
    def rate(self) -> float:
        """Goodput in bytes per second."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


@dataclass
class PerfResult:
    """The outcome of a ``tcpls perf`` client run."""

    direction: str
    tcpls: bool
    cipher_suite: str | None
    seconds: float = 0.0
    streams: list[StreamResult] = field(default_factory=list)
    connections: list[dict[str, Any]] = field(default_factory=list)
    intervals: list[dict[str, float]] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        """Bytes carried by all streams."""
        return sum(s.bytes for s in self.streams)

    @property
    def rate(self) -> float:
        """Aggregate goodput in bytes per second."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        """A JSON-serialisable summary."""
        return {
            "direction": self.direction,
            "tcpls": self.tcpls,
            "cipher_suite": self.cipher_suite,
            "seconds": round(self.seconds, 6),
            "bytes": self.bytes,
            "bits_per_second": round(self.rate * 8),
            "megabytes_per_second": round(self.rate / 1e6, 3),
            "streams": [
                {
                    "stream_id": s.stream_id,
                    "bytes": s.bytes,
                    "seconds": round(s.seconds, 6),
                    "bits_per_second": round(s.rate * 8),
                    "confirmed_bytes": s.confirmed,
                }
                for s in self.streams
            ],
            "connections": self.connections,
            "intervals": self.intervals,
        }


# ------------------------------------------------------------------------- server


async def _send_for(writer: StreamWriter, seconds: float | None, limit: int | None) -> int:
    deadline = time.monotonic() + seconds if seconds else None
    sent = 0
    block = _BLOCK
    while True:
        if limit is not None and sent >= limit:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        chunk = block if limit is None or limit - sent >= len(block) else block[: limit - sent]
        writer.write(chunk)
        sent += len(chunk)
        await writer.drain()
    writer.write_eof()
    return sent


async def _serve_stream(reader: StreamReader, writer: StreamWriter) -> None:
    # the client going away or sending nonsense affects only this stream
    with contextlib.suppress(TCPLSError, OSError):
        await _answer(reader, writer)


async def _refuse(writer: StreamWriter, reason: str) -> None:
    writer.write(json.dumps({"error": reason}).encode() + b"\n")
    writer.write_eof()
    await writer.wait_closed()


def _parse_request(line: bytes) -> tuple[str, float | None, int | None]:
    """(direction, seconds, bytes) of a request line; ``ValueError`` with a reason if invalid."""
    if not line.startswith(MAGIC):
        raise ValueError(f"not a tcpls perf request (expected {MAGIC.decode().strip()})")
    try:
        request = json.loads(line[len(MAGIC) :])
    except ValueError:
        raise ValueError("the request is not valid JSON") from None
    if not isinstance(request, dict):
        raise ValueError("the request is not a JSON object")
    direction = request.get("direction")
    seconds = request.get("seconds")
    limit = request.get("bytes")
    if direction not in ("upload", "download"):
        raise ValueError("direction must be upload or download")
    if seconds is not None and (
        not isinstance(seconds, int | float) or isinstance(seconds, bool) or not seconds > 0
    ):
        raise ValueError("seconds must be a positive number")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError("bytes must be a non-negative integer")
    if seconds is None and limit is None:
        raise ValueError("the request sets neither seconds nor bytes")
    return direction, seconds, limit


async def _answer(reader: StreamReader, writer: StreamWriter) -> None:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        await _refuse(writer, "request line too long")
        return
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            await _refuse(writer, "request without a line end")
        return
    try:
        if len(line) > _MAX_REQUEST:
            raise ValueError("request line too long")
        direction, seconds, limit = _parse_request(line)
    except ValueError as exc:
        await _refuse(writer, str(exc))
        return
    writer.write(ACCEPTED)
    if direction == "download":
        await _send_for(writer, seconds, limit)
        await writer.wait_closed()
        return
    start = time.monotonic()
    received = 0
    while data := await reader.read(1 << 20):
        received += len(data)
    elapsed = time.monotonic() - start
    writer.write(json.dumps({"bytes": received, "seconds": elapsed}).encode() + b"\n")
    writer.write_eof()
    await writer.wait_closed()


async def perf_handler(session: Session) -> None:
    """Server side: answer every perf stream of a session."""
    async with asyncio.TaskGroup() as group:
        async for reader, writer in session:
            group.create_task(_serve_stream(reader, writer))


# ------------------------------------------------------------------------- client


async def _await_answer(reader: StreamReader, request: bytes, timeout: float) -> None:
    """Wait for the server's answer to ``request``; raise unless it accepts."""
    try:
        async with asyncio.timeout(timeout):
            line = await reader.readuntil(b"\n")
    except TimeoutError:
        raise NotAPerfServer(f"no answer to the perf request within {timeout:g} s") from None
    except asyncio.LimitOverrunError:
        raise NotAPerfServer("its answer is not a perf answer") from None
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise NotAPerfServer("its answer is not a perf answer") from None
        raise NotAPerfServer("it ended the stream without answering") from None
    if line == ACCEPTED:
        return
    if line == request:
        raise NotAPerfServer("it sent the request back, like an echo server")
    try:
        refusal = json.loads(line)
    except ValueError:
        refusal = None
    if isinstance(refusal, dict) and isinstance(refusal.get("error"), str):
        reason = "".join(c if c.isprintable() else "?" for c in refusal["error"][:200])
        raise PerfRefused(reason)
    raise NotAPerfServer("its answer is not a perf answer")


async def _read_count(reader: StreamReader) -> int:
    """The server's byte count at the end of an upload."""
    try:
        line = await reader.readuntil(b"\n")
        reply = json.loads(line)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        reply = None
    count = reply.get("bytes") if isinstance(reply, dict) else None
    if not isinstance(count, int) or isinstance(count, bool):
        raise PerfError("the perf server ended the upload without a valid byte count")
    return count


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of ``group`` that is not a cancellation."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


async def run_client(
    session: Session,
    *,
    streams: int = 1,
    seconds: float | None = 10.0,
    total_bytes: int | None = None,
    reverse: bool = False,
    on_interval: Any = None,
    interval: float = 1.0,
    answer_timeout: float = 5.0,
    grace: float = 5.0,
) -> PerfResult:
    """Run the perf test over ``session``; ``on_interval(elapsed, bytes, rate)`` is called.

    Every stream waits at most ``answer_timeout`` seconds for the server to
    accept its request (:class:`NotAPerfServer` otherwise, or
    :class:`PerfRefused` when the server refuses). A timed test (``seconds``
    without ``total_bytes``) ends within ``answer_timeout + seconds + grace``
    or raises :class:`PerfTimeout`. Session failures raise their own
    :class:`~tcpls.errors.TCPLSError` or :class:`OSError`: one exception, never
    a group.
    """
    if streams > 1 and not session.tcpls_negotiated:
        raise TCPLSError(
            "TCPLS was not negotiated (plain TLS 1.3 fallback): only one stream is possible"
        )
    direction = "download" if reverse else "upload"
    per_stream = total_bytes // streams if total_bytes is not None else None
    if per_stream is None and not seconds:
        raise ValueError("give seconds or total_bytes")
    request = (
        MAGIC
        + json.dumps(
            {
                "direction": direction,
                "seconds": None if per_stream is not None else seconds,
                "bytes": per_stream,
            }
        ).encode()
        + b"\n"
    )
    result = PerfResult(
        direction=direction, tcpls=session.tcpls_negotiated, cipher_suite=session.cipher_suite
    )
    counters = [StreamResult(0) for _ in range(streams)]
    start = time.monotonic()
    accepted = asyncio.Event()  # the clock of the reports starts with the first answer

    async def one(index: int) -> None:
        nonlocal start
        reader, writer = await session.open_stream()
        counter = counters[index]
        counter.stream_id = writer.stream_id
        writer.write(request)
        await _await_answer(reader, request, answer_timeout)
        t0 = time.monotonic()
        if not accepted.is_set():
            start = t0
            accepted.set()
        if reverse:
            while data := await reader.read(1 << 20):
                counter.bytes += len(data)
            counter.seconds = time.monotonic() - t0
            counter.confirmed = counter.bytes
            return
        deadline = t0 + seconds if seconds and per_stream is None else None
        block = _BLOCK
        while True:
            if per_stream is not None and counter.bytes >= per_stream:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            left = None if per_stream is None else per_stream - counter.bytes
            chunk = block if left is None or left >= len(block) else block[:left]
            writer.write(chunk)
            await writer.drain()
            counter.bytes += len(chunk)
        writer.write_eof()
        counter.confirmed = await _read_count(reader)
        counter.seconds = time.monotonic() - t0

    async def ticker() -> None:
        await accepted.wait()
        last_bytes, last_time = 0, start
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            done = sum(c.bytes for c in counters)
            rate = (done - last_bytes) / (now - last_time) if now > last_time else 0.0
            result.intervals.append(
                {"elapsed": round(now - start, 3), "bytes": done, "bits_per_second": rate * 8}
            )
            if on_interval is not None:
                on_interval(now - start, done, rate)
            last_bytes, last_time = done, now

    bound = answer_timeout + seconds + grace if seconds and per_stream is None else None
    tick = asyncio.create_task(ticker())
    try:
        async with asyncio.timeout(bound):
            async with asyncio.TaskGroup() as group:
                for i in range(streams):
                    group.create_task(one(i))
    except TimeoutError:
        raise PerfTimeout(
            f"the {seconds:g} s test did not finish within {bound:g} s: "
            "the server stopped answering or the network stalled"
        ) from None
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    finally:
        tick.cancel()
    result.seconds = time.monotonic() - start
    result.streams = counters
    for info in session.connections:
        result.connections.append(
            {
                "id": info.id,
                "local": f"{info.local_address[0]}:{info.local_address[1]}"
                if info.local_address
                else None,
                "remote": f"{info.remote_address[0]}:{info.remote_address[1]}"
                if info.remote_address
                else None,
                "bytes_sent": info.bytes_sent,
                "bytes_received": info.bytes_received,
                "records_sent": info.records_sent,
                "records_received": info.records_received,
                "rtt_ms": round(info.rtt * 1000, 3) if info.rtt is not None else None,
                "cwnd": info.cwnd,
            }
        )
    return result


def format_rate(bytes_per_second: float) -> str:
    """``123.4 Mbit/s`` (decimal units, like iperf3)."""
    bits = bytes_per_second * 8
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits >= scale:
            return f"{bits / scale:.2f} {unit}"
    return f"{bits:.0f} bit/s"


def format_bytes(count: float) -> str:
    """``12.3 MiB`` (binary units)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count:.0f} B"


def print_result(result: PerfResult) -> None:
    """The final table, with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout)
    table = Table(
        title=f"tcpls perf: {result.direction}, "
        f"{'TCPLS' if result.tcpls else 'plain TLS 1.3'}, {result.cipher_suite}",
        title_justify="left",
    )
    for column in ("stream", "transferred", "time", "goodput", "confirmed by peer"):
        table.add_column(column, justify="right")
    for s in result.streams:
        confirmed = (
            "n/a"
            if s.confirmed is None
            else ("yes" if s.confirmed == s.bytes else f"NO ({s.confirmed})")
        )
        table.add_row(
            str(s.stream_id),
            format_bytes(s.bytes),
            f"{s.seconds:.2f} s",
            format_rate(s.rate),
            confirmed,
        )
    table.add_row(
        "total",
        format_bytes(result.bytes),
        f"{result.seconds:.2f} s",
        format_rate(result.rate),
        "",
        style="bold",
    )
    console.print(table)
    if result.connections:
        conns = Table(title="connections", title_justify="left")
        for column in ("id", "local", "remote", "sent", "received", "rtt", "cwnd"):
            conns.add_column(column, justify="right")
        for c in result.connections:
            conns.add_row(
                str(c["id"]),
                str(c["local"]),
                str(c["remote"]),
                format_bytes(c["bytes_sent"]),
                format_bytes(c["bytes_received"]),
                f"{c['rtt_ms']} ms" if c["rtt_ms"] is not None else "n/a",
                str(c["cwnd"]),
            )
        console.print(conns)
