"""Fixtures shared by every test: throw-away PKIs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcpls.devcert import DevPKI, make_test_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    """A CA and an ECDSA P-256 server certificate for localhost / 127.0.0.1."""
    return make_test_pki(tmp_path_factory.mktemp("pki-ecdsa"))


@pytest.fixture(scope="session")
def pki_rsa(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    """A CA and an RSA 2048 server certificate."""
    return make_test_pki(tmp_path_factory.mktemp("pki-rsa"), key_type="rsa")


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    """A second, unrelated CA (for verification failures)."""
    return make_test_pki(tmp_path_factory.mktemp("pki-other"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parts[-2:-1] == ("interop",):
            item.add_marker(pytest.mark.interop)
