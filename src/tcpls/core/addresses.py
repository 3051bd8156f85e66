"""Addresses: ours to announce, and those the peer advertised or withdrew.

Owns, for one session (design: Addresses), the New Address and Remove Address frames we
queue for our own extra addresses, and what the peer's frames told us. A removal
is remembered even for an address ID not known yet, so that a New Address which
arrives after its Remove Address (sent again on another connection after a failure)
stays ignored; a withdrawn address is never used again, not even to rejoin
(draft-04 §5.2.8).
"""

from __future__ import annotations

import ipaddress
from collections import deque

from tcpls.wire.frames import Frame, NewAddress, RemoveAddress

__all__ = ["AddressBook"]

#: Empty sets shared by every session (each ``frozenset()`` would be 216 bytes of its own).
_NO_ADDRESSES: frozenset[tuple[str, int]] = frozenset()
_NO_IDS: frozenset[int] = frozenset()


class AddressBook:
    """The peer's extra addresses for one session."""

    __slots__ = ("_control", "_removed", "peer", "withdrawn")

    def __init__(self, control: deque[Frame]) -> None:
        self._control = control
        #: Addresses the peer advertised, by address ID.
        self.peer: dict[int, tuple[str, int]] = {}
        #: Addresses the peer withdrew: no new connection may go to them. (Both sets start
        #: as the shared empty one and get a set of their own on first use; design: Idle
        #: memory.)
        self.withdrawn: frozenset[tuple[str, int]] | set[tuple[str, int]] = _NO_ADDRESSES
        self._removed: frozenset[int] | set[int] = _NO_IDS

    def advertised(self, frame: NewAddress) -> tuple[str, int] | None:
        """The peer sent New Address: the address, if it is new (one whose ID is known or
        was removed is ignored)."""
        aid = frame.address_id
        if aid in self._removed or aid in self.peer:
            return None  # MUST ignore (draft-04 §5.2.7)
        entry = self.peer[aid] = (str(frame.address), frame.port)
        return entry

    def removed(self, address_id: int) -> tuple[str, int] | None:
        """The peer sent Remove Address; returns the address withdrawn, if it was known."""
        # (a set of its own on first use, then added to: a flood of Remove Address frames
        # must not copy the set each time)
        if isinstance(self._removed, frozenset):
            self._removed = set(self._removed)
        self._removed.add(address_id)
        entry = self.peer.pop(address_id, None)
        if entry is not None:
            if isinstance(self.withdrawn, frozenset):
                self.withdrawn = set(self.withdrawn)
            self.withdrawn.add(entry)
        return entry

    def advertise(self, address_id: int, host: str, port: int) -> None:
        """Announce an extra address of ours with New Address."""
        self._control.append(NewAddress(address_id, ipaddress.ip_address(host), port))

    def withdraw(self, address_id: int) -> None:
        """Withdraw an address we advertised with Remove Address."""
        self._control.append(RemoveAddress(address_id))
