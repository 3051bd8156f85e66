"""Bandwidth aggregation over two emulated paths: goodput of A alone, B alone and both.

Needs root (network namespaces; see :mod:`tcpls.lab`). Run as root from the repository
root::

    .venv/bin/python benchmarks/multipath.py                 # both scenarios, ~2.5 min
    .venv/bin/python benchmarks/multipath.py --runs 3        # medians of 3, ~7 min
    .venv/bin/python benchmarks/multipath.py --scenarios equal --record-sizes 16384

For each scenario a lab is built (client namespace and server namespace joined by path A =
10.10.1.x and path B = 10.10.2.x) and, for each record size, a tcpls server process runs in
the server namespace (``ServerConfig(tuning=SessionTuning(max_record_size=N))``, scheduler
``aggregate``). Then, interleaved, fresh client processes in the client namespace download
for a fixed time over:

* ``A``: one connection to 10.10.1.2 (path A only);
* ``B``: one connection to 10.10.2.2 (path B only);
* ``both``: a connection over A, then ``session.join`` over B (scheduler ``aggregate``).

The client asks ``SEND <seconds>``; the server writes 1 MiB buffers (``drain()`` between)
for that long, then ends the stream. The window is from ``--warmup`` to ``--warmup +
--duration`` seconds after the first byte. ``goodput_mbit`` counts the unique stream bytes
that reached the client's session in the window: bytes read by the application plus the
change of the out-of-order bytes held for reassembly (sampled together every 20 ms).
``read_goodput_mbit`` counts only the bytes read; with aggregation it is off by the
reassembly backlog at the window's edges (several MB with deep send queues, i.e. up to
5 % of an 8 s window), so it is reported but not used for the ratio. Mbit = 10^6 bits.

The report gives, per scenario and record size, the median goodput of
each mode, ``ratio = both / (A + B)`` and the target, plus what explains a miss: the bytes
each connection carried in the window (client's ``bytes_received``), the out-of-order bytes
the client held for reassembly (sampled every 20 ms: ``reassembly_bytes`` of the session
core), the RTT/cwnd of every connection (``TCP_INFO``) on both ends, and the server's
per-connection counters when each stream ended.

Scenarios (``--scenarios``):

* ``equal``: two 25 Mbit/s paths, no delay (veth + tbf); target ratio >= 0.90.
* ``asym``: 50 Mbit/s with 10 ms one-way delay, and 20 Mbit/s with 30 ms (the lab's
  userspace forwarder); target ratio >= 0.85.

The join cost (CPU of a join vs a full handshake) is measured by ``benchmarks/handshake.py``
(systems ``tcpls_join`` and ``tcpls_join_keep``), on loopback.

Prints one JSON line on stdout; progress on stderr. The script also runs itself as the
client (``_client``) and the server (``_server``) inside the namespaces.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PORT = 5301
SERVER_A = "10.10.1.2"
SERVER_B = "10.10.2.2"
MODES = ("A", "B", "both")
WRITE_SIZE = 1 << 20
SAMPLE_EVERY = 0.02

SCENARIOS: dict[str, dict[str, Any]] = {
    "equal": {
        "paths": [{"rate_mbit": 25.0}, {"rate_mbit": 25.0}],
        "target": 0.90,
        "description": "A: 25 Mbit/s; B: 25 Mbit/s (no delay)",
    },
    "asym": {
        "paths": [
            {"rate_mbit": 50.0, "delay_ms": 10.0},
            {"rate_mbit": 20.0, "delay_ms": 30.0},
        ],
        "target": 0.85,
        "description": "A: 50 Mbit/s, 10 ms one-way; B: 20 Mbit/s, 30 ms one-way",
    },
}


def _describe(session: Any) -> list[dict[str, Any]]:
    return [
        {
            "id": c.id,
            "local": c.local_address[0] if c.local_address else None,
            "remote": c.remote_address[0] if c.remote_address else None,
            "status": c.status,
            "bytes_sent": c.bytes_sent,
            "bytes_received": c.bytes_received,
            "records_sent": c.records_sent,
            "records_received": c.records_received,
            "rtt_ms": round(c.rtt * 1000, 2) if c.rtt is not None else None,
            "cwnd": c.cwnd,
            "unacknowledged": c.unacknowledged,
        }
        for c in session.connections
    ]


# -- server (runs in the server namespace) ----------------------------------------------------


async def _server(args: argparse.Namespace) -> None:
    import tcpls

    payload = os.urandom(WRITE_SIZE)

    async def stream(session: tcpls.Session, reader: Any, writer: Any) -> None:
        line = await reader.readuntil(b"\n")
        seconds = float(line.split()[1])
        deadline = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < deadline:
            writer.write(payload)
            sent += len(payload)
            await writer.drain()
        connections = _describe(session)
        writer.write_eof()
        await writer.wait_closed()
        print(json.dumps({"event": "stream_done", "sent": sent, "connections": connections}))
        sys.stdout.flush()

    async def handler(session: tcpls.Session) -> None:
        async with asyncio.TaskGroup() as group:
            async for reader, writer in session:
                group.create_task(stream(session, reader, writer))

    config = tcpls.ServerConfig(
        certfile=args.cert,
        keyfile=args.key,
        tuning=tcpls.SessionTuning(max_record_size=args.record_size),
    )
    server = await tcpls.serve(handler, "0.0.0.0", PORT, config=config, scheduler="aggregate")
    print(json.dumps({"event": "serving", "port": server.port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 3)


# -- client (runs in the client namespace) ----------------------------------------------------


async def _client(args: argparse.Namespace) -> dict[str, Any]:
    import tcpls

    config = tcpls.ClientConfig(
        cafile=args.cafile,
        server_name="localhost",
        tuning=tcpls.SessionTuning(max_record_size=args.record_size),
    )
    first = SERVER_B if args.mode == "B" else SERVER_A
    session = await tcpls.connect(first, PORT, config=config, scheduler="aggregate")
    if args.mode == "both":
        await session.join(SERVER_B, PORT)
    reader, writer = await session.open_stream()
    core = session._core
    times: list[float] = []
    totals: list[int] = []
    # (t, TCPLS bytes received per connection, out-of-order bytes held, bytes read)
    samples: list[tuple[float, dict[int, int], int, int]] = []
    total = 0

    async def sample() -> None:
        while True:
            per_conn = {c.id: c.bytes_received for c in session.connections}
            samples.append((time.monotonic(), per_conn, core.reassembly_bytes, total))
            await asyncio.sleep(SAMPLE_EVERY)

    sampler = asyncio.ensure_future(sample())
    writer.write(f"SEND {args.warmup + args.duration + 0.5}\n".encode())
    writer.write_eof()
    mid_connections: list[dict[str, Any]] = []
    try:
        while chunk := await reader.read(1 << 20):
            now = time.monotonic()
            total += len(chunk)
            times.append(now)
            totals.append(total)
            if not mid_connections and now - times[0] > args.warmup + args.duration / 2:
                mid_connections = _describe(session)
    finally:
        sampler.cancel()
    end_connections = _describe(session)
    await session.aclose(timeout=5)

    start = times[0] + args.warmup
    end = start + args.duration
    if times[-1] < end:
        raise RuntimeError(f"the download ended {end - times[-1]:.2f} s before the window did")

    def bytes_at(t: float) -> int:
        i = bisect.bisect_right(times, t)
        return totals[i - 1] if i else 0

    window = bytes_at(end) - bytes_at(start)
    in_window = [s for s in samples if start <= s[0] <= end]
    if len(in_window) < 2:
        raise RuntimeError("too few samples in the window")
    first_s, last_s = in_window[0], in_window[-1]
    per_conn = {str(cid): v - first_s[1].get(cid, 0) for cid, v in last_s[1].items()}
    # unique stream bytes that reached the session (read, or held for reassembly): unlike
    # the bytes read, it does not depend on how much was held at the window's edges
    arrived = (last_s[3] + last_s[2]) - (first_s[3] + first_s[2])
    held = [s[2] for s in in_window]
    # largest gap between consecutive reads in the window (head-of-line blocking)
    i0 = bisect.bisect_left(times, start)
    i1 = bisect.bisect_right(times, end)
    gaps = [b - a for a, b in zip(times[i0:i1], times[i0 + 1 : i1], strict=False)]
    return {
        "mode": args.mode,
        "record_size": args.record_size,
        "goodput_mbit": arrived * 8 / (last_s[0] - first_s[0]) / 1e6,
        "read_goodput_mbit": window * 8 / args.duration / 1e6,
        "window_bytes": window,
        "total_bytes": total,
        "connection_bytes_in_window": per_conn,
        "reassembly_held_max": max(held),
        "reassembly_held_mean": int(statistics.fmean(held)),
        "reads": i1 - i0,
        "max_read_gap_ms": round(max(gaps, default=0.0) * 1000, 1),
        "connections_mid": mid_connections,
        "connections_end": end_connections,
    }


# -- orchestration (root namespace) -----------------------------------------------------------


class _Lines:
    """Reads a process's stdout lines (JSON) on a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.proc = proc
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.queue.put(json.loads(line))
        self.queue.put(None)

    def get(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return out
            if item is not None:
                out.append(item)


def _run_scenario(name: str, args: argparse.Namespace, pki: Any) -> dict[str, Any]:
    from common import BenchmarkError, log, median, summarize

    from tcpls.lab import Lab, PathSpec

    spec = SCENARIOS[name]
    paths = [PathSpec(**p) for p in spec["paths"]]
    out: dict[str, Any] = {
        "description": spec["description"],
        "paths": [p.describe() for p in paths],
        "target_ratio": spec["target"],
        "by_record_size": {},
    }
    with Lab(paths) as lab:
        out["lab_setup_s"] = round(lab.setup_seconds, 3)
        for record_size in args.record_size_list:
            server_argv = [
                sys.executable, str(Path(__file__).resolve()), "_server",
                "--cert", pki.cert_file, "--key", pki.key_file,
                "--record-size", str(record_size),
            ]  # fmt: skip
            server = lab.popen("server", server_argv, stdout=subprocess.PIPE, text=True)
            lines = _Lines(server)
            ready = lines.get(30)
            if not ready or ready.get("event") != "serving":
                raise BenchmarkError(f"{name}: the server did not start")
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
            server_streams: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
            try:
                for run_no in range(1, args.runs + 1):
                    for mode in MODES:
                        argv = [
                            sys.executable, str(Path(__file__).resolve()), "_client",
                            "--mode", mode, "--cafile", pki.ca_file,
                            "--record-size", str(record_size),
                            "--duration", str(args.duration), "--warmup", str(args.warmup),
                        ]  # fmt: skip
                        cp = lab.run("client", argv, timeout=args.warmup + args.duration + 60)
                        if cp.returncode != 0:
                            raise BenchmarkError(
                                f"{name} {mode} client failed: {cp.stderr.strip()[-2000:]}"
                            )
                        result = json.loads(cp.stdout.strip().splitlines()[-1])
                        runs[mode].append(result)
                        deadline = time.monotonic() + 5
                        done: dict[str, Any] | None = None
                        while done is None and time.monotonic() < deadline:
                            item = lines.get(0.2)
                            if item and item.get("event") == "stream_done":
                                done = item
                        if done is not None:
                            server_streams[mode].append(done)
                        log(
                            f"{name} record {record_size} run {run_no} {mode}: "
                            f"{result['goodput_mbit']:.2f} Mbit/s, per connection "
                            f"{result['connection_bytes_in_window']}, reassembly max "
                            f"{result['reassembly_held_max']} B"
                        )
            finally:
                server.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.wait(5)
            goodput = {m: summarize([r["goodput_mbit"] for r in runs[m]], 2) for m in MODES}
            med = {m: goodput[m]["median"] for m in MODES}
            ratio = med["both"] / (med["A"] + med["B"])
            read = {m: median([r["read_goodput_mbit"] for r in runs[m]]) for m in MODES}
            out["by_record_size"][str(record_size)] = {
                "goodput_mbit": goodput,
                "ratio_both_over_sum": round(ratio, 3),
                "ratio_read_goodput": round(read["both"] / (read["A"] + read["B"]), 3),
                "target_met": ratio >= spec["target"],
                "runs": runs,
                "server_streams": server_streams,
            }
            log(f"{name} record {record_size}: ratio both/(A+B) = {ratio:.3f}")
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Goodput of tcpls over path A, path B and both (aggregate) in a network "
        "lab; needs root. Prints one JSON line.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="role")
    parser.add_argument("--scenarios", default="equal,asym", help="subset of equal,asym")
    parser.add_argument(
        "--record-sizes", default="16384,4096", help="max_record_size values to compare"
    )
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds before measuring")
    parser.add_argument("--runs", type=int, default=1, help="runs per mode (median)")
    server = sub.add_parser("_server")
    server.add_argument("--cert", required=True)
    server.add_argument("--key", required=True)
    server.add_argument("--record-size", type=int, default=16384)
    client = sub.add_parser("_client")
    client.add_argument("--mode", choices=MODES, required=True)
    client.add_argument("--cafile", required=True)
    client.add_argument("--record-size", type=int, default=16384)
    client.add_argument("--duration", type=float, default=8.0)
    client.add_argument("--warmup", type=float, default=1.5)
    args = parser.parse_args(argv)
    if args.role is None:
        args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        unknown = set(args.scenario_list) - set(SCENARIOS)
        if unknown or not args.scenario_list:
            parser.error(f"--scenarios: unknown {sorted(unknown)}")
        args.record_size_list = [int(s) for s in args.record_sizes.split(",") if s.strip()]
        if args.runs < 1 or args.duration <= 0 or args.warmup < 0:
            parser.error("--runs >= 1, --duration > 0, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.role == "_server":
        asyncio.run(_server(args))
        return 0
    if args.role == "_client":
        print(json.dumps(asyncio.run(_client(args))))
        return 0

    sys.path.insert(0, str(HERE))
    from common import BenchmarkError, lab_unavailable, machine_info, make_pki, run_benchmark

    if lab_unavailable("multipath"):
        return 2

    def body() -> dict[str, Any]:
        machine = machine_info()
        pki = make_pki()
        scenarios = {name: _run_scenario(name, args, pki) for name in args.scenario_list}
        summary = {
            f"{name}/{rs}": data["ratio_both_over_sum"]
            for name, sc in scenarios.items()
            for rs, data in sc["by_record_size"].items()
        }
        if not scenarios:
            raise BenchmarkError("no scenario ran")
        return {
            "machine": machine,
            "config": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "runs": args.runs,
                "record_sizes": args.record_size_list,
                "scheduler": "aggregate",
                "units": "goodput in Mbit/s (10^6 bits/s) of application bytes",
            },
            "ratios": summary,
            "scenarios": scenarios,
        }

    return run_benchmark("multipath", body)


if __name__ == "__main__":
    sys.exit(main())
