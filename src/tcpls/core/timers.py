"""The session-wide timers, by name (design: Timers).

A session's deadlines are of two kinds. Those tied to each connection (delayed ACKs,
Ping probes) are computed by their owners, :mod:`tcpls.core.acks` and
:mod:`tcpls.core.liveness`, from the connections' own state. The others are kept in a
:class:`TimerSet`, explicitly: each is set, moved or cancelled by the code that owns the
event. :mod:`tcpls.core.clock` takes the minimum of them all and runs what expired.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["TRIM_AFTER", "Timer", "TimerSet"]

#: Seconds without I/O after which the connections give their record buffers back.
TRIM_AFTER = 1.0


class Timer(IntEnum):
    """The session-wide timers (an ``IntEnum``: they key a dict on the data path)."""

    #: The TLS handshake must complete (started by the first bytes received).
    HANDSHAKE = 1
    #: A graceful close must complete.
    CLOSE = 2
    #: A server session left without connections waits this long for a rejoin.
    REJOIN = 3
    #: A second after the last I/O, the connections give their record buffers back.
    TRIM = 4


class TimerSet:
    """Deadlines by :class:`Timer` (absolute times, on the I/O layer's clock)."""

    __slots__ = ("_at",)

    def __init__(self) -> None:
        self._at: dict[Timer, float] = {}

    def set(self, timer: Timer, deadline: float) -> None:
        """Arm (or move) ``timer``."""
        self._at[timer] = deadline

    def cancel(self, timer: Timer) -> None:
        """Disarm ``timer``."""
        self._at.pop(timer, None)

    def get(self, timer: Timer) -> float | None:
        """The deadline of ``timer``, if armed."""
        return self._at.get(timer)

    def expired(self, timer: Timer, now: float) -> bool:
        """Whether ``timer`` is armed and its deadline has come."""
        deadline = self._at.get(timer)
        return deadline is not None and now >= deadline

    def next(self) -> float | None:
        """The earliest deadline armed."""
        return min(self._at.values()) if self._at else None

    def clear(self) -> None:
        """Disarm every timer (the session ended)."""
        self._at.clear()
