"""Shared by the lab tests and the scripts they run in the lab's namespaces.

The scripts (``chaos_server.py``, ``mp_server.py``) run as files, so they import this
module as ``lab_util`` (their folder is first on ``sys.path``); the tests import it as
``tests.lab.lab_util``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import tcpls
from tcpls.lab import Lab, Side


async def serve_until_signal(server: tcpls.Server) -> int:
    """Serve until SIGTERM or SIGINT, then close ``server`` (waiting up to 3 s)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 3)
    return 0


class JsonProcess:
    """A script in a lab namespace whose JSON stdout lines arrive on a queue (its stderr
    goes to ``log``, quoted by :meth:`tail` when something goes wrong)."""

    def __init__(
        self, lab: Lab, side: Side, argv: list[str], log: Path, *, stdin: int | None = None
    ) -> None:
        self.log = log
        self.name = Path(argv[0]).name
        err = open(log, "wb")  # noqa: SIM115 - the child holds it
        self.proc = lab.popen(
            side, [sys.executable, *argv], stdin=stdin, stdout=subprocess.PIPE, stderr=err
        )
        err.close()
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stdout: IO[bytes]) -> None:
        for line in stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))
        self.events.put(None)

    def next(self, timeout: float) -> dict[str, Any]:
        """The next event (an AssertionError if none comes or the script exits)."""
        try:
            event = self.events.get(timeout=max(0.01, timeout))
        except queue.Empty:
            raise AssertionError(
                f"no event from {self.name} for {timeout:.1f} s{self.tail()}"
            ) from None
        if event is None:
            raise AssertionError(f"{self.name} exited ({self.proc.wait()}){self.tail()}")
        self.seen.append(event)
        return event

    def wait_until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict[str, Any]:
        """The first event that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.next(deadline - time.monotonic())
            if predicate(event):
                return event

    def wait_for(self, event: str, timeout: float = 30) -> dict[str, Any]:
        """The first event named ``event``."""
        return self.wait_until(lambda e: e["event"] == event, timeout)

    def drain(self) -> list[dict[str, Any]]:
        """Every event received so far (``seen`` plus what waits on the queue)."""
        while True:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return self.seen
            if item is not None:
                self.seen.append(item)

    def send_line(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, size: int = 4000) -> str:
        with contextlib.suppress(OSError):
            text = self.log.read_text(errors="replace")[-size:]
            if text.strip():
                return f"\n{self.log.name}:\n{text}"
        return ""
