"""A client that joins the addresses its server advertises (``join_advertised``), facing a
server that advertises too many, or addresses that point back at the client's machine."""

from __future__ import annotations

import asyncio
import logging

import pytest

import tcpls
from tcpls.aio.joins import MAX_FOLLOWED_ADDRESSES, _same_scope
from tcpls.apps.echo import echo_handler
from tcpls.devcert import DevPKI
from tests.helpers import free_ports


@pytest.mark.parametrize(
    ("host", "server", "allowed"),
    [
        ("192.0.2.7", "198.51.100.1", True),  # another public address
        ("10.1.2.3", "198.51.100.1", True),  # a private one: a LAN deployment
        ("2001:db8::7", "2001:db8::1", True),
        ("127.0.0.1", "198.51.100.1", False),  # the client's own machine
        ("::1", "2001:db8::1", False),
        ("169.254.0.9", "198.51.100.1", False),  # the client's link
        ("fe80::1", "2001:db8::1", False),
        ("127.0.0.2", "127.0.0.1", True),  # a server on loopback may name loopback
        ("169.254.0.9", "169.254.0.1", True),
        ("0.0.0.0", "127.0.0.1", False),
        ("224.0.0.1", "198.51.100.1", False),
        ("ff02::1", "2001:db8::1", False),
        ("127.0.0.1", None, False),  # the server's address is not known
        ("not an address", "198.51.100.1", False),
        ("::ffff:127.0.0.1", "198.51.100.1", False),  # IPv4-mapped: loopback all the same
        ("::ffff:169.254.0.9", "198.51.100.1", False),
        ("::ffff:0.0.0.0", "198.51.100.1", False),
        ("0.1.2.3", "198.51.100.1", False),  # "this network" reaches this machine
        ("::ffff:192.0.2.7", "198.51.100.1", True),
        ("127.0.0.1", "::ffff:127.0.0.1", True),  # a server reached as mapped loopback
    ],
)
def test_which_advertised_addresses_a_client_follows(
    host: str, server: str | None, allowed: bool
) -> None:
    assert _same_scope(host, server) is allowed


def test_a_server_advertising_many_addresses_gets_a_bounded_number_of_joins(
    pki: DevPKI, caplog: pytest.LogCaptureFixture
) -> None:
    """A server advertises 40 addresses (and allows 64 connections): the client joins
    :data:`MAX_FOLLOWED_ADDRESSES` of them at most, and says so for each that failed."""
    closed = free_ports(40)  # nothing listens there: every join fails at once
    server_config = tcpls.ServerConfig(
        certfile=str(pki.cert_file),
        keyfile=str(pki.key_file),
        max_connections=64,
        advertise=[f"127.0.0.1:{closed + i}" for i in range(40)],
    )
    client_config = tcpls.ClientConfig(
        cafile=str(pki.ca_file), server_name="localhost", join_advertised=True
    )

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=client_config) as session:
                await asyncio.sleep(1.0)
                reader, writer = await session.open_stream()
                writer.write(b"fine")
                writer.write_eof()
                assert await reader.read() == b"fine"

    with caplog.at_level(logging.WARNING, logger="tcpls.aio.session"):
        asyncio.run(run())
    failed = [r for r in caplog.records if "joining the advertised address" in r.getMessage()]
    assert len(failed) == MAX_FOLLOWED_ADDRESSES, [r.getMessage() for r in failed]
