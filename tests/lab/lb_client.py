"""tcpls sessions through a load balancer, for the load balancer lab test; run as a script
in the client namespace.

Every session connects to the balancer's address (``--vip``, ``--port``), waits for the
New Address of the backend it landed on (``peer_addresses``), and, unless told otherwise,
joins that address. Downloads use :func:`tcpls.apps.fileserve.download` (``tcpls serve
--files``). One JSON object per line on stdout, each with ``event`` and ``t``
(``time.monotonic()``, the clock of the test too). Every session is described as
``connections`` (``id``, ``local``, ``remote``, ``bytes_received``), ``peer_addresses``
and ``backend`` (the advertised address, ``"ip:port"``).

``--mode spread`` (sessions join their backends, downloads aggregate):

* ``session``: each of the ``--sessions`` sessions once it is established and knows its
  backend (before the join), with ``index``.
* ``baseline``: ``--baseline`` downloaded by session 0 before it joins (one path, A).
* ``joined``: each session after its join: ``index``, ``id`` (the new connection's).
  With ``--follow`` the session joins by itself (``ClientConfig.join_advertised``): the
  client only waits for that connection.
* ``download``: ``--download`` by the first session of each backend, over both
  connections: ``index``, ``backend``, ``bytes``, ``sha256``, ``seconds`` and
  ``per_connection`` (connection ID -> bytes received during the download, with its
  ``remote``).

``--mode balancer-joins`` (joins sent to the balancer's address): for each session, up to
``--attempts`` joins to ``--vip``; ``attempt`` events: ``index``, ``outcome``
(``accepted``, ``refused``: the PeerAlert's ``alert`` and ``message``, or ``failed``),
``remote`` of an accepted connection, then ``--baseline`` is downloaded on the session
(``check``: ``sha256`` or ``error``) to show it still works; an accepted connection is then
retired (its token comes back as a New Token). A session stops once it has seen
``--want-refusals`` refusals.

``--mode kill``: ``--sessions`` sessions join their backends (``session`` events), then
all download ``--download`` at once: ``progress`` (``index``, ``bytes``) every
``--progress-every`` bytes, then ``transfer`` per session: ``index``, ``backend``,
``bytes``, ``sha256``, ``seconds``, ``error`` (``null`` or the exception's class and
message) and ``error_t`` (when it failed).

Always last: ``result`` (``error``: ``null`` or what went wrong outside a transfer, with
``traceback``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback
from typing import Any

import tcpls
from tcpls.apps.fileserve import download
from tcpls.errors import PeerAlert, alert_name

#: How long a session may wait for its backend's New Address after the handshake.
ADDRESS_WAIT = 5.0


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


class Discard:
    """Where the downloaded bytes go (``download`` computes the SHA-256 itself)."""

    def write(self, data: bytes, /) -> int:
        return len(data)


def describe(session: tcpls.Session) -> dict[str, Any]:
    peers = session.peer_addresses
    return {
        "connections": [
            {
                "id": c.id,
                "local": list(c.local_address) if c.local_address else None,
                "remote": list(c.remote_address) if c.remote_address else None,
                "bytes_received": c.bytes_received,
            }
            for c in session.connections
        ],
        "peer_addresses": {str(k): list(v) for k, v in peers.items()},
        "backend": backend(session),
    }


def backend(session: tcpls.Session) -> str | None:
    peers = session.peer_addresses
    if not peers:
        return None
    host, port = peers[min(peers)]
    return f"{host}:{port}"


def error_text(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}"


async def open_session(args: argparse.Namespace, config: tcpls.ClientConfig) -> tcpls.Session:
    """A session through the balancer that knows its backend's address."""
    session = await tcpls.connect(args.vip, args.port, config=config)
    deadline = time.monotonic() + ADDRESS_WAIT
    while not session.peer_addresses:
        if time.monotonic() > deadline:
            raise AssertionError(f"no New Address within {ADDRESS_WAIT:g} s")
        await asyncio.sleep(0.01)
    return session


async def join_backend(session: tcpls.Session) -> tcpls.ConnectionInfo:
    peers = session.peer_addresses
    host, port = peers[min(peers)]
    return await session.join(host, port)


async def joined_by_itself(session: tcpls.Session, timeout: float = 5.0) -> tcpls.ConnectionInfo:
    """The connection to the backend's address that ``join_advertised`` opened."""
    peers = session.peer_addresses
    host, port = peers[min(peers)]
    deadline = time.monotonic() + timeout
    while True:
        for info in session.connections:
            if info.id != 0 and info.remote_address == (host, port) and info.status == "active":
                return info
        if time.monotonic() > deadline:
            raise AssertionError(f"no connection to {host}:{port} within {timeout:g} s")
        await asyncio.sleep(0.01)


def received(session: tcpls.Session) -> dict[int, tuple[int, list[Any] | None]]:
    return {
        c.id: (c.bytes_received, list(c.remote_address) if c.remote_address else None)
        for c in session.connections
    }


async def spread(args: argparse.Namespace, config: tcpls.ClientConfig) -> None:
    sessions: list[tcpls.Session] = []
    try:
        for index in range(args.sessions):
            session = await open_session(args, config)
            sessions.append(session)
            emit("session", index=index, **describe(session))
        if args.baseline:
            got = await download(sessions[0], args.baseline, Discard())
            emit("baseline", bytes=got.bytes, sha256=got.sha256, seconds=got.seconds)
        for index, session in enumerate(sessions):
            info = await (joined_by_itself(session) if args.follow else join_backend(session))
            emit("joined", index=index, id=info.id, **describe(session))
        done: set[str | None] = set()
        for index, session in enumerate(sessions):
            if backend(session) in done:
                continue
            done.add(backend(session))
            before = received(session)
            got = await download(session, args.download, Discard())
            after = received(session)
            per_connection = {
                str(cid): {"bytes": count - before.get(cid, (0, None))[0], "remote": remote}
                for cid, (count, remote) in after.items()
            }
            emit(
                "download",
                index=index,
                backend=backend(session),
                bytes=got.bytes,
                sha256=got.sha256,
                seconds=got.seconds,
                per_connection=per_connection,
            )
    finally:
        await close_all(sessions)


async def balancer_joins(args: argparse.Namespace, config: tcpls.ClientConfig) -> None:
    sessions: list[tcpls.Session] = []
    try:
        for index in range(args.sessions):
            session = await open_session(args, config)
            sessions.append(session)
            emit("session", index=index, **describe(session))
        for index, session in enumerate(sessions):
            refusals = 0
            for _ in range(args.attempts):
                await wait_for_token(session)
                fields: dict[str, Any]
                joined: int | None = None
                try:
                    info = await session.join(args.vip, args.port)
                except PeerAlert as exc:
                    refusals += 1
                    fields = {
                        "outcome": "refused",
                        "alert": alert_name(exc.alert),
                        "message": str(exc),
                    }
                except Exception as exc:
                    fields = {"outcome": "failed", "message": error_text(exc)}
                else:
                    joined = info.id
                    remote = list(info.remote_address) if info.remote_address else None
                    fields = {"outcome": "accepted", "id": info.id, "remote": remote}
                try:
                    got = await download(session, args.baseline, Discard())
                    check: dict[str, Any] = {"sha256": got.sha256, "bytes": got.bytes}
                except Exception as exc:
                    check = {"error": error_text(exc)}
                emit("attempt", index=index, check=check, **fields, **describe(session))
                if joined is not None:
                    await session.retire(joined)
                if refusals >= args.want_refusals:
                    break
    finally:
        await close_all(sessions)


async def wait_for_token(session: tcpls.Session, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while session.spare_tokens == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def kill(args: argparse.Namespace, config: tcpls.ClientConfig) -> None:
    sessions: list[tcpls.Session] = []
    try:
        for index in range(args.sessions):
            session = await open_session(args, config)
            await join_backend(session)
            sessions.append(session)
            emit("session", index=index, **describe(session))
        await asyncio.gather(*(transfer(i, s, args) for i, s in enumerate(sessions)))
    finally:
        await close_all(sessions)


async def transfer(index: int, session: tcpls.Session, args: argparse.Namespace) -> None:
    where = backend(session)
    total = 0
    next_report = args.progress_every

    def progress(count: int) -> None:
        nonlocal total, next_report
        total = count
        if count >= next_report:
            emit("progress", index=index, bytes=count)
            next_report += args.progress_every

    try:
        got = await download(session, args.download, Discard(), on_progress=progress)
    except Exception as exc:
        emit(
            "transfer",
            index=index,
            backend=where,
            bytes=total,
            error=error_text(exc),
            error_t=time.monotonic(),
            session_error=repr(session.error) if session.error else None,
        )
        return
    emit(
        "transfer",
        index=index,
        backend=where,
        bytes=got.bytes,
        sha256=got.sha256,
        seconds=got.seconds,
        error=None,
    )


async def close_all(sessions: list[tcpls.Session]) -> None:
    for session in sessions:
        if not session.closed:
            try:
                await session.aclose(timeout=2)
            except Exception:
                session.abort()


async def main(args: argparse.Namespace) -> int:
    config = tcpls.ClientConfig(cafile=args.cafile, join_advertised=args.follow)
    result: dict[str, Any] = {"error": None}
    try:
        await {"spread": spread, "balancer-joins": balancer_joins, "kill": kill}[args.mode](
            args, config
        )
    except Exception as exc:
        result["error"] = error_text(exc)
        result["traceback"] = traceback.format_exc()
    emit("result", **result)
    return 0 if result["error"] is None else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", required=True, choices=("spread", "balancer-joins", "kill"))
    p.add_argument("--vip", required=True, help="the balancer's address")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--sessions", type=int, default=2)
    p.add_argument("--baseline", help="a small file (one path; the checks after joins)")
    p.add_argument("--download", help="the file the downloads fetch")
    p.add_argument("--attempts", type=int, default=8)
    p.add_argument("--want-refusals", type=int, default=2)
    p.add_argument("--progress-every", type=int, default=1 << 20, metavar="BYTES")
    p.add_argument(
        "--follow", action="store_true", help="ClientConfig.join_advertised (spread mode)"
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
