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

from tcpls.core.connection import Connection, ConnectionStatus
from tcpls.core.streams import Stream

__all__ = [
    "SCHEDULERS",
    "AggregatePolicy",
    "BackupPolicy",
    "PinnedPolicy",
    "Policy",
    "Scheduler",
    "SchedulerName",
]

#: A scheduler's name, as the API and the command line spell it.
SchedulerName = Literal["aggregate", "pinned", "backup"]
#: Every scheduler, the default first.
SCHEDULERS: tuple[SchedulerName, ...] = ("aggregate", "pinned", "backup")


class Policy:
    """One scheduling policy: which connection an unpinned stream may use."""

    #: The policy's name, as the API and the command line spell it.
    name: SchedulerName
    #: Every stream may use every usable connection unless the application pinned it
    #: (the sender then skips the per-stream question: the data path's fast case).
    spreads = False

    def allows(
        self, stream: Stream, conn: Connection, connections: Mapping[int, Connection]
    ) -> bool:
        """Whether the unpinned ``stream`` (or one whose pinned connection is gone) may
        put data on ``conn`` now."""
        raise NotImplementedError


class AggregatePolicy(Policy):
    """Any stream on any usable connection (bandwidth adds up)."""

    name: SchedulerName = "aggregate"
    spreads = True

    def allows(
        self, stream: Stream, conn: Connection, connections: Mapping[int, Connection]
    ) -> bool:
        """Always: every stream may use every usable connection."""
        return True


class BackupPolicy(Policy):
    """Everything on the primary connection; the others only when it fails."""

    name: SchedulerName = "backup"

    def allows(
        self, stream: Stream, conn: Connection, connections: Mapping[int, Connection]
    ) -> bool:
        """Only when ``conn`` is the primary connection (the lowest usable ID)."""
        return conn.id == Scheduler.primary(connections)


class PinnedPolicy(Policy):
    """Each stream stays on one connection, the least loaded one when it first sends."""

    name: SchedulerName = "pinned"

    def allows(
        self, stream: Stream, conn: Connection, connections: Mapping[int, Connection]
    ) -> bool:
        """Only when ``conn`` is the stream's connection; a stream without a usable one
        is pinned to the least loaded connection first."""
        pin = stream.pin
        if pin is None or pin not in connections or not connections[pin].usable:
            stream.pin = _least_loaded(connections, conn)
        return stream.pin == conn.id


_POLICIES: dict[str, type[Policy]] = {
    "aggregate": AggregatePolicy,
    "pinned": PinnedPolicy,
    "backup": BackupPolicy,
}


class Scheduler:
    """The session's scheduler: the application's pins, then the current policy.

    Set :attr:`name` at any time to change the policy.
    """

    __slots__ = ("policy",)

    def __init__(self, name: SchedulerName = "aggregate") -> None:
        self.policy: Policy = _policy(name)

    @property
    def name(self) -> SchedulerName:
        """The current policy's name."""
        return self.policy.name

    @name.setter
    def name(self, name: SchedulerName) -> None:
        self.policy = _policy(name)

    @property
    def spreads(self) -> bool:
        """Whether every unpinned stream may use every usable connection."""
        return self.policy.spreads

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
        return self.policy.allows(stream, conn, connections)

    @staticmethod
    def primary(connections: Mapping[int, Connection]) -> int | None:
        """The connection ``backup`` uses: the lowest usable Connection ID (when every
        active one is suspect, the lowest of those; design: Failure detection)."""
        usable = [c.id for c in connections.values() if c.usable]
        if not usable:
            usable = [c.id for c in connections.values() if c.status is ConnectionStatus.ACTIVE]
        return min(usable) if usable else None


def _policy(name: str) -> Policy:
    policy = _POLICIES.get(name)
    if policy is None:
        raise ValueError(f"unknown scheduler {name!r} (choose from {', '.join(SCHEDULERS)})")
    return policy()


def _least_loaded(connections: Mapping[int, Connection], default: Connection) -> int:
    best, best_load = default.id, len(default.sent_log)
    for c in connections.values():
        if c.usable and len(c.sent_log) < best_load:
            best, best_load = c.id, len(c.sent_log)
    return best
