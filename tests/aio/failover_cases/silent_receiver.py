"""A failover case (it used to fail): a receiver missed a connection that died silently.

Run: ``.venv/bin/python -m tests.aio.failover_cases.silent_receiver`` (loopback, no root needed).

A download is in progress; the server has sent everything it had so far and the client has
acknowledged it (nothing of the client's is unacknowledged). Then the path dies silently:
the server's socket is aborted (as its ``TCP_USER_TIMEOUT`` does on a blackholed path, or a
middlebox that drops the state) and the client's side sees nothing at all (the RST is lost).
This is what the chaos test saw after ``lab.cut(i, "blackhole")``: the server, which was
sending, gives up its connection after the user timeout; the client, which was only
receiving, keeps a connection that nobody answers.

A proxy between the client and the server plays the path: on ``cut`` it aborts its
connection to the server and from then on swallows whatever the client sends, without
closing the client's connection. The server then has an orphaned session (waiting up to
``rejoin_timeout`` for the client to join again); the client, which has nothing
unacknowledged, sends no Ping (``Session.handle_timer`` probes only connections with a
non-empty ``sent_log``), so it never declares the connection dead and never rejoins,
although a new connection through the proxy would work. The read waits until the idle
timeout (300 s by default).

Expected: the client notices within about ``ping_after + ping_timeout`` (2 s) that a
connection on which it awaits data is silent, and rejoins, as after a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import tcpls
from tcpls.devcert import make_test_pki

PIECE = 256 * 1024
WATCH = 8.0


class SilentPath:
    """A TCP proxy; after :meth:`cut` its current connections die silently for the client."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.legs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.cut_done = False
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.legs)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.legs.append((writer, up_writer))

        def dead() -> bool:
            return self.cut_done and index == 0

        await asyncio.gather(
            self._pump(reader, up_writer, dead), self._pump(up_reader, writer, dead)
        )

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        dead: Callable[[], bool],
    ) -> None:
        # never closes the client's side: after the cut it just hears nothing
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if dead():
                    continue  # the path is dead: drop everything, tell nobody
                sink.write(data)
                await sink.drain()

    def cut(self) -> None:
        """The first connection dies: the server's side is aborted, the client's goes silent."""
        self.cut_done = True
        _, up_writer = self.legs[0]
        up_writer.transport.abort()


async def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_test_pki(Path(tmp) / "pki")

        async def handler(session: tcpls.Session) -> None:
            async for reader, writer in session:
                await reader.read()  # the request
                writer.write(b"x" * PIECE)
                await writer.drain()
                await asyncio.sleep(3)  # the path is cut meanwhile
                writer.write(b"y" * PIECE)
                writer.write_eof()
                await writer.wait_closed()
                return

        server_config = tcpls.ServerConfig(
            certfile=str(pki.cert_file), keyfile=str(pki.key_file), user_timeout=1.0
        )
        server = await tcpls.serve(handler, "127.0.0.1", 0, config=server_config)
        path = SilentPath(server.port)
        port = await path.start()
        config = tcpls.ClientConfig(cafile=str(pki.ca_file), user_timeout=1.0)
        session = await tcpls.connect("127.0.0.1", port, config=config)
        reader, writer = await session.open_stream()
        writer.write(b"GET\n")
        writer.write_eof()
        got = await reader.readexactly(PIECE)
        assert got == b"x" * PIECE
        await asyncio.sleep(0.5)  # everything acknowledged both ways
        path.cut()
        cut_at = time.monotonic()
        print("cut: the server's side aborted, the client's side silent")
        rest = asyncio.ensure_future(reader.read())
        while time.monotonic() - cut_at < WATCH and not rest.done():
            await asyncio.sleep(1)
            srv = server.sessions[0] if server.sessions else None
            print(
                f"+{time.monotonic() - cut_at:.0f} s: client connections "
                f"{[(c.id, c.status, c.unacknowledged) for c in session.connections]}, "
                f"spare tokens {session.spare_tokens}; server session connections "
                f"{None if srv is None else [(c.id, c.status) for c in srv.connections]}"
            )
        if rest.done():
            print(f"the client recovered: {len(rest.result())} more bytes")
            code = 0
        else:
            print(f"BUG: after {WATCH:g} s the client still waits on a dead connection")
            rest.cancel()
            code = 1
        session.abort()
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 3)
        return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
