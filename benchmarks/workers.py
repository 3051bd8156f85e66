"""Full handshakes per second with 1 and 2 worker processes, driven by ``openssl s_time``.

Each round starts ``tcpls serve --echo --workers N`` (N = 1, 2; and without
``--workers``: one process, no supervisor, tokens not steered; and, as the control, two
such processes on two ports with the clients split between them; and the standard
library reference described below) on 127.0.0.1, lets ``--clients`` ``openssl s_time
-new`` processes (a C client, the issue's choice; with OpenSSL 3.0 it spends about as
much CPU per handshake as the server) make full TLS 1.3 handshakes against it for
``--seconds`` at once, then stops the server. ``s_time`` is an ordinary TLS client, so
the sessions are plain TLS 1.3 (the tcpls server falls back): what the workers share and
what a handshake costs do not depend on that. The set-ups alternate, ``--runs`` rounds
of each.

Reported per worker count (median of the rounds): handshakes per second (the sum of the
``s_time`` reports), the server's CPU seconds over the window (user + system of every
worker, read from /proc before and after), handshakes per server CPU-second, and the
clients' CPU seconds (their rusage). The comparison of interest:
``per_cpu_workers_2_over_workers_1`` (handshakes per server CPU-second with 2 workers
over 1), which should be within 10 % of 1; ``per_cpu_workers_2_over_two_processes``,
which isolates what the workers add (supervisor, shared port, steering) from what
splitting the load over two processes costs on its own;
``per_cpu_stdlib_2_over_stdlib_1``, the same split for an asyncio server on the standard
library's ``ssl`` (one process, then two sharing the port), which is what the split
costs on the machine with no tcpls code at all; and the rate with 2 workers
over 1, which needs a spare core for the second worker: on a 2-core machine the clients
take part of it.

    .venv/bin/python benchmarks/workers.py --runs 3 --seconds 8 --clients 3
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import log, machine_info, make_pki, median, run_benchmark

_CONNECTIONS = re.compile(rb"(\d+) connections in ([\d.]+) real seconds")
_TICKS = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def _workers_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _wait_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the server did not listen on {port}")


#: The server set-ups compared: name -> (processes started, ``--workers`` or ``None``).
SETUPS: dict[str, tuple[int, int | None]] = {
    "one_process": (1, None),  # no supervisor, no steering
    "workers_1": (1, 1),
    "workers_2": (1, 2),
    "two_processes": (2, None),  # the control: two servers on two ports, no steering
    # The machine's own reference: an asyncio server with the standard library's ssl (its
    # handshake in C), as one process and as two processes sharing the port through
    # SO_REUSEPORT. What it loses from one to two is what splitting costs on this machine
    # with no tcpls code at all.
    "stdlib_1": (1, None),
    "stdlib_2": (2, None),
}


def _stdlib_serve(port: int, cert: str, key: str) -> None:
    """One process of the ``stdlib_*`` set-ups: handshakes, reads to EOF, closes."""
    import asyncio
    import contextlib
    import socket
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            await reader.read()
        writer.close()

    async def serve() -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1024)
        server = await asyncio.start_server(handle, sock=sock, ssl=context)
        await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(serve())


def _server_command(pki: Any, setup: str, port: int, workers: int | None) -> list[str]:
    if setup.startswith("stdlib"):
        return [sys.executable, __file__, "--stdlib-serve", str(port), pki.cert_file, pki.key_file]
    extra = ["--workers", str(workers)] if workers else []
    return [
        sys.executable, "-m", "tcpls", "serve", "--cert", pki.cert_file, "--key", pki.key_file,
        "--host", "127.0.0.1", "--port", str(port), "--echo", "--grace", "0", *extra,
    ]  # fmt: skip


def one_round(pki: Any, setup: str, clients: int, seconds: float) -> dict[str, float]:
    """One measurement of ``setup`` (see :data:`SETUPS`): the clients are spread over
    the servers' ports (one port but for ``two_processes``)."""
    processes, workers = SETUPS[setup]
    # The stdlib processes share one port; the tcpls control listens on one port each.
    ports = (
        [_free_port()] * processes
        if setup == "stdlib_2"
        else [_free_port() for _ in range(processes)]
    )
    servers = [
        subprocess.Popen(_server_command(pki, setup, port, workers), stderr=subprocess.DEVNULL)
        for port in ports
    ]
    try:
        for port in set(ports):
            _wait_port(port)
        time.sleep(0.5)
        pids = [p for s in servers for p in (_workers_of(s.pid) if workers else [s.pid])]
        assert len(pids) == max(workers or 1, processes), pids
        before = {pid: _cpu_seconds(pid) for pid in pids}
        procs = [
            subprocess.Popen(
                [
                    "openssl",
                    "s_time",
                    "-connect",
                    f"127.0.0.1:{ports[i % len(ports)]}",
                    "-new",
                    "-time",
                    str(int(seconds)),
                    "-tls1_3",
                    "-CAfile",
                    pki.ca_file,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            for i in range(clients)
        ]
        handshakes = 0.0
        client_cpu = 0.0
        for proc in procs:
            assert proc.stdout is not None
            out = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            client_cpu += usage.ru_utime + usage.ru_stime
            match = _CONNECTIONS.search(out)
            if match is None:
                raise RuntimeError(f"s_time said: {out[-300:]!r}")
            handshakes += int(match.group(1)) / float(match.group(2))
        server_cpu = sum(_cpu_seconds(pid) - before[pid] for pid in pids)
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    total = handshakes * seconds
    return {
        "handshakes_per_s": round(handshakes, 1),
        "server_cpu_s": round(server_cpu, 2),
        "handshakes_per_server_cpu_s": round(total / server_cpu, 1) if server_cpu else 0.0,
        "client_cpu_s": round(client_cpu, 2),
    }


def main() -> int:
    if sys.argv[1:2] == ["--stdlib-serve"]:
        _stdlib_serve(int(sys.argv[2]), sys.argv[3], sys.argv[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds of each worker count")
    parser.add_argument("--seconds", type=float, default=8.0, help="s_time -time per round")
    parser.add_argument("--clients", type=int, default=3, help="s_time processes at once")
    args = parser.parse_args()

    def body() -> dict[str, Any]:
        pki = make_pki()
        names = list(SETUPS)
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for run in range(args.runs):
            for name in names if run % 2 == 0 else reversed(names):
                result = one_round(pki, name, args.clients, args.seconds)
                log(f"round {run + 1}, {name}: {result}")
                rounds[name].append(result)
        summary = {
            name: {key: median([r[key] for r in results]) for key in results[0]}
            for name, results in rounds.items()
        }

        def per_cpu(a: str, b: str) -> float:
            key = "handshakes_per_server_cpu_s"
            return round(summary[a][key] / summary[b][key], 3)

        two_over_one = per_cpu("workers_2", "workers_1")
        return {
            "machine": machine_info(),
            "config": vars(args) | {"client": "openssl s_time -new -tls1_3"},
            "results": summary,
            "rounds": rounds,
            "ratios": {
                "per_cpu_workers_2_over_workers_1": two_over_one,
                "per_cpu_workers_2_over_one_process": per_cpu("workers_2", "one_process"),
                "per_cpu_workers_2_over_two_processes": per_cpu("workers_2", "two_processes"),
                "per_cpu_two_processes_over_one_process": per_cpu("two_processes", "one_process"),
                "per_cpu_stdlib_2_over_stdlib_1": per_cpu("stdlib_2", "stdlib_1"),
                "rate_workers_2_over_workers_1": round(
                    summary["workers_2"]["handshakes_per_s"]
                    / summary["workers_1"]["handshakes_per_s"],
                    3,
                ),
            },
            "targets": {
                "per_cpu_workers_2_over_workers_1": {
                    "value": two_over_one,
                    "target": ">= 0.9",
                    "met": two_over_one >= 0.9,
                },
            },
        }

    return run_benchmark("workers", body)


if __name__ == "__main__":
    raise SystemExit(main())
