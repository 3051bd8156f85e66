"""Which stream's data goes on which TCP connection.

The I/O layer pulls records for a connection when its transport can take more
bytes (ARCHITECTURE: the data path). For each record, the session asks the
scheduler whether a stream that has data may use that connection. Because each
connection pulls at the rate its path drains, a fast path carries more: that is
how ``aggregate`` adds up bandwidth without measuring it.

* ``aggregate``: any stream on any usable connection; a stream spreads over
  all paths and the receiver reorders by offset. A stream pinned by the
  application stays on its connection.
* ``pinned``: every stream stays on one connection, chosen when it first sends
  (the least loaded one) or set by the application with ``pin``; this isolates
  streams from each other's head-of-line blocking.
* ``backup``: everything goes on the primary connection (the lowest ID that is
  usable); the others carry data only when it fails.

The scheduler knows nothing of sockets; it sees connections as
:class:`~tcpls.core.connection.Connection` objects and streams as
:class:`~tcpls.core.streams.Stream`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from tcpls.core.connection import Connection
from tcpls.core.streams import Stream

__all__ = ["SCHEDULERS", "Scheduler", "SchedulerName"]

SchedulerName = Literal["aggregate", "pinned", "backup"]
SCHEDULERS: tuple[SchedulerName, ...] = ("aggregate", "pinned", "backup")


class Scheduler:
    """A scheduling policy (see the module docstring); change ``name`` at any time."""

    __slots__ = ("name",)

    def __init__(self, name: SchedulerName = "aggregate") -> None:
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r} (choose from {', '.join(SCHEDULERS)})")
        self.name: SchedulerName = name

    def allows(
        self, stream: Stream, conn: Connection, connections: Mapping[int, Connection]
    ) -> bool:
        """Whether ``stream`` may put data on ``conn`` now."""
        pin = stream.pin
        if pin is not None:
            pinned = connections.get(pin)
            if pinned is not None and pinned.usable:
                return pin == conn.id
            # the pinned connection is gone: fall through to the policy
        name = self.name
        if name == "aggregate":
            return True
        if name == "backup":
            return conn.id == self.primary(connections)
        # pinned: assign on first use, to the least loaded usable connection
        if pin is None or pin not in connections or not connections[pin].usable:
            stream.pin = self._least_loaded(connections, conn)
        return stream.pin == conn.id

    @staticmethod
    def primary(connections: Mapping[int, Connection]) -> int | None:
        """The connection ``backup`` uses: the lowest usable Connection ID."""
        usable = [c.id for c in connections.values() if c.usable]
        return min(usable) if usable else None

    @staticmethod
    def _least_loaded(connections: Mapping[int, Connection], default: Connection) -> int:
        best, best_load = default.id, len(default.sent_log)
        for c in connections.values():
            if c.usable and len(c.sent_log) < best_load:
                best, best_load = c.id, len(c.sent_log)
        return best
