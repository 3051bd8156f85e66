"""The SOCKS5 side of a tunnel client (RFC 1928): no authentication, CONNECT only.

A browser or ``curl --socks5-hostname`` names the destination in its request (an IPv4
or IPv6 address, or a domain name); the tunnel client asks the tunnel server for it and
answers with the reply code that matches the server's answer.
"""

from __future__ import annotations

import asyncio
import ipaddress

from tcpls.apps.tunnel.protocol import Destination, canonical_host

__all__ = ["SUCCEEDED", "SocksError", "read_request", "reply", "reply_code"]

#: Reply codes (RFC 1928 §6).
SUCCEEDED = 0
GENERAL_FAILURE = 1
NOT_ALLOWED = 2
HOST_UNREACHABLE = 4
CONNECTION_REFUSED = 5
COMMAND_NOT_SUPPORTED = 7
ADDRESS_NOT_SUPPORTED = 8

#: The reply code for each ``ERR`` code of a tunnel server (others: general failure).
_FOR_ERR = {
    "denied": NOT_ALLOWED,
    "unresolved": HOST_UNREACHABLE,
    "unreachable": HOST_UNREACHABLE,
    "timeout": HOST_UNREACHABLE,
    "refused": CONNECTION_REFUSED,
}


class SocksError(Exception):
    """The SOCKS5 client asked for something we do not do (it was answered if it could
    be), or broke the protocol."""


def reply(code: int) -> bytes:
    """A SOCKS5 reply with ``code`` (the bound address is not given: 0.0.0.0:0)."""
    return bytes((5, code, 0, 1, 0, 0, 0, 0, 0, 0))


def reply_code(err_code: str | None) -> int:
    """The SOCKS5 reply code for a tunnel server's ``ERR`` code (``None``: no answer)."""
    return _FOR_ERR.get(err_code or "", GENERAL_FAILURE)


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Destination:
    """Negotiate "no authentication" and read a CONNECT request; its destination.

    Raises :class:`SocksError` (after writing the matching reply when there is one) or
    :class:`asyncio.IncompleteReadError` when the client stops halfway.
    """
    version, count = await reader.readexactly(2)
    if version != 5:
        raise SocksError(f"not a SOCKS5 client (version {version})")
    methods = await reader.readexactly(count)
    if 0 not in methods:
        writer.write(b"\x05\xff")
        raise SocksError("the SOCKS5 client offers no method without authentication")
    writer.write(b"\x05\x00")
    version, command, _, kind = await reader.readexactly(4)
    if kind == 1:
        host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
    elif kind == 4:
        host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
    elif kind == 3:
        name = await reader.readexactly((await reader.readexactly(1))[0])
        try:
            host = canonical_host(name.decode("ascii"))
        except ValueError:  # UnicodeDecodeError included
            writer.write(reply(HOST_UNREACHABLE))
            raise SocksError(f"the SOCKS5 client asked for a bad name {name[:64]!r}") from None
    else:
        writer.write(reply(ADDRESS_NOT_SUPPORTED))
        raise SocksError(f"unknown SOCKS5 address type {kind}")
    port = int.from_bytes(await reader.readexactly(2), "big")
    if version != 5 or command != 1:
        writer.write(reply(COMMAND_NOT_SUPPORTED))
        raise SocksError(f"SOCKS5 command {command} is not supported (only CONNECT)")
    if port == 0:
        writer.write(reply(GENERAL_FAILURE))
        raise SocksError("the SOCKS5 client asked for port 0")
    return Destination(host, port)
