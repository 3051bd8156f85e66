"""Join tokens of one session: those the server issued, those the client holds spare.

Owns, for one session (design: Joins, Tokens):

* server side: the sequence numbers handed out and not redeemed yet, and the next one;
  tokens live in the server-wide :class:`~tcpls.core.tokens.TokenRegistry`, under this
  session, so that a join arriving on any listening socket finds its session;
* client side: the spare tokens by sequence number, and the tokens of joins under way
  (a join whose TCP connection never came up gives its token back);
* both: the Connection IDs used so far, which a token may not name again.

A token's sequence number becomes the Connection ID of the connection it joins.
"""

from __future__ import annotations

import weakref
from collections.abc import Container
from typing import Generic, TypeVar

from tcpls.core.tokens import MAX_TOKEN_SEQUENCE, TokenRegistry
from tcpls.errors import IllegalParameter
from tcpls.wire.frames import NewToken

__all__ = ["TokenBook"]

S = TypeVar("S")

#: The Connection IDs used by a new session (the initial connection's), and no IDs: shared
#: by every session (each ``frozenset()`` would be 216 bytes of its own).
_INITIAL: frozenset[int] = frozenset({0})
_NONE: frozenset[int] = frozenset()


class TokenBook(Generic[S]):
    """The join tokens of the session ``owner`` (see the module docstring)."""

    __slots__ = (
        "_joining",
        "_max_connections",
        "_next_sequence",
        "_outstanding",
        "_owner",
        "_registry",
        "_retried",
        "_used",
        "spare",
    )

    def __init__(self, owner: S, registry: TokenRegistry[S] | None, max_connections: int) -> None:
        self._max_connections = max_connections
        self._owner = weakref.ref(owner)  # (the session holds the book: no cycle)
        self._registry = registry
        self._next_sequence = 1
        self._outstanding: set[int] = set()
        # (replaced, not updated: rarely changed, shared until then; design: Idle memory)
        self._used = _INITIAL
        self._joining: dict[int, bytes] = {}
        self._retried = _NONE
        #: Client: spare join tokens by sequence number.
        self.spare: dict[int, bytes] = {}

    # ------------------------------------------------------------------ server

    @property
    def issues(self) -> bool:
        """Whether this session hands out tokens (a server that allows joins)."""
        return self._registry is not None

    @property
    def outstanding(self) -> frozenset[int]:
        """Sequence numbers of the tokens handed out and not redeemed yet."""
        return frozenset(self._outstanding)

    @property
    def used_connection_ids(self) -> frozenset[int]:
        """The Connection IDs used so far (0 and every join that completed)."""
        return self._used

    def for_handshake(self) -> bytes | None:
        """Server: the token to send in ``tcpls_token`` (sequence 1), if joins are allowed."""
        if self._max_connections < 2:
            return None
        issued = self.issue()
        return issued[1] if issued is not None else None

    def issue(self) -> tuple[int, bytes] | None:
        """A fresh token and its sequence number (``None``: the 255 are used up)."""
        if self._registry is None or self._next_sequence > MAX_TOKEN_SEQUENCE:
            return None
        seq = self._next_sequence
        self._next_sequence += 1
        self._outstanding.add(seq)
        owner = self._owner()
        assert owner is not None
        return seq, self._registry.issue(owner, seq)

    def replenish(self, live_connections: int, max_connections: int) -> list[NewToken]:
        """New Token frames that bring the connections plus the tokens out to the limit."""
        frames: list[NewToken] = []
        while live_connections + len(self._outstanding) < max_connections:
            issued = self.issue()
            if issued is None:
                break
            frames.append(NewToken(*issued))
        return frames

    def redeemed(self, sequence: int) -> None:
        """A join with this token arrived: the sequence is now a Connection ID."""
        self._outstanding.discard(sequence)
        self._used |= {sequence}

    def join_never_arrived(self, sequence: int) -> bool:
        """The client reset the connection of a token we issued and never saw: revoke it
        (another is handed out). Returns whether the sequence was outstanding."""
        if sequence not in self._outstanding or self._registry is None:
            return False
        self._registry.revoke_sequence(self._owner(), sequence)
        self._outstanding.discard(sequence)
        return True

    def revoke_all(self) -> None:
        """The session ended, or fell back to plain TLS: no token of it is valid."""
        self._outstanding.clear()
        owner = self._owner()
        if self._registry is not None and owner is not None:
            self._registry.revoke(owner)

    # ------------------------------------------------------------------ client

    def received(self, frame: NewToken, connection_ids: Container[int]) -> bool:
        """The server sent New Token; returns whether it is a new spare token.

        ``connection_ids`` holds the IDs of the connections we have (a token may not
        name one of them).
        """
        seq = frame.sequence
        if seq == 0:
            raise IllegalParameter("token sequence 0 is the initial connection")
        if seq in self._used or seq in connection_ids:
            return False
        new = seq not in self.spare
        self.spare[seq] = bytes(frame.token)
        return new

    def take(self) -> tuple[int, bytes] | None:
        """A spare token ``(sequence, token)`` for a join, removed from the store (fresh
        tokens first, then one whose join failed: see :meth:`join_failed`)."""
        if not self.spare:
            return None
        fresh = [s for s in self.spare if s not in self._retried]
        seq = min(fresh) if fresh else min(self.spare)
        return seq, self.spare.pop(seq)

    def joining(self, sequence: int, token: bytes) -> None:
        """A join with this token is under way."""
        self._joining[sequence] = token

    def joined(self, sequence: int) -> None:
        """The join of ``sequence`` completed (or failed after its token was sent)."""
        self._joining.pop(sequence, None)
        self._used |= {sequence}

    def join_failed(self, sequence: int) -> None:
        """The join of ``sequence`` failed after its token was sent.

        The token may never have reached the server (the path died under the join): it
        is kept for one more try, after the fresh tokens; if the server did see it, that
        try is refused and the token is gone (design: Tokens).
        """
        token = self._joining.pop(sequence, None)
        if token is not None and sequence not in self._retried:
            self._retried |= {sequence}
            self.spare[sequence] = token

    def join_abandoned(self, sequence: int, token_sent: bool) -> None:
        """The join of ``sequence`` ended before its TCP connection came up; an unsent
        token goes back to the spare ones."""
        token = self._joining.pop(sequence, None)
        if token is not None and not token_sent:
            self.spare[sequence] = token
