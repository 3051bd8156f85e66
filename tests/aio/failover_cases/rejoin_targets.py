"""A failover case (it used to fail): a rejoin tried only addresses that once connected.

Run: ``.venv/bin/python -m tests.aio.failover_cases.rejoin_targets`` (loopback, no root needed).

Two paths to one server, each a TCP proxy: A (the address clients are given) and B (the
address the server advertises, ``ServerConfig.advertise``). Path A is down when the client
starts, so it connects over B; it asks to join A too (``session.join``), which fails at
once (connection refused: the path is down). Then A comes back and B goes down (its
connections reset, new ones refused). The session, left without a connection, rejoins
(``Joins._rejoin``): it tries the advertised addresses, then the ones it connected to
(``_join_targets``, appended only once a TCP connect succeeded), so only B, again and
again, never A, until ``rejoin_timeout`` (30 s) ends the session. The chaos test saw 17-18 s
stalls this way, while A was up.

Expected: the addresses the application asked to join are rejoin candidates even if the
first attempt failed (or: the server advertises every address, its main one included, so
a client that came in over another address still learns it).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time

import tcpls
from tests.aio.failover_cases.common import idle_server, pump
from tests.helpers import free_ports

WATCH = 6.0


class ProxyPath:
    """A path: a TCP proxy to the server that can be brought down (reset + refuse) and up."""

    def __init__(self, port: int, upstream_port: int) -> None:
        self.port = port
        self.upstream_port = upstream_port
        self.server: asyncio.Server | None = None
        self.transports: list[asyncio.WriteTransport] = []

    async def up(self) -> None:
        self.server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )

    def down(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for transport in self.transports:
            transport.abort()
        self.transports.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.transports += [writer.transport, up_writer.transport]
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


async def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        port_a = free_ports(2)
        port_b = port_a + 1
        async with idle_server(tmp, advertise=(f"127.0.0.1:{port_b}",)) as (server, pki):
            path_a = ProxyPath(port_a, server.port)
            path_b = ProxyPath(port_b, server.port)
            await path_b.up()  # A is down for now

            logs: list[str] = []

            class Keep(logging.Handler):
                def emit(self, record: logging.LogRecord) -> None:
                    logs.append(record.getMessage())

            logging.getLogger("tcpls").addHandler(Keep(logging.INFO))
            logging.getLogger("tcpls").setLevel(logging.INFO)

            config = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
            session = await tcpls.connect("127.0.0.1", path_b.port, config=config)
            await asyncio.sleep(0.2)  # the New Address (B) and New Tokens arrive
            try:
                await session.join("127.0.0.1", path_a.port)
            except OSError as exc:
                print(f"join over A while A is down: {exc.__class__.__name__}")
            await path_a.up()
            path_b.down()
            print("A is up, B is down: the session lost its only connection")
            while any(c.id == 0 for c in session.connections):  # the reset arrives
                await asyncio.sleep(0.01)
            cut_at = time.monotonic()
            while time.monotonic() - cut_at < WATCH and not session.connections:
                await asyncio.sleep(0.1)
            tried = sorted(
                {line.split()[2] for line in logs if line.startswith("reconnecting over")}
            )
            print(
                f"rejoin attempts went to {tried} "
                f"(A is 127.0.0.1:{path_a.port}, B is 127.0.0.1:{path_b.port})"
            )
            if session.connections:
                print("the session came back over", session.connections[0].remote_address)
                code = 0
            else:
                print(f"BUG: after {WATCH:g} s the session has not tried A, which is up")
                code = 1
            session.abort()
            path_a.down()
            return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
