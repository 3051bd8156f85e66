"""Fixtures of the adversarial suite: a fresh ``tcpls serve --echo`` per case, and its arena."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpls.devcert import DevPKI
from tests.adversarial.hostile import Arena, ServerProcess, can_reset_peak, good_client_echo

#: File descriptors the test process (and the server it starts, which inherits them) may
#: open: the 1,000-connection case needs more than 1,024.
_NOFILE = 8192


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "adversarial: a hostile authenticated client against a live tcpls server"
    )


@pytest.fixture(scope="session", autouse=True)
def _enough_file_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _NOFILE if hard == resource.RLIM_INFINITY else min(_NOFILE, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.fixture
def server(pki: DevPKI, tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh ``tcpls serve --echo`` (default settings) for one case."""
    proc = ServerProcess(pki, tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def arena(server: ServerProcess, pki: DevPKI, request: pytest.FixtureRequest) -> Iterator[Arena]:
    """One case: the server, warmed up by one good client, with its baseline taken."""
    good_client_echo(server.port, pki, timeout=10.0)  # imports and first-use allocations
    server.wait_idle(timeout=3.0)
    arena = Arena(server=server, pki=pki, name=request.node.name)
    arena.begin()
    try:
        yield arena
    finally:
        for client in arena.clients:
            client.close()


@pytest.fixture
def peak_reset(server: ServerProcess) -> None:
    """Cases whose bound is on memory *growth* need VmHWM reset to the baseline."""
    if not can_reset_peak() or not server.reset_peak():
        pytest.skip(
            "needs root (or a kernel that lets us write /proc/PID/clear_refs): a bound on "
            "memory growth is measured by resetting the server's peak RSS (VmHWM)"
        )
