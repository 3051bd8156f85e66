"""The tunnel protocol's pieces: destinations, the allow list, the lines and their limits.

See :mod:`tcpls.apps.tunnel` for the protocol itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from tcpls.aio.streams import StreamReader
from tcpls.errors import TCPLSError

__all__ = [
    "CHUNK",
    "DEFAULT_ANSWER_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_TOTAL",
    "DEFAULT_MAX_TUNNELS",
    "DRAIN_TIMEOUT",
    "HELLO",
    "HELLO_OK",
    "HELLO_TIMEOUT",
    "KEEPALIVE",
    "MAX_CONTROL_LINE",
    "MAX_LINE",
    "REQUEST_TIMEOUT",
    "SOCKS_TIMEOUT",
    "TCP_LIMIT",
    "TCP_WRITE_HIGH",
    "AllowList",
    "Destination",
    "NoLine",
    "NotATunnelServer",
    "TunnelError",
    "TunnelRefused",
    "canonical_host",
    "connect_request",
    "drain",
    "parse_answer",
    "parse_destination",
    "read_line",
    "why",
]

#: The control stream's first line, and the server's answer.
HELLO = b"TCPLS-TUNNEL 1\r\n"
#: The server's answer to :data:`HELLO`.
HELLO_OK = b"TCPLS-TUNNEL 1 OK\r\n"
#: Longest request or answer line, CRLF included.
MAX_LINE = 512
#: A control line this long without its line end ends the control stream.
MAX_CONTROL_LINE = 64
#: Seconds a server waits for a stream's request line.
REQUEST_TIMEOUT = 10.0
#: Seconds a server reads a refused stream, dropping the bytes, waiting for its end.
DRAIN_TIMEOUT = 10.0
#: Seconds between two keepalives of a client that carries connections.
KEEPALIVE = 30.0
#: Seconds a client waits for a SOCKS5 request.
SOCKS_TIMEOUT = 10.0
#: Seconds a client waits for the answer to its hello.
HELLO_TIMEOUT = 10.0
#: Default seconds a server allows for connecting to a destination.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Default seconds a client waits for the answer to a request.
DEFAULT_ANSWER_TIMEOUT = 30.0
#: Default connections carried at once, per session (server) or in all (client).
DEFAULT_MAX_TUNNELS = 256
#: Default connections to destinations a server holds at once, all sessions together.
DEFAULT_MAX_TOTAL = 1024
#: Bytes moved per read, both ways.
CHUNK = 256 * 1024
#: The buffer limit of asyncio's TCP streams (reading pauses at twice this).
TCP_LIMIT = 128 * 1024
#: Bytes a TCP connection's asyncio transport may hold before writing waits (drain).
TCP_WRITE_HIGH = 256 * 1024

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_ERR = re.compile(rb"ERR ([a-z-]{1,20}) ?([^\r\n]*)\r\n")


# ----------------------------------------------------------------- destinations


@dataclass(frozen=True)
class Destination:
    """A host (canonical: see :func:`canonical_host`) and a TCP port."""

    #: An IP address in canonical form (IPv6 without brackets) or a lower-case name.
    host: str
    #: The TCP port, 1 to 65535.
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


#: An IPv6 zone (scope ID): an interface name or number.
_SCOPE = re.compile(r"[A-Za-z0-9_.-]{1,32}")


def canonical_host(text: str) -> str:
    """``text`` as an IP address in canonical form, or a lower-case DNS name without its
    trailing dot; :class:`ValueError` if it is neither (IPv6 may be in brackets)."""
    bracketed = text.startswith("[") and text.endswith("]")
    if bracketed or ":" in text:
        address = ipaddress.IPv6Address(text[1:-1] if bracketed else text)
        if address.scope_id is not None and not _SCOPE.fullmatch(address.scope_id):
            # (anything else would reach the request line: CR LF, spaces, brackets)
            raise ValueError(f"not an IPv6 zone: {address.scope_id!r}")
        return str(address)
    with contextlib.suppress(ValueError):
        return str(ipaddress.IPv4Address(text))
    name = text.lower().removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"not a host name or IP address: {text!r}")
    if labels[-1].isdigit():  # 127.1, 0x7f.1: numbers a resolver might read as an address
        raise ValueError(f"not a host name or IP address: {text!r}")
    return name


def _split(text: str, wildcard: bool) -> tuple[str, int | None]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if ":" in host and not host.startswith("["):
        raise ValueError(f"put an IPv6 address in brackets: [{host}]:{port_text}")
    if wildcard and port_text == "*":
        return canonical_host(host), None
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {text!r}")
    return canonical_host(host), int(port_text)


def parse_destination(text: str) -> Destination:
    """``HOST:PORT`` (IPv6 in brackets) as a :class:`Destination`; :class:`ValueError`
    if it is malformed."""
    host, port = _split(text, wildcard=False)
    assert port is not None
    return Destination(host, port)


class AllowList:
    """The destinations a server may connect to: ``HOST:PORT`` or ``HOST:*`` entries,
    matched as given, before name resolution (see :mod:`tcpls.apps.tunnel`)."""

    def __init__(self, entries: Iterable[str]) -> None:
        """Parse ``entries``; :class:`ValueError` names a malformed one."""
        self._exact: set[tuple[str, int]] = set()
        self._any_port: set[str] = set()
        #: The entries as given.
        self.entries = list(entries)
        for entry in self.entries:
            try:
                host, port = _split(entry, wildcard=True)
            except ValueError as exc:
                raise ValueError(f"bad allow-list entry {entry!r}: {exc}") from None
            if port is None:
                self._any_port.add(host)
            else:
                self._exact.add((host, port))

    def allows(self, destination: Destination) -> bool:
        """Whether ``destination`` is on the list."""
        host = destination.host
        return host in self._any_port or (host, destination.port) in self._exact

    def __str__(self) -> str:
        return ", ".join(self.entries) or "nothing"


# ----------------------------------------------------------------- errors and lines


class TunnelError(TCPLSError):
    """A tunnel could not be opened, or a peer does not speak the tunnel protocol."""


class TunnelRefused(TunnelError):
    """The server answered ``ERR <code> <reason>``."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason or code)
        #: One of the codes of :mod:`tcpls.apps.tunnel` (``denied``, ``refused``, ...).
        self.code = code
        #: The server's explanation, for people (control characters replaced).
        self.reason = reason or code


class NotATunnelServer(TunnelError):
    """The peer's answer to the hello or to a request is not the tunnel protocol's."""


def connect_request(destination: Destination) -> bytes:
    """The request line that asks for a connection to ``destination``."""
    return f"CONNECT {destination}\r\n".encode()


def parse_answer(line: bytes) -> None:
    """Return for ``OK``; raise :class:`TunnelRefused` for ``ERR`` and
    :class:`NotATunnelServer` for anything else."""
    if line == b"OK\r\n":
        return
    refused = _ERR.fullmatch(line)
    if refused is None:
        raise NotATunnelServer("its answer is not a tunnel answer")
    text = refused.group(2).decode(errors="replace")
    reason = "".join(c if c.isprintable() else "?" for c in text).strip()
    raise TunnelRefused(refused.group(1).decode(), reason)


class NoLine(Exception):
    """No line end within the limit, or before the stream ended."""


async def read_line(reader: StreamReader, limit: int) -> tuple[bytes, bytes]:
    """One line of at most ``limit`` bytes (``\\n`` included) and the bytes read after it;
    :class:`NoLine` otherwise. Never holds more than ``limit + 1`` bytes."""
    buffer = bytearray()
    while True:
        chunk = await reader.read(limit + 1 - len(buffer))
        if not chunk:
            raise NoLine("the stream ended before a line end" if buffer else "nothing came")
        buffer += chunk
        end = buffer.find(b"\n")
        if 0 <= end < limit:
            return bytes(buffer[: end + 1]), bytes(buffer[end + 1 :])
        if end >= 0 or len(buffer) > limit:
            raise NoLine(f"a line longer than {limit} bytes")


async def drain(reader: StreamReader, timeout: float | None) -> None:
    """Read ``reader`` to its end, dropping the bytes, for at most ``timeout`` seconds."""
    with contextlib.suppress(TCPLSError, TimeoutError):
        async with asyncio.timeout(timeout):
            while await reader.read(CHUNK):
                pass


def why(exc: BaseException) -> str:
    """A short reason for ``exc``, for a log line (``strerror`` for an ``OSError``)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or exc.__class__.__name__
