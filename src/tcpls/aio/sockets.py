"""TCP socket options, ``TCP_INFO`` (Linux) and socket addresses, used by the asyncio layer."""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TcpInfo",
    "configure_socket",
    "host_port",
    "set_notsent_lowat",
    "set_user_timeout",
    "tcp_info",
]

# Linux values; the socket module lacks some of them on older Pythons.
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)
TCP_INFO = getattr(socket, "TCP_INFO", 11)
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)

# struct tcp_info (linux/tcp.h): 8 bytes of u8 fields, 24 u32 (rto .. total_retrans),
# then counters; tcpi_snd_wnd (kernel >= 5.4) is the u32 at offset 228.
_TCP_INFO = struct.Struct("=8B24I")
_SND_WND = struct.Struct("=I")
_SND_WND_OFFSET = 228


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """What the kernel reports for a TCP connection."""

    #: Smoothed round-trip time, seconds.
    rtt: float
    #: RTT variance, seconds.
    rttvar: float
    #: Congestion window, in segments.
    cwnd: int
    #: Sender's maximum segment size, bytes.
    mss: int
    #: Segments sent and not yet acknowledged.
    unacked: int
    #: Segments retransmitted and not yet acknowledged.
    retransmits: int
    #: Unanswered zero-window (or keepalive) probes.
    probes: int
    #: The peer's receive window in bytes (``None`` on kernels that do not report it).
    snd_wnd: int | None
    #: Segments retransmitted over the connection's life (``tcpi_total_retrans``).
    total_retransmits: int = 0
    #: Seconds since the last segment (data or ACK) from the peer (``None``: unknown).
    last_heard: float | None = None


def configure_socket(sock: socket.socket, user_timeout: float | None) -> None:
    """TCP_NODELAY, and TCP_USER_TIMEOUT when given (design: Failure detection).

    Errors are ignored: a socket that refuses an option still works.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if user_timeout is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, max(1, int(user_timeout * 1000)))


def tcp_info(sock: socket.socket | None) -> TcpInfo | None:
    """``TCP_INFO`` of a connected socket, or ``None`` where unavailable."""
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, _SND_WND_OFFSET + 4)
    except (OSError, AttributeError):
        return None
    if len(raw) < _TCP_INFO.size:
        return None
    fields = _TCP_INFO.unpack_from(raw)
    snd_wnd = _SND_WND.unpack_from(raw, _SND_WND_OFFSET)[0] if len(raw) >= 232 else None
    u32 = fields[8:]
    # u32 order: rto ato snd_mss rcv_mss unacked sacked lost retrans fackets
    # last_data_sent last_ack_sent last_data_recv last_ack_recv pmtu rcv_ssthresh
    # rtt rttvar snd_ssthresh snd_cwnd
    return TcpInfo(
        rtt=u32[15] / 1e6,
        rttvar=u32[16] / 1e6,
        cwnd=u32[18],
        mss=u32[2],
        unacked=u32[4],
        retransmits=u32[7],
        probes=fields[3],
        snd_wnd=snd_wnd,
        total_retransmits=u32[23],
        last_heard=min(u32[11], u32[12]) / 1000,
    )


def set_notsent_lowat(sock: socket.socket | None, limit: int | None) -> None:
    """TCP_NOTSENT_LOWAT: at most ``limit`` unsent bytes queued in the kernel (None: no limit)."""
    if sock is None:
        return
    value = struct.pack("=I", limit if limit is not None else 0xFFFFFFFF)  # u32 option
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, value)


def set_user_timeout(sock: socket.socket, seconds: float | None) -> None:
    """Set TCP_USER_TIMEOUT (``None`` or 0: the kernel default)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(
            socket.IPPROTO_TCP, TCP_USER_TIMEOUT, max(1, int(seconds * 1000)) if seconds else 0
        )


def host_port(address: Any) -> tuple[str, int] | None:
    """A socket address (``peername``, ``sockname``) as ``(host, port)``; ``None`` for
    anything else (no address, a Unix socket)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None
