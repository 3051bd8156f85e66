"""Failover in the network lab: how long the application waits when a path dies, and
whether a path that is merely slow is ever taken for dead. Default settings throughout.

Needs root (network namespaces; see :mod:`tcpls.lab`). Run as root from the repository
root::

    .venv/bin/python benchmarks/failover.py                      # every scenario, ~3 min
    .venv/bin/python benchmarks/failover.py --scenarios blackhole --rtts 20 --runs 3
    .venv/bin/python benchmarks/failover.py --scenarios slowpath --seconds 30

Each run builds a lab of two paths (A = 10.10.1.x, B = 10.10.2.x; 20 Mbit/s each, the
one-way delay half the RTT), runs a tcpls server (default ``ServerConfig``, scheduler
``aggregate``) in the server namespace and a client (default ``ClientConfig``) in the
client namespace that connects over A, joins B and downloads. The client takes the time of
every ``reader.read`` that returns bytes, so a *gap* is the time between two reads that
returned bytes: what the application waits. Scenarios (``--scenarios``):

* ``blackhole``: a 24 MiB download; once a third has arrived, path A drops every packet.
  Reported: the longest gap from 50 ms before the cut on, whether the file is intact (its
  SHA-256 on both ends), and how many bytes the server sent twice. Repeated for each RTT
  of ``--rtts``.
* ``reset``: the same, with path A reset (both ends see ECONNABORTED at once).
* ``restore``: path A is blackholed at a third and restored ``--restore-after`` seconds
  later: the connection over A must carry data again, with no new join.
* ``slowpath``: no failure; a download of ``--seconds`` over A and B while eight competing
  TCP flows over A (on for 3 s, off for 2 s, in turn) fill A's queue of 2000 KiB (800 ms
  at 20 Mbit/s), so that A's queueing delay swings by a few hundred ms. Reported:
  connections declared failed (must be 0) and the bytes the server sent twice (suspect
  connections' resends plus reinjections) as a share of the download (must stay under 1 %),
  and the kernel's RTT of A's connection sampled at every MiB (``a_tcp_rtt_ms``).

Prints one JSON line on stdout; progress on stderr. The script also runs itself as the
client (``_client``), the server (``_server``) and the competing flow (``_sink``,
``_blast``) inside the namespaces.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PORT = 5401
BLAST_PORT = 5402
SERVER_A = "10.10.1.2"
SERVER_B = "10.10.2.2"
CLIENT_A = "10.10.1.1"
RATE_MBIT = 20.0
BLOCK = 1 << 16
#: Path A's queue in the slowpath scenario, KiB (800 ms at 20 Mbit/s when full).
SLOW_QUEUE_KB = 2000
#: Competing TCP flows over path A in the slowpath scenario.
BLAST_FLOWS = 8
SCENARIOS = ("blackhole", "reset", "restore", "slowpath")


def _payload(index: int) -> bytes:
    """The ``index``-th 64 KiB block of the download (deterministic, incompressible)."""
    return hashlib.shake_256(index.to_bytes(8, "big")).digest(BLOCK)


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


# -- server (server namespace) ------------------------------------------------------------------


async def _server(args: argparse.Namespace) -> None:
    import logging

    import tcpls

    if args.log:
        logging.basicConfig(
            filename=args.log, level=logging.INFO, format="%(created).3f %(name)s %(message)s"
        )
        logging.getLogger("tcpls.core.clock").setLevel(logging.DEBUG)  # suspect connections

    async def stream(session: tcpls.Session, reader: Any, writer: Any) -> None:
        words = (await reader.readuntil(b"\n")).split()
        size, seconds = int(words[1]), float(words[2])
        digest = hashlib.sha256()
        deadline = time.monotonic() + seconds if seconds else None
        sent = index = 0
        while (size and sent < size) or (deadline and time.monotonic() < deadline):
            block = _payload(index)
            if size:
                block = block[: size - sent]
            index += 1
            digest.update(block)
            writer.write(block)
            sent += len(block)
            await writer.drain()
        writer.write_eof()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        stats = session.stats()
        _emit(
            "stream_done",
            sent=sent,
            sha256=digest.hexdigest(),
            bytes_resent=getattr(stats, "bytes_resent", 0),  # (0.1.0 before suspicion: none)
            bytes_reinjected=stats.bytes_reinjected,
            connections=[c.id for c in stats.connections],
        )

    async def handler(session: tcpls.Session) -> None:
        async with asyncio.TaskGroup() as group:
            async for reader, writer in session:
                group.create_task(stream(session, reader, writer))

    config = tcpls.ServerConfig(certfile=args.cert, keyfile=args.key)
    server = await tcpls.serve(handler, "0.0.0.0", PORT, config=config, scheduler="aggregate")
    _emit("serving", port=server.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 3)


# -- client (client namespace) ------------------------------------------------------------------


def _describe(session: Any) -> list[dict[str, Any]]:
    return [
        {
            "id": c.id,
            "status": c.status,
            "suspect": getattr(c, "suspect", False),
            "bytes_received": c.bytes_received,
            "srtt_ms": None if getattr(c, "srtt", None) is None else round(c.srtt * 1000, 1),
            "tcp_rtt_ms": None if c.rtt is None else round(c.rtt * 1000, 1),
        }
        for c in session.connections
    ]


async def _client(args: argparse.Namespace) -> None:
    import tcpls

    config = tcpls.ClientConfig(cafile=args.cafile, server_name="localhost")
    result: dict[str, Any] = {"error": None}
    session = await tcpls.connect(SERVER_A, PORT, config=config)
    try:
        await session.join(SERVER_B, PORT)
        _emit("connected", connections=_describe(session))
        reader, writer = await session.open_stream()
        writer.write(f"GET {args.size} {args.seconds}\n".encode())
        writer.write_eof()
        digest = hashlib.sha256()
        reads: list[float] = []
        total = 0
        next_report = 1 << 20
        while chunk := await reader.read(1 << 20):
            reads.append(time.monotonic())
            digest.update(chunk)
            total += len(chunk)
            if total >= next_report:
                _emit("progress", bytes=total, connections=_describe(session))
                next_report += 1 << 20
        result.update(bytes=total, sha256=digest.hexdigest(), reads=reads)
    except Exception as exc:
        result["error"] = f"{exc.__class__.__name__}: {exc}"
    result["connections"] = _describe(session)
    with contextlib.suppress(Exception):
        await session.aclose(timeout=3)
    _emit("result", **result)


# -- competing flow -------------------------------------------------------------------------------


def _sink(args: argparse.Namespace) -> None:
    """Client namespace: accept the competing flows and discard what they send."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((CLIENT_A, BLAST_PORT))
    listener.listen()
    _emit("listening")

    def drain(conn: socket.socket) -> None:
        while conn.recv(1 << 20):
            pass

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=drain, args=(conn,), daemon=True).start()


def _blast(args: argparse.Namespace) -> None:
    """Server namespace: TCP bulk flows over path A, all on, then all off, in turn."""
    data = os.urandom(1 << 16)
    end = time.monotonic() + args.seconds

    def flow() -> None:
        sock = socket.create_connection((CLIENT_A, BLAST_PORT))
        while time.monotonic() < end:
            phase = (time.monotonic() - start) % (args.on + args.off)
            if phase < args.on:
                sock.sendall(data)
            else:
                time.sleep(args.on + args.off - phase)
        sock.close()

    start = time.monotonic()
    threads = [threading.Thread(target=flow) for _ in range(BLAST_FLOWS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# -- orchestration (root namespace) ---------------------------------------------------------------


class _Process:
    """A script in a lab namespace whose JSON stdout lines arrive on a queue."""

    def __init__(self, lab: Any, side: str, argv: list[str]) -> None:
        self.proc = lab.popen(
            side,
            [sys.executable, str(Path(__file__).resolve()), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        """The next event named ``event`` (the others are kept in :attr:`seen`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                item = None
            if item is None:
                err = self.proc.stderr.read()[-2000:] if self.proc.poll() is not None else ""
                raise RuntimeError(f"no {event!r} from the {self.proc.args[2]} {err}")
            self.seen.append(item)
            if item.get("event") == event:
                return item

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _bytes_on(connections: list[dict[str, Any]], cid: int) -> int:
    return next((c["bytes_received"] for c in connections if c["id"] == cid), 0)


def _gap_after(reads: list[float], since: float) -> float:
    """The longest time between two reads, counting only gaps that end after ``since``."""
    gaps = [b - a for a, b in itertools.pairwise(reads) if b >= since]
    return max(gaps, default=0.0)


def _run(args: argparse.Namespace, pki: Any, scenario: str, rtt_ms: float) -> dict[str, Any]:
    from common import log

    from tcpls.lab import Lab, PathSpec

    delay = rtt_ms / 2
    queue_a = SLOW_QUEUE_KB if scenario == "slowpath" else None
    paths = [
        PathSpec(rate_mbit=RATE_MBIT, delay_ms=delay, queue_kb=queue_a),
        PathSpec(rate_mbit=RATE_MBIT, delay_ms=delay),
    ]
    seconds = args.seconds if scenario == "slowpath" else 0.0
    size = 0 if scenario == "slowpath" else args.size
    with Lab(paths) as lab:
        server_argv = ["_server", "--cert", pki.cert_file, "--key", pki.key_file]
        if args.server_log:
            server_argv += ["--log", args.server_log]
        server = _Process(lab, "server", server_argv)
        helpers: list[_Process] = []
        try:
            server.wait_for("serving", 30)
            if scenario == "slowpath":
                sink = _Process(lab, "client", ["_sink"])
                helpers.append(sink)
                sink.wait_for("listening", 10)
                blast = ["_blast", "--seconds", str(seconds), "--on", "3", "--off", "2"]
                helpers.append(_Process(lab, "server", blast))
            client = _Process(
                lab,
                "client",
                [
                    "_client",
                    "--cafile",
                    pki.ca_file,
                    "--size",
                    str(size),
                    "--seconds",
                    str(seconds),
                ],
            )
            helpers.append(client)
            client.wait_for("connected", 30)
            cut_at = restored_at = None
            a_at_restore = 0
            if scenario in ("blackhole", "reset", "restore"):
                while True:
                    progress = client.wait_for("progress", 60)
                    if progress["bytes"] >= size // 3:
                        break
                cut_at = time.monotonic()
                log(f"cut at {time.time():.3f}")
                lab.cut(0, "reset" if scenario == "reset" else "blackhole")
                if scenario == "restore":
                    time.sleep(args.restore_after)
                    lab.restore(0)
                    restored_at = time.monotonic()
                    progress = client.wait_for("progress", 30)
                    a_at_restore = _bytes_on(progress["connections"], 0)
            result = client.wait_for("result", seconds + 120)
            done = server.wait_for("stream_done", 10)
        finally:
            for process in helpers:
                process.stop()
            server.stop()
    reads = result.pop("reads", [])
    total = result.get("bytes", 0)
    out: dict[str, Any] = {
        "scenario": scenario,
        "rtt_ms": rtt_ms,
        "error": result["error"],
        "intact": result.get("sha256") == done["sha256"] and total == done["sent"],
        "bytes": total,
        "seconds": round(reads[-1] - reads[0], 2) if reads else None,
        "max_gap_s": round(_gap_after(reads, reads[0] if reads else 0.0), 3),
        "bytes_resent": done["bytes_resent"],
        "bytes_reinjected": done["bytes_reinjected"],
        "duplicate_share": round(
            (done["bytes_resent"] + done["bytes_reinjected"]) / max(total, 1), 5
        ),
        "client_connections": result["connections"],
        "server_connections": done["connections"],
    }
    if cut_at is not None:
        out["gap_after_cut_s"] = round(_gap_after(reads, cut_at - 0.05), 3)
    if restored_at is not None:
        ids = [c["id"] for c in result["connections"]]
        out["a_kept"] = ids == [0, 1]
        # what connection 0 (path A) carried once the path was back
        out["a_bytes_after_restore"] = _bytes_on(result["connections"], 0) - a_at_restore
    if scenario == "slowpath":
        out["connections_failed"] = 2 - len(result["connections"])
        # the kernel's RTT of path A's connection, sampled at every MiB received
        rtts = [
            c["tcp_rtt_ms"]
            for e in client.seen
            if e.get("event") == "progress"
            for c in e["connections"]
            if c["id"] == 0 and c["tcp_rtt_ms"] is not None
        ]
        if rtts:
            out["a_tcp_rtt_ms"] = {
                "min": min(rtts),
                "median": sorted(rtts)[len(rtts) // 2],
                "max": max(rtts),
            }
    log(f"{scenario} rtt {rtt_ms:g} ms: {json.dumps(out)}")
    return out


def _targets(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's bars, over the runs there are: a blackhole at RTT 20 ms stalls the
    download at most 0.2 s; on the slow path no connection fails and under 1 % of the
    bytes are sent twice while its queueing delay swings by at least 200 ms."""
    out: dict[str, Any] = {}
    gaps = [
        r["gap_after_cut_s"]
        for r in runs
        if r["scenario"] == "blackhole" and r["rtt_ms"] == 20.0 and "gap_after_cut_s" in r
    ]
    if gaps:
        out["blackhole_20ms_gap_s"] = {
            "value": max(gaps),
            "target": "<= 0.2",
            "met": max(gaps) <= 0.2,
        }
    for r in runs:
        if r["scenario"] == "slowpath":
            rtt = r.get("a_tcp_rtt_ms") or {}
            swing = (rtt.get("max", 0.0) - rtt.get("min", 0.0)) if rtt else 0.0
            out.setdefault("slowpath", []).append(
                {
                    "failed": r.get("connections_failed"),
                    "duplicate_share": r.get("duplicate_share"),
                    "queueing_swing_ms": round(swing, 1),
                    "met": r.get("connections_failed") == 0
                    and (r.get("duplicate_share") or 0.0) < 0.01
                    and swing >= 200,
                }
            )
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Failover stalls and false alarms of tcpls in a network lab (root). "
        "Prints one JSON line.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="role")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--rtts", default="20,60,200", help="RTTs of the blackhole runs, ms")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--size", type=int, default=24 << 20, help="download size, bytes")
    parser.add_argument("--seconds", type=float, default=30.0, help="slowpath: duration")
    parser.add_argument("--restore-after", type=float, default=0.5, help="restore: seconds")
    parser.add_argument("--server-log", default=None, help="the server's INFO log, to a file")
    server = sub.add_parser("_server")
    server.add_argument("--cert", required=True)
    server.add_argument("--key", required=True)
    server.add_argument("--log", default=None, help="log file (INFO)")
    client = sub.add_parser("_client")
    client.add_argument("--cafile", required=True)
    client.add_argument("--size", type=int, required=True)
    client.add_argument("--seconds", type=float, required=True)
    sub.add_parser("_sink")
    blast = sub.add_parser("_blast")
    blast.add_argument("--seconds", type=float, required=True)
    blast.add_argument("--on", type=float, required=True)
    blast.add_argument("--off", type=float, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.role == "_server":
        asyncio.run(_server(args))
        return 0
    if args.role == "_client":
        asyncio.run(_client(args))
        return 0
    if args.role == "_sink":
        _sink(args)
        return 0
    if args.role == "_blast":
        _blast(args)
        return 0

    sys.path.insert(0, str(HERE))
    from common import lab_unavailable, machine_info, make_pki, run_benchmark

    if lab_unavailable("failover"):
        return 2
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    rtts = [float(r) for r in args.rtts.split(",") if r.strip()]

    def body() -> dict[str, Any]:
        pki = make_pki()
        runs: list[dict[str, Any]] = []
        for _ in range(args.runs):
            for scenario in scenarios:
                for rtt in rtts if scenario == "blackhole" else [20.0]:
                    runs.append(_run(args, pki, scenario, rtt))
        return {
            "machine": machine_info(),
            "targets": _targets(runs),
            "config": {
                "paths": f"2 x {RATE_MBIT:g} Mbit/s, one-way delay = RTT / 2",
                "size": args.size,
                "slowpath_seconds": args.seconds,
                "settings": "defaults (ClientConfig(), ServerConfig(), scheduler aggregate)",
            },
            "runs": runs,
        }

    return run_benchmark("failover", body)


if __name__ == "__main__":
    sys.exit(main())
