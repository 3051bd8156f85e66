"""Break-before-make while a join is under way and no token is left."""

from __future__ import annotations

import asyncio

import tcpls
from tcpls.apps.echo import echo_handler
from tcpls.devcert import DevPKI


class _Path:
    """A TCP proxy to 127.0.0.1:``port``: waits ``delay`` before relaying a connection;
    ``reset()`` resets the client side of every connection it relays."""

    def __init__(self, port: int, delay: float = 0.0) -> None:
        self.port = port
        self.delay = delay
        self.client_sides: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.client_sides.append(writer)
        await asyncio.sleep(self.delay)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def reset(self) -> None:
        for writer in self.client_sides:
            writer.transport.abort()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def test_a_join_under_way_carries_the_session_when_the_first_connection_dies(
    pki: DevPKI,
) -> None:
    """The server allows two connections: the client holds one token and spends it on a
    join over a slow path. The first connection is reset while that join is under way:
    with no token for another try, the client waits for the join instead of ending the
    session ("no join token is left"), and the session goes on over the joined path."""
    server_config = tcpls.ServerConfig(
        certfile=str(pki.cert_file), keyfile=str(pki.key_file), max_connections=2
    )
    client_config = tcpls.ClientConfig(
        cafile=str(pki.ca_file),
        server_name="localhost",
        tuning=tcpls.SessionTuning(user_timeout=0.5),
    )

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as srv:
            path_a, path_b = _Path(srv.port), _Path(srv.port, delay=0.5)
            port_a, port_b = await path_a.start(), await path_b.start()
            try:
                session = await tcpls.connect("127.0.0.1", port_a, config=client_config)
                assert session.spare_tokens == 1
                join = asyncio.ensure_future(session.join("127.0.0.1", port_b))
                await asyncio.sleep(0.1)  # the join is under way, its path slow
                path_a.reset()
                info = await asyncio.wait_for(join, 10)
                reader, writer = await session.open_stream()
                writer.write(b"over the joined path")
                writer.write_eof()
                assert await asyncio.wait_for(reader.read(), 10) == b"over the joined path"
                assert [c.id for c in session.connections] == [info.id]
                await session.aclose()
            finally:
                path_a.close()
                path_b.close()

    asyncio.run(run())
