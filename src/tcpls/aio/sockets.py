"""TCP socket options and ``TCP_INFO`` (Linux), used by the asyncio layer."""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass

__all__ = ["TcpInfo", "configure_socket", "tcp_info"]

# Linux values; the socket module lacks some of them on older Pythons.
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)
TCP_INFO = getattr(socket, "TCP_INFO", 11)

# struct tcp_info: 8 bytes of u8 fields, then u32 fields; we read up to snd_cwnd.
_TCP_INFO = struct.Struct("=8B19I")


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
    #: Total retransmitted segments.
    retransmits: int


def configure_socket(sock: socket.socket, user_timeout: float | None) -> None:
    """TCP_NODELAY, and TCP_USER_TIMEOUT (W11) when given; errors are ignored."""
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
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, _TCP_INFO.size)
    except (OSError, AttributeError):
        return None
    if len(raw) < _TCP_INFO.size:
        return None
    fields = _TCP_INFO.unpack(raw)
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
    )
