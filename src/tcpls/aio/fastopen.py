"""TCP Fast Open (RFC 7413; design: TCP Fast Open): the first flight rides in the SYN.

Client: the socket gets ``TCP_FASTOPEN_CONNECT`` before ``connect()``, which then
returns at once; the kernel puts the first bytes written (the ClientHello and any early
data, or a join's ClientHello) in the SYN when it holds a Fast Open cookie for the
server, and falls back to an ordinary handshake when it does not (the first connection
to a server fetches the cookie). Server: the listening socket gets ``TCP_FASTOPEN``.

The kernel must allow it: ``net.ipv4.tcp_fastopen`` is a bit mask, 1 for clients (the
Linux default), 2 for servers; a server whose kernel lacks bit 2 logs a warning once and
runs without Fast Open.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

__all__ = ["enable_on_listener", "kernel_mask", "open_connection"]

logger = logging.getLogger("tcpls.aio")

#: ``TCP_FASTOPEN_CONNECT`` (Linux 4.11); the socket module may lack the name.
TCP_FASTOPEN_CONNECT = getattr(socket, "TCP_FASTOPEN_CONNECT", 30)
#: Connections that may wait in the Fast Open queue of a listening socket.
LISTEN_QUEUE = 256
_SYSCTL = "/proc/sys/net/ipv4/tcp_fastopen"


def kernel_mask() -> int | None:
    """``net.ipv4.tcp_fastopen`` (``None`` when it cannot be read: not Linux)."""
    try:
        with open(_SYSCTL) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None


async def open_connection(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    local_addr: tuple[str, int] | None = None,
) -> None:
    """Connect like ``loop.create_connection(protocol_factory, host, port)`` with Fast Open."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"{host} has no address")
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        if local_addr is not None and (":" in local_addr[0]) != (family == socket.AF_INET6):
            continue
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
            except OSError as exc:
                logger.debug("TCP Fast Open is not available here: %s", exc)
            if local_addr is not None:
                sock.bind(local_addr)
            await loop.sock_connect(sock, address)
            await loop.create_connection(protocol_factory, sock=sock)
            return
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    raise error or OSError(f"no address of {host} is usable from {local_addr}")


def enable_on_listener(sockets: tuple[socket.socket, ...] | list[socket.socket]) -> bool:
    """Turn Fast Open on for listening sockets; whether the kernel lets servers use it."""
    mask = kernel_mask()
    if mask is not None and not mask & 2:
        logger.warning(
            "TCP Fast Open is off for servers in this kernel (net.ipv4.tcp_fastopen=%d; "
            "set it to 3 to enable it): serving without it",
            mask,
        )
        return False
    for sock in sockets:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, LISTEN_QUEUE)
        except OSError as exc:
            logger.warning("cannot enable TCP Fast Open on %s: %s", sock.getsockname(), exc)
            return False
    return True
