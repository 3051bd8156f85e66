"""Join tokens (draft-04 §4.2, §5.2.5; design: Joins, Tokens).

Only the server issues tokens: 32 bytes from a CSPRNG, single use, not
correlatable with each other. A token's sequence number becomes the Connection
ID of the TCP connection it joins. The server keeps one :class:`TokenRegistry`
for all its sessions, so that a join arriving on any listening socket finds its
session; a client keeps its spare tokens in its session.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["MAX_TOKEN_SEQUENCE", "TokenRegistry"]

#: Token sequence numbers are 8 bits and 0 is the initial connection: at most 255 joins.
MAX_TOKEN_SEQUENCE = 255

S = TypeVar("S")


class TokenRegistry(Generic[S]):
    """Server side: every unused token of every session, by value.

    ``mint`` makes the token values (default: 32 random bytes); a server that runs as
    several processes mints tokens that name it (design: Token steering).
    """

    def __init__(self, mint: Callable[[], bytes] | None = None) -> None:
        self._mint = mint or _random_token
        self._tokens: dict[bytes, tuple[S, int]] = {}
        self._by_owner: dict[int, set[bytes]] = {}

    def issue(self, owner: S, sequence: int) -> bytes:
        """A fresh token for ``owner`` (a session) with this sequence number."""
        if not 1 <= sequence <= MAX_TOKEN_SEQUENCE:
            raise ValueError("token sequence numbers run from 1 to 255")
        token = self._mint()
        while token in self._tokens:  # (a 2^-128 event; never hand out one value twice)
            token = self._mint()
        self._tokens[token] = (owner, sequence)
        self._by_owner.setdefault(id(owner), set()).add(token)
        return token

    def redeem(self, token: bytes) -> tuple[S, int] | None:
        """The ``(owner, sequence)`` of a valid token, which is used up; ``None`` if invalid."""
        entry = self._tokens.pop(token, None)
        if entry is not None:
            owned = self._by_owner.get(id(entry[0]))
            if owned is not None:
                owned.discard(token)
        return entry

    def revoke_sequence(self, owner: object, sequence: int) -> None:
        """Invalidate ``owner``'s unused token with this sequence number, if any."""
        for token in list(self._by_owner.get(id(owner), ())):
            entry = self._tokens.get(token)
            if entry is not None and entry[1] == sequence:
                self.redeem(token)

    def revoke(self, owner: S) -> None:
        """Invalidate every token of ``owner`` (its session ended)."""
        for token in self._by_owner.pop(id(owner), ()):
            self._tokens.pop(token, None)

    def __len__(self) -> int:
        return len(self._tokens)


def _random_token() -> bytes:
    return secrets.token_bytes(32)
