"""The multipath part of ``make demo``: two emulated paths, aggregation and failover.

Needs root (network namespaces); :func:`run` returns a reason string instead
when the lab cannot run. The server runs in the lab's server namespace and the
client in the client namespace, each on its own thread with its own event loop
(a thread's sockets are created in the namespace the thread is in).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

import tcpls
from tcpls.apps.fileserve import download, make_file_handler
from tcpls.apps.perf import format_rate
from tcpls.devcert import DevPKI
from tcpls.lab import Lab, PathSpec, in_namespace, lab_available

__all__ = ["run"]

#: The result of a coroutine run on a :class:`_LoopThread`.
T = TypeVar("T")
#: Port of the file server whose scheduler is aggregate (the default).
PORT = 8443
#: Port of the file server whose scheduler is backup (the failover part).
BACKUP_PORT = 8444
#: Rate of each of the two emulated paths, in Mbit/s.
RATE_MBIT = 40
#: Size of the file downloaded, in bytes.
FILE_SIZE = 24 << 20


class _LoopThread:
    """An event loop on a thread that lives inside one network namespace."""

    def __init__(self, namespace: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(namespace,), daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self, namespace: str) -> None:
        with in_namespace(namespace):
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(self._ready.set)
            self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


async def _fetch(
    session: tcpls.Session, out: Path, on_progress: Callable[[int], None] | None = None
) -> tuple[str, float, float]:
    """Download the demo file; return its sha256, the seconds taken and the longest stall."""
    last = time.monotonic()
    stall = 0.0

    def progress(done: int) -> None:
        nonlocal last, stall
        now = time.monotonic()
        stall = max(stall, now - last)
        last = now
        if on_progress is not None:
            on_progress(done)

    with open(out, "wb") as f:
        result = await download(session, "/demo.bin", f, on_progress=progress)
    return result.sha256, result.seconds, stall


def run(console: Console, pki: DevPKI, tmp: Path) -> str | None:
    """Show aggregation and failover over two paths; return a reason if skipped."""
    ok, reason = lab_available()
    if not ok:
        return reason
    files = tmp / "files"
    files.mkdir()
    payload = os.urandom(FILE_SIZE)
    (files / "demo.bin").write_bytes(payload)
    expected = hashlib.sha256(payload).hexdigest()
    with Lab([PathSpec(rate_mbit=RATE_MBIT), PathSpec(rate_mbit=RATE_MBIT)]) as lab:
        a, b = lab.paths[0].server_ip, lab.paths[1].server_ip
        console.print(
            f"[bold]network lab[/]: two paths of {RATE_MBIT} Mbit/s between two namespaces; "
            f"path A to {a}, path B to {b}; the server advertises {b}\n"
        )
        server_thread = _LoopThread(lab.server_ns)
        client_thread = _LoopThread(lab.client_ns)
        tuning = tcpls.SessionTuning(user_timeout=0.5)
        server_config = tcpls.ServerConfig(
            certfile=str(pki.cert_file),
            keyfile=str(pki.key_file),
            advertise=(f"{b}:{PORT}",),
            tuning=tuning,
        )
        client_config = tcpls.ClientConfig(
            cafile=str(pki.ca_file), server_name="localhost", tuning=tuning
        )
        handler = make_file_handler(files)
        server = server_thread.run(tcpls.serve(handler, "0.0.0.0", PORT, config=server_config))
        # each end schedules what it sends: the download's sender, the server, uses backup
        backup = server_thread.run(
            tcpls.serve(handler, "0.0.0.0", BACKUP_PORT, config=server_config, scheduler="backup")
        )
        try:
            _aggregation(console, client_thread, client_config, a, b, tmp, expected)
            _failover(console, lab, client_thread, client_config, a, b, tmp, expected)
        finally:
            server_thread.run(_close_server(server))
            server_thread.run(_close_server(backup))
            server_thread.stop()
            client_thread.stop()
    return None


async def _close_server(server: tcpls.Server) -> None:
    server.close()
    await server.wait_closed()


def _aggregation(
    console: Console,
    client: _LoopThread,
    config: tcpls.ClientConfig,
    a: str,
    b: str,
    tmp: Path,
    expected: str,
) -> None:
    async def go() -> tuple[str, float, list[tuple[int, str, int]], float]:
        async with tcpls.connect(a, PORT, config=config) as session:
            single_sha, single_time, _ = await _fetch(session, tmp / "single.bin")
            await session.join(b, PORT)
            before = {c.id: c.bytes_received for c in session.connections}
            sha, seconds, _ = await _fetch(session, tmp / "both.bin")
            rows = [
                (
                    c.id,
                    c.remote_address[0] if c.remote_address else "?",
                    c.bytes_received - before.get(c.id, 0),
                )
                for c in session.connections
            ]
            return (sha if single_sha == expected else "mismatch"), seconds, rows, single_time

    sha, seconds, rows, single_time = client.run(go())
    table = Table(
        title="3. bandwidth aggregation: one download over both paths", title_justify="left"
    )
    for col in ("connection", "path", "received", "rate"):
        table.add_column(col)
    for cid, remote, received in rows:
        table.add_row(
            str(cid),
            "A" if remote == a else "B",
            f"{received / 2**20:.1f} MiB",
            format_rate(received / seconds),
        )
    console.print(table)
    console.print(
        f"{FILE_SIZE >> 20} MiB: {format_rate(FILE_SIZE / single_time)} over path A alone, "
        f"{format_rate(FILE_SIZE / seconds)} over both; intact: "
        f"{'[green]yes[/]' if sha == expected else '[red]NO[/]'}\n"
    )


def _failover(
    console: Console,
    lab: Lab,
    client: _LoopThread,
    config: tcpls.ClientConfig,
    a: str,
    b: str,
    tmp: Path,
    expected: str,
) -> None:
    cut_at = FILE_SIZE // 3
    cut_done = threading.Event()

    def on_progress(done: int) -> None:
        if done >= cut_at and not cut_done.is_set():
            cut_done.set()
            threading.Thread(target=lab.cut, args=(0, "blackhole"), daemon=True).start()

    async def go() -> tuple[str, float, float, list[tcpls.ConnectionInfo]]:
        async with tcpls.connect(a, BACKUP_PORT, config=config) as session:
            await session.join(b, BACKUP_PORT)
            sha, seconds, stall = await _fetch(session, tmp / "failover.bin", on_progress)
            return sha, seconds, stall, session.connections

    sha, seconds, stall, infos = client.run(go())
    lab.restore(0)
    console.print(
        "[bold]4. failover[/]: the server's scheduler is backup (path A carries the data, "
        "path B is joined and idle); path A blackholed after a third of the download"
    )
    console.print(
        f"download finished in {seconds:.1f} s, longest stall {stall * 1000:.0f} ms "
        f"(TCP_USER_TIMEOUT 500 ms); connections left: "
        f"{', '.join(str(i.id) for i in infos)}; intact: "
        f"{'[green]yes[/]' if sha == expected else '[red]NO[/]'}"
    )
