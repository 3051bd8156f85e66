"""A failover case (it used to fail): a join under way held back the rejoin.

Run: ``.venv/bin/python -m tests.aio.failover_cases.pending_join`` (loopback, no root
needed).

Two paths to one server, each a TCP proxy. The session runs over A. The application joins B,
but B is dead in a way the TCP handshake does not show (the proxy accepts, then forwards
nothing: a blackholed path after the SYN, a middlebox): the join waits for its handshake
timeout (``timeout``, by default ``handshake_timeout``: 10 s). Meanwhile A is reset, and
comes back at once. The session now has no active connection, only the join in progress, and
``SessionDriver._connection_removed`` started the rejoin only when ``core.connections`` was
empty: the session waits for the join to B to time out before it tries A again. Then the
rejoin tries B first (the address joined last), which costs one more attempt timeout (max(1,
2 x user timeout) = 4 s by default) and one more token, and only then A. A download would
stall about 10 s although A works all along. (The chaos test saw 3 s of a 7.8 s stall this
way, with a 4 s join timeout.) Each join whose ClientHello was sent is a spent token: a few
such joins in a row exhaust the 3 spare tokens of a session (``max_connections`` 4), and a
client without a connection and without a token ends its session at once.

Expected: when no connection can carry data, the session rejoins at once, whatever joins are
still under way.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time

import tcpls
from tests.aio.failover_cases.common import idle_server, pump

JOIN_TIMEOUT = 6.0


class ProxyPath:
    """A path: a TCP proxy to the server; ``reset()`` aborts its connections; ``mute``
    makes it accept connections and forward nothing."""

    def __init__(self, upstream_port: int, *, mute: bool = False) -> None:
        self.upstream_port = upstream_port
        self.mute = mute
        self.port = 0
        self.server: asyncio.Server | None = None
        self.transports: list[asyncio.WriteTransport] = []

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])

    def reset(self) -> None:
        for transport in self.transports:
            transport.abort()
        self.transports.clear()

    def close(self) -> None:
        self.reset()
        if self.server is not None:
            self.server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.transports.append(writer.transport)
        if self.mute:
            with contextlib.suppress(OSError):
                while await reader.read(65536):
                    pass
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.transports.append(up_writer.transport)
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


async def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        async with idle_server(tmp) as (server, pki):
            path_a = ProxyPath(server.port)
            path_b = ProxyPath(server.port, mute=True)
            await path_a.up()
            await path_b.up()
            config = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
            session = await tcpls.connect("127.0.0.1", path_a.port, config=config)
            await asyncio.sleep(0.2)  # the New Tokens arrive
            print(f"spare tokens: {session.spare_tokens}")
            join = asyncio.ensure_future(
                session.join("127.0.0.1", path_b.port, timeout=JOIN_TIMEOUT)
            )
            tokens_after_join: list[int] = []
            join.add_done_callback(lambda _: tokens_after_join.append(session.spare_tokens))
            await asyncio.sleep(0.3)  # the join's TCP connection is up, its ClientHello lost
            path_a.reset()  # A fails, and works again for new connections
            reset_at = time.monotonic()
            while any(c.id == 0 for c in session.connections):  # the reset arrives
                await asyncio.sleep(0.01)
            print("A reset; A accepts new connections at once; the join to B is under way")
            came_back = None
            while time.monotonic() - reset_at < JOIN_TIMEOUT + 8:
                if any(c.status == "active" for c in session.connections):
                    came_back = time.monotonic() - reset_at
                    break
                await asyncio.sleep(0.05)
            with contextlib.suppress(Exception):
                await join
            print(
                f"the join to B ended: {join.exception()!r}; spare tokens then: "
                f"{tokens_after_join[0]} of 3 (the join's is spent, its ClientHello lost; the "
                "rejoin holds another)"
            )
            code = 1
            if came_back is None:
                print("BUG: the session never came back")
            elif came_back > 1.0:
                print(f"BUG: the session came back over A only after {came_back:.1f} s")
            else:
                print(f"the session came back over A after {came_back:.2f} s")
                code = 0
            session.abort()
            path_a.close()
            path_b.close()
            return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
