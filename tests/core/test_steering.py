"""Tokens that name their server process (design: Token steering)."""

from __future__ import annotations

import os

import pytest

from tcpls.core.steering import ServerID, TokenSteering
from tcpls.core.tokens import TokenRegistry

KEY = bytes(range(16))


def test_a_token_names_its_process_for_whoever_has_the_key() -> None:
    mine = TokenSteering(KEY, ServerID(3, 7))
    other = TokenSteering(KEY, ServerID(3, 8))
    token = mine.mint()
    assert len(token) == 32
    assert other.owner(token) == ServerID(3, 7)
    assert mine.owner(other.mint()) == ServerID(3, 8)


def test_tokens_look_random_and_unrelated() -> None:
    """No two tokens of one process share a byte pattern an observer could use: the
    first blocks differ everywhere, as random blocks do."""
    steering = TokenSteering(KEY, ServerID(0, 0))
    tokens = [steering.mint() for _ in range(2000)]
    assert len(set(tokens)) == len(tokens)
    assert len({t[:16] for t in tokens}) == len(tokens)
    for position in range(16):  # every byte position takes many values
        assert len({t[position] for t in tokens}) > 200


def test_elsewhere_names_only_the_other_processes() -> None:
    """What a worker passes on: labels of another process of the deployment (this machine
    or another), never its own or a stranger's."""
    mine = TokenSteering(KEY, ServerID(3, 7))
    assert mine.elsewhere(mine.mint()) is None
    assert mine.elsewhere(TokenSteering(KEY, ServerID(3, 8)).mint()) == ServerID(3, 8)
    assert mine.elsewhere(TokenSteering(KEY, ServerID(4, 7)).mint()) == ServerID(4, 7)
    assert mine.elsewhere(TokenSteering(os.urandom(16), ServerID(3, 8)).mint()) is None


@pytest.mark.parametrize("token", [os.urandom(32), b"", os.urandom(31), os.urandom(33)])
def test_anything_else_names_nobody(token: bytes) -> None:
    assert TokenSteering(KEY, ServerID(0, 0)).owner(token) is None


def test_a_token_of_another_deployment_names_nobody() -> None:
    theirs = TokenSteering(os.urandom(16), ServerID(0, 0)).mint()
    assert TokenSteering(KEY, ServerID(0, 0)).owner(theirs) is None


def test_random_tokens_almost_never_pass_the_check() -> None:
    steering = TokenSteering(KEY, ServerID(0, 0))
    assert sum(steering.owner(os.urandom(32)) is not None for _ in range(20000)) == 0


@pytest.mark.parametrize(
    ("key", "server_id"),
    [(bytes(15), ServerID(0, 0)), (KEY, ServerID(70000, 0)), (KEY, ServerID(0, -1))],
)
def test_bad_settings_are_refused(key: bytes, server_id: ServerID) -> None:
    with pytest.raises(ValueError):
        TokenSteering(key, server_id)


def test_the_registry_mints_with_the_steering() -> None:
    steering = TokenSteering(KEY, ServerID(1, 2))
    registry: TokenRegistry[object] = TokenRegistry(steering.mint)
    owner = object()
    token = registry.issue(owner, 1)
    assert steering.owner(token) == ServerID(1, 2)
    assert registry.redeem(token) == (owner, 1)
    assert registry.redeem(token) is None  # single use, as before
