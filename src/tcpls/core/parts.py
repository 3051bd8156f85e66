"""Attributes of the session facade that one of its parts owns.

They are read on the data path, so each is a ``property`` over a C getter
(:func:`operator.attrgetter`): reading ``session.closed`` costs what reading
``session.links.closed`` does, not a Python call.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

__all__ = ["part", "writable_part"]


def part(path: str, doc: str) -> Any:
    """A read-only attribute of the session: the attribute ``path`` of one of its parts
    (``"links.closed"``)."""
    return property(attrgetter(path), doc=doc)


def writable_part(path: str, doc: str) -> Any:
    """An attribute of the session that sets the attribute ``path`` of one of its parts."""
    owner_path, _, name = path.rpartition(".")
    owner = attrgetter(owner_path)

    def set_part(session: object, value: object) -> None:
        setattr(owner(session), name, value)

    return property(attrgetter(path), set_part, doc=doc)
