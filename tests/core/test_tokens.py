"""Join tokens (design: Joins, Tokens): how many the server hands out, their form, replenishing,
single use, and the client's handling of New Token frames."""

from __future__ import annotations

import pytest

from tcpls.core.events import TokenReceived
from tcpls.devcert import DevPKI
from tcpls.wire.frames import NewToken
from tests.core.harness import Harness
from tests.core.util import Tap, drain_events, established, inject


def _token_events(h: Harness) -> list[int]:
    return [e.sequence for e in h.client_events if isinstance(e, TokenReceived)]


def test_default_gives_token_1_in_the_handshake_then_2_and_3(pki: DevPKI) -> None:
    h = Harness(pki)
    h.pump()
    assert _token_events(h) == [1, 2, 3]
    assert sorted(h.client.tokens) == [1, 2, 3]
    # token 1 came in tcpls_token (the handshake), 2 and 3 in New Token frames
    logged = [f for _, _, frames in h.server.connections[0].sent_log for f in (frames or [])]
    assert sorted(f.sequence for f in logged if isinstance(f, NewToken)) == [2, 3]
    assert {f.token for f in logged if isinstance(f, NewToken)} == {
        h.client.tokens[2],
        h.client.tokens[3],
    }


def test_tokens_are_32_random_distinct_bytes(pki: DevPKI) -> None:
    h1 = established(pki)
    h2 = established(pki)
    tokens = [*h1.client.tokens.values(), *h2.client.tokens.values()]
    assert len(tokens) == 6
    assert all(isinstance(t, bytes) and len(t) == 32 for t in tokens)
    assert len(set(tokens)) == 6


def test_server_registry_holds_exactly_the_outstanding_tokens(pki: DevPKI) -> None:
    h = established(pki)
    assert len(h.endpoint.registry) == 3


@pytest.mark.parametrize(
    ("max_connections", "expected"),
    [(1, []), (2, [1]), (3, [1, 2]), (4, [1, 2, 3]), (6, [1, 2, 3, 4, 5])],
)
def test_number_of_tokens_follows_max_connections(
    pki: DevPKI, max_connections: int, expected: list[int]
) -> None:
    h = established(pki, max_connections=max_connections)
    assert sorted(h.client.tokens) == expected
    assert _token_events(h) == expected
    assert len(h.endpoint.registry) == len(expected)


def test_max_connections_1_sends_no_new_token_frames(pki: DevPKI) -> None:
    h = Harness(pki, max_connections=1)
    h.pump()
    assert h.client.tokens == {}
    assert not h.server.connections[0].sent_log
    tap = Tap(h)
    h.advance(1.0)
    assert not any(isinstance(f, NewToken) for _, _, r in tap.records for f in r.frames)
    assert h.client.token_book.take() is None


def test_plain_tls_fallback_has_no_tokens(pki: DevPKI) -> None:
    h = Harness(pki, server_tcpls=False)
    h.pump()
    assert h.client.tokens == {}
    assert _token_events(h) == []
    assert len(h.endpoint.registry) == 0


def test_join_uses_the_lowest_token_as_connection_id(pki: DevPKI) -> None:
    h = established(pki)
    token1 = h.client.tokens[1]
    link = h.join()
    assert link.client_id == 1
    assert sorted(h.client.connections) == [0, 1]
    assert sorted(h.server.connections) == [0, 1]
    assert sorted(h.client.tokens) == [2, 3]
    assert token1 not in h.client.tokens.values()
    assert len(h.endpoint.registry) == 2  # token 1 is used up


def test_tokens_are_replenished_when_a_connection_leaves(pki: DevPKI) -> None:
    h = established(pki)
    link = h.join()
    h.pump()
    assert sorted(h.client.tokens) == [2, 3]  # 2 connections + 2 tokens = 4
    h.cut(link, "reset")
    h.pump()
    h.advance(0.05)
    # a new sequence number, never 1 again
    assert sorted(h.client.tokens) == [2, 3, 4]
    assert len(h.endpoint.registry) == 3


def test_a_used_token_cannot_join_again(pki: DevPKI) -> None:
    h = established(pki)
    token1 = h.client.tokens[1]
    h.join()
    assert h.endpoint.registry.redeem(token1) is None


def test_tokens_are_revoked_when_the_session_closes(pki: DevPKI) -> None:
    h = established(pki)
    assert len(h.endpoint.registry) == 3
    h.client.close()
    h.server.close()
    h.pump()
    assert h.server.closed
    assert len(h.endpoint.registry) == 0


def test_duplicate_new_token_is_idempotent(pki: DevPKI) -> None:
    h = established(pki)
    drain_events(h.client)
    inject(h, h.server, h.client, [NewToken(7, b"a" * 32)])
    inject(h, h.server, h.client, [NewToken(7, b"a" * 32)])
    assert drain_events(h.client) == [TokenReceived(7)]
    assert h.client.tokens[7] == b"a" * 32
    assert not h.client.closed


def test_new_token_for_a_connection_in_use_is_ignored(pki: DevPKI) -> None:
    h = established(pki)
    h.join()  # connection 1 exists now
    drain_events(h.client)
    inject(h, h.server, h.client, [NewToken(1, b"b" * 32)])
    assert 1 not in h.client.tokens
    assert drain_events(h.client) == []
    assert not h.client.closed


def test_new_tokens_of_a_failed_connection_are_sent_again(pki: DevPKI) -> None:
    """design: Retransmission: New Token frames are retransmittable; the client takes them
    idempotently.
    """
    h = Harness(pki)
    h.pump()  # the record with New Tokens 2 and 3 is not acknowledged yet
    assert h.server.connections[0].sent_log
    original = dict(h.client.tokens)
    h.join()  # uses token 1
    h.cut(h.links[0], "reset")
    h.pump()
    h.advance(0.05)
    assert sorted(h.client.tokens) == [2, 3, 4]
    assert h.client.tokens[2] == original[2] and h.client.tokens[3] == original[3]
    assert not h.client.closed and not h.server.closed


def test_reinjected_new_token_is_not_used_for_a_second_join(pki: DevPKI) -> None:
    h = Harness(pki)
    h.pump()  # the record with New Tokens 2 and 3 is not acknowledged yet
    h.join()  # token 1 -> connection 1
    h.join()  # token 2 -> connection 2
    h.cut(h.links[0], "reset")  # the server reinjects New Tokens 2 and 3 (design: Retransmission)
    h.pump()
    assert 2 not in h.client.tokens  # already used by connection 2
    link = h.join()  # must use a fresh token
    assert link.client_id in (3, 4)
    assert h.rejected_joins == 0


def test_new_token_for_a_join_in_progress_is_ignored(pki: DevPKI) -> None:
    h = established(pki)
    _, seq = h.client.start_join()  # the TCP connection is still being set up
    inject(
        h, h.server, h.client, [NewToken(seq, b"r" * 32)]
    )  # reinjected (design: Retransmission)
    assert seq not in h.client.tokens
    _, other = h.client.start_join()
    assert other != seq


def test_a_token_whose_join_failed_is_tried_once_more_after_fresh_ones() -> None:
    """A join that died with its path may never have reached the server: its token gets
    one more try, after the fresh ones, then it is gone."""
    from tcpls.core.joins import TokenBook

    class Owner:
        pass

    owner = Owner()
    book: TokenBook[Owner] = TokenBook(owner, None, 4)
    book.spare.update({1: b"a" * 32, 2: b"b" * 32})
    seq, token = book.take()  # type: ignore[misc]
    assert seq == 1
    book.joining(seq, token)
    book.join_failed(seq)
    assert book.take() == (2, b"b" * 32)  # a fresh token first
    assert book.take() == (1, b"a" * 32)  # then the doubtful one, once
    book.joining(1, b"a" * 32)
    book.join_failed(1)
    assert book.take() is None
