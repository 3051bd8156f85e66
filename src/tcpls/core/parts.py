"""Attributes of the session facade that one of its parts owns."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

__all__ = ["Part"]

T = TypeVar("T")


class Part(Generic[T]):
    """An attribute of the session that one of its parts owns (read-only here)."""

    __slots__ = ("_name", "_part")

    def __init__(self, part: str, name: str) -> None:
        self._part = part
        self._name = name

    def __get__(self, session: Any, owner: type | None = None) -> T:
        value: T = getattr(getattr(session, self._part), self._name)
        return value


class WritablePart(Part[T]):
    """An attribute of the session that one of its parts owns, settable through it."""

    def __set__(self, session: Any, value: T) -> None:
        setattr(getattr(session, self._part), self._name, value)
