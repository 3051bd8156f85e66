"""Exceptions raised by the network lab."""

from __future__ import annotations

__all__ = ["LabError", "LabUnavailable"]


class LabError(Exception):
    """A lab operation failed (a command failed, a lab does not exist, bad arguments...).

    ``str(error)`` is always one line suitable for a command-line error message.
    """


class LabUnavailable(LabError):
    """The lab cannot run on this machine: not root, or ``ip``/``tc``/``ss`` missing, ...

    ``reason`` is a one-line explanation, suitable for ``pytest.skip(reason)``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
