"""TCP Fast Open: once the kernel holds a cookie, the ClientHello (and a join's) rides in
the SYN. Counted with the kernel's own TcpExt counters."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

import tcpls
from tcpls.aio import fastopen
from tcpls.apps.echo import echo_handler
from tcpls.devcert import DevPKI

_SYSCTL = "/proc/sys/net/ipv4/tcp_fastopen"


def _counters() -> dict[str, int]:
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
    return {}


@pytest.fixture
def fastopen_kernel() -> Iterator[None]:
    """A kernel that allows Fast Open for clients and servers (restored afterwards)."""
    if fastopen.kernel_mask() is None:
        pytest.skip("no net.ipv4.tcp_fastopen here (not Linux)")
    if os.geteuid() != 0:
        pytest.skip("setting net.ipv4.tcp_fastopen needs root")
    with open(_SYSCTL) as f:
        before = f.read()
    with open(_SYSCTL, "w") as f:
        f.write("3")
    try:
        yield
    finally:
        with open(_SYSCTL, "w") as f:
            f.write(before)


def test_client_hello_and_join_ride_in_the_syn(pki: DevPKI, fastopen_kernel: None) -> None:
    server_config = tcpls.ServerConfig(
        certfile=str(pki.cert_file), keyfile=str(pki.key_file), fastopen=True
    )
    client_config = tcpls.ClientConfig(
        cafile=str(pki.ca_file), server_name="localhost", fastopen=True
    )

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as server:
            # the first connection fetches the cookie
            async with tcpls.connect("127.0.0.1", server.port, config=client_config):
                pass
            before = _counters()
            async with tcpls.connect("127.0.0.1", server.port, config=client_config) as session:
                await session.join("127.0.0.1", server.port)
                reader, writer = await session.open_stream()
                writer.write(b"ping")
                writer.write_eof()
                assert await asyncio.wait_for(reader.read(), 5) == b"ping"
            after = _counters()
        # the second session's connection and its join both carried data in the SYN
        assert after["TCPFastOpenActive"] - before["TCPFastOpenActive"] >= 2
        assert after["TCPFastOpenPassive"] - before["TCPFastOpenPassive"] >= 2

    asyncio.run(run())


def test_a_server_without_kernel_support_warns_and_serves(
    pki: DevPKI, caplog: pytest.LogCaptureFixture
) -> None:
    if fastopen.kernel_mask() is None or os.geteuid() != 0:
        pytest.skip("needs Linux and root to change net.ipv4.tcp_fastopen")
    with open(_SYSCTL) as f:
        before = f.read()
    with open(_SYSCTL, "w") as f:
        f.write("1")
    server_config = tcpls.ServerConfig(
        certfile=str(pki.cert_file), keyfile=str(pki.key_file), fastopen=True
    )
    client_config = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as server:
            async with tcpls.connect("127.0.0.1", server.port, config=client_config) as session:
                assert session.tcpls_negotiated

    try:
        asyncio.run(run())
    finally:
        with open(_SYSCTL, "w") as f:
            f.write(before)
    assert "net.ipv4.tcp_fastopen=1" in caplog.text
