"""``tcpls perf -c`` against peers that are not perf servers, and the bound on a timed test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

import tcpls
from tcpls.apps.perf import ACCEPTED, MAGIC, NotAPerfServer, PerfRefused, PerfTimeout, run_client
from tcpls.devcert import DevPKI
from tests.aio.cli_util import TCPLS, running_server
from tests.helpers import openssl_server


@pytest.fixture
def echo_server(pki: DevPKI) -> Iterator[int]:
    with running_server(pki, "--echo") as port:
        yield port


def _perf(pki: DevPKI, port: int, *extra: str) -> tuple[subprocess.CompletedProcess[bytes], float]:
    start = time.monotonic()
    proc = subprocess.run(
        [*TCPLS, "perf", "-c", "127.0.0.1", "-p", str(port), "--cafile", str(pki.ca_file),
         *extra],
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return proc, time.monotonic() - start


def _one_clean_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.decode()
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("extra", [["-t", "1"], ["-t", "1", "-R"], ["-n", "10M", "-P", "2"]])
def test_perf_against_an_echo_server(pki: DevPKI, echo_server: int, extra: list[str]) -> None:
    proc, elapsed = _perf(pki, echo_server, *extra)
    line = _one_clean_line(proc)
    assert line == (
        f"tcpls: 127.0.0.1:{echo_server} is not a tcpls perf server "
        "(it sent the request back, like an echo server)"
    )
    assert elapsed < 10


def test_perf_against_openssl_s_server(pki: DevPKI) -> None:
    args = ["-cert", str(pki.cert_file), "-key", str(pki.key_file), "-tls1_3"]
    with openssl_server(args) as (_, port):
        proc, elapsed = _perf(pki, port, "-t", "1")
    line = _one_clean_line(proc)
    assert line == (
        f"tcpls: 127.0.0.1:{port} is not a tcpls perf server "
        "(no answer to the perf request within 5 s)"
    )
    assert elapsed < 10


def test_perf_help_mentions_the_bounds() -> None:
    out = subprocess.run([*TCPLS, "perf", "--help"], capture_output=True, timeout=30)
    assert out.returncode == 0
    text = " ".join(out.stdout.decode().split())
    assert "--reconnect-timeout" in text
    assert "not a perf server" in text


# ------------------------------------------------------------------- in-process

Respond = Callable[[tcpls.StreamReader, tcpls.StreamWriter], Coroutine[Any, Any, None]]


async def _run_against(pki: DevPKI, respond: Respond, **kwargs: object) -> None:
    """Run the client against a server that answers every stream with ``respond``."""

    async def handler(session: tcpls.Session) -> None:
        async with asyncio.TaskGroup() as group:
            async for reader, writer in session:
                group.create_task(respond(reader, writer))

    # the server forgets a session as soon as the client's connection is gone
    tuning = tcpls.SessionTuning(rejoin_timeout=0.2)
    server_config = tcpls.ServerConfig(
        certfile=str(pki.cert_file), keyfile=str(pki.key_file), tuning=tuning
    )
    client_config = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
    async with await tcpls.serve(handler, "127.0.0.1", 0, config=server_config) as server:
        async with tcpls.connect("127.0.0.1", server.port, config=client_config) as session:
            try:
                await run_client(session, **kwargs)  # type: ignore[arg-type]
            finally:
                session.abort()


async def _accept_then_stall(reader: tcpls.StreamReader, writer: tcpls.StreamWriter) -> None:
    """Accept, send a little, read everything, but never end the test."""
    await reader.readline()
    writer.write(ACCEPTED + b"\0" * 1000)
    with contextlib.suppress(tcpls.TCPLSError):
        while await reader.read(1 << 20):
            pass
    await writer.session.wait_closed()


@pytest.mark.parametrize("reverse", [False, True], ids=["upload", "download"])
def test_a_timed_test_is_bounded(pki: DevPKI, reverse: bool) -> None:
    """A server that accepts, then never ends the test: the run fails after -t plus grace."""
    start = time.monotonic()
    with pytest.raises(PerfTimeout) as info:
        asyncio.run(
            _run_against(
                pki,
                _accept_then_stall,
                seconds=0.5,
                reverse=reverse,
                answer_timeout=1.0,
                grace=0.5,
            )
        )
    assert str(info.value).startswith("the 0.5 s test did not finish within 2 s")
    assert time.monotonic() - start < 8  # 2 s, plus the teardown of server and session


async def _refusing(reader: tcpls.StreamReader, writer: tcpls.StreamWriter) -> None:
    await reader.readline()
    writer.write(json.dumps({"error": "not a tcpls perf request"}).encode() + b"\n")
    writer.write_eof()


def test_a_refusal_is_reported(pki: DevPKI) -> None:
    with pytest.raises(PerfRefused, match="refused the test: not a tcpls perf request"):
        asyncio.run(_run_against(pki, _refusing, seconds=1.0))


async def _silent(reader: tcpls.StreamReader, writer: tcpls.StreamWriter) -> None:
    await writer.session.wait_closed()


def test_no_answer_is_not_a_perf_server(pki: DevPKI) -> None:
    start = time.monotonic()
    with pytest.raises(NotAPerfServer) as info:
        asyncio.run(_run_against(pki, _silent, seconds=10.0, streams=3, answer_timeout=0.5))
    assert info.value.reason == "no answer to the perf request within 0.5 s"
    assert time.monotonic() - start < 5


def test_the_server_refuses_other_versions(pki: DevPKI) -> None:
    from tcpls.apps.perf import perf_handler

    async def exchange(request: bytes) -> bytes:
        server_config = tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
        client_config = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
        async with await tcpls.serve(perf_handler, "127.0.0.1", 0, config=server_config) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=client_config) as session:
                reader, writer = await session.open_stream()
                writer.write(request)
                writer.write_eof()
                return await asyncio.wait_for(reader.read(), 10)

    old = b'TCPLSPERF1 {"direction": "upload", "seconds": 1, "bytes": null}\n'
    assert json.loads(asyncio.run(exchange(old)))["error"].startswith("not a tcpls perf request")
    unbounded = MAGIC + b'{"direction": "download", "seconds": null, "bytes": null}\n'
    assert "neither" in json.loads(asyncio.run(exchange(unbounded)))["error"]
    answer = asyncio.run(exchange(MAGIC + b'{"direction": "upload", "bytes": 5}\n' + b"12345"))
    assert answer.startswith(ACCEPTED)
    assert json.loads(answer[len(ACCEPTED) :])["bytes"] == 5
