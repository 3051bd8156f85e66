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
* ``tcpls_join``: the cost of a TCPLS **join** (draft-04 §4.2, DECISIONS W7), to compare with
  a full ``tcpls`` handshake: ``session.join(127.0.0.1, port)`` (TCP connect, join
  ClientHello with a server token, ServerHello + ChangeCipherSpec, no key exchange or
  certificate) then ``session.retire(id)`` (W20 graceful removal: FIN once acknowledged),
  like ``connect`` + ``aclose`` above. The server allows 256 connections per session
  (``ServerConfig(max_connections=256)``), so it hands out 255 tokens (sequence numbers
  1..255, never reused) right after the handshake; the client opens
  ``ceil(joins / 250)`` sessions before the measured part and makes up to 250 joins on each.
  Its CPU per join is reported per process like the handshakes', and ``ratios`` gives
  ``join_over_handshake_*`` (target: <= 0.25).
* ``tcpls_join_keep``: the same joins without retiring them (each session ends with up to
  251 connections): the cost of adding a connection that stays.

The join clients count the asyncio "exception in callback/protocol" reports instead of
letting the default handler log them (see ``asyncio_errors`` in their results): retiring a
connection currently provokes one per join (a bug reported with this benchmark), and
formatting its traceback would be billed to the join.

Key exchange groups (``--groups``): by default the tcpls peers use the library's default
groups (client and server prefer X25519MLKEM768; the client sends key shares for
X25519MLKEM768 *and* x25519, so it makes both keys, and the server answers the hybrid).
``--groups X25519MLKEM768,x25519`` runs the full-handshake systems (``tcpls``,
``tcpls_plain_tls``) once per group in every round, as ``tcpls@X25519MLKEM768`` and
``tcpls@x25519``: client and server both get ``groups=[that group]`` (one key share, no
HelloRetryRequest), and the group negotiated is checked on every session (server side).
``default`` in the list is the library default under the plain name (``tcpls``). The joins
make no key exchange and always use the default. ``ratios`` then has
``<system>_mlkem_over_x25519_*`` and ``<system>@<group>_over_ssl_*``.

All use TLS_AES_128_GCM_SHA256 and an ECDSA P-256 certificate; stdlib ``ssl`` uses
OpenSSL's default groups (X25519 first here: OpenSSL 3.0 has no ML-KEM); the servers send
session tickets after each handshake (tcpls: ``ServerConfig.session_tickets``; OpenSSL: two
tickets by default). stdlib ``ssl`` gets the suite through ``OPENSSL_CONF`` (see
``common.py``).

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
    CLOSE_TIMEOUT,
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
    serve_commands,
    ssl_client_context,
    summarize,
)
from peers import ssl_sink_server

SYSTEMS = ("tcpls", "tcpls_plain_tls", "ssl", "tcpls_join", "tcpls_join_keep")
JOIN_SYSTEMS = ("tcpls_join", "tcpls_join_keep")
#: The systems that make full handshakes with tcpls: run once per ``--groups`` entry.
GROUP_SYSTEMS = ("tcpls", "tcpls_plain_tls")
#: ``--groups`` entry for the library's default groups (results under the plain name).
DEFAULT_GROUP = "default"
#: Joins made on one session (a session has at most 255 tokens; W8).
JOINS_PER_SESSION = 250


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
    conn: Connection,
    port: int,
    pki: Pki,
    handshakes: int,
    warmup: int,
    offer_tcpls: bool,
    group: str | None = None,
) -> None:
    """tcpls client: sequential ``connect`` + ``aclose`` (only ``group`` offered if given)."""
    run_child(
        conn,
        lambda control: _tcpls_handshakes(
            control, port, pki, handshakes, warmup, offer_tcpls, group
        ),
    )


async def _tcpls_handshakes(
    control: Control,
    port: int,
    pki: Pki,
    handshakes: int,
    warmup: int,
    offer_tcpls: bool,
    group: str | None,
) -> None:
    import tcpls

    config = tcpls.ClientConfig(
        cafile=pki.ca_file,
        cipher_suites=[CIPHER_SUITE],
        tcpls=offer_tcpls,
        groups=[group] if group is not None else None,
    )
    cipher = ""
    negotiated: str | None = None

    async def once() -> float:
        nonlocal cipher, negotiated
        start = time.perf_counter()
        session = await tcpls.connect(HOST, port, config=config)
        latency = time.perf_counter() - start
        try:
            if not cipher:
                cipher = check_tcpls_session(session, tcpls_expected=offer_tcpls)
                negotiated = getattr(session, "group", None)
                if group is not None and negotiated != group:
                    raise BenchmarkError(f"tcpls negotiated group {negotiated}, not {group}")
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
    control.reply(_report(meter, latencies, cipher, {"tcpls": offer_tcpls, "group": negotiated}))


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


# -- tcpls server for full handshakes -----------------------------------------------


def tcpls_handshake_server(conn: Connection, pki: Pki, group: str | None) -> None:
    """tcpls server (``groups=[group]`` if given); counts sessions and negotiated groups.

    The handler is the one of ``peers.tcpls_sink_server`` for a session that opens no
    stream (it waits for the session to end), plus counting the group."""
    run_child(conn, lambda control: _tcpls_handshake_server(control, pki, group))


async def _tcpls_handshake_server(control: Control, pki: Pki, group: str | None) -> None:
    import tcpls

    groups: dict[str, int] = {}
    extra: dict[str, Any] = {"sessions": 0, "tcpls_sessions": 0, "groups": groups}

    async def handler(session: tcpls.Session) -> None:
        extra["sessions"] += 1
        extra["tcpls_sessions"] += int(session.tcpls_negotiated)
        name = str(getattr(session, "group", None))
        groups[name] = groups.get(name, 0) + 1
        async for _reader, _writer in session:
            pass

    config = tcpls.ServerConfig(
        certfile=pki.cert_file,
        keyfile=pki.key_file,
        cipher_suites=[CIPHER_SUITE],
        groups=[group] if group is not None else None,
    )
    server = await tcpls.serve(handler, HOST, 0, config=config, reliable=True)
    try:
        await serve_commands(control, server.port, extra)
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT)


# -- joins --------------------------------------------------------------------------


def tcpls_join_server(conn: Connection, pki: Pki) -> None:
    """tcpls server allowing 256 connections per session; counts sessions and joins."""
    run_child(conn, lambda control: _tcpls_join_server(control, pki))


async def _tcpls_join_server(control: Control, pki: Pki) -> None:
    import tcpls

    sessions: list[tcpls.Session] = []
    counts = {"sessions": 0, "tcpls_sessions": 0}

    async def handler(session: tcpls.Session) -> None:
        counts["sessions"] += 1
        counts["tcpls_sessions"] += int(session.tcpls_negotiated)
        sessions.append(session)
        async for _reader, _writer in session:
            pass

    config = tcpls.ServerConfig(
        certfile=pki.cert_file,
        keyfile=pki.key_file,
        cipher_suites=[CIPHER_SUITE],
        max_connections=256,
    )
    server = await tcpls.serve(handler, HOST, 0, config=config)
    try:
        control.reply(server.port)
        meter = Meter()
        while True:
            command = await control.command()
            if command == "mark":
                meter.start()
                control.reply(None)
            elif command == "stats":
                joins = sum(s.connections_joined for s in sessions)
                control.reply({**meter.stop(), "memory_mb": memory_mb(), **counts, "joins": joins})
            elif command == "stop":
                return
            else:
                raise BenchmarkError(f"unknown command {command!r}")
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT)


def tcpls_join_client(
    conn: Connection, port: int, pki: Pki, joins: int, warmup: int, retire: bool
) -> None:
    """tcpls client: sequential ``session.join`` (+ ``session.retire`` when ``retire``)."""
    run_child(conn, lambda control: _tcpls_joins(control, port, pki, joins, warmup, retire))


async def _tcpls_joins(
    control: Control, port: int, pki: Pki, joins: int, warmup: int, retire: bool
) -> None:
    import tcpls

    loop = asyncio.get_running_loop()
    errors: dict[str, int] = {}

    def count_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", "?"))
        errors[message] = errors.get(message, 0) + 1

    loop.set_exception_handler(count_errors)
    config = tcpls.ClientConfig(cafile=pki.ca_file, cipher_suites=[CIPHER_SUITE])
    cipher = ""

    async def fresh_session() -> tcpls.Session:
        nonlocal cipher
        session = await tcpls.connect(HOST, port, config=config)
        cipher = check_tcpls_session(session, tcpls_expected=True)
        deadline = loop.time() + 10
        while session.spare_tokens < JOINS_PER_SESSION:  # New Token frames follow the handshake
            if loop.time() > deadline:
                raise BenchmarkError(f"only {session.spare_tokens} join tokens after 10 s")
            await asyncio.sleep(0.001)
        return session

    async def once(session: tcpls.Session) -> float:
        start = time.perf_counter()
        info = await session.join(HOST, port)
        latency = time.perf_counter() - start
        if info.remote_address is None or info.remote_address[1] != port:
            raise BenchmarkError(f"the join went to {info.remote_address}")
        if retire:
            await session.retire(info.id, timeout=CLOSE_TIMEOUT)
        return latency

    warm = await fresh_session()
    for _ in range(warmup):
        await once(warm)
    sessions = [warm] + [await fresh_session() for _ in range(-(-joins // JOINS_PER_SESSION))]
    await control.ready()
    meter = Meter()
    latencies = [await once(sessions[1 + i // JOINS_PER_SESSION]) for i in range(joins)]
    control.reply(
        _report(
            meter,
            latencies,
            cipher,
            {
                "retire": retire,
                "sessions_opened": len(sessions),
                "connections_left": [len(s.connections) for s in sessions],
                "asyncio_errors": errors,
            },
        )
    )
    for session in sessions:
        await session.aclose(timeout=CLOSE_TIMEOUT)


# -- orchestration ------------------------------------------------------------------


def _split(key: str) -> tuple[str, str | None]:
    """``"tcpls@x25519"`` -> ``("tcpls", "x25519")``; ``"tcpls"`` -> ``("tcpls", None)``."""
    system, _, group = key.partition("@")
    return system, group or None


def _peers(key: str, args: argparse.Namespace, pki: Pki) -> tuple[Peer, Peer]:
    n, warmup = args.handshakes, args.warmup
    system, group = _split(key)
    if system in GROUP_SYSTEMS:
        offer = system == "tcpls"
        return (
            Peer(f"{key}-server", tcpls_handshake_server, (pki, group)),
            Peer(f"{key}-client", tcpls_handshake_client, (pki, n, warmup, offer, group)),
        )
    if system in JOIN_SYSTEMS:
        retire = system == "tcpls_join"
        return (
            Peer(f"{system}-server", tcpls_join_server, (pki,)),
            Peer(f"{system}-client", tcpls_join_client, (pki, n, warmup, retire)),
        )
    if system == "ssl":
        env = pki.baseline_env
        return (
            Peer("ssl-server", ssl_sink_server, (pki,), env),
            Peer("ssl-client", ssl_handshake_client, (pki, n, warmup), env),
        )
    raise BenchmarkError(f"unknown system {system!r}")


def _summarize(key: str, runs: list[PairResult], warmup: int) -> dict[str, Any]:
    system, group = _split(key)
    for run in runs:
        if system in JOIN_SYSTEMS:
            joins = run.server.get("joins")
            if joins != run.client["handshakes"] + warmup:
                raise BenchmarkError(f"{system}: the server saw {joins} joins, not {warmup} + n")
            if run.server.get("sessions") != run.client["sessions_opened"]:
                raise BenchmarkError(f"{system}: the server saw another number of sessions")
            continue
        expected = run.client["handshakes"] + warmup
        seen = run.server.get("sessions", run.server.get("connections"))
        if seen != expected:
            raise BenchmarkError(f"{system}: the server saw {seen} handshakes, not {expected}")
        if system == "tcpls" and run.server.get("tcpls_sessions") != expected:
            raise BenchmarkError(f"{key}: not every session negotiated TCPLS")
        if group is not None and run.server.get("groups") != {group: expected}:
            raise BenchmarkError(f"{key}: the server negotiated {run.server.get('groups')}")
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
        **(
            {"group": runs[0].client.get("group"), "server_groups": runs[0].server["groups"]}
            if system in GROUP_SYSTEMS
            else {}
        ),
        **(
            {
                "unit": "join (rates, CPU and latency are per join)",
                "asyncio_errors": [r.client["asyncio_errors"] for r in runs],
            }
            if system in JOIN_SYSTEMS
            else {}
        ),
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Sequential full TLS 1.3 handshakes over 127.0.0.1: rate and CPU per handshake "
            "of tcpls (TCPLS and plain TLS) vs stdlib ssl, and the cost of a TCPLS join "
            "(tcpls_join*: --handshakes joins). Prints one JSON line."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--handshakes", type=int, default=300, help="measured handshakes (or joins)"
    )
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured handshakes first")
    parser.add_argument("--runs", type=int, default=3, help="runs per system (median)")
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {SYSTEMS}"
    )
    parser.add_argument(
        "--groups",
        default=DEFAULT_GROUP,
        help="comma-separated key exchange groups: tcpls and tcpls_plain_tls run once per "
        "group (client and server restricted to it), e.g. X25519MLKEM768,x25519; "
        f"{DEFAULT_GROUP!r} = the library's default groups",
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
    try:
        from tcpls.tls.hs.groups import GROUP_NAMES
    except ImportError:  # a revision without the project's own handshake engine
        GROUP_NAMES = {}
    groups: list[str | None] = []
    for name in (g.strip() for g in args.groups.split(",") if g.strip()):
        if name.lower() == DEFAULT_GROUP:
            canonical = None
        elif name.lower() in GROUP_NAMES:
            canonical = GROUP_NAMES[name.lower()].name
        else:
            parser.error(f"--groups: unknown group {name!r} (known: {sorted(GROUP_NAMES)})")
        if canonical not in groups:
            groups.append(canonical)
    if not groups:
        parser.error("--groups: empty")
    args.group_list = groups
    args.system_list = systems
    # what runs in a round, in order: every group of a system one after the other
    args.keys = [
        f"{s}@{g}" if g is not None else s
        for s in systems
        for g in (groups if s in GROUP_SYSTEMS else [None])
    ]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    timeout = args.timeout if args.timeout is not None else 60.0 + 0.2 * args.handshakes

    def body() -> dict[str, Any]:
        machine = machine_info()
        pki = make_pki()
        results: dict[str, list[PairResult]] = {s: [] for s in args.keys}
        for round_no in range(1, args.runs + 1):
            for system in args.keys:
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
        for key in summary:
            if "@" in key and "ssl" in summary:
                for side in ("client", "server"):
                    ratios[f"{key}_over_ssl_{side}_cpu"] = round(
                        med(key, f"{side}_cpu_ms_per_handshake")
                        / med("ssl", f"{side}_cpu_ms_per_handshake"),
                        3,
                    )
        for base in GROUP_SYSTEMS:
            hybrid, classic = f"{base}@X25519MLKEM768", f"{base}@x25519"
            if hybrid in summary and classic in summary:
                for side in ("client", "server"):
                    ratios[f"{base}_mlkem_over_x25519_{side}_cpu"] = round(
                        med(hybrid, f"{side}_cpu_ms_per_handshake")
                        / med(classic, f"{side}_cpu_ms_per_handshake"),
                        3,
                    )
                ratios[f"{base}_mlkem_over_x25519_rate"] = round(
                    med(hybrid, "handshakes_per_s") / med(classic, "handshakes_per_s"), 3
                )
        for join_system in JOIN_SYSTEMS:
            if join_system in summary and "tcpls" in summary:
                suffix = "" if join_system == "tcpls_join" else "_keep"
                for side in ("client", "server"):
                    ratios[f"join{suffix}_over_handshake_{side}_cpu"] = round(
                        med(join_system, f"{side}_cpu_ms_per_handshake")
                        / med("tcpls", f"{side}_cpu_ms_per_handshake"),
                        3,
                    )
                ratios[f"join{suffix}_over_handshake_total_cpu"] = round(
                    (
                        med(join_system, "client_cpu_ms_per_handshake")
                        + med(join_system, "server_cpu_ms_per_handshake")
                    )
                    / (
                        med("tcpls", "client_cpu_ms_per_handshake")
                        + med("tcpls", "server_cpu_ms_per_handshake")
                    ),
                    3,
                )
        return {
            "machine": machine,
            "config": {
                "handshakes": args.handshakes,
                "warmup": args.warmup,
                "runs": args.runs,
                "groups": [g or DEFAULT_GROUP for g in args.group_list],
                "cipher_suite": CIPHER_SUITE,
                "certificate": "ECDSA P-256 (tcpls.devcert), verified by the client",
                "host": HOST,
                "ssl_cipher_via": "OPENSSL_CONF (Ciphersuites in system_default)",
                "units": "CPU = user+system milliseconds per handshake (per join for "
                "tcpls_join*), per process",
                "join_server_max_connections": 256,
                "joins_per_session": JOINS_PER_SESSION,
            },
            "results": summary,
            "ratios": ratios,
        }

    return run_benchmark("handshake", body)


if __name__ == "__main__":
    sys.exit(main())
