"""Handshake rate and CPU per handshake: tcpls vs stdlib ``ssl``.

One client process makes ``--handshakes`` (default 300) sequential full handshakes
to one server process on 127.0.0.1: connect (TCP + TLS 1.3 handshake, certificate
verified against the test CA), then close gracefully and wait for the close to
finish, then the next. No data is sent and no session is resumed. ``--warmup``
unmeasured handshakes come first (imports, caches). Reported per system, median of
``--runs`` interleaved rounds (fresh processes each): handshakes per second, client
and server CPU milliseconds per handshake (getrusage user+system of each process
over the measured handshakes, so the server's includes its share of the closes), and
the connect latency (``connect`` call to established; median and 95th percentile).

Systems (``--systems``):

* ``tcpls``: ``tcpls.connect`` offering TCPLS (negotiated, checked), ``aclose()``.
* ``tcpls_plain_tls``: the same client with ``ClientConfig(tcpls=False)`` (plain
  TLS 1.3 to the same tcpls server): a reference for the cost of the TCPLS extensions.
* ``ssl``: stdlib ``ssl`` through ``asyncio.open_connection(ssl=...)``, then
  ``writer.close()`` and ``wait_closed()``; the server is ``asyncio.start_server``.

All use TLS_AES_128_GCM_SHA256, an ECDSA P-256 certificate and, by default on both
stacks, X25519 key exchange; the servers send session tickets after each handshake
(tcpls: ``ServerConfig.session_tickets``; OpenSSL: two tickets by default). stdlib
``ssl`` gets the suite through ``OPENSSL_CONF`` (see ``common.py``).

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from common import (
    CIPHER_SUITE,
    HOST,
    BenchmarkError,
    Control,
    Meter,
    PairResult,
    Peer,
    Pki,
    check_ssl_cipher,
    check_tcpls_session,
    log,
    machine_info,
    make_pki,
    memory_mb,
    run_benchmark,
    run_child,
    run_pair,
    ssl_client_context,
    summarize,
)
from peers import CLOSE_TIMEOUT, ssl_sink_server, tcpls_sink_server

SYSTEMS = ("tcpls", "tcpls_plain_tls", "ssl")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _report(
    meter: Meter, latencies: list[float], cipher: str, extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        **meter.stop(),
        **extra,
        "handshakes": len(latencies),
        "latency_median_ms": _percentile(latencies, 0.5) * 1000,
        "latency_p95_ms": _percentile(latencies, 0.95) * 1000,
        "cipher": cipher,
        "memory_mb": memory_mb(),
    }


# -- clients ------------------------------------------------------------------------


def tcpls_handshake_client(
    conn: Connection, port: int, pki: Pki, handshakes: int, warmup: int, offer_tcpls: bool
) -> None:
    """tcpls client: sequential ``connect`` + ``aclose``."""
    run_child(
        conn,
        lambda control: _tcpls_handshakes(control, port, pki, handshakes, warmup, offer_tcpls),
    )


async def _tcpls_handshakes(
    control: Control, port: int, pki: Pki, handshakes: int, warmup: int, offer_tcpls: bool
) -> None:
    import tcpls

    config = tcpls.ClientConfig(
        cafile=pki.ca_file, cipher_suites=[CIPHER_SUITE], tcpls=offer_tcpls
    )
    cipher = ""

    async def once() -> float:
        nonlocal cipher
        start = time.perf_counter()
        session = await tcpls.connect(HOST, port, config=config)
        latency = time.perf_counter() - start
        try:
            if not cipher:
                cipher = check_tcpls_session(session, tcpls_expected=offer_tcpls)
        finally:
            await session.aclose(timeout=CLOSE_TIMEOUT)
        if session.error is not None:
            raise BenchmarkError(f"tcpls session ended with {session.error!r}")
        return latency

    for _ in range(warmup):
        await once()
    await control.ready()
    meter = Meter()
    latencies = [await once() for _ in range(handshakes)]
    control.reply(_report(meter, latencies, cipher, {"tcpls": offer_tcpls}))


def ssl_handshake_client(
    conn: Connection, port: int, pki: Pki, handshakes: int, warmup: int
) -> None:
    """stdlib ``ssl`` client: sequential ``open_connection`` + ``close``."""
    run_child(conn, lambda control: _ssl_handshakes(control, port, pki, handshakes, warmup))


async def _ssl_handshakes(
    control: Control, port: int, pki: Pki, handshakes: int, warmup: int
) -> None:
    ctx = ssl_client_context(pki)
    cipher = ""

    async def once() -> float:
        nonlocal cipher
        start = time.perf_counter()
        _reader, writer = await asyncio.open_connection(HOST, port, ssl=ctx, server_hostname=HOST)
        latency = time.perf_counter() - start
        try:
            if not cipher:
                cipher = check_ssl_cipher(writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)
        return latency

    for _ in range(warmup):
        await once()
    await control.ready()
    meter = Meter()
    latencies = [await once() for _ in range(handshakes)]
    control.reply(_report(meter, latencies, cipher, {}))


# -- orchestration ------------------------------------------------------------------


def _peers(system: str, args: argparse.Namespace, pki: Pki) -> tuple[Peer, Peer]:
    n, warmup = args.handshakes, args.warmup
    if system in ("tcpls", "tcpls_plain_tls"):
        offer = system == "tcpls"
        return (
            Peer(f"{system}-server", tcpls_sink_server, (pki, True)),
            Peer(f"{system}-client", tcpls_handshake_client, (pki, n, warmup, offer)),
        )
    if system == "ssl":
        env = pki.baseline_env
        return (
            Peer("ssl-server", ssl_sink_server, (pki,), env),
            Peer("ssl-client", ssl_handshake_client, (pki, n, warmup), env),
        )
    raise BenchmarkError(f"unknown system {system!r}")


def _summarize(system: str, runs: list[PairResult], warmup: int) -> dict[str, Any]:
    for run in runs:
        expected = run.client["handshakes"] + warmup
        seen = run.server.get("sessions", run.server.get("connections"))
        if seen != expected:
            raise BenchmarkError(f"{system}: the server saw {seen} handshakes, not {expected}")
        if system == "tcpls" and run.server.get("tcpls_sessions") != expected:
            raise BenchmarkError(f"{system}: not every session negotiated TCPLS")
    n = runs[0].client["handshakes"]
    return {
        "handshakes": n,
        "handshakes_per_s": summarize([n / r.client["seconds"] for r in runs], 1),
        "client_cpu_ms_per_handshake": summarize([1000 * r.client["cpu_s"] / n for r in runs], 3),
        "server_cpu_ms_per_handshake": summarize([1000 * r.server["cpu_s"] / n for r in runs], 3),
        "latency_median_ms": summarize([r.client["latency_median_ms"] for r in runs], 3),
        "latency_p95_ms": summarize([r.client["latency_p95_ms"] for r in runs], 3),
        "peak_rss_mb": {
            "client": round(max(r.client["memory_mb"]["peak"] for r in runs), 1),
            "server": round(max(r.server["memory_mb"]["peak"] for r in runs), 1),
        },
        "cipher": runs[0].client["cipher"],
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Sequential full TLS 1.3 handshakes over 127.0.0.1: rate and CPU per handshake "
            "of tcpls (TCPLS and plain TLS) vs stdlib ssl. Prints one JSON line."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--handshakes", type=int, default=300, help="measured handshakes")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured handshakes first")
    parser.add_argument("--runs", type=int, default=3, help="runs per system (median)")
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {SYSTEMS}"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds allowed per run (unset: 60 s + 0.2 s per handshake)",
    )
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown or not systems:
        parser.error(f"--systems: unknown {sorted(unknown)}")
    if args.handshakes < 1 or args.runs < 1 or args.warmup < 0:
        parser.error("--handshakes and --runs must be at least 1, --warmup at least 0")
    args.system_list = systems
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    timeout = args.timeout if args.timeout is not None else 60.0 + 0.2 * args.handshakes

    def body() -> dict[str, Any]:
        machine = machine_info()
        pki = make_pki()
        results: dict[str, list[PairResult]] = {s: [] for s in args.system_list}
        for round_no in range(1, args.runs + 1):
            for system in args.system_list:
                server, client = _peers(system, args, pki)
                run = run_pair(server, client, timeout)
                results[system].append(run)
                n = run.client["handshakes"]
                log(
                    f"round {round_no}/{args.runs} {system}: "
                    f"{n / run.client['seconds']:.0f} handshakes/s, cpu per handshake "
                    f"client {1000 * run.client['cpu_s'] / n:.2f} ms "
                    f"server {1000 * run.server['cpu_s'] / n:.2f} ms"
                )
        summary = {s: _summarize(s, runs, args.warmup) for s, runs in results.items()}

        def med(system: str, key: str) -> float:
            return float(summary[system][key]["median"])

        ratios: dict[str, float] = {}
        if "tcpls" in summary and "ssl" in summary:
            ratios = {
                "tcpls_over_ssl_client_cpu": round(
                    med("tcpls", "client_cpu_ms_per_handshake")
                    / med("ssl", "client_cpu_ms_per_handshake"),
                    3,
                ),
                "tcpls_over_ssl_server_cpu": round(
                    med("tcpls", "server_cpu_ms_per_handshake")
                    / med("ssl", "server_cpu_ms_per_handshake"),
                    3,
                ),
                "tcpls_over_ssl_rate": round(
                    med("tcpls", "handshakes_per_s") / med("ssl", "handshakes_per_s"), 3
                ),
            }
        return {
            "machine": machine,
            "config": {
                "handshakes": args.handshakes,
                "warmup": args.warmup,
                "runs": args.runs,
                "cipher_suite": CIPHER_SUITE,
                "certificate": "ECDSA P-256 (tcpls.devcert), verified by the client",
                "host": HOST,
                "ssl_cipher_via": "OPENSSL_CONF (Ciphersuites in system_default)",
                "units": "CPU = user+system milliseconds per handshake, per process",
            },
            "results": summary,
            "ratios": ratios,
        }

    return run_benchmark("handshake", body)


if __name__ == "__main__":
    sys.exit(main())
