"""Tunnels: ordinary TCP connections carried over one TCPLS session (``tcpls tunnel``).

A :class:`TunnelClient` accepts TCP connections on a local port (each to one fixed
destination, or as a SOCKS5 proxy) and carries each over one stream of a single TCPLS
session, with its joined connections; a :class:`TunnelServer` connects each stream to
its destination, if that destination is on its allow list. Any TCP application gets
failover and aggregation without changing.

Protocol
--------
Every stream starts with one line from the client and one line in answer, each ending
with CRLF and at most :data:`MAX_LINE` (512) bytes long, CRLF included:

* ``TCPLS-TUNNEL 1`` opens the session's control stream (the client's first stream); the
  server answers ``TCPLS-TUNNEL 1 OK``. Then either end may write ``STOP <id>`` on it:
  the TCP connection of stream ``<id>`` can take no more bytes (its application is gone
  or it was reset), so the peer stops reading its own TCP side of that stream, ends its
  direction of the stream, and closes its TCP connection once the stream's other
  direction is delivered (QUIC's STOP_SENDING). ``ABORT``: the peer is about to abort
  the session; every connection it carries is reset at once. The client writes ``PING``
  every :data:`~tcpls.apps.tunnel.protocol.KEEPALIVE` seconds while it carries
  connections, so that their session is not closed as idle. Unknown lines are ignored; a
  control line of 64 bytes or more ends the control stream.
* ``CONNECT <host>:<port>`` asks for a TCP connection to ``host`` (a DNS name, an IPv4
  address, or an IPv6 address in brackets). The server answers ``OK`` once connected,
  and the stream then carries the connection's bytes as they are, both ways; or it
  answers ``ERR <code> <reason>`` and ends the stream. The codes: ``bad-request``,
  ``denied`` (not on the allow list), ``busy`` (a limit), ``unresolved``,
  ``unreachable``, ``refused``, ``timeout``, ``failed``. A client may send the
  connection's first bytes right after its request, without waiting for the answer
  (the server drops them if it refuses); a SOCKS5 client waits for the answer anyway.

Ends of connections
-------------------
An end of file on one TCP side ends that direction of the stream (``write_eof``), and
the end of a stream shuts down the write side of the other TCP connection
(``shutdown(SHUT_WR)``): half-closed connections work as they do over plain TCP. A
TCPLS stream has no reset: a TCP connection that fails (reset, or a write refused
because its application is gone) ends its direction of the stream and sends ``STOP``,
and the other end closes its connection in turn, so nothing hangs. When a session
fails, every connection it still carries is aborted (reset), so a transfer cut short
never looks complete. For the same reason an end that shuts down while it carries
connections aborts its session instead of closing it (a graceful close ends every
stream as if it were complete), after an ``ABORT`` line that the peer acknowledges
within a second: an aborted session tells the peer nothing, and the peer would keep its
connections until its rejoin timeout.

The streams of a session share its TCP connections, and the library stops reading them
while one stream holds more than its receive buffer: a connection whose TCP side takes
nothing (a destination that stops reading, a local application paused) would hold up
every other connection of the session. A connection that has taken none of the bytes
waiting for it for ``STALL_TIMEOUT`` seconds (15) is therefore reset and its stream
drained, and the others go on.

Allow list
----------
Each ``HOST:PORT`` entry is compared with the request as the client gave it, before any
name resolution: names without regard to case and without a trailing dot, IP addresses
in their canonical form; ``HOST:*`` allows every port of ``HOST``. So ``localhost:80``
does not allow ``127.0.0.1:80``. The server resolves an allowed name when it connects:
allow only names whose addresses you trust. Everything else is refused (``denied``).

Limits
------
A server serves at most ``max_tunnels`` streams of one session at once and
``max_total`` connections to destinations in all (beyond: ``busy``); it waits
``REQUEST_TIMEOUT`` (10) seconds for a request line and ``connect_timeout`` (10) seconds
for a destination, and reads a refused stream to its end for at most ``DRAIN_TIMEOUT``
(10) seconds. A client carries at most ``max_tunnels`` connections at once (more are
closed at once), waits ``answer_timeout`` seconds for an answer and ``SOCKS_TIMEOUT``
(10) seconds for a SOCKS5 request. A session that carries nothing is closed after the
session's idle timeout (``SessionTuning.idle_timeout``, 300 s); the client opens a new
one for the next connection, as it does when its session fails. Beyond its stream's
buffers (which the session bounds, ``SessionTuning``), a carried connection holds at most
about 1 MiB in the tunnel's process: asyncio pauses reading its TCP side at 256 KiB
(``TCP_LIMIT``), writing to it waits above 256 KiB (``TCP_WRITE_HIGH``), and each way
moves 256 KiB at a time (``CHUNK``). The constants are in :mod:`tcpls.apps.tunnel.protocol`.

Modules: :mod:`~tcpls.apps.tunnel.protocol` (destinations, the allow list, the lines),
:mod:`~tcpls.apps.tunnel.relay` (moving bytes, the control stream),
:mod:`~tcpls.apps.tunnel.server`, :mod:`~tcpls.apps.tunnel.client` and
:mod:`~tcpls.apps.tunnel.socks` (the SOCKS5 request of RFC 1928).
"""

from __future__ import annotations

from tcpls.apps.tunnel.client import TunnelClient
from tcpls.apps.tunnel.protocol import (
    HELLO,
    HELLO_OK,
    MAX_LINE,
    AllowList,
    Destination,
    NotATunnelServer,
    TunnelError,
    TunnelRefused,
    canonical_host,
    connect_request,
    parse_answer,
    parse_destination,
)
from tcpls.apps.tunnel.server import TunnelServer

__all__ = [
    "HELLO",
    "HELLO_OK",
    "MAX_LINE",
    "AllowList",
    "Destination",
    "NotATunnelServer",
    "TunnelClient",
    "TunnelError",
    "TunnelRefused",
    "TunnelServer",
    "canonical_host",
    "connect_request",
    "parse_answer",
    "parse_destination",
]
