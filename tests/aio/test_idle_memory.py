"""What an idle session costs a server (design: Idle memory).

The server runs in this process and its Python allocations are traced (tracemalloc); the
clients run in a child process, so that their memory does not count. Every session makes
one echo round trip on a stream, then stays idle. Once the server has given back what
traffic needs (record buffers and AEAD contexts, a second after the last bytes; Pings end
five seconds after the last data), two checks:

* every idle session's own estimate (``memory_use``) is its fixed cost and nothing more:
  no record buffer, no AEAD context, no stream data held;
* the server's Python memory grew by at most :data:`TRACED_PER_SESSION` per session. It
  was 19.1 KiB when this test was written; what it does not see (OpenSSL's AEAD contexts,
  about 2.4 KiB each, and allocator overhead) is covered by the first check and by
  ``benchmarks/soak.py``, which measures RSS at 10,000 sessions (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import tcpls
from tcpls.apps.echo import echo_handler
from tcpls.core.session import CONNECTION_COST, SESSION_COST
from tcpls.devcert import DevPKI

KiB = 1024
#: Sessions opened before the measure (what the first ones allocate once is not theirs).
WARMUP_SESSIONS = 16
#: Idle sessions measured.
IDLE_SESSIONS = 256
#: The most Python memory one idle session may hold on the server (the objects of Python
#: 3.12 and 3.13 are larger: 22.3 and 22.7 KiB measured there, against 19.1 on 3.11).
TRACED_PER_SESSION = (24 if sys.version_info >= (3, 12) else 22) * KiB
#: How long the server may take to give back what traffic needed.
SETTLE_LIMIT = 15.0
#: An idle session has no timer due sooner than this (seconds; the idle timeout is 300).
QUIET = 60.0

#: The child: opens sessions with one echo round trip each, says so, holds them until
#: told (a line on stdin), then aborts them.
_CLIENT = r"""
import asyncio, sys
import tcpls

async def main(port: int, ca: str) -> None:
    config = tcpls.ClientConfig(cafile=ca, server_name="localhost")
    sessions = []
    while (line := await asyncio.to_thread(sys.stdin.readline)).strip() not in ("", "stop"):
        count = int(line)
        gate = asyncio.Semaphore(16)

        async def one() -> None:
            async with gate:
                session = await tcpls.connect("127.0.0.1", port, config=config)
                reader, writer = await session.open_stream()
                writer.write(b"ping")
                writer.write_eof()
                assert await reader.read() == b"ping"
                sessions.append(session)

        await asyncio.gather(*(one() for _ in range(count)))
        print("open", len(sessions), flush=True)
    for session in sessions:
        session.abort()

asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
"""


class _Clients:
    """The child process that holds the client sessions."""

    def __init__(self, port: int, pki: DevPKI) -> None:
        src = str(Path(tcpls.__file__).resolve().parent.parent)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CLIENT, str(port), str(pki.ca_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    async def open(self, count: int) -> None:
        """Open ``count`` more sessions (each with its echo round trip)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{count}\n")
        self.process.stdin.flush()
        line = await asyncio.to_thread(self.process.stdout.readline)
        assert line.startswith("open "), f"the client process failed: {line!r}"

    def stop(self) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write("stop\n")
            self.process.stdin.close()
            self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


def _settled(server: tcpls.Server, now: float) -> bool:
    """Whether every session is idle: no timer due before :data:`QUIET` (no Ping probe
    or buffer give-back to come, only the idle timeout) and its fixed cost held."""
    for session in server.sessions:
        core = session._core
        deadline = core.next_deadline()
        if deadline is not None and deadline < now + QUIET:
            return False
        if core.memory_use() != SESSION_COST + CONNECTION_COST * len(core.connections):
            return False
    return True


def test_an_idle_session_holds_little(pki: DevPKI) -> None:
    config = tcpls.ServerConfig(
        certfile=str(pki.cert_file),
        keyfile=str(pki.key_file),
        session_tickets=False,  # (a ticket store fills up to its bound: not a session's cost)
    )
    tracing = not tracemalloc.is_tracing()

    async def run() -> tuple[int, list[int]]:
        server = await tcpls.serve(echo_handler, "127.0.0.1", 0, config=config)
        clients = _Clients(server.port, pki)
        try:
            await clients.open(WARMUP_SESSIONS)
            if tracing:
                tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            await clients.open(IDLE_SESSIONS)
            deadline = time.monotonic() + SETTLE_LIMIT
            loop = asyncio.get_running_loop()
            while not _settled(server, loop.time()) and time.monotonic() < deadline:
                await asyncio.sleep(0.25)
            grown = tracemalloc.get_traced_memory()[0] - before
            held = [s._core.memory_use() for s in server.sessions]
            assert len(held) == WARMUP_SESSIONS + IDLE_SESSIONS
            return grown, held
        finally:
            if tracing:
                tracemalloc.stop()
            clients.stop()
            server.close()
            await server.wait_closed()

    grown, held = asyncio.run(run())
    fixed = SESSION_COST + CONNECTION_COST
    assert set(held) == {fixed}, (
        f"idle sessions still hold buffers, AEAD contexts or data (or run timers) after "
        f"{SETTLE_LIMIT:g} s: {sorted(set(held))[-3:]} bytes, not {fixed}"
    )
    per_session = grown / IDLE_SESSIONS
    assert per_session <= TRACED_PER_SESSION, (
        f"an idle session holds {per_session / KiB:.1f} KiB of Python memory on the server "
        f"(at most {TRACED_PER_SESSION / KiB:.0f} KiB)"
    )
