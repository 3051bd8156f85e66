"""``tcpls serve --workers``: joins reach their worker, graceful restart and stop."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import tcpls
from tcpls.devcert import DevPKI
from tests.aio.cli_util import TCPLS
from tests.helpers import child_pids, free_port, free_ports, wait_port

_STOPPED = re.compile(
    rb"worker (\d+) stopped: (\d+) sessions, (\d+) joins passed to another worker, "
    rb"(\d+) received, (\d+) not passed, (\d+) refused"
)


@contextmanager
def workers(
    pki: DevPKI,
    *extra: str,
    count: str | None = "2",
    cert: Path | None = None,
    port: int | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``tcpls serve --echo --workers COUNT EXTRA...`` (no ``--workers`` for ``None``) on
    ``port`` (a free loopback port by default), listening; killed afterwards if still
    running."""
    port = port or free_port()
    count_args = ["--workers", count] if count is not None else []
    proc = subprocess.Popen(
        [*TCPLS, "serve", "--cert", str(cert or pki.cert_file), "--key", str(pki.key_file),
         "--host", "127.0.0.1", "--port", str(port), "--echo", *count_args, *extra],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_port(port, proc=proc)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> bytes:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err, err
    return err


def _totals(err: bytes) -> dict[str, int]:
    totals = dict.fromkeys(("sessions", "passed", "received", "not_passed", "foreign"), 0)
    for match in _STOPPED.finditer(err):
        for name, value in zip(totals, match.groups()[1:], strict=True):
            totals[name] += int(value)
    return totals


def _client(pki: DevPKI) -> tcpls.ClientConfig:
    return tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")


async def _echo(session: tcpls.Session, payload: bytes) -> None:
    reader, writer = await session.open_stream()
    writer.write(payload)
    writer.write_eof()
    assert await reader.read() == payload


def test_a_thousand_sessions_each_join_through_the_shared_port(pki: DevPKI) -> None:
    """Two workers share the port: the kernel gives each join to either of them, and
    every join still reaches its session; the workers count those they passed on."""
    sessions = 1000
    with workers(pki) as (proc, port):

        async def one(config: tcpls.ClientConfig) -> None:
            async with tcpls.connect("127.0.0.1", port, config=config) as session:
                await session.join("127.0.0.1", port)
                assert len(session.connections) == 2
                await _echo(session, b"ping")

        async def run() -> list[BaseException | None]:
            config = _client(pki)
            limit = asyncio.Semaphore(16)

            async def guarded() -> None:
                async with limit:
                    await one(config)

            return await asyncio.gather(
                *(guarded() for _ in range(sessions)), return_exceptions=True
            )

        results = asyncio.run(run())
        failures = [r for r in results if r is not None]
        assert not failures, f"{len(failures)} failed, e.g. {failures[0]!r}"
        err = _stop(proc)
        totals = _totals(err)
    assert totals["sessions"] == sessions, err
    # the kernel's hash sends about half of the joins to the other worker
    assert sessions * 0.3 < totals["passed"] < sessions * 0.7, err
    assert totals["received"] == totals["passed"]
    assert totals["not_passed"] == totals["foreign"] == 0


def test_a_graceful_restart_under_load_loses_no_session(pki: DevPKI) -> None:
    """SIGHUP while sessions are busy: the new workers take new sessions and joins
    from the same sockets, the old ones finish theirs (joins to them are passed on),
    and no session fails."""
    with workers(pki, "--grace", "20") as (proc, port):
        payload = os.urandom(200_000)

        async def busy(stop_at: float) -> int:
            done = 0
            config = _client(pki)
            while time.monotonic() < stop_at:
                async with tcpls.connect("127.0.0.1", port, config=config) as session:
                    await _echo(session, payload)
                    await asyncio.sleep(0.3)  # the restart comes while sessions are open
                    await session.join("127.0.0.1", port)  # maybe to a new worker
                    await _echo(session, payload)
                done += 1
            return done

        async def run() -> list[int]:
            stop_at = time.monotonic() + 4.0
            clients = [asyncio.ensure_future(busy(stop_at)) for _ in range(8)]
            await asyncio.sleep(1.5)
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(1.0)
            proc.send_signal(signal.SIGHUP)  # twice: three generations in all
            return await asyncio.gather(*clients)

        done = asyncio.run(run())
        assert all(n >= 3 for n in done), done
        err = _stop(proc)
    assert err.count(b"restarting the workers") == 2
    totals = _totals(err)
    assert len(_STOPPED.findall(err)) == 6  # two workers of each generation
    assert totals["sessions"] == sum(done)
    assert totals["not_passed"] == 0


def test_a_stop_lets_open_sessions_finish_and_refuses_new_ones(pki: DevPKI) -> None:
    """SIGTERM: no new connection is accepted, an open session finishes its work within
    the grace period, and one still open at its end is closed with close_notify."""
    with workers(pki, "--grace", "2") as (proc, port):

        async def run() -> None:
            config = _client(pki)
            finishing = await tcpls.connect("127.0.0.1", port, config=config)
            lingering = await tcpls.connect("127.0.0.1", port, config=config)
            await _echo(finishing, b"before")
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            with pytest.raises(OSError):
                await tcpls.connect("127.0.0.1", port, config=config)
            await _echo(finishing, b"after the signal")  # still served
            await finishing.aclose()
            reader, writer = await lingering.open_stream()
            writer.write(b"open")
            started = time.monotonic()
            # the server closes it when the grace ends: our stream ends cleanly
            assert await asyncio.wait_for(reader.read(), 10) == b"open"
            assert 1.0 < time.monotonic() - started < 4.0
            await lingering.aclose()
            assert lingering.error is None  # closed cleanly (close_notify), not reset

        asyncio.run(run())
        proc.wait(timeout=10)
        assert proc.returncode == 0


def test_a_worker_that_dies_is_replaced(pki: DevPKI) -> None:
    with workers(pki) as (proc, port):
        deadline = time.monotonic() + 10  # (the port listens before the workers start)
        while len(children := child_pids(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(children) == 2
        os.kill(children[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = child_pids(proc.pid)
            if len(now) == 2 and children[0] not in now:
                break
            time.sleep(0.1)
        else:
            pytest.fail("no new worker")

        async def run() -> None:
            for _ in range(10):
                async with tcpls.connect("127.0.0.1", port, config=_client(pki)) as session:
                    await _echo(session, b"x")

        asyncio.run(run())
        err = _stop(proc)
    assert b"ended unexpectedly" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--worker-ports", "9000"], "need --workers"),
        (["--workers", "0"], "must be positive"),
        (["--workers", "2", "--steering-key", "/nonexistent"], "cannot read the steering key"),
        (["--workers", "2", "--machine-id", "70000"], "machine IDs run from 0 to 65535"),
    ],
)
def test_bad_worker_options_are_one_line(pki: DevPKI, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [*TCPLS, "serve", "--cert", str(pki.cert_file), "--key", str(pki.key_file),
         "--echo", "--port", str(free_port()), *args],
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    assert proc.returncode != 0
    assert message.encode() in proc.stderr, proc.stderr
    assert b"Traceback" not in proc.stderr


def test_a_bad_steering_key_file_is_explained(pki: DevPKI, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("not hex at all\n")
    proc = subprocess.run(
        [*TCPLS, "serve", "--cert", str(pki.cert_file), "--key", str(pki.key_file),
         "--echo", "--port", str(free_port()), "--workers", "2", "--steering-key", str(key)],
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert b"32 hex digits" in proc.stderr


def test_worker_ports_are_advertised_and_joins_to_them_stay_put(pki: DevPKI) -> None:
    """With --worker-ports each session learns its worker's own port by New Address; a
    join there is never passed on."""
    port = free_ports(3)
    base = port + 1
    with workers(pki, "--worker-ports", str(base), port=port) as (proc, port):
        wait_port(base + 1, proc=proc)

        async def run() -> None:
            for _ in range(20):
                async with tcpls.connect("127.0.0.1", port, config=_client(pki)) as session:
                    await asyncio.sleep(0.05)
                    ((host, own),) = session.peer_addresses.values()
                    assert host == "127.0.0.1" and own in (base, base + 1)
                    await session.join(host, own)
                    await _echo(session, hashlib.sha256(b"x").digest())

        asyncio.run(run())
        totals = _totals(_stop(proc))
    assert totals["passed"] == 0 and totals["sessions"] == 20


@pytest.mark.parametrize("count", [None, "2"])
def test_sigterm_waits_for_sessions_and_sigint_does_not(pki: DevPKI, count: str | None) -> None:
    """SIGTERM gives an open session the grace period; SIGINT (Ctrl-C) closes it at once;
    with or without workers."""
    for sig, longest in ((signal.SIGTERM, None), (signal.SIGINT, 1.5)):
        with workers(pki, "--grace", "20", count=count) as (proc, port):

            async def run(
                proc: subprocess.Popen[bytes] = proc, sig: int = sig, port: int = port
            ) -> float:
                async with tcpls.connect("127.0.0.1", port, config=_client(pki)) as session:
                    reader, writer = await session.open_stream()
                    started = time.monotonic()
                    proc.send_signal(sig)
                    await asyncio.sleep(0.5)
                    writer.write(b"late")
                    writer.write_eof()
                    data = await asyncio.wait_for(reader.read(), 10)
                    return -1.0 if data != b"late" else time.monotonic() - started

            took = asyncio.run(run())
            if longest is None:
                assert took > 0, "the session was not served during the grace period"
            proc.wait(timeout=longest + 3 if longest else 20)
            assert proc.returncode == 0


def test_a_client_that_follows_advertised_addresses_joins_its_worker_directly(
    pki: DevPKI,
) -> None:
    """ClientConfig(join_advertised=True): the session joins the worker's own port as soon
    as New Address brings it, with no call from the application."""
    port = free_ports(3)
    base = port + 1
    with workers(pki, "--worker-ports", str(base), port=port) as (proc, port):
        wait_port(base + 1, proc=proc)
        config = dataclasses.replace(_client(pki), join_advertised=True)

        async def run() -> None:
            for _ in range(10):
                async with tcpls.connect("127.0.0.1", port, config=config) as session:
                    for _ in range(100):
                        if [c.status for c in session.connections] == ["active"] * 2:
                            break
                        await asyncio.sleep(0.02)
                    ports = [c.remote_address[1] for c in session.connections if c.remote_address]
                    assert ports[0] == port and ports[1] in (base, base + 1), ports
                    await _echo(session, b"two paths")

        asyncio.run(run())
        totals = _totals(_stop(proc))
    assert totals["passed"] == 0 and totals["sessions"] == 10


def test_a_restart_with_a_broken_certificate_keeps_the_workers(
    pki: DevPKI, tmp_path: Path
) -> None:
    """SIGHUP reads the certificate again; one that does not load leaves the running
    workers in place (and says why) instead of replacing them with workers that die."""
    import shutil

    cert = tmp_path / "cert.pem"
    shutil.copy(pki.cert_file, cert)
    with workers(pki, cert=cert) as (proc, port):
        cert.write_text("not a certificate\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)

        async def run() -> None:
            async with tcpls.connect("127.0.0.1", port, config=_client(pki)) as session:
                await _echo(session, b"still here")

        asyncio.run(run())
        err = _stop(proc)
    assert b"not restarting" in err
    assert b"restarting the workers" not in err


def test_restarts_in_quick_succession_keep_a_bounded_number_of_old_generations(
    pki: DevPKI,
) -> None:
    """Five SIGHUPs, each with a session open on the generation it replaces: at most
    three old generations go on finishing their sessions; the oldest ones close theirs
    at once (cleanly, close_notify) and say so, instead of piling up processes for the
    whole grace period."""
    from tcpls.aio.workers import MAX_DRAINING_GENERATIONS

    assert MAX_DRAINING_GENERATIONS == 3
    with workers(pki, "--grace", "60", count="1") as (proc, port):

        async def run() -> None:
            held = []
            for i in range(5):
                session = await tcpls.connect("127.0.0.1", port, config=_client(pki))
                reader, writer = await session.open_stream()
                writer.write(b"generation %d" % (i + 1))
                held.append((session, reader, writer))
                proc.send_signal(signal.SIGHUP)
                await asyncio.sleep(0.8)
            for i, (session, reader, writer) in enumerate(held):
                if i >= 2:  # still served: the echo of both writes, then our EOF
                    writer.write(b", still here")
                    writer.write_eof()
                expected = b"generation %d" % (i + 1) + (b", still here" if i >= 2 else b"")
                assert await asyncio.wait_for(reader.read(), 10) == expected
                await session.aclose()
                assert session.error is None  # closed cleanly either way

        asyncio.run(run())
        deadline = time.monotonic() + 10
        while len(child_pids(proc.pid)) > 1 + MAX_DRAINING_GENERATIONS:
            assert time.monotonic() < deadline, child_pids(proc.pid)
            time.sleep(0.1)
        err = _stop(proc, signal.SIGINT)
    assert b"closing the sessions of generation 1 now" in err
    assert b"closing the sessions of generation 2 now" in err
    assert b"generation 3 now" not in err


@pytest.mark.parametrize("count", [None, "2"])
def test_sigint_closes_sessions_the_client_keeps_open(pki: DevPKI, count: str | None) -> None:
    """SIGINT with a session the client keeps open and idle: the server closes it at once
    (close_notify) and exits, without waiting for the client or for the grace period
    (with workers, the order of the stop signals used to restart a 30 s grace)."""
    with workers(pki, "--grace", "30", count=count) as (proc, port):

        async def run() -> None:
            async with tcpls.connect("127.0.0.1", port, config=_client(pki)) as session:
                await _echo(session, b"hello")
                proc.send_signal(signal.SIGINT)
                deadline = time.monotonic() + 5
                while proc.poll() is None:
                    assert time.monotonic() < deadline, "the server still runs 5 s after SIGINT"
                    await asyncio.sleep(0.05)
                with pytest.raises(tcpls.errors.ConnectionClosedError):
                    await session.accept_stream()  # the server closed its side: no more
                await asyncio.wait_for(session.aclose(), 5)
                assert session.error is None  # close_notify, not a reset

        asyncio.run(run())
        assert proc.returncode == 0
