"""Full handshakes per second with 1 and 2 worker processes, driven by ``openssl s_time``.

Each round starts ``tcpls serve --echo --workers N`` (N = 1, 2; and without
``--workers``: one process, no supervisor, tokens not steered) on 127.0.0.1, lets ``--clients``
``openssl s_time -new`` processes (a C client that needs little CPU) make full TLS 1.3
handshakes against it for ``--seconds`` at once, then stops the server. ``s_time`` is an
ordinary TLS client, so the sessions are plain TLS 1.3 (the tcpls server falls back):
what the workers share and what a handshake costs do not depend on that. Rounds of
1 and 2 workers alternate (``--runs`` of each).

Reported per worker count (median of the rounds): handshakes per second (the sum of the
``s_time`` reports), the server's CPU seconds over the window (user + system of every
worker, read from /proc before and after), handshakes per server CPU-second, and the
clients' CPU seconds (their rusage). The comparison of interest:
``per_cpu_ratio`` = (handshakes per server CPU-second with 2 workers) / (with 1), which
should be within 10 % of 1 (steering costs nothing on a full handshake; also given
against one process without ``--workers``), and
``rate_ratio`` = handshakes per second with 2 / with 1, which needs a spare core for the
second worker: on a 2-core machine the clients take part of it.

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


def one_round(pki: Any, workers: int, clients: int, seconds: float) -> dict[str, float]:
    """``workers`` 0: one process without ``--workers`` (no supervisor, no steering)."""
    port = _free_port()
    extra = ["--workers", str(workers)] if workers else []
    server = subprocess.Popen(
        [sys.executable, "-m", "tcpls", "serve", "--cert", pki.cert_file, "--key",
         pki.key_file, "--host", "127.0.0.1", "--port", str(port), "--echo",
         "--grace", "0", *extra],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_port(port)
        time.sleep(0.5)
        pids = _workers_of(server.pid) if workers else [server.pid]
        assert len(pids) == max(workers, 1), pids
        before = {pid: _cpu_seconds(pid) for pid in pids}
        procs = [
            subprocess.Popen(
                [
                    "openssl",
                    "s_time",
                    "-connect",
                    f"127.0.0.1:{port}",
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
            for _ in range(clients)
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
        server.send_signal(signal.SIGTERM)
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds of each worker count")
    parser.add_argument("--seconds", type=float, default=8.0, help="s_time -time per round")
    parser.add_argument("--clients", type=int, default=3, help="s_time processes at once")
    args = parser.parse_args()

    def body() -> dict[str, Any]:
        pki = make_pki()
        rounds: dict[int, list[dict[str, float]]] = {0: [], 1: [], 2: []}
        for run in range(args.runs):
            for workers in (0, 1, 2) if run % 2 == 0 else (2, 1, 0):
                result = one_round(pki, workers, args.clients, args.seconds)
                log(f"round {run + 1}, {workers} workers: {result}")
                rounds[workers].append(result)
        summary = {
            (f"workers_{n}" if n else "one_process"): {
                key: median([r[key] for r in results]) for key in results[0]
            }
            for n, results in rounds.items()
        }
        plain, one, two = summary["one_process"], summary["workers_1"], summary["workers_2"]
        per_cpu = two["handshakes_per_server_cpu_s"] / one["handshakes_per_server_cpu_s"]
        per_cpu_plain = two["handshakes_per_server_cpu_s"] / plain["handshakes_per_server_cpu_s"]
        return {
            "machine": machine_info(),
            "config": vars(args) | {"client": "openssl s_time -new -tls1_3"},
            "results": summary,
            "rounds": {(f"workers_{n}" if n else "one_process"): r for n, r in rounds.items()},
            "ratios": {
                "per_cpu_ratio": round(per_cpu, 3),
                "per_cpu_ratio_vs_one_process": round(per_cpu_plain, 3),
                "rate_ratio": round(two["handshakes_per_s"] / one["handshakes_per_s"], 3),
            },
            "targets": {
                "per_cpu_ratio": {
                    "value": round(per_cpu, 3),
                    "target": ">= 0.9",
                    "met": per_cpu >= 0.9,
                },
            },
        }

    return run_benchmark("workers", body)


if __name__ == "__main__":
    raise SystemExit(main())
