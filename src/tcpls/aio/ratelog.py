"""One warning a second at most for a message that an untrusted peer can repeat at will.

A server logs what it refuses or cannot do (a new session over its limits, a join it
cannot pass to another worker); a client that repeats the cause must not turn the log
into a flood. :class:`RateLimitedLog` logs the first occurrence, drops the repeats for
a second and says how many it dropped with the next line.
"""

from __future__ import annotations

import logging
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Warnings on ``logger``, one per ``interval`` seconds at most."""

    def __init__(self, logger: logging.Logger, interval: float = 1.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last = -interval
        self._missed = 0

    def log(self, message: str, *args: object) -> None:
        """Warn ``message % args``, unless a warning went out less than ``interval`` ago."""
        now = time.monotonic()
        if now - self._last < self._interval:
            self._missed += 1
            return
        if self._missed:
            message += f" ({self._missed} more in the last second)"
        self._last, self._missed = now, 0
        self._logger.warning(message, *args)
