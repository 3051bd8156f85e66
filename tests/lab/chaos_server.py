"""A tcpls file server for the chaos and close-time lab tests, run in the server namespace.

The handler of ``tcpls serve --files DIR`` (:func:`tcpls.apps.fileserve.make_file_handler`) with
the timers of :class:`tcpls.SessionTuning` on the command line, and one JSON line on stdout
per event, each with ``event`` and ``t`` (``time.monotonic()``, shared by every process of
the machine):

* ``serving``: listening (``port``).
* ``session_open``: a session's handshake completed (``session``: a serial number,
  ``client``: the client's address and port).
* ``session_closed``: that session ended: ``error`` (``null`` after a graceful close, else
  the session's error), ``seconds`` (its lifetime), ``history`` (its connections and their
  status at each change, sampled every 0.1 s).

Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from lab_util import serve_until_signal  # (this folder: run as a script)

import tcpls
from tcpls.apps.fileserve import make_file_handler


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


def observed(
    inner: Callable[[tcpls.Session], Awaitable[None]],
) -> Callable[[tcpls.Session], Awaitable[None]]:
    """``inner`` plus ``session_open``/``session_closed`` events."""
    serial = itertools.count(1)
    watchers: set[asyncio.Task[None]] = set()

    async def watch(session: tcpls.Session, number: int, opened: float) -> None:
        history: list[list[Any]] = []
        while not session.closed:
            state = {str(c.id): c.status for c in session.connections}
            if not history or history[-1][1] != state:
                history.append([round(time.monotonic(), 3), state])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.wait_closed(), 0.1)
        error = session.error
        emit(
            "session_closed",
            session=number,
            error=None if error is None else f"{error.__class__.__name__}: {error}",
            seconds=round(time.monotonic() - opened, 3),
            history=history[-40:],
        )

    async def handler(session: tcpls.Session) -> None:
        number = next(serial)
        opened = time.monotonic()
        first = session.connections[0].remote_address if session.connections else None
        emit("session_open", session=number, client=list(first) if first else None)
        task = asyncio.get_running_loop().create_task(watch(session, number, opened))
        watchers.add(task)
        task.add_done_callback(watchers.discard)
        await inner(session)

    return handler


async def main(args: argparse.Namespace) -> int:
    tuning = tcpls.SessionTuning(
        user_timeout=args.user_timeout,
        ping_after=args.ping_after,
        ping_timeout=args.ping_timeout,
        rejoin_timeout=args.rejoin_timeout,
    )
    config = tcpls.ServerConfig(
        certfile=args.cert,
        keyfile=args.key,
        advertise=tuple(args.advertise),
        max_connections=args.max_connections,
        tuning=tuning,
    )
    server = await tcpls.serve(
        observed(make_file_handler(args.files)), args.host, args.port, config=config
    )
    emit("serving", port=server.port)
    return await serve_until_signal(server)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--files", required=True)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--advertise", action="append", default=[], metavar="IP:PORT")
    p.add_argument("--max-connections", type=int, default=4)
    p.add_argument("--user-timeout", type=float, default=2.0, help="seconds")
    p.add_argument("--ping-after", type=float, default=1.0, help="seconds")
    p.add_argument("--ping-timeout", type=float, default=1.0, help="seconds")
    p.add_argument("--rejoin-timeout", type=float, default=30.0, help="seconds")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
