"""Goodput of ``tcpls tunnel`` on 127.0.0.1 against plain TCP, in the same run.

An *endpoint* process (plain TCP, blocking sockets in threads) is the destination; an
*application* process (plain TCP too) moves ``--bytes`` to or from it:

* ``up``: the application sends ``UP\\n`` and the bytes, then shuts down its write side;
  the endpoint counts until the end of file and answers with the count (so the upload
  also crosses a half-close);
* ``down``: the application sends ``DOWN <n>\\n``; the endpoint sends ``n`` bytes and
  closes.

Systems: ``tcp``, the application connected to the endpoint directly; ``tunnel``, the
application connected to a :class:`~tcpls.apps.tunnel.TunnelClient` (its own process)
that carries the connection over one TCPLS session to a
:class:`~tcpls.apps.tunnel.TunnelServer` (its own process), which connects to the
endpoint: four processes on two cores. Each run starts fresh processes; the tunnel's
session is up (and the application's connection through it accepted) before ``go``.
Goodput counts the application's bytes from ``go`` to the last byte (down) or the
endpoint's count (up); CPU is user+system time of each process over that time. Rounds
interleave the systems; medians are reported with every run. Prints one JSON line.

    .venv/bin/python benchmarks/tunnel.py                        # 5 x 1 GiB, up and down
    .venv/bin/python benchmarks/tunnel.py --bytes 64M --runs 1   # quick check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from common import (
    CIPHER_SUITE,
    CLOSE_TIMEOUT,
    HOST,
    BenchmarkError,
    Child,
    Control,
    GiB,
    MiB,
    Pki,
    cpu_seconds,
    log,
    machine_info,
    make_pki,
    memory_mb,
    parse_size,
    run_benchmark,
    run_child,
    serve_commands,
    summarize,
)

MB = 1_000_000
_CHUNK = MiB


# -- the plain TCP ends (blocking sockets) -------------------------------------------------


def _obey(conn: Connection, port: int) -> None:
    """Send ``port``, then answer ``mark``/``stats`` until ``stop`` (see common.py)."""
    conn.send(("ok", port))
    cpu0 = cpu_seconds()
    while True:
        command = conn.recv()
        if command == "mark":
            cpu0 = cpu_seconds()
            conn.send(("ok", None))
        elif command == "stats":
            conn.send(("ok", {"cpu_s": cpu_seconds() - cpu0, "memory_mb": memory_mb()}))
        elif command == "stop":
            return
        else:
            raise BenchmarkError(f"unknown command {command!r}")


def _serve_one(sock: socket.socket) -> None:
    with sock:
        head = b""
        while not head.endswith(b"\n"):
            byte = sock.recv(1)
            if not byte:
                return
            head += byte
        words = head.split()
        if words[0] == b"UP":
            buffer = bytearray(_CHUNK)
            count = 0
            while n := sock.recv_into(buffer):
                count += n
            sock.sendall(b"%d\n" % count)
        elif words[0] == b"DOWN":
            payload = memoryview(bytes(_CHUNK))
            left = int(words[1])
            while left:
                sent = sock.send(payload[: min(left, _CHUNK)])
                left -= sent


def endpoint_server(conn: Connection) -> None:
    """The destination: ``UP`` counts an upload, ``DOWN <n>`` sends ``n`` bytes."""
    listener = socket.create_server((HOST, 0))

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_serve_one, args=(sock,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    _obey(conn, listener.getsockname()[1])


def app_client(conn: Connection, port: int, direction: str, nbytes: int) -> None:
    """The application: connects, says ``ready``, moves the bytes at ``go``."""
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.send(("ok", "ready"))
    if conn.recv() != "go":
        raise BenchmarkError("expected 'go'")
    cpu0 = cpu_seconds()
    import time

    started = time.perf_counter()
    if direction == "up":
        sock.sendall(b"UP\n")
        payload = memoryview(bytes(_CHUNK))
        left = nbytes
        while left:
            left -= sock.send(payload[: min(left, _CHUNK)])
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(64):
            answer += chunk
        received = int(answer or b"-1")
    else:
        sock.sendall(b"DOWN %d\n" % nbytes)
        buffer = bytearray(_CHUNK)
        received = 0
        while n := sock.recv_into(buffer):
            received += n
    seconds = time.perf_counter() - started
    sock.close()
    if received != nbytes:
        raise BenchmarkError(f"{direction}: {received} bytes arrived of {nbytes}")
    conn.send(("ok", {"seconds": seconds, "cpu_s": cpu_seconds() - cpu0, "bytes": nbytes}))


# -- the tunnel ---------------------------------------------------------------------------


def tunnel_server(conn: Connection, pki: Pki, endpoint: int) -> None:
    """``TunnelServer`` allowing only the endpoint."""
    run_child(conn, lambda control: _tunnel_server(control, pki, endpoint))


async def _tunnel_server(control: Control, pki: Pki, endpoint: int) -> None:
    import tcpls
    from tcpls.apps.tunnel import AllowList, TunnelServer

    tunnel = TunnelServer(AllowList([f"{HOST}:{endpoint}"]))
    config = tcpls.ServerConfig(
        certfile=pki.cert_file, keyfile=pki.key_file, cipher_suites=[CIPHER_SUITE]
    )
    server = await tcpls.serve(tunnel.handle, HOST, 0, config=config)
    try:
        await serve_commands(control, server.port)
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT)


def tunnel_client(conn: Connection, pki: Pki, server: int, endpoint: int) -> None:
    """``TunnelClient`` with one session to the tunnel server, listening for the endpoint."""
    run_child(conn, lambda control: _tunnel_client(control, pki, server, endpoint))


async def _tunnel_client(control: Control, pki: Pki, server: int, endpoint: int) -> None:
    import tcpls
    from tcpls.apps.tunnel import Destination, TunnelClient

    config = tcpls.ClientConfig(cafile=pki.ca_file, cipher_suites=[CIPHER_SUITE])

    async def opener(hello: bytes) -> tcpls.Session:
        return await tcpls.connect(HOST, server, config=config, early_data=hello)

    client = TunnelClient(opener)
    session = await client.start()
    if session.cipher_suite != CIPHER_SUITE or not session.tcpls_negotiated:
        raise BenchmarkError(f"the tunnel session is {session!r}, {session.cipher_suite}")
    listener = await client.listen(HOST, 0, Destination(HOST, endpoint))
    try:
        await serve_commands(control, listener.sockets[0].getsockname()[1])
    finally:
        await client.aclose()


# -- orchestration ------------------------------------------------------------------------


def _run(system: str, direction: str, nbytes: int, pki: Pki, timeout: float) -> dict[str, Any]:
    """One fresh run: the app's result and every other process's CPU."""
    children: list[Child] = []
    try:
        endpoint = Child("endpoint", endpoint_server)
        children.append(endpoint)
        port = endpoint.recv(60, "its port")
        servers = {"endpoint": endpoint}
        if system == "tunnel":
            server = Child("tunnel-server", tunnel_server, (pki, port))
            children.append(server)
            server_port = server.recv(60, "its port")
            client = Child("tunnel-client", tunnel_client, (pki, server_port, port))
            children.append(client)
            port = client.recv(60, "its port")
            servers.update({"tunnel_server": server, "tunnel_client": client})
        app = Child("app", app_client, (port, direction, nbytes))
        children.append(app)
        if app.recv(60, "'ready'") != "ready":
            raise BenchmarkError("the application did not say ready")
        for child in servers.values():
            child.request("mark")
        app.send("go")
        result: dict[str, Any] = app.recv(timeout, "its result")
        for name, child in servers.items():
            result[f"{name}_cpu_s"] = child.request("stats")["cpu_s"]
        return result
    finally:
        for child in reversed(children):
            child.stop()


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    gib = runs[0]["bytes"] / GiB
    out: dict[str, Any] = {
        "mb_per_s": summarize([r["bytes"] / r["seconds"] / MB for r in runs], 1),
        "app_cpu_s_per_gib": summarize([r["cpu_s"] / gib for r in runs], 3),
        "endpoint_cpu_s_per_gib": summarize([r["endpoint_cpu_s"] / gib for r in runs], 3),
    }
    for name in ("tunnel_client", "tunnel_server"):
        if f"{name}_cpu_s" in runs[0]:
            values = [r[f"{name}_cpu_s"] / gib for r in runs]
            out[f"{name}_cpu_s_per_gib"] = summarize(values, 3)
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Goodput through tcpls tunnel against plain TCP on 127.0.0.1. "
        "Prints one JSON line.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Sizes take K, M or G suffixes (powers of 1024): 64M, 1G.",
    )
    parser.add_argument("--bytes", type=parse_size, default=GiB, help="bytes per run")
    parser.add_argument("--runs", type=int, default=5, help="runs per system and direction")
    parser.add_argument(
        "--directions", default="down,up", help="comma-separated subset of down,up"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per transfer")
    args = parser.parse_args(argv)
    args.direction_list = [d.strip() for d in args.directions.split(",") if d.strip()]
    if not args.direction_list or set(args.direction_list) - {"down", "up"}:
        parser.error("--directions: choose from down, up")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)

    def body() -> dict[str, Any]:
        machine = machine_info()
        pki = make_pki()
        systems = ("tcp", "tunnel")
        runs: dict[str, list[dict[str, Any]]] = {
            f"{s}_{d}": [] for d in args.direction_list for s in systems
        }
        for round_no in range(1, args.runs + 1):
            for direction in args.direction_list:
                for system in systems:
                    run = _run(system, direction, args.bytes, pki, args.timeout)
                    runs[f"{system}_{direction}"].append(run)
                    rate = run["bytes"] / run["seconds"] / MB
                    log(f"round {round_no}/{args.runs} {system} {direction}: {rate:.1f} MB/s")
        results = {name: _summary(r) for name, r in runs.items()}
        ratios = {
            f"tunnel_over_tcp_{d}": round(
                results[f"tunnel_{d}"]["mb_per_s"]["median"]
                / results[f"tcp_{d}"]["mb_per_s"]["median"],
                4,
            )
            for d in args.direction_list
        }
        return {
            "machine": machine,
            "config": {
                "bytes": args.bytes,
                "runs": args.runs,
                "directions": args.direction_list,
                "cipher_suite": CIPHER_SUITE,
                "host": HOST,
                "units": "MB = 10^6 bytes; CPU = user+system seconds per GiB moved",
            },
            "results": results,
            "ratios": ratios,
        }

    return run_benchmark("tunnel", body)


if __name__ == "__main__":
    sys.exit(main())
