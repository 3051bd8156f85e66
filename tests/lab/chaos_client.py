"""Concurrent tcpls downloads for the chaos lab test, run as a script in the client namespace.

Each ``--path`` is one transfer in a session of its own: connect over ``--host`` (path A),
join ``--join`` (path B), download the file with :func:`tcpls.apps.fileserve.download`, close the
session. ``--concurrency`` transfers run at once. Prints one JSON line per event on stdout,
each with ``event`` and ``t`` (``time.monotonic()``, comparable with the test's clock):

* ``transfer``: one per ``--path``, when it ended: ``index``, ``path``, ``size``, ``bytes``,
  ``sha256``, ``seconds``, ``longest_stall`` (the longest gap between two consecutive
  received pieces, the request and the answer's header included), ``stall_at`` (when that
  gap began), ``connect_attempts`` and ``connect_s`` (the time until the session was established;
  not counted in the stalls), ``local`` (the client's address and port on A),
  ``joins``/``join_failures`` (by this client's path keeper, see below), ``connection_ids``
  (every connection ID seen: joins and the session's own rejoins), ``spare_tokens`` (after
  the download), ``history`` (the connections and spare tokens at each change, sampled
  every 0.25 s by the path keeper), ``close_s``,
  ``close_error`` (the session's error after ``aclose``: ``null`` for a graceful close) and
  ``error`` (``null``, or why the transfer failed, with ``traceback``).
* ``done``: after the last transfer: ``reconnects`` (how often a session lost every
  connection and rejoined, from the ``tcpls`` logger).

The initial connection is the application's business, not the protocol's: while it fails
(path A is cut before the session exists), the client tries again, for up to
``--connect-deadline`` seconds. (Always over A: a session that began over B and never
connected over A would not know A, since the server advertises only B, and could rejoin
over B alone.) ``--keep-paths``: while a transfer
runs, a path keeper joins a path again (every 0.25 s, one join at a time per path) whenever
the session has an active connection but none (active or joining) over that path, as a
multipath application would; when no connection is active it leaves the rejoin to the
session itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
import traceback
from typing import Any

import tcpls
from tcpls.apps.fileserve import download

LIVE = ("handshake", "active")


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


def target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class Discard:
    """Where the downloaded bytes go (``download`` computes the SHA-256 itself)."""

    def write(self, data: bytes, /) -> int:
        return len(data)


def stamp(record: logging.LogRecord) -> bool:
    """Log lines carry ``time.monotonic()``, the clock of the events and of the test."""
    record.monotonic = time.monotonic()
    return True


class Reconnects(logging.Handler):
    """Counts the session's "reconnected to ..." warnings (break-before-make rejoins)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("reconnected to"):
            self.count += 1


class PathKeeper:
    """Joins a path again when the session has lost it but still has another one.

    Only while some connection is active: a session with none (or only joins under way)
    is rejoining by itself, and the keeper keeps out of its way.
    """

    def __init__(
        self, session: tcpls.Session, targets: list[tuple[str, int]], timeout: float
    ) -> None:
        self.session = session
        self.targets = targets
        self.timeout = timeout
        self.joins = 0
        self.failures: list[str] = []
        #: ``[t, {connection ID: status}, spare tokens]`` at every change (for diagnosis).
        self.history: list[list[Any]] = []
        self._inflight: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping and not self.session.closed:
            connections = self.session.connections
            state = [{str(c.id): c.status for c in connections}, self.session.spare_tokens]
            if not self.history or self.history[-1][1:] != state:
                self.history.append([round(time.monotonic(), 3), *state])
            active = any(c.status == "active" for c in connections)
            present = {c.remote_address for c in connections if c.status in LIVE}
            for where in self.targets:
                if (
                    active
                    and where not in present
                    and where not in self._inflight
                    and self.session.spare_tokens > 0
                ):
                    self._inflight[where] = asyncio.get_running_loop().create_task(
                        self._join(where)
                    )
            await asyncio.sleep(0.25)

    async def _join(self, where: tuple[str, int]) -> None:
        try:
            await self.session.join(*where, timeout=self.timeout)
            self.joins += 1
        except (OSError, TimeoutError, tcpls.TCPLSError) as exc:
            self.failures.append(f"{where[0]}: {exc.__class__.__name__}: {exc}")
        finally:
            self._inflight.pop(where, None)

    async def stop(self) -> None:
        """No new joins; wait for those under way (each is bounded by ``timeout``)."""
        self._stopping = True
        await self._task
        pending = list(self._inflight.values())
        if pending:
            await asyncio.wait(pending)


async def connect(
    args: argparse.Namespace, config: tcpls.ClientConfig, record: dict[str, Any]
) -> tcpls.Session:
    """Connect over path A; while that fails, try again every 0.1 s."""
    began = time.monotonic()
    deadline = began + args.connect_deadline
    attempt = 0
    while True:
        attempt += 1
        record["connect_attempts"] = attempt
        try:
            session = await tcpls.connect(args.host, args.port, config=config)
        except (OSError, TimeoutError, tcpls.TCPLSError) as exc:
            failures = record.setdefault("connect_failures", [])
            failures[:] = [*failures[-4:], f"{exc.__class__.__name__}: {exc}"]
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        record["connect_s"] = round(time.monotonic() - began, 3)
        record["local"] = [list(c.local_address or ()) for c in session.connections]
        return session


async def transfer(
    index: int, path: str, args: argparse.Namespace, config: tcpls.ClientConfig
) -> dict[str, Any]:
    record: dict[str, Any] = {"index": index, "path": path, "error": None}
    began = time.monotonic()
    session: tcpls.Session | None = None
    keeper: PathKeeper | None = None
    times: list[float] = []
    ids: set[int] = set()
    try:
        session = await connect(args, config, record)
        ids.update(c.id for c in session.connections)
        here = session
        targets = [target(f"{args.host}:{args.port}"), target(args.join)]
        if args.keep_paths:
            keeper = PathKeeper(session, targets, args.join_timeout)
        else:
            with contextlib.suppress(OSError, TimeoutError, tcpls.TCPLSError):
                await session.join(*targets[1], timeout=args.join_timeout)

        def piece(_: int) -> None:
            times.append(time.monotonic())
            ids.update(c.id for c in here.connections)

        times.append(time.monotonic())  # the request
        result = await download(session, path, Discard(), on_progress=piece, on_start=piece)
        record.update(size=result.size, bytes=result.bytes, sha256=result.sha256)
    except Exception as exc:
        record["error"] = f"{exc.__class__.__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
    record["seconds"] = round(time.monotonic() - began, 3)
    gaps = [(times[i + 1] - times[i], times[i]) for i in range(len(times) - 1)]
    longest = max(gaps, default=(0.0, began))
    record.update(longest_stall=round(longest[0], 4), stall_at=longest[1], pieces=len(times))
    if keeper is not None:
        await keeper.stop()
        record.update(joins=keeper.joins, join_failures=keeper.failures[-5:])
        record["history"] = keeper.history[-40:]
    if session is not None:
        record["spare_tokens"] = session.spare_tokens
        ids.update(c.id for c in session.connections)
        record["connection_ids"] = sorted(ids)
        start = time.monotonic()
        try:
            await session.aclose(timeout=args.close_timeout)
        except Exception as exc:
            record["close_exception"] = f"{exc.__class__.__name__}: {exc}"
        record["close_s"] = round(time.monotonic() - start, 3)
        error = session.error
        record["close_error"] = None if error is None else f"{error.__class__.__name__}: {error}"
    return record


async def main(args: argparse.Namespace) -> int:
    tuning = tcpls.SessionTuning(
        user_timeout=args.user_timeout,
        ping_after=args.ping_after,
        ping_timeout=args.ping_timeout,
        handshake_timeout=args.handshake_timeout,
        rejoin_timeout=args.rejoin_timeout,
    )
    config = tcpls.ClientConfig(
        cafile=args.cafile, connect_timeout=args.connect_timeout, tuning=tuning
    )
    reconnects = Reconnects()
    logging.getLogger("tcpls").addHandler(reconnects)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(stamp)
    handler.setFormatter(logging.Formatter("%(monotonic).3f %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for item in enumerate(args.path):
        queue.put_nowait(item)
    failed = 0

    async def worker() -> None:
        nonlocal failed
        while not queue.empty():
            index, path = queue.get_nowait()
            record = await transfer(index, path, args, config)
            failed += record["error"] is not None
            emit("transfer", **record)

    async with asyncio.TaskGroup() as group:
        for _ in range(args.concurrency):
            group.create_task(worker())
    emit("done", reconnects=reconnects.count)
    return 1 if failed else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True, help="path A: the address to connect to")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--join", required=True, metavar="HOST:PORT", help="path B")
    p.add_argument("--cafile", required=True)
    p.add_argument("--path", action="append", required=True, help="a file; repeatable")
    p.add_argument("--concurrency", type=int, default=5)
    p.add_argument("--keep-paths", action="store_true")
    p.add_argument("--user-timeout", type=float, default=2.0, help="seconds")
    p.add_argument("--ping-after", type=float, default=1.0, help="seconds")
    p.add_argument("--ping-timeout", type=float, default=1.0, help="seconds")
    p.add_argument("--handshake-timeout", type=float, default=10.0, help="seconds")
    p.add_argument("--rejoin-timeout", type=float, default=30.0, help="seconds")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds")
    p.add_argument("--join-timeout", type=float, default=10.0, help="seconds")
    p.add_argument("--connect-deadline", type=float, default=30.0, help="seconds")
    p.add_argument("--close-timeout", type=float, default=10.0, help="seconds")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
