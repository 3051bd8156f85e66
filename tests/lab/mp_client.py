"""A tcpls download client for the multipath lab tests, run as a script in the client namespace.

It uses the asyncio API (``tcpls.connect``, ``session.join``, ``session.migrate``) and
prints one JSON object per line on stdout, each with an ``event`` key and ``t`` (the
``time.monotonic()`` of the event; the clock is shared by every process of the machine, so
the test can compare it with the time it cut a path):

* ``connected``: after the handshake (and the ``--join`` connections): ``connections``,
  ``peer_addresses``, ``spare_tokens``.
* ``token``: ``--mode tokens`` only: the spare token the next join will use (hex).
* ``joined``: after each join: ``id`` and the connections.
* ``progress``: every ``--progress-every`` bytes received: ``bytes`` and
  ``per_connection`` (connection ID -> TCPLS bytes received on it).
* ``migrating``/``migrated``: ``--migrate-to`` started (once ``--migrate-at`` bytes
  arrived; the download goes on meanwhile) and completed (``connections`` afterwards).
* ``result``: the end: ``bytes``, ``sha256``, ``seconds``, ``max_stall`` (longest time
  between two consecutive chunks returned by ``reader.read``), ``stalls`` (the five longest,
  each ``[start, seconds, bytes_before]``), ``connections``, ``error`` (``null`` or a string).

``--mode tokens``: connect, download once, print ``token``, join ``--join`` with that token,
print ``joined``, then wait for a line on stdin before downloading again (the test sends
forged joins meanwhile).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
import traceback
from typing import Any

import tcpls


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


def describe(session: tcpls.Session) -> list[dict[str, Any]]:
    return [
        {
            "id": c.id,
            "local": list(c.local_address) if c.local_address else None,
            "remote": list(c.remote_address) if c.remote_address else None,
            "status": c.status,
            "bytes_sent": c.bytes_sent,
            "bytes_received": c.bytes_received,
            "rtt": c.rtt,
            "unacknowledged": c.unacknowledged,
        }
        for c in session.connections
    ]


def target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def download(
    session: tcpls.Session, args: argparse.Namespace, progress: bool = True
) -> dict[str, Any]:
    reader, writer = await session.open_stream()
    writer.write(f"GET {args.path}\r\n".encode())
    writer.write_eof()
    header = await reader.readuntil(b"\n")  # OK <size>, or ERR <code> <reason>
    if not header.startswith(b"OK "):
        raise SystemExit(f"{args.path}: {header.decode(errors='replace').strip()}")
    size = int(header[3:])
    digest = hashlib.sha256()
    total = 0
    times: list[tuple[float, int]] = []  # (monotonic time of a chunk, bytes before it)
    next_report = args.progress_every
    migration: asyncio.Task[None] | None = None
    start = time.monotonic()
    while True:
        chunk = await reader.read(1 << 20)
        now = time.monotonic()
        if not chunk:
            break
        times.append((now, total))
        digest.update(chunk)
        total += len(chunk)
        if progress and total >= next_report:
            per_connection = {str(c.id): c.bytes_received for c in session.connections}
            emit("progress", bytes=total, per_connection=per_connection)
            next_report += args.progress_every
        if args.migrate_to and migration is None and total >= args.migrate_at:
            # migrate while the download goes on (reading must not wait for it)
            migration = asyncio.ensure_future(migrate(session, args.migrate_to))
    seconds = time.monotonic() - start
    if total != size:
        raise SystemExit(f"{args.path}: {total} of {size} bytes")
    if migration is not None:
        await migration
    gaps = sorted(
        (
            (times[i][0], times[i + 1][0] - times[i][0], times[i + 1][1])
            for i in range(len(times) - 1)
        ),
        key=lambda g: -g[1],
    )
    return {
        "bytes": total,
        "sha256": digest.hexdigest(),
        "seconds": seconds,
        "first_byte": times[0][0] if times else None,
        "last_byte": times[-1][0] if times else None,
        "chunks": len(times),
        "max_stall": gaps[0][1] if gaps else 0.0,
        "stalls": [list(g) for g in gaps[:5]],
    }


async def migrate(session: tcpls.Session, where: str) -> None:
    host, port = target(where)
    emit("migrating", to=where)
    info = await session.migrate(host, port)
    emit("migrated", id=info.id, connections=describe(session))


async def main(args: argparse.Namespace) -> int:
    tuning = tcpls.SessionTuning()
    if args.record_size:
        tuning = tcpls.SessionTuning(max_record_size=args.record_size)
    config = tcpls.ClientConfig(
        cafile=args.cafile,
        user_timeout=args.user_timeout,
        server_name=args.server_name,
        tuning=tuning,
    )
    result: dict[str, Any] = {"error": None}
    session = None
    try:
        session = await tcpls.connect(
            args.host, args.port, config=config, scheduler=args.scheduler
        )
        if args.mode == "tokens":
            first = await download(session, args, progress=False)
            emit("warmup", **first)
            seq = min(session._core.tokens)
            emit("token", sequence=seq, token=session._core.tokens[seq].hex())
        for join in args.join:
            host, port = target(join)
            info = await session.join(host, port)
            emit("joined", id=info.id, connections=describe(session))
        emit(
            "connected",
            connections=describe(session),
            peer_addresses={str(k): list(v) for k, v in session.peer_addresses.items()},
            spare_tokens=session.spare_tokens,
        )
        if args.mode == "tokens":
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        result.update(await download(session, args))
    except Exception as exc:
        result["error"] = f"{exc.__class__.__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
    if session is not None:
        result["connections"] = describe(session)
        result["spare_tokens"] = session.spare_tokens
        result["peer_addresses"] = {str(k): list(v) for k, v in session.peer_addresses.items()}
        result["session_error"] = repr(session.error) if session.error else None
        try:
            await session.aclose(timeout=3)
        except Exception as exc:
            result["close_error"] = repr(exc)
    emit("result", **result)
    return 0 if result["error"] is None else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--server-name", default=None)
    p.add_argument("--path", required=True)
    p.add_argument("--scheduler", default="aggregate", choices=("aggregate", "pinned", "backup"))
    p.add_argument("--user-timeout", type=float, default=None, help="seconds")
    p.add_argument("--record-size", type=int, default=None)
    p.add_argument("--join", action="append", default=[], metavar="HOST:PORT")
    p.add_argument("--migrate-to", metavar="HOST:PORT")
    p.add_argument("--migrate-at", type=int, default=0, metavar="BYTES")
    p.add_argument("--progress-every", type=int, default=1 << 20, metavar="BYTES")
    p.add_argument("--mode", choices=("download", "tokens"), default="download")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
