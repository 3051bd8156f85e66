"""Server-wide resources: finished sessions, idle connections and sessions, refused hellos.

What one client can do once, many can do together: the server must give back what an
ended session held, must not let idle connections or sessions crowd out a good client,
and must not keep anything from a handshake it refused.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from tcpls.devcert import DevPKI
from tcpls.errors import AlertDescription
from tests.adversarial.hostile import (
    GOOD_CLIENT_DEADLINE,
    PEAK_RSS_LIMIT,
    Arena,
    HostileClient,
    KiB,
    MiB,
    client_hello_record,
    good_client_echo,
    plaintext_alert,
    raw_exchange,
    rewrite_client_hello,
)

pytestmark = pytest.mark.adversarial

#: Sessions, one after the other, that each fill the server with out-of-order data (as
#: much as it will hold, up to FINISHED_BYTES) and are then ended by a malformed frame.
FINISHED_SESSIONS = 12
FINISHED_BYTES = 60 * MiB
#: After they ended, the server's current RSS must be back within this of its baseline...
FINISHED_RSS_SLACK = 50 * MiB
#: ... within this many seconds.
FINISHED_SETTLE = 2.0

#: Connections that connect and send nothing, or half a ClientHello.
IDLE_CONNECTIONS = 1_000
#: Authenticated sessions that stay idle (handshake done, everything acknowledged).
IDLE_SESSIONS = 500
#: What one idle session may cost the server, on average.
IDLE_SESSION_BUDGET = 64 * KiB

#: ClientHellos offering only cipher suites the server does not know.
REFUSED_HANDSHAKES = 2_000
#: The server keeps nothing from a refused handshake: growth allowed over all of them.
REFUSED_GROWTH_LIMIT = 20 * MiB

_UNKNOWN_SUITES = (0x1304, 0x1305, 0xC02B, 0xC02F, 0x009E, 0xCCA8)


def test_finished_sessions_give_their_memory_back(arena: Arena) -> None:
    alerts: list[int | None] = []
    ended: list[bool] = []
    above_baseline: list[float] = []
    for _ in range(FINISHED_SESSIONS):
        client = arena.client()
        # out of order (offset 0 never sent): the server must hold it for reassembly
        client.send_records(client.stream_records(0, FINISHED_BYTES, offset=1))
        client.sync()
        above_baseline.append((arena.server.rss() - arena.baseline_rss) / MiB)
        if not client.closed:
            with contextlib.suppress(OSError):
                client.send_record(b"\xfe")  # an unknown frame type: decode_error
        client.wait_closed()
        alerts.append(client.alert)
        ended.append(client.alert is not None or client.eof)
        client.close()
        arena.clients.remove(client)
    deadline = time.monotonic() + FINISHED_SETTLE
    rss = arena.server.rss()
    while rss > arena.baseline_rss + FINISHED_RSS_SLACK and time.monotonic() < deadline:
        time.sleep(0.1)
        rss = arena.server.rss()
    arena.note(
        rss_above_baseline_mib=[round(h, 1) for h in above_baseline],
        alerts=alerts,
        rss_after_mib=rss / MiB,
        growth_after_mib=(rss - arena.baseline_rss) / MiB,
    )
    arena.expect(
        all(ended),
        f"every session must end, by decode_error or earlier by the server's own limit: "
        f"alerts {alerts}, ended {ended}",
    )
    arena.expect(
        rss <= arena.baseline_rss + FINISHED_RSS_SLACK,
        f"{FINISHED_SESSIONS} ended sessions left the server at "
        f"{(rss - arena.baseline_rss) / MiB:.1f} MiB above its baseline after "
        f"{FINISHED_SETTLE:g} s (limit {FINISHED_RSS_SLACK / MiB:.0f} MiB)",
    )
    arena.finish()


def test_idle_connections_do_not_crowd_out_a_good_client(arena: Arena, pki: DevPKI) -> None:
    hello = client_hello_record(pki)
    half = hello[: len(hello) // 2]
    sockets: list[socket.socket] = []
    try:
        for i in range(IDLE_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", arena.port), timeout=5)
            sockets.append(sock)
            if i % 2:
                with contextlib.suppress(OSError):
                    sock.sendall(half)
        arena.server.wait_idle(timeout=5.0)
        result = good_client_echo(arena.port, pki)
        rss = arena.server.rss()
        arena.note(
            idle_connections=len(sockets),
            good_client_while_idle_s=result.seconds,
            rss_with_idle_mib=rss / MiB,
        )
        arena.expect(
            result.ok,
            f"with {len(sockets)} idle connections a good client was not served within "
            f"{GOOD_CLIENT_DEADLINE} s ({result.seconds:.2f} s, {result.error})",
        )
        arena.expect(
            rss < PEAK_RSS_LIMIT,
            f"{len(sockets)} idle connections: RSS {rss / MiB:.1f} MiB",
        )
    finally:
        for sock in sockets:
            sock.close()
    arena.finish()


def test_idle_sessions_are_cheap(arena: Arena, pki: DevPKI) -> None:
    sockets: list[socket.socket] = []
    refused: list[str] = []
    start = time.monotonic()
    try:
        for _ in range(IDLE_SESSIONS):
            try:
                client = HostileClient.connect(arena.port, pki)
            except (OSError, AssertionError) as exc:  # a server-wide limit may refuse some
                refused.append(f"{type(exc).__name__}: {exc}")
                continue
            # take the server's first records (tickets, New Token) and acknowledge them
            # all: the session then has nothing in flight and nothing to probe
            if client.sync():
                client.ack_everything()
                sockets.append(client.sock)
            else:
                refused.append(f"no answer to a Ping (alert {client.alert})")
                client.close()
        opened = time.monotonic() - start
        arena.server.wait_idle(timeout=5.0)
        rss = arena.server.rss()
        per_session = (rss - arena.baseline_rss) / max(len(sockets), 1)
        result = good_client_echo(arena.port, pki)
        arena.note(
            idle_sessions=len(sockets),
            refused=len(refused),
            open_s=opened,
            rss_with_idle_mib=rss / MiB,
            per_session_kib=per_session / KiB,
            good_client_while_idle_s=result.seconds,
        )
        arena.expect(bool(sockets), f"no idle session could be opened: {refused[:3]}")
        arena.expect(
            per_session <= IDLE_SESSION_BUDGET,
            f"an idle session costs the server {per_session / KiB:.0f} KiB on average over "
            f"{len(sockets)} (limit {IDLE_SESSION_BUDGET / KiB:.0f} KiB)",
        )
        arena.expect(
            result.ok,
            f"with {len(sockets)} idle sessions a good client was not served within "
            f"{GOOD_CLIENT_DEADLINE} s ({result.seconds:.2f} s, {result.error})",
        )
    finally:
        for sock in sockets:
            sock.close()
    arena.finish()


def _unknown_suite_hellos(pki: DevPKI) -> Iterator[bytes]:
    record = client_hello_record(pki)
    session_id_len = record[5 + 4 + 2 + 32]
    at = 5 + 4 + 2 + 32 + 1 + session_id_len
    suites_len = int.from_bytes(record[at : at + 2], "big")
    suites = b"".join(s.to_bytes(2, "big") for s in _UNKNOWN_SUITES) * suites_len
    while True:
        yield rewrite_client_hello(record, cipher_suites=suites[:suites_len])


def test_refused_handshakes_leave_nothing_behind(arena: Arena, pki: DevPKI) -> None:
    hellos = _unknown_suite_hellos(pki)
    answers: dict[bytes, int] = {}
    start = time.monotonic()
    for _ in range(REFUSED_HANDSHAKES):
        reply, closed = raw_exchange(arena.port, next(hellos))
        key = reply if closed else reply + b"<no close>"
        answers[key] = answers.get(key, 0) + 1
    elapsed = time.monotonic() - start
    arena.server.wait_idle(timeout=5.0)
    rss = arena.server.rss()
    growth = rss - arena.baseline_rss
    expected = plaintext_alert(AlertDescription.handshake_failure)
    arena.note(
        refused=REFUSED_HANDSHAKES,
        seconds=elapsed,
        answers={k.hex(): v for k, v in answers.items()},
        growth_mib=growth / MiB,
        per_handshake_kib=growth / REFUSED_HANDSHAKES / KiB,
    )
    arena.expect(
        answers == {expected: REFUSED_HANDSHAKES},
        f"every refused hello must get handshake_failure ({expected.hex()}): {answers}",
    )
    arena.expect(
        growth < REFUSED_GROWTH_LIMIT,
        f"{REFUSED_HANDSHAKES} refused handshakes grew the server by {growth / MiB:.1f} MiB "
        f"(limit {REFUSED_GROWTH_LIMIT / MiB:.0f} MiB)",
    )
    arena.finish()
