"""Live progress displays of ``tcpls perf -c`` and ``tcpls get`` (on a terminal only).

rich is imported when a display starts, not before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from tcpls.aio.session import Session

__all__ = ["ConnectionRates", "start_download_progress", "start_perf_progress"]


def start_perf_progress(description: str, total: float | None) -> tuple[Progress, TaskID]:
    """A started bar for a perf test, with the fields ``done`` and ``rate``, and its task."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[done]}"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        transient=True,
    )
    task = progress.add_task(description, total=total, done="", rate="")
    progress.start()
    return progress, task


def start_download_progress(path: str) -> tuple[Progress, TaskID]:
    """A started display of the download of ``path``, with the field ``paths``, and its task."""
    from rich.progress import (
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[paths]}"),
        transient=True,
    )
    task = progress.add_task(path, total=None, paths="")
    progress.start()
    return progress, task


class ConnectionRates:
    """Per-connection receive rates of a session, for progress displays."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._start = asyncio.get_running_loop().time()
        self._last: dict[int, tuple[float, int]] = {}
        self._total: dict[int, int] = {}

    def describe(self, fmt: Callable[[float], str], final: bool = False) -> str:
        """``conn 0: <rate>, conn 1: <rate>``: each connection's rate since the last call
        (since the start with ``final``), formatted by ``fmt``."""
        now = asyncio.get_running_loop().time()
        parts = []
        for info in self.session.connections:
            self._total[info.id] = info.bytes_received
            then, before = self._last.get(info.id, (self._start, 0))
            if final:
                then, before = self._start, 0
            rate = (info.bytes_received - before) / (now - then) if now > then else 0.0
            self._last[info.id] = (now, info.bytes_received)
            parts.append(f"conn {info.id}: {fmt(rate)}")
        return ", ".join(parts)
