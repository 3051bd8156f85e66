"""Resumption and 0-RTT early data between our own client and server, both modes."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

import tcpls
from tcpls.devcert import DevPKI

REQUEST = b"GET /index.html\r\n"


async def _answer(session: Any) -> None:
    """Reply to the first stream's request with how much of it came early, then echo the
    rest."""
    reader, writer = await session.accept_stream()
    request = await reader.readuntil(b"\r\n")
    writer.write(f"early={reader.early_data_bytes} {request!r}\r\n".encode())
    writer.write(await reader.read())
    writer.write_eof()
    await writer.drain()


def _configs(
    pki: DevPKI, *, tcpls_mode: bool, max_early_data: int
) -> tuple[tcpls.ServerConfig, tcpls.ClientConfig]:
    server = tcpls.ServerConfig(
        certfile=str(pki.cert_file),
        keyfile=str(pki.key_file),
        tcpls=tcpls_mode,
        max_early_data=max_early_data,
    )
    client = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
    return server, client


async def _session(
    port: int, config: tcpls.ClientConfig, early: bytes | None, tail: bytes = b""
) -> tuple[Any, bytes]:
    session = await tcpls.connect("127.0.0.1", port, config=config, early_data=early)
    reader, writer = await session.open_stream()
    if early is None:
        writer.write(REQUEST)
    writer.write(tail)
    writer.write_eof()
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    await session.aclose(timeout=5)
    return session, answer


@pytest.mark.parametrize("tcpls_mode", [True, False], ids=["tcpls", "plain"])
def test_resumed_session_sends_its_first_request_as_early_data(
    pki: DevPKI, tcpls_mode: bool
) -> None:
    server_config, client_config = _configs(pki, tcpls_mode=tcpls_mode, max_early_data=16384)

    async def run() -> None:
        async with await tcpls.serve(_answer, "127.0.0.1", 0, config=server_config) as server:
            first, answer = await _session(server.port, client_config, None)
            assert answer.startswith(b"early=0 ") and not first.session_resumed
            ticket = first.session_ticket
            assert ticket is not None and ticket.max_early_data == 16384
            assert ticket.tcpls is tcpls_mode
            config = dataclasses.replace(client_config, session_ticket=ticket, early_data=True)
            second, answer = await _session(server.port, config, REQUEST, b"after")
            assert second.session_resumed and second.early_data_accepted
            assert second.tcpls_negotiated is tcpls_mode
            assert answer == f"early={len(REQUEST)} {REQUEST!r}\r\n".encode() + b"after"
            # the ticket was used: replaying it gets a full handshake, no early data
            third, answer = await _session(server.port, config, REQUEST)
            assert not third.session_resumed and not third.early_data_accepted
            assert answer.startswith(b"early=0 ")

    asyncio.run(run())


@pytest.mark.parametrize("tcpls_mode", [True, False], ids=["tcpls", "plain"])
def test_declined_early_data_arrives_once(pki: DevPKI, tcpls_mode: bool) -> None:
    server_config, client_config = _configs(pki, tcpls_mode=tcpls_mode, max_early_data=16384)
    no_early = dataclasses.replace(server_config, max_early_data=0)

    async def run() -> None:
        async with await tcpls.serve(_answer, "127.0.0.1", 0, config=server_config) as server:
            first, _ = await _session(server.port, client_config, None)
            ticket = first.session_ticket
        # the same tickets, a server that now declines early data
        async with await tcpls.serve(_answer, "127.0.0.1", 0, config=no_early) as server:
            assert ticket is not None
            config = dataclasses.replace(client_config, session_ticket=ticket, early_data=True)
            second, answer = await _session(server.port, config, REQUEST * 3)
            assert not second.early_data_accepted and not second.session_resumed
            assert answer == f"early=0 {REQUEST!r}\r\n".encode() + REQUEST * 2

    asyncio.run(run())


def test_early_data_beyond_the_ticket_limit_goes_after_the_handshake(pki: DevPKI) -> None:
    server_config, client_config = _configs(pki, tcpls_mode=True, max_early_data=64)

    async def run() -> None:
        async with await tcpls.serve(_answer, "127.0.0.1", 0, config=server_config) as server:
            first, _ = await _session(server.port, client_config, None)
            config = dataclasses.replace(
                client_config, session_ticket=first.session_ticket, early_data=True
            )
            big = REQUEST + bytes(range(256)) * 40
            second, answer = await _session(server.port, config, big)
            assert second.early_data_accepted
            head, _, rest = answer.partition(b"\r\n")
            early = int(head.split(b" ")[0].removeprefix(b"early="))
            assert 0 < early <= 64 - 15  # one Stream frame header counts against the limit
            assert rest == big[len(REQUEST) :]

    asyncio.run(run())


@pytest.mark.parametrize("tcpls_mode", [True, False], ids=["tcpls", "plain"])
def test_a_server_that_answers_early_data_and_closes_at_once_writes_nothing_after_eof(
    pki: DevPKI, tcpls_mode: bool
) -> None:
    """The handler answers the early request and ends the session before the client's
    Finished: what the session produces after the server's EOF (nothing may follow it
    on TCP) is not written; the transport used to fail with "Cannot call write() after
    write_eof()" inside the server's event loop."""
    server_config, client_config = _configs(pki, tcpls_mode=tcpls_mode, max_early_data=16384)

    async def answer_and_close(session: Any) -> None:
        reader, writer = await session.accept_stream()
        writer.write(b"got " + await reader.readuntil(b"\r\n"))
        writer.write_eof()
        await writer.drain()
        await session.aclose()

    async def run() -> list[str]:
        failures: list[str] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: failures.append(str(context.get("exception")))
        )
        async with await tcpls.serve(
            answer_and_close, "127.0.0.1", 0, config=server_config
        ) as srv:
            first, _ = await _session(srv.port, client_config, None)
            ticket = first.session_ticket
            assert ticket is not None
            config = dataclasses.replace(client_config, session_ticket=ticket, early_data=True)
            for _ in range(3):
                session, answer = await _session(srv.port, config, REQUEST)
                assert answer == b"got " + REQUEST
                config = dataclasses.replace(config, session_ticket=session.session_ticket)
                if config.session_ticket is None:
                    config = dataclasses.replace(config, session_ticket=ticket)
            await asyncio.sleep(0.2)
        return failures

    assert asyncio.run(run()) == []
