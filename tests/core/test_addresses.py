"""The peer's addresses: a flood of Remove Address frames costs the same per frame."""

from __future__ import annotations

import ipaddress
from collections import deque

from tcpls.core.addresses import AddressBook
from tcpls.wire.frames import Frame, NewAddress


def test_a_remove_address_flood_does_not_copy_the_removed_set_per_frame() -> None:
    """Remove Address for 256 IDs in a loop (a hostile peer may send thousands per
    record): after the first one, removals add to one set (it used to be copied on every
    frame: 20 times the CPU of an ACK per byte received)."""
    book = AddressBook(deque[Frame]())
    book.removed(0)
    removed = book._removed
    for _ in range(20):
        for aid in range(256):
            book.removed(aid)
    assert book._removed is removed and len(removed) == 256


def test_removed_and_withdrawn_addresses_stay_ignored() -> None:
    book = AddressBook(deque[Frame]())
    assert book.advertised(NewAddress(1, ipaddress.ip_address("192.0.2.1"), 443)) is not None
    assert book.removed(1) == ("192.0.2.1", 443)
    assert book.withdrawn == {("192.0.2.1", 443)}
    assert book.removed(2) is None  # not known yet: remembered
    assert book.advertised(NewAddress(2, ipaddress.ip_address("192.0.2.2"), 443)) is None
    assert book.advertised(NewAddress(1, ipaddress.ip_address("192.0.2.1"), 443)) is None
    assert book.peer == {}
