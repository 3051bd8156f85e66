"""Joins that land on the wrong worker are passed to the one holding their session."""

from __future__ import annotations

import array
import asyncio
import dataclasses
import os
import socket
import stat
import tempfile

import pytest

import tcpls
from tcpls.aio.handoff import HandoffChannel, handoff_path
from tcpls.config import Steering
from tcpls.devcert import DevPKI

KEY = bytes(range(16))


def _reuseport_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


async def _two_workers(
    pki: DevPKI,
    directory: str | None,
    machines: tuple[int, int] = (0, 0),
    *,
    max_early_data: int = 0,
) -> tuple[tcpls.Server, tcpls.Server, int]:
    first = _reuseport_socket(0)
    port = first.getsockname()[1]
    second = _reuseport_socket(port)
    servers = []
    for worker, sock in enumerate((first, second)):
        config = tcpls.ServerConfig(
            certfile=str(pki.cert_file),
            keyfile=str(pki.key_file),
            steering=Steering(KEY, machine=machines[worker], worker=worker, handoff_dir=directory),
            max_early_data=max_early_data,
        )
        servers.append(await tcpls.serve(_echo, config=config, sock=sock))
    return servers[0], servers[1], port


async def _echo(session: tcpls.Session) -> None:
    async for reader, writer in session:
        writer.write(await reader.read())
        writer.write_eof()


def _client(pki: DevPKI) -> tcpls.ClientConfig:
    return tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")


def test_every_join_reaches_its_session_whichever_worker_accepts_it(pki: DevPKI) -> None:
    """Two servers share one port (SO_REUSEPORT): the kernel spreads connections over
    them by address hash, so about half the joins land on the worker that does not hold
    the session. Every join succeeds, and the counters show the passed ones."""

    async def run() -> None:
        with tempfile.TemporaryDirectory() as directory:
            a, b, port = await _two_workers(pki, directory)
            try:
                for _ in range(40):
                    async with tcpls.connect("127.0.0.1", port, config=_client(pki)) as s:
                        await s.join("127.0.0.1", port)
                        await s.join("127.0.0.1", port)
                        assert len(s.connections) == 3
                        reader, writer = await s.open_stream()
                        writer.write(b"x" * 100_000)
                        writer.write_eof()
                        assert await reader.read() == b"x" * 100_000
                passed = a.counters["joins_passed"] + b.counters["joins_passed"]
                received = a.counters["joins_received"] + b.counters["joins_received"]
                assert passed == received
                assert 10 <= passed <= 70, (a.counters, b.counters)
                assert a.counters["joins_not_passed"] + b.counters["joins_not_passed"] == 0
            finally:
                for server in (a, b):
                    server.close()
                    await server.wait_closed()
            assert not os.listdir(directory)  # each worker removed its socket

    asyncio.run(run())


def test_a_join_for_another_machine_is_refused_with_illegal_parameter(pki: DevPKI) -> None:
    """Machines behind a load balancer do not share sessions: a join that the balancer
    sends to the wrong machine fails cleanly, and only that join."""

    async def run() -> None:
        a, b, port = await _two_workers(pki, None, machines=(1, 2))
        try:
            refused = joined = 0
            for _ in range(12):
                async with tcpls.connect("127.0.0.1", port, config=_client(pki)) as s:
                    try:
                        await s.join("127.0.0.1", port)
                        joined += 1
                    except tcpls.TCPLSError as exc:
                        assert "illegal_parameter" in str(exc) or "token" in str(exc)
                        refused += 1
                    reader, writer = await s.open_stream()
                    writer.write(b"still fine")
                    writer.write_eof()
                    assert await reader.read() == b"still fine"
            assert refused and joined
            assert a.counters["joins_foreign"] + b.counters["joins_foreign"] == refused
        finally:
            for server in (a, b):
                server.close()
                await server.wait_closed()

    asyncio.run(run())


@pytest.mark.parametrize(
    "message",
    [b"", b"garbage", b"TCPLSH1\0" + b"x" * 10],
)
def test_hostile_handoff_messages_are_ignored(message: bytes) -> None:
    """A datagram without exactly one TCP socket attached is dropped, and its
    descriptors closed."""

    async def run() -> None:
        with tempfile.TemporaryDirectory() as directory:
            got: list[bytes] = []
            channel = HandoffChannel(directory, 7, lambda sock, data: got.append(data))
            channel.start(asyncio.get_running_loop())
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            r, w = os.pipe()
            try:
                sender.sendto(message, handoff_path(directory, 7))
                sender.sendmsg(
                    [b"TCPLSH1\0data"],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, r.to_bytes(4, "little") * 2)],
                    0,
                    handoff_path(directory, 7),
                )
                await asyncio.sleep(0.05)
                assert got == []
                assert channel.received == 0
            finally:
                channel.close()
                sender.close()
                os.close(r)
                os.close(w)

    asyncio.run(run())


def test_a_join_for_a_worker_that_is_gone_fails_alone(pki: DevPKI) -> None:
    """A token that names a worker of this machine that no longer listens (it stopped,
    or the token is forged with the shared key): the join fails, is counted, and the
    session goes on."""
    from tcpls.core.steering import ServerID, TokenSteering

    async def run() -> None:
        with tempfile.TemporaryDirectory() as directory:
            a, b, port = await _two_workers(pki, directory)
            ghost = TokenSteering(KEY, ServerID(0, 99))
            try:
                async with tcpls.connect("127.0.0.1", port, config=_client(pki)) as s:
                    spare = s._core.token_book.spare  # (the test forges a token)
                    sequence = min(spare)
                    spare[sequence] = ghost.mint()
                    for _ in range(8):  # whichever worker takes it, none can pass it on
                        with pytest.raises((tcpls.TCPLSError, OSError, TimeoutError)):
                            await s.join("127.0.0.1", port, timeout=3)
                        if a.counters["joins_not_passed"] + b.counters["joins_not_passed"]:
                            break
                        spare[min(spare)] = ghost.mint()
                    reader, writer = await s.open_stream()
                    writer.write(b"fine")
                    writer.write_eof()
                    assert await reader.read() == b"fine"
                assert a.counters["joins_not_passed"] + b.counters["joins_not_passed"] >= 1
            finally:
                for server in (a, b):
                    server.close()
                    await server.wait_closed()

    asyncio.run(run())


def test_a_resumption_reaches_the_worker_that_holds_its_ticket(pki: DevPKI) -> None:
    """Tickets are per process and single use; their labels name the worker that issued
    them, so a resuming ClientHello that lands on the other worker is passed to it: every
    resumption resumes, with its early data accepted, wherever the kernel sends it."""

    async def run() -> None:
        with tempfile.TemporaryDirectory() as directory:
            a, b, port = await _two_workers(pki, directory, max_early_data=4096)
            try:
                config = _client(pki)
                for _ in range(16):
                    async with tcpls.connect("127.0.0.1", port, config=config) as first:
                        await asyncio.sleep(0.05)  # the ticket comes after the handshake
                        ticket = first.session_ticket
                    assert ticket is not None
                    again = dataclasses.replace(config, session_ticket=ticket, early_data=True)
                    second = await tcpls.connect("127.0.0.1", port, config=again, early_data=b"hi")
                    async with second:
                        assert second.session_resumed and second.early_data_accepted
                passed = a.counters["joins_passed"] + b.counters["joins_passed"]
                assert passed >= 2, (a.counters, b.counters)
            finally:
                for server in (a, b):
                    server.close()
                    await server.wait_closed()

    asyncio.run(run())


def test_a_resumption_for_a_worker_that_is_gone_gets_a_full_handshake(pki: DevPKI) -> None:
    """The worker that issued the ticket stopped: the resumption is not lost, it becomes a
    full handshake on the worker that read it."""

    async def run() -> None:
        with tempfile.TemporaryDirectory() as directory:
            a, b, port = await _two_workers(pki, directory)
            try:
                config = _client(pki)
                async with tcpls.connect("127.0.0.1", port, config=config) as first:
                    await asyncio.sleep(0.05)
                    ticket = first.session_ticket
                assert ticket is not None
                # the ticket's worker goes away: stop whichever issued it
                issuer = a if a.counters["sessions_served"] else b
                survivor = b if issuer is a else a
                issuer.close()
                await issuer.wait_closed()
                again = dataclasses.replace(config, session_ticket=ticket)
                async with tcpls.connect("127.0.0.1", port, config=again) as second:
                    assert not second.session_resumed
                    reader, writer = await second.open_stream()
                    writer.write(b"full")
                    writer.write_eof()
                    assert await reader.read() == b"full"
                assert survivor.counters["joins_not_passed"] == 1
            finally:
                for server in (a, b):
                    server.close()
                    await server.wait_closed()

    asyncio.run(run())


def test_the_handoff_socket_is_for_the_server_user_only_whatever_the_umask() -> None:
    """An application may put the sockets in a directory others can enter: the socket
    file is still created 0600, even under umask 0."""
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o777)
        umask = os.umask(0)
        try:
            channel = HandoffChannel(directory, 1, lambda sock, data: sock.close())
        finally:
            os.umask(umask)
        try:
            assert stat.S_IMODE(os.stat(handoff_path(directory, 1)).st_mode) == 0o600
        finally:
            channel.close()


def _send_tcp_socket(path: str, as_uid: int | None) -> None:
    """Send a fresh TCP socket to the hand-off socket at ``path``, from a child process
    that runs as ``as_uid`` (``None``: this process's user)."""
    pid = os.fork()
    if pid == 0:  # the child: exits, never returns into pytest
        code = 1
        try:
            if as_uid is not None:
                os.setgid(as_uid)
                os.setuid(as_uid)
            tcp = socket.socket()
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            fds = array.array("i", [tcp.fileno()]).tobytes()
            sender.sendmsg(
                [b"TCPLSH1\0data"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], 0, path
            )
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the sender could not send"


def test_a_handoff_from_another_user_is_refused() -> None:
    """Even when the socket file was made writable by all (an operator loosening it), a
    connection sent by another user is refused and its descriptor closed: the kernel
    gives each message's sender uid, and only the server's own user is taken."""
    if os.geteuid() != 0:
        pytest.skip("sending as another user needs root (make test runs as root)")
    directory = tempfile.mkdtemp(dir="/tmp")
    os.chmod(directory, 0o777)
    got: list[bytes] = []

    def receive(sock: socket.socket, data: bytes) -> None:
        got.append(data)
        sock.close()

    channel = HandoffChannel(directory, 3, receive)
    path = handoff_path(directory, 3)
    os.chmod(path, 0o666)
    open_fds = len(os.listdir("/proc/self/fd")) + 3  # the loop's selector and self-pipe

    async def run() -> None:
        channel.start(asyncio.get_running_loop())
        _send_tcp_socket(path, as_uid=65534)  # nobody
        await asyncio.sleep(0.05)
        assert got == [] and channel.received == 0
        assert len(os.listdir("/proc/self/fd")) == open_fds, "the descriptor was kept"
        _send_tcp_socket(path, as_uid=None)  # the control: the server's own user
        await asyncio.sleep(0.05)
        assert got == [b"data"] and channel.received == 1

    try:
        asyncio.run(run())
    finally:
        channel.close()
        os.rmdir(directory)
