"""Soak: memory per idle session, new sessions per second and churn, tcpls vs stdlib ``ssl``.

Everything of one system runs against **one server process** (default
``ServerConfig`` apart from the certificate and the cipher suite; the handler is
``tcpls.apps.echo.echo_handler``), driven by ``--clients`` client processes (default 2)
that take their commands from the parent. The phases, in this order:

1. **rate**: every client opens and closes sessions as fast as it can (``--concurrency``
   at a time each) until ``--handshakes`` full handshakes are done (connect with the
   certificate verified, graceful close, no data, no resumption), after an unmeasured
   warm-up. Reported: handshakes per second over the whole phase (first start to last
   end, all clients), and the server's CPU milliseconds per session (getrusage user+system
   over the phase, closes included), which is steadier than the rate on a busy 2-core
   machine where clients and server share the cores.
2. **churn**: ``--cycles`` cycles (connect, one echo round trip on a new stream, close)
   at the same concurrency, after ``--churn-warmup`` unmeasured cycles. The server's
   RSS (``VmRSS`` of /proc/PID/status, read by the parent) is taken before and after,
   each time once it has settled (see below), without forcing a garbage collection;
   then the server runs ``gc.collect()`` (a command on its control pipe) and the RSS
   is read again, as a diagnostic. Target: RSS back within 10 %. Leak-sensitive
   counters come along: Python's allocated blocks (``sys.getallocatedblocks``), the
   objects the collector tracks, the tasks and file descriptors of the server. The tcpls
   server keeps up to 4,096 issued session tickets (a bounded store, about 1 KiB each):
   the rate phase and the warm-up (4,100 sessions by default) fill it before the churn
   is measured, so the churn sees the steady state (``tickets_stored`` in the counters);
   with a smaller ``--handshakes`` + ``--churn-warmup`` its growth shows in the figure.
3. **idle**: ``--warmup-sessions`` sessions are opened and kept (the baseline RSS), then
   ``--sessions - --active`` idle sessions (1,800 by default). Every session does one
   echo round trip on a stream when it opens (``--idle-handshake-only``: none), then
   stays idle. Memory per idle session = (RSS with them - baseline RSS) / their number.
   Target: <= 32 KiB (issue 11: measured at 10,000 idle sessions, ``--sessions 10002
   --active 2``; the default ``ServerConfig`` admits them).
4. **active**: ``--active`` more sessions (200) make continuous echo round trips of
   ``--payload`` bytes (``--round-trips`` per stream, then the stream is closed and
   another opened) for ``--active-seconds`` while the idle ones stay open; the RSS is
   sampled every second. Reported: (last RSS - baseline) / all sessions, and the increment
   over the idle-only RSS per active session. Then the active ones stop, and the RSS is
   read again once settled (all sessions idle).
5. **close**: every session is closed; the RSS once settled, and the server's count of
   open sessions (must be 0); then ``gc.collect()`` and the counters again (what a closed
   session leaves is cyclic garbage until a full collection).

Rate and churn come first so that the churn starts from a heap that has never held the
2,000 sessions (memory they leave free inside the allocator would hide growth); the idle
baseline is therefore taken after them and includes what they left. Client-side errors
(failed opens, echoes or closes) are counted per phase, not fatal: see ``errors``.

*Settled* means: at least ``--settle`` seconds after the phase (tcpls gives record buffers
back after 1 s without traffic), then RSS sampled every 0.5 s until it moved by less than
256 KiB over 2 s (at most 30 s).

The baseline, ``ssl``, runs the same phases against ``asyncio.start_server`` with a TLS 1.3
``SSLContext`` (same certificate, TLS_AES_128_GCM_SHA256 through ``OPENSSL_CONF``, see
``common.py``) and an echo handler; its clients use ``asyncio.open_connection``. A "session"
there is one TLS connection and an echo round trip is on the connection (TLS has no
streams). It is the reference for memory per idle connection and handshakes per second.

``--tracemalloc N`` starts tracemalloc (N frames) in the server and reports the sites that
grew during the idle and churn phases; it inflates memory and CPU, so the figures of such a
run are diagnostics only.

The clients need more than 1,024 file descriptors: the script raises ``RLIMIT_NOFILE`` to
its hard limit (children inherit it).

Prints one JSON line on stdout; progress and a summary go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

from common import (
    CIPHER_SUITE,
    CLOSE_TIMEOUT,
    HOST,
    BenchmarkError,
    Child,
    Control,
    Meter,
    Pki,
    check_ssl_cipher,
    check_tcpls_session,
    log,
    machine_info,
    make_pki,
    run_benchmark,
    run_child,
    ssl_client_context,
    ssl_server_context,
)

SYSTEMS = ("tcpls", "ssl")
#: Target of the issue: memory per idle session.
IDLE_TARGET_KIB = 32.0
#: Target of the issue: RSS after the churn within this fraction of the RSS before.
CHURN_TARGET = 0.10
#: RSS is settled when it moved by less than this over SETTLE_WINDOW seconds.
SETTLE_TOLERANCE_KIB = 256
SETTLE_WINDOW = 2.0
SETTLE_LIMIT = 30.0
#: Reads of the echo servers.
READ_SIZE = 64 * 1024
#: Error messages kept per kind (the counts are complete).
ERROR_TEXT = 160


# -- helpers ------------------------------------------------------------------------


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard) now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def proc_status_kib(pid: int | str, key: str = "VmRSS") -> int:
    """A ``kB`` field of /proc/PID/status (``VmRSS`` by default)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0])
    raise BenchmarkError(f"no {key} in /proc/{pid}/status")


def settle_rss(pid: int, minimum: float) -> tuple[int, float]:
    """RSS (KiB) of ``pid`` once settled (see the module docstring); and the seconds waited."""
    start = time.monotonic()
    time.sleep(minimum)
    samples: list[tuple[float, int]] = []
    while True:
        now = time.monotonic()
        samples.append((now, proc_status_kib(pid)))
        window = [kib for t, kib in samples if t >= now - SETTLE_WINDOW]
        full = samples[0][0] <= now - SETTLE_WINDOW
        if (full and max(window) - min(window) < SETTLE_TOLERANCE_KIB) or (
            now - start > SETTLE_LIMIT
        ):
            return samples[-1][1], round(now - start, 1)
        time.sleep(0.5)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal counts."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def mib(kib: float) -> float:
    return round(kib / 1024, 1)


def merge_counts(items: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        for key, value in item.items():
            out[key] = out.get(key, 0) + value
    return out


class ErrorCounter:
    """Counts exceptions by type and message (messages cut to ERROR_TEXT characters)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, exc: BaseException) -> None:
        key = f"{exc.__class__.__name__}: {exc}"[:ERROR_TEXT]
        self.counts[key] = self.counts.get(key, 0) + 1

    def take(self) -> dict[str, int]:
        counts, self.counts = self.counts, {}
        return counts


class CountingLogHandler(logging.Handler):
    """Counts the log records of WARNING and above by message template; prints a few."""

    def __init__(self, prefix: str, shown: int = 3) -> None:
        super().__init__(logging.WARNING)
        self.prefix = prefix
        self.shown = shown
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.name}: {record.msg}"[:ERROR_TEXT]
        seen = self.counts.get(key, 0)
        self.counts[key] = seen + 1
        if seen < self.shown:
            with contextlib.suppress(Exception):
                print(f"{self.prefix}: {record.getMessage()}", file=sys.stderr, flush=True)


def count_asyncio_errors(errors: ErrorCounter) -> None:
    """Count the asyncio "exception in callback/protocol" reports instead of printing them."""

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, BaseException):
            errors.add(exc)
        else:
            key = str(context.get("message", "?"))[:ERROR_TEXT]
            errors.counts[key] = errors.counts.get(key, 0) + 1

    asyncio.get_running_loop().set_exception_handler(handler)


# -- servers ------------------------------------------------------------------------


def soak_server(conn: Connection, pki: Pki, system: str, trace_frames: int) -> None:
    """The echo server of ``system``: sends its port, then obeys the parent (see _serve)."""
    raise_nofile_limit()
    if trace_frames:
        import tracemalloc

        tracemalloc.start(trace_frames)
    runner = _tcpls_server if system == "tcpls" else _ssl_server
    run_child(conn, lambda control: runner(control, pki))


async def _tcpls_server(control: Control, pki: Pki) -> None:
    import tcpls
    from tcpls.apps.echo import echo_handler

    counters = {"sessions_started": 0, "sessions_ended": 0, "tcpls_sessions": 0}
    handler_errors = ErrorCounter()

    async def handler(session: tcpls.Session) -> None:
        counters["sessions_started"] += 1
        counters["tcpls_sessions"] += int(session.tcpls_negotiated)
        try:
            await echo_handler(session)
        except BaseException as exc:
            handler_errors.add(exc)
            raise
        finally:
            counters["sessions_ended"] += 1

    config = tcpls.ServerConfig(
        certfile=pki.cert_file, keyfile=pki.key_file, cipher_suites=[CIPHER_SUITE]
    )
    server = await tcpls.serve(handler, HOST, 0, config=config)

    def probe() -> dict[str, Any]:
        return {
            **counters,
            "sessions_open": len(server.sessions),
            # the server's own estimate (absent in revisions before the memory budget)
            "estimated_memory_kib": getattr(server, "memory_use", 0) // 1024,
            # private: the server's store of issued session tickets (bounded)
            "tickets_stored": len(getattr(server._endpoint, "tickets", None) or ()),
            "handler_errors": dict(handler_errors.counts),
        }

    try:
        await _serve(control, server.port, probe)
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT)


async def _ssl_server(control: Control, pki: Pki) -> None:
    counters = {"sessions_started": 0, "sessions_ended": 0}
    live: set[asyncio.StreamWriter] = set()
    handler_errors = ErrorCounter()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counters["sessions_started"] += 1
        live.add(writer)
        try:
            while data := await reader.read(READ_SIZE):
                writer.write(data)
                await writer.drain()
        except ConnectionError as exc:
            handler_errors.add(exc)
        finally:
            live.discard(writer)
            counters["sessions_ended"] += 1
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)

    server = await asyncio.start_server(handler, HOST, 0, ssl=ssl_server_context(pki))

    def probe() -> dict[str, Any]:
        return {
            **counters,
            "sessions_open": len(live),
            "handler_errors": dict(handler_errors.counts),
        }

    try:
        await _serve(control, int(server.sockets[0].getsockname()[1]), probe)
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT)


async def _serve(control: Control, port: int, probe: Callable[[], dict[str, Any]]) -> None:
    """Answer the parent until ``stop``.

    ``mark``: start counting CPU; ``stats``: CPU since the mark, memory, counters;
    ``objects``: ``stats`` plus the number of objects the collector tracks; ``gc``:
    ``gc.collect()``, then ``stats``; ``snapshot``/``diff``: tracemalloc snapshot, and the
    sites that grew since it.
    """
    asyncio_errors = ErrorCounter()
    count_asyncio_errors(asyncio_errors)
    log_counter = CountingLogHandler("server log")
    logging.getLogger().addHandler(log_counter)
    meter = Meter()
    snapshot: Any = None
    control.reply(port)

    def stats() -> dict[str, Any]:
        return {
            **meter.stop(),
            "cpu_total_s": sum(os.times()[:2]),
            "rss_kib": proc_status_kib("self"),
            "hwm_kib": proc_status_kib("self", "VmHWM"),
            "allocated_blocks": sys.getallocatedblocks(),
            "tasks": len(asyncio.all_tasks()),
            "fds": len(os.listdir("/proc/self/fd")),
            "asyncio_errors": dict(asyncio_errors.counts),
            "log_warnings": dict(log_counter.counts),
            **probe(),
        }

    while True:
        command = await control.command()
        if command == "mark":
            meter.start()
            control.reply(None)
        elif command == "stats":
            control.reply(stats())
        elif command == "objects":
            control.reply({**stats(), "gc_objects": len(gc.get_objects())})
        elif command == "gc":
            collected = gc.collect()
            control.reply({"collected": collected, **stats()})
        elif command == "snapshot":
            import tracemalloc

            snapshot = _trace_snapshot() if tracemalloc.is_tracing() else None
            control.reply(snapshot is not None)
        elif command == "diff":
            control.reply(_trace_diff(snapshot) if snapshot is not None else None)
        elif command == "stop":
            return
        else:
            raise BenchmarkError(f"unknown command {command!r}")


def _trace_snapshot() -> Any:
    import tracemalloc

    return tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
            tracemalloc.Filter(False, "<unknown>"),
        ]
    )


def _trace_diff(before: Any, limit: int = 15) -> dict[str, Any]:
    """The allocation sites that grew most since ``before`` (innermost frame first)."""
    after = _trace_snapshot()
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    sites = []
    for stat in after.compare_to(before, "traceback")[:limit]:
        frames = [
            f"{frame.filename.rsplit('/site-packages/', 1)[-1].rsplit('/src/', 1)[-1]}"
            f":{frame.lineno}"
            for frame in reversed(stat.traceback)
        ]
        sites.append(
            {
                "size_diff_kib": round(stat.size_diff / 1024, 1),
                "count_diff": stat.count_diff,
                "frames": frames,
            }
        )
    return {"traced_diff_kib": round(total / 1024, 1), "top": sites}


# -- clients ------------------------------------------------------------------------


class Driver:
    """How a client opens a session, makes a round trip on it and closes it."""

    async def open(self) -> Any:
        raise NotImplementedError

    async def echo(self, handle: Any, payload: bytes) -> None:
        """One echo round trip (tcpls: on a new stream, closed afterwards)."""
        raise NotImplementedError

    async def active(
        self,
        handle: Any,
        payload: bytes,
        per_stream: int,
        stop: asyncio.Event,
        rtts: list[float],
    ) -> int:
        """Round trips until ``stop``; returns the number of streams used."""
        raise NotImplementedError

    async def close(self, handle: Any) -> None:
        raise NotImplementedError

    def abort(self, handle: Any) -> None:
        raise NotImplementedError


class TcplsDriver(Driver):
    def __init__(self, port: int, pki: Pki) -> None:
        import tcpls

        self.tcpls = tcpls
        self.port = port
        self.config = tcpls.ClientConfig(cafile=pki.ca_file, cipher_suites=[CIPHER_SUITE])
        self.checked = False

    async def open(self) -> Any:
        session = await self.tcpls.connect(HOST, self.port, config=self.config)
        if not self.checked:
            check_tcpls_session(session, tcpls_expected=True)
            self.checked = True
        return session

    async def echo(self, handle: Any, payload: bytes) -> None:
        reader, writer = await handle.open_stream()
        writer.write(payload)
        writer.write_eof()
        data = await reader.read()
        if data != payload:
            raise BenchmarkError(f"echo returned {len(data)} bytes, not {len(payload)}")

    async def active(
        self,
        handle: Any,
        payload: bytes,
        per_stream: int,
        stop: asyncio.Event,
        rtts: list[float],
    ) -> int:
        streams = 0
        size = len(payload)
        while not stop.is_set():
            reader, writer = await handle.open_stream()
            streams += 1
            for _ in range(per_stream):
                start = time.perf_counter()
                writer.write(payload)
                await writer.drain()
                data = await reader.readexactly(size)
                rtts.append(time.perf_counter() - start)
                if data != payload:
                    raise BenchmarkError("echo returned other bytes")
                if stop.is_set():
                    break
            writer.write_eof()
            if await reader.read():
                raise BenchmarkError("echo returned bytes after the last round trip")
        return streams

    async def close(self, handle: Any) -> None:
        await handle.aclose(timeout=CLOSE_TIMEOUT)
        if handle.error is not None:
            raise handle.error

    def abort(self, handle: Any) -> None:
        handle.abort()


class SslDriver(Driver):
    def __init__(self, port: int, pki: Pki) -> None:
        self.port = port
        self.context = ssl_client_context(pki)
        self.checked = False

    async def open(self) -> Any:
        reader, writer = await asyncio.open_connection(
            HOST, self.port, ssl=self.context, server_hostname=HOST
        )
        if not self.checked:
            check_ssl_cipher(writer)
            self.checked = True
        return reader, writer

    async def echo(self, handle: Any, payload: bytes) -> None:
        reader, writer = handle
        writer.write(payload)
        await writer.drain()
        data = await reader.readexactly(len(payload))
        if data != payload:
            raise BenchmarkError("echo returned other bytes")

    async def active(
        self,
        handle: Any,
        payload: bytes,
        per_stream: int,
        stop: asyncio.Event,
        rtts: list[float],
    ) -> int:
        while not stop.is_set():
            start = time.perf_counter()
            await self.echo(handle, payload)
            rtts.append(time.perf_counter() - start)
        return 0

    async def close(self, handle: Any) -> None:
        _reader, writer = handle
        writer.close()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)

    def abort(self, handle: Any) -> None:
        handle[1].transport.abort()


def soak_client(
    conn: Connection, port: int, pki: Pki, system: str, payload: int, per_stream: int
) -> None:
    """A client process: holds sessions and runs cycles as the parent commands."""
    raise_nofile_limit()
    run_child(conn, lambda control: _client(control, port, pki, system, payload, per_stream))


async def _bounded(n: int, concurrency: int, job: Callable[[], Awaitable[None]]) -> None:
    """Run ``job`` ``n`` times, at most ``concurrency`` at once."""
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await job()

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, n)))))


async def _client(
    control: Control, port: int, pki: Pki, system: str, payload_size: int, per_stream: int
) -> None:
    driver: Driver = TcplsDriver(port, pki) if system == "tcpls" else SslDriver(port, pki)
    payload = bytes(range(256)) * (payload_size // 256) + bytes(payload_size % 256)
    errors = ErrorCounter()
    asyncio_errors = ErrorCounter()
    count_asyncio_errors(asyncio_errors)
    log_counter = CountingLogHandler(f"{system} client log")
    logging.getLogger().addHandler(log_counter)
    held: list[Any] = []
    stop = asyncio.Event()
    active_tasks: list[asyncio.Task[int]] = []
    rtts: list[float] = []
    active_started = 0.0
    active_meter = Meter()

    async def open_one(echo: bool) -> Any:
        handle = await driver.open()
        try:
            if echo:
                await driver.echo(handle, payload)
        except BaseException:
            driver.abort(handle)
            raise
        return handle

    async def cycles(n: int, concurrency: int, echo: bool) -> dict[str, Any]:
        latencies: list[float] = []

        async def cycle() -> None:
            start = time.perf_counter()
            try:
                handle = await driver.open()
            except Exception as exc:
                errors.add(exc)
                return
            latencies.append(time.perf_counter() - start)
            try:
                if echo:
                    await driver.echo(handle, payload)
                await driver.close(handle)
            except Exception as exc:
                errors.add(exc)
                driver.abort(handle)

        meter = Meter()
        started = time.monotonic()
        await _bounded(n, concurrency, cycle)
        return {
            **meter.stop(),
            "start": started,
            "end": time.monotonic(),
            "opened": len(latencies),
            "latencies": latencies,
            "errors": errors.take(),
        }

    async def hold(n: int, concurrency: int, echo: bool) -> dict[str, Any]:
        opened = 0

        async def one() -> None:
            nonlocal opened
            try:
                held.append(await open_one(echo))
                opened += 1
            except Exception as exc:
                errors.add(exc)

        meter = Meter()
        await _bounded(n, concurrency, one)
        return {**meter.stop(), "opened": opened, "errors": errors.take()}

    async def run_active(handle: Any) -> int:
        try:
            return await driver.active(handle, payload, per_stream, stop, rtts)
        except Exception as exc:
            errors.add(exc)
            return 0

    async def start_active(n: int, concurrency: int) -> dict[str, Any]:
        nonlocal active_started
        before = len(held)
        result = await hold(n, concurrency, False)
        stop.clear()
        rtts.clear()
        active_started = time.monotonic()
        active_meter.start()
        for handle in held[before:]:
            active_tasks.append(asyncio.ensure_future(run_active(handle)))
        return result

    async def stop_active() -> dict[str, Any]:
        stop.set()
        seconds = time.monotonic() - active_started
        cpu_s = active_meter.stop()["cpu_s"]
        done: set[asyncio.Future[int]] = set()
        pending: set[asyncio.Future[int]] = set()
        if active_tasks:  # (a client may have none when --active is below --clients)
            done, pending = await asyncio.wait(active_tasks, timeout=3 * CLOSE_TIMEOUT)
        for task in pending:
            task.cancel()
        streams = sum(t.result() for t in done if not t.cancelled() and not t.exception())
        active_tasks.clear()
        return {
            "seconds": seconds,
            "cpu_s": cpu_s,
            "round_trips": len(rtts),
            "streams": streams,
            "stuck": len(pending),
            "rtt_ms": [round(1000 * r, 3) for r in rtts[:: max(1, len(rtts) // 20000)]],
            "errors": errors.take(),
        }

    async def close_all(concurrency: int) -> dict[str, Any]:
        handles = list(held)
        held.clear()
        closed = 0

        async def one() -> None:
            nonlocal closed
            handle = handles.pop()
            try:
                await driver.close(handle)
                closed += 1
            except Exception as exc:
                errors.add(exc)
                driver.abort(handle)

        meter = Meter()
        await _bounded(len(handles), concurrency, one)
        return {**meter.stop(), "closed": closed, "errors": errors.take()}

    control.reply("ready")
    while True:
        command = await control.command()
        name, *args = command if isinstance(command, tuple) else (command,)
        if name == "cycles":
            reply = await cycles(*args)
        elif name == "hold":
            reply = await hold(*args)
        elif name == "active":
            reply = await start_active(*args)
        elif name == "active_stop":
            reply = await stop_active()
        elif name == "close_all":
            reply = await close_all(*args)
        elif name == "stop":
            for handle in held:
                with contextlib.suppress(Exception):
                    driver.abort(handle)
            return
        else:
            raise BenchmarkError(f"unknown command {command!r}")
        reply["asyncio_errors"] = asyncio_errors.take()
        reply["log_warnings"] = dict(log_counter.counts)
        reply["rss_kib"] = proc_status_kib("self")
        control.reply(reply)


# -- orchestration ------------------------------------------------------------------


class Run:
    """One system's server and clients, and the parent's side of the phases."""

    def __init__(self, system: str, args: argparse.Namespace, pki: Pki) -> None:
        self.system = system
        self.args = args
        env = pki.baseline_env if system == "ssl" else None
        self.server = Child(f"{system}-server", soak_server, (pki, system, args.tracemalloc), env)
        self.clients: list[Child] = []
        port = self.server.recv(60, "its port")
        assert self.server.pid is not None
        self.pid: int = self.server.pid
        for i in range(args.clients):
            self.clients.append(
                Child(
                    f"{system}-client-{i}",
                    soak_client,
                    (port, pki, system, args.payload, args.round_trips),
                    env,
                )
            )
        for client in self.clients:
            if client.recv(120, "'ready'") != "ready":
                raise BenchmarkError(f"{client.name} did not say 'ready'")

    def stop(self) -> None:
        for child in [*self.clients, self.server]:
            with contextlib.suppress(Exception):
                child.stop()

    def fan(self, name: str, counts: list[int] | None, *rest: Any) -> list[dict[str, Any]]:
        """Send ``(name, count_i, *rest)`` to client i (or ``(name, *rest)``); all replies."""
        biggest = max(counts) if counts else 0
        timeout = 120.0 + 0.1 * biggest + (self.args.active_seconds if name == "active" else 0)
        for i, client in enumerate(self.clients):
            client.send((name, counts[i], *rest) if counts is not None else (name, *rest))
        replies = [c.recv(timeout, f"its answer to {name!r}") for c in self.clients]
        return replies

    def settle(self, minimum: float | None = None) -> tuple[int, float]:
        return settle_rss(self.pid, self.args.settle if minimum is None else minimum)

    def split(self, total: int) -> list[int]:
        return split(total, len(self.clients))

    # phases

    def rate(self) -> dict[str, Any]:
        args = self.args
        self.fan("cycles", self.split(args.rate_warmup), args.concurrency, False)
        self.server.request("mark")
        replies = self.fan("cycles", self.split(args.handshakes), args.concurrency, False)
        stats = self.server.request("stats")
        done = sum(r["opened"] for r in replies)
        wall = max(r["end"] for r in replies) - min(r["start"] for r in replies)
        latencies = [x for r in replies for x in r["latencies"]]
        return {
            "client_processes": len(self.clients),
            "concurrency_per_process": args.concurrency,
            "sessions": done,
            "seconds": round(wall, 2),
            "sessions_per_s": round(done / wall, 1),
            "server_cpu_ms_per_session": round(1000 * stats["cpu_s"] / max(done, 1), 3),
            "server_cpu_utilisation": round(stats["cpu_s"] / wall, 2),
            "client_cpu_ms_per_session": round(
                1000 * sum(r["cpu_s"] for r in replies) / max(done, 1), 3
            ),
            "connect_latency_ms": {
                "median": round(1000 * percentile(latencies, 0.5), 2),
                "p95": round(1000 * percentile(latencies, 0.95), 2),
            },
            "errors": merge_counts([r["errors"] for r in replies]),
            "client_asyncio_errors": merge_counts([r["asyncio_errors"] for r in replies]),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }

    def churn(self) -> dict[str, Any]:
        args = self.args
        self.fan("cycles", self.split(args.churn_warmup), args.concurrency, True)
        rss_before, settle_before = self.settle()
        before = self.server.request("objects", 60)
        tracing = self.server.request("snapshot", 120)
        self.server.request("mark")
        replies = self.fan("cycles", self.split(args.cycles), args.concurrency, True)
        stats = self.server.request("stats")
        rss_after, settle_after = self.settle()
        after = self.server.request("objects", 60)
        diff = self.server.request("diff", 300) if tracing else None
        collected = self.server.request("gc", 60)
        rss_after_gc, _ = self.settle(1.0)
        done = sum(r["opened"] for r in replies)
        wall = max(r["end"] for r in replies) - min(r["start"] for r in replies)
        growth = (rss_after - rss_before) / rss_before
        growth_gc = (rss_after_gc - rss_before) / rss_before
        out: dict[str, Any] = {
            "cycles": done,
            "cycles_per_s": round(done / wall, 1),
            "server_cpu_ms_per_cycle": round(1000 * stats["cpu_s"] / max(done, 1), 3),
            "rss_before_mib": mib(rss_before),
            "rss_after_mib": mib(rss_after),
            "rss_growth_pct": round(100 * growth, 2),
            "rss_within_10pct": abs(growth) <= CHURN_TARGET,
            "rss_after_gc_mib": mib(rss_after_gc),
            "rss_growth_after_gc_pct": round(100 * growth_gc, 2),
            "gc_collected": collected["collected"],
            "peak_rss_mib": mib(after["hwm_kib"]),
            "settle_s": [settle_before, settle_after],
            "server_before": _counters(before),
            "server_after": _counters(after),
            "allocated_blocks_per_cycle": round(
                (after["allocated_blocks"] - before["allocated_blocks"]) / max(done, 1), 3
            ),
            "errors": merge_counts([r["errors"] for r in replies]),
            "client_asyncio_errors": merge_counts([r["asyncio_errors"] for r in replies]),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
        if diff is not None:
            out["tracemalloc"] = diff
        return out

    def memory(self) -> dict[str, Any]:
        args = self.args
        echo = not args.idle_handshake_only
        n_idle = args.sessions - args.active
        warm = self.fan("hold", self.split(args.warmup_sessions), args.open_concurrency, echo)
        rss_warm, settle_warm = self.settle()
        stats_warm = self.server.request("stats")
        tracing = self.server.request("snapshot", 120)
        idle = self.fan("hold", self.split(n_idle), args.open_concurrency, echo)
        rss_idle, settle_idle = self.settle()
        stats_idle = self.server.request("stats")
        diff = self.server.request("diff", 300) if tracing else None
        warm_opened = sum(r["opened"] for r in warm)
        idle_opened = sum(r["opened"] for r in idle)
        seen = stats_idle["sessions_open"] - stats_warm["sessions_open"]
        idle_result: dict[str, Any] = {
            "warmup_sessions": warm_opened,
            "idle_sessions": idle_opened,
            "server_sessions_open": stats_idle["sessions_open"],
            "one_echo_per_session": echo,
            "rss_warm_mib": mib(rss_warm),
            "rss_idle_mib": mib(rss_idle),
            "kib_per_idle_session": round((rss_idle - rss_warm) / max(idle_opened, 1), 2),
            "settle_s": [settle_warm, settle_idle],
            "open_seconds": round(max(r["seconds"] for r in idle), 2),
            "errors": merge_counts([r["errors"] for r in warm + idle]),
            "client_asyncio_errors": merge_counts([r["asyncio_errors"] for r in warm + idle]),
            "client_rss_mib": [mib(r["rss_kib"]) for r in idle],
            "server": _counters(stats_idle),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
        if seen != idle_opened:
            idle_result["warning"] = f"the server counts {seen} more sessions, not {idle_opened}"
        if "estimated_memory_kib" in stats_idle:
            idle_result["server_estimate_kib_per_session"] = round(
                stats_idle["estimated_memory_kib"] / max(stats_idle["sessions_open"], 1), 2
            )
        if diff is not None:
            idle_result["tracemalloc"] = diff

        # active sessions on top of the idle ones
        started = self.fan("active", self.split(args.active), args.open_concurrency)
        self.server.request("mark")
        window_start = time.monotonic()
        samples: list[int] = []
        for _ in range(max(1, round(args.active_seconds))):
            time.sleep(1.0)
            samples.append(proc_status_kib(self.pid))
        stats_active = self.server.request("stats")
        server_busy = stats_active["cpu_s"] / (time.monotonic() - window_start)
        stopped = self.fan("active_stop", None)
        active_opened = sum(r["opened"] for r in started)
        total = warm_opened + idle_opened + active_opened
        round_trips = sum(r["round_trips"] for r in stopped)
        rtts = [x for r in stopped for x in r["rtt_ms"]]
        active_seconds = max(r["seconds"] for r in stopped)
        rss_active = samples[-1]
        rss_after_active, settle_after_active = self.settle()
        stats_after_active = self.server.request("stats")
        active_result: dict[str, Any] = {
            "active_sessions": active_opened,
            "idle_sessions": idle_opened,
            "sessions_open": stats_active["sessions_open"],
            "payload_bytes": args.payload,
            "round_trips_per_stream": args.round_trips if self.system == "tcpls" else None,
            "rss_samples_mib": [mib(s) for s in samples],
            "rss_mib": mib(rss_active),
            "kib_per_session_all": round(
                (rss_active - rss_warm) / max(idle_opened + active_opened, 1), 2
            ),
            "kib_per_active_session_increment": round(
                (rss_active - rss_idle) / max(active_opened, 1), 2
            ),
            "round_trips": round_trips,
            "round_trips_per_s": round(round_trips / active_seconds, 1),
            "streams": sum(r["streams"] for r in stopped),
            "rtt_ms": {
                "median": round(percentile(rtts, 0.5), 3),
                "p99": round(percentile(rtts, 0.99), 3),
            },
            "server_cpu_utilisation": round(server_busy, 2),
            "clients_cpu_utilisation": round(sum(r["cpu_s"] for r in stopped) / active_seconds, 2),
            "server_cpu_us_per_round_trip": round(
                1e6 * server_busy * active_seconds / max(round_trips, 1), 1
            ),
            "stuck_loops": sum(r["stuck"] for r in stopped),
            "rss_after_stop_mib": mib(rss_after_active),
            "kib_per_session_after_stop": round(
                (rss_after_active - rss_warm) / max(idle_opened + active_opened, 1), 2
            ),
            "settle_after_stop_s": settle_after_active,
            "errors": merge_counts([r["errors"] for r in started + stopped]),
            "client_asyncio_errors": merge_counts(
                [r["asyncio_errors"] for r in started + stopped]
            ),
            "server": _counters(stats_after_active),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
        if "estimated_memory_kib" in stats_active:
            active_result["server_estimate_kib_per_session"] = round(
                stats_active["estimated_memory_kib"] / max(stats_active["sessions_open"], 1), 2
            )

        closed = self.fan("close_all", None, args.open_concurrency)
        rss_closed, settle_closed = self.settle()
        stats_closed = self.server.request("objects", 60)
        collected = self.server.request("gc", 60)
        rss_closed_gc, _ = self.settle(1.0)
        stats_closed_gc = self.server.request("objects", 60)
        close_result = {
            "closed": sum(r["closed"] for r in closed),
            "of": total,
            "seconds": round(max(r["seconds"] for r in closed), 2),
            "rss_mib": mib(rss_closed),
            "settle_s": settle_closed,
            "errors": merge_counts([r["errors"] for r in closed]),
            "client_asyncio_errors": merge_counts([r["asyncio_errors"] for r in closed]),
            "server": _counters(stats_closed),
            "gc_collected": collected["collected"],
            "rss_after_gc_mib": mib(rss_closed_gc),
            "server_after_gc": _counters(stats_closed_gc),
        }
        return {"idle": idle_result, "active": active_result, "close": close_result}


def _counters(stats: dict[str, Any]) -> dict[str, Any]:
    """The server's counters worth reporting (memory in MiB)."""
    keys = (
        "sessions_open",
        "sessions_started",
        "sessions_ended",
        "allocated_blocks",
        "gc_objects",
        "tasks",
        "fds",
        "estimated_memory_kib",
        "tickets_stored",
        "handler_errors",
        "asyncio_errors",
        "log_warnings",
    )
    out = {key: stats[key] for key in keys if key in stats}
    out["rss_mib"] = mib(stats["rss_kib"])
    return out


def run_system(system: str, args: argparse.Namespace, pki: Pki) -> dict[str, Any]:
    run = Run(system, args, pki)
    try:
        result: dict[str, Any] = {}
        log(f"{system}: rate, {args.handshakes} handshakes")
        result["rate"] = run.rate()
        log(
            f"{system}: {result['rate']['sessions_per_s']} sessions/s, server "
            f"{result['rate']['server_cpu_ms_per_session']} ms CPU per session"
        )
        log(f"{system}: churn, {args.cycles} cycles")
        result["churn"] = run.churn()
        churn = result["churn"]
        log(
            f"{system}: churn RSS {churn['rss_before_mib']} -> {churn['rss_after_mib']} MiB "
            f"({churn['rss_growth_pct']:+.1f} %), after gc {churn['rss_after_gc_mib']} MiB"
        )
        log(f"{system}: memory, {args.sessions} sessions ({args.active} active)")
        result.update(run.memory())
        log(
            f"{system}: {result['idle']['kib_per_idle_session']} KiB per idle session, "
            f"{result['active']['kib_per_session_all']} KiB per session with active ones"
        )
        return result
    finally:
        run.stop()


def summary_lines(results: dict[str, dict[str, Any]], load: str) -> list[str]:
    lines = [f"soak summary (load average at the end: {load})"]
    for system, r in results.items():
        rate, churn, idle, active = r["rate"], r["churn"], r["idle"], r["active"]
        lines += [
            f"  {system}:",
            f"    memory per idle session: {idle['kib_per_idle_session']} KiB "
            f"({idle['idle_sessions']} idle sessions; RSS {idle['rss_warm_mib']} -> "
            f"{idle['rss_idle_mib']} MiB)",
            f"    with {active['active_sessions']} active sessions added: "
            f"{active['kib_per_session_all']} KiB per session over all, "
            f"+{active['kib_per_active_session_increment']} KiB per active session, "
            f"{active['round_trips_per_s']} round trips/s; after they stop: "
            f"{active['kib_per_session_after_stop']} KiB per session",
            f"    new sessions: {rate['sessions_per_s']}/s with {rate['client_processes']} "
            f"client processes x {rate['concurrency_per_process']}; server CPU "
            f"{rate['server_cpu_ms_per_session']} ms per session",
            f"    churn: {churn['cycles']} cycles, RSS {churn['rss_before_mib']} -> "
            f"{churn['rss_after_mib']} MiB ({churn['rss_growth_pct']:+.2f} %, "
            f"{'within' if churn['rss_within_10pct'] else 'NOT within'} 10 %); after "
            f"gc.collect() {churn['rss_after_gc_mib']} MiB "
            f"({churn['rss_growth_after_gc_pct']:+.2f} %)",
        ]
        close = r["close"]
        lines.append(
            f"    close: {close['closed']} of {close['of']} sessions closed without error; "
            f"server RSS {close['rss_mib']} MiB, after gc.collect() {close['rss_after_gc_mib']} "
            f"MiB; objects {close['server'].get('gc_objects')} -> "
            f"{close['server_after_gc'].get('gc_objects')}"
        )
        problems = {
            phase: r[phase]["errors"]
            for phase in ("rate", "churn", "idle", "active", "close")
            if r[phase].get("errors")
        }
        if problems:
            lines.append(f"    client errors: {problems}")
        left = r["close"]["server"].get("sessions_open")
        if left:
            lines.append(f"    sessions still open in the server after closing all: {left}")
    return lines


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Soak one server process: memory per idle session (idle, then with active "
            "sessions), new sessions per second, RSS after open/close churn; tcpls vs "
            "stdlib ssl. Prints one JSON line."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--sessions", type=int, default=2000, help="concurrent sessions, idle + active"
    )
    parser.add_argument(
        "--active", type=int, default=None, help="active sessions among them (unset: 10 %%)"
    )
    parser.add_argument("--cycles", type=int, default=10_000, help="churn open/close cycles")
    parser.add_argument("--handshakes", type=int, default=3000, help="sessions of the rate phase")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="cycles in flight per client (rate, churn)"
    )
    parser.add_argument(
        "--open-concurrency", type=int, default=32, help="opens in flight per client (idle)"
    )
    parser.add_argument("--warmup-sessions", type=int, default=20, help="baseline sessions")
    parser.add_argument("--rate-warmup", type=int, default=100, help="unmeasured handshakes")
    parser.add_argument("--churn-warmup", type=int, default=1000, help="unmeasured cycles")
    parser.add_argument("--active-seconds", type=float, default=10.0, help="active phase length")
    parser.add_argument("--payload", type=int, default=64, help="bytes per echo round trip")
    parser.add_argument(
        "--round-trips", type=int, default=20, help="tcpls round trips per stream (active)"
    )
    parser.add_argument(
        "--idle-handshake-only",
        action="store_true",
        help="idle sessions do no echo round trip after the handshake",
    )
    parser.add_argument("--settle", type=float, default=3.0, help="minimum settle seconds")
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="trace allocations in the server (diagnostic; inflates every figure)",
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {SYSTEMS}"
    )
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown or not systems:
        parser.error(f"--systems: unknown {sorted(unknown)}")
    args.system_list = systems
    if args.active is None:
        args.active = args.sessions // 10
    if args.sessions < 2 or not 1 <= args.active < args.sessions:
        parser.error("--sessions must be at least 2 and --active between 1 and sessions - 1")
    for name in ("cycles", "handshakes", "clients", "concurrency", "open_concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup_sessions < args.clients:
        parser.error("--warmup-sessions must be at least --clients")
    if args.payload < 1 or args.round_trips < 1 or args.active_seconds <= 0:
        parser.error("--payload, --round-trips and --active-seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    nofile = raise_nofile_limit()

    def body() -> dict[str, Any]:
        needed = args.sessions + args.warmup_sessions + 64
        if nofile[0] < needed:
            raise BenchmarkError(
                f"RLIMIT_NOFILE is {nofile[0]} (hard {nofile[1]}): {needed} descriptors needed"
            )
        machine = machine_info()
        machine["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
        pki = make_pki()
        results = {}
        for system in args.system_list:
            results[system] = run_system(system, args, pki)
        out: dict[str, Any] = {
            "machine": machine,
            "config": {
                "sessions": args.sessions,
                "active_sessions": args.active,
                "idle_sessions": args.sessions - args.active,
                "warmup_sessions": args.warmup_sessions,
                "idle_sessions_echo_once": not args.idle_handshake_only,
                "cycles": args.cycles,
                "churn_warmup": args.churn_warmup,
                "handshakes": args.handshakes,
                "rate_warmup": args.rate_warmup,
                "client_processes": args.clients,
                "concurrency_per_client": args.concurrency,
                "open_concurrency_per_client": args.open_concurrency,
                "active_seconds": args.active_seconds,
                "payload_bytes": args.payload,
                "round_trips_per_stream": args.round_trips,
                "settle_min_s": args.settle,
                "rlimit_nofile": list(nofile),
                "server": "one process; tcpls: ServerConfig defaults + cert, key, cipher suite; "
                "handler tcpls.apps.echo.echo_handler. ssl: asyncio.start_server, TLS 1.3 "
                "SSLContext, echo handler",
                "cipher_suite": CIPHER_SUITE,
                "rss": "VmRSS of /proc/PID/status of the server, read by the parent",
                "tracemalloc_frames": args.tracemalloc,
            },
            "results": results,
        }
        if args.tracemalloc:
            out["warning"] = "tracemalloc was on in the server: memory and CPU are inflated"
        tcpls_r = results.get("tcpls")
        if tcpls_r is not None:
            out["targets"] = {
                "kib_per_idle_session": {
                    "value": tcpls_r["idle"]["kib_per_idle_session"],
                    "target": f"<= {IDLE_TARGET_KIB:g}",
                    "met": tcpls_r["idle"]["kib_per_idle_session"] <= IDLE_TARGET_KIB,
                },
                "churn_rss_growth_pct": {
                    "value": tcpls_r["churn"]["rss_growth_pct"],
                    "target": f"|growth| <= {100 * CHURN_TARGET:g}",
                    "met": tcpls_r["churn"]["rss_within_10pct"],
                },
            }
        if tcpls_r is not None and "ssl" in results:
            ssl_r = results["ssl"]
            out["ratios"] = {
                "tcpls_over_ssl_kib_per_idle_session": _ratio(
                    tcpls_r["idle"]["kib_per_idle_session"], ssl_r["idle"]["kib_per_idle_session"]
                ),
                "tcpls_over_ssl_sessions_per_s": _ratio(
                    tcpls_r["rate"]["sessions_per_s"], ssl_r["rate"]["sessions_per_s"]
                ),
                "tcpls_over_ssl_server_cpu_per_session": _ratio(
                    tcpls_r["rate"]["server_cpu_ms_per_session"],
                    ssl_r["rate"]["server_cpu_ms_per_session"],
                ),
            }
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        for line in summary_lines(results, load):
            print(line, file=sys.stderr, flush=True)
        return out

    return run_benchmark("soak", body)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


if __name__ == "__main__":
    sys.exit(main())
