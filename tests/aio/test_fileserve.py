"""The file transfer protocol of ``tcpls serve --files`` and ``tcpls get``, in one process.

A header (``OK <size>`` or ``ERR <code> <reason>``) tells a missing file, a
server error, a truncation and a peer that is not a file server apart.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import os
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

import tcpls
from tcpls.apps import fileserve
from tcpls.apps.fileserve import (
    MAX_HEADER,
    DownloadResult,
    FileNotFoundOnServer,
    FileRequestRejected,
    FileServerError,
    FileTransferError,
    NotAFileServer,
    OutputError,
    ServerReadError,
    TransferTruncated,
    download,
    make_file_handler,
)
from tcpls.devcert import DevPKI

Respond = Callable[
    [tcpls.Session, tcpls.StreamReader, tcpls.StreamWriter], Coroutine[Any, Any, None]
]


def _configs(pki: DevPKI) -> tuple[tcpls.ServerConfig, tcpls.ClientConfig]:
    tuning = tcpls.SessionTuning(user_timeout=0.5, rejoin_timeout=0)
    return (
        tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file), tuning=tuning),
        tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost", tuning=tuning),
    )


def _handler(respond: Respond) -> Callable[[tcpls.Session], Awaitable[None]]:
    """A session handler that answers every stream with ``respond``."""

    async def handler(session: tcpls.Session) -> None:
        async with asyncio.TaskGroup() as group:
            async for reader, writer in session:
                group.create_task(respond(session, reader, writer))

    return handler


async def _fetch(
    pki: DevPKI,
    handler: Callable[[tcpls.Session], Awaitable[None]],
    path: str,
    out: io.BytesIO | None = None,
    **kwargs: object,
) -> DownloadResult:
    server_config, client_config = _configs(pki)
    async with await tcpls.serve(handler, "127.0.0.1", 0, config=server_config) as server:
        async with tcpls.connect("127.0.0.1", server.port, config=client_config) as session:
            return await download(
                session,
                path,
                out if out is not None else io.BytesIO(),
                **kwargs,  # type: ignore[arg-type]
            )


def _fetch_sync(pki: DevPKI, handler: object, path: str, **kwargs: object) -> DownloadResult:
    return asyncio.run(
        asyncio.wait_for(_fetch(pki, handler, path, **kwargs), 30)  # type: ignore[arg-type]
    )


@pytest.fixture
def files(tmp_path: Path) -> Path:
    root = tmp_path / "files"
    root.mkdir()
    (root / "data.bin").write_bytes(os.urandom(3 * (1 << 20) + 123))
    (root / "empty.bin").write_bytes(b"")
    (root / "sub").mkdir()
    (tmp_path / "secret.txt").write_text("outside the served directory\n")
    return root


# --------------------------------------------------------------- the real server


def test_download_checks_size_and_digest(pki: DevPKI, files: Path) -> None:
    payload = (files / "data.bin").read_bytes()
    out = io.BytesIO()
    started: list[int] = []
    result = _fetch_sync(
        pki, make_file_handler(files), "data.bin", out=out, on_start=started.append
    )
    assert out.getvalue() == payload
    assert started == [len(payload)]
    assert result.path == "/data.bin"
    assert result.size == result.bytes == len(payload)
    assert result.sha256 == hashlib.sha256(payload).hexdigest()


def test_empty_file_is_a_success(pki: DevPKI, files: Path) -> None:
    result = _fetch_sync(pki, make_file_handler(files), "/empty.bin")
    assert (result.size, result.bytes) == (0, 0)
    assert result.sha256 == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("path", ["/missing.bin", "/sub", "/../secret.txt", "/a\x7fb"])
def test_missing_file_is_reported_as_such(pki: DevPKI, files: Path, path: str) -> None:
    with pytest.raises(FileNotFoundOnServer) as info:
        _fetch_sync(pki, make_file_handler(files), path)
    assert str(info.value) == f"the server has no file {path}"
    assert info.value.code == 404


def test_unreadable_file_is_a_server_error(
    pki: DevPKI, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> object:
        raise PermissionError(errno.EACCES, "Permission denied")

    # the server's open() fails as it would for a file it may not read (tests run as root)
    monkeypatch.setattr(fileserve, "open", refuse, raising=False)
    with pytest.raises(ServerReadError) as info:
        _fetch_sync(pki, make_file_handler(files), "/data.bin")
    assert str(info.value) == "the server could not read /data.bin: Permission denied"
    assert info.value.code == 500


async def _raw_exchange(pki: DevPKI, files: Path, request: bytes) -> bytes:
    server_config, client_config = _configs(pki)
    handler = make_file_handler(files)
    async with await tcpls.serve(handler, "127.0.0.1", 0, config=server_config) as server:
        async with tcpls.connect("127.0.0.1", server.port, config=client_config) as session:
            reader, writer = await session.open_stream()
            writer.write(request)
            writer.write_eof()
            return await reader.read()


@pytest.mark.parametrize(
    "request_line",
    [b"PUT /data.bin\r\n", b"GET data.bin\r\n", b"GET /" + b"a" * 5000 + b"\r\n", b"no end"],
)
def test_server_refuses_bad_requests(pki: DevPKI, files: Path, request_line: bytes) -> None:
    answer = asyncio.run(asyncio.wait_for(_raw_exchange(pki, files, request_line), 30))
    assert answer.startswith(b"ERR 400 ")
    assert answer.endswith(b"\r\n") and answer.count(b"\n") == 1
    assert len(answer) <= MAX_HEADER


def test_server_header_then_exact_size(pki: DevPKI, files: Path) -> None:
    answer = asyncio.run(asyncio.wait_for(_raw_exchange(pki, files, b"GET /data.bin\r\n"), 30))
    payload = (files / "data.bin").read_bytes()
    assert answer == f"OK {len(payload)}\r\n".encode() + payload


# ------------------------------------------------------------ misbehaving servers


def _answering(head: bytes, body: bytes = b"", *, abort: bool = False) -> Respond:
    """A handler that answers every request with ``head`` and ``body``, then FIN (or abort)."""

    async def respond(
        session: tcpls.Session, reader: tcpls.StreamReader, writer: tcpls.StreamWriter
    ) -> None:
        await reader.read()
        writer.write(head + body)
        if abort:
            await writer.drain()
            await asyncio.sleep(0.2)
            session.abort()
            return
        writer.write_eof()
        await writer.wait_closed()

    return respond


def test_fin_before_the_announced_size_is_a_truncation(pki: DevPKI) -> None:
    out = io.BytesIO()
    with pytest.raises(TransferTruncated) as info:
        _fetch_sync(pki, _handler(_answering(b"OK 1000000\r\n", b"x" * 1000)), "/x.bin", out=out)
    assert (info.value.received, info.value.expected) == (1000, 1000000)
    assert str(info.value) == "the transfer of /x.bin was cut short: 1000 B of 976.6 KiB received"
    assert out.getvalue() == b"x" * 1000


def test_session_failing_midway_is_a_truncation(pki: DevPKI) -> None:
    body = os.urandom(1 << 20)
    respond = _answering(f"OK {6 << 30}\r\n".encode(), body, abort=True)
    with pytest.raises(TransferTruncated) as info:
        _fetch_sync(pki, _handler(respond), "/x.bin")
    assert info.value.received == len(body)
    assert info.value.cause is not None
    line = str(info.value)
    assert line.startswith("the transfer of /x.bin was cut short: 1.0 MiB of 6.0 GiB received")
    assert "\n" not in line


def test_more_bytes_than_announced_is_an_error(pki: DevPKI) -> None:
    with pytest.raises(FileTransferError, match="more than the 3 bytes it announced"):
        _fetch_sync(pki, _handler(_answering(b"OK 3\r\n", b"abcdef")), "/x.bin")


@pytest.mark.parametrize(
    "head, kind, message",
    [
        (b"ERR 404 no such file\r\n", FileNotFoundOnServer, "the server has no file /x.bin"),
        (
            b"ERR 500 Input/output error\r\n",
            ServerReadError,
            "the server could not read /x.bin: Input/output error",
        ),
        (
            b"ERR 400 expected GET /path\r\n",
            FileRequestRejected,
            "the server rejected the request for /x.bin: expected GET /path",
        ),
        (b"ERR 503 busy\x1b[2J\r\n", FileServerError, "the server refused /x.bin: busy?[2J (503)"),
    ],
)
def test_error_answers(pki: DevPKI, head: bytes, kind: type[Exception], message: str) -> None:
    with pytest.raises(kind) as info:
        _fetch_sync(pki, _handler(_answering(head)), "/x.bin")
    assert str(info.value) == message


async def _echo(
    session: tcpls.Session, reader: tcpls.StreamReader, writer: tcpls.StreamWriter
) -> None:
    writer.write(await reader.read())
    writer.write_eof()
    await writer.wait_closed()


async def _silent(
    session: tcpls.Session, reader: tcpls.StreamReader, writer: tcpls.StreamWriter
) -> None:
    await asyncio.sleep(1.5)  # longer than the client waits
    writer.write_eof()


@pytest.mark.parametrize(
    "respond, reason",
    [
        (_echo, "it sent the request back, like an echo server"),
        (_answering(b"HTTP/1.1 200 OK\r\n"), "its answer is not a file transfer header"),
        (_answering(b"OK -5\r\n"), "its answer is not a file transfer header"),
        (_answering(b""), "it ended the stream without answering"),
        # a header that never ends: the client gives up after MAX_HEADER bytes
        (_answering(b"OK " + b"1" * 100000), "its answer is not a file transfer header"),
        (_silent, "no answer to the request within 0.5 s"),
    ],
)
def test_not_a_file_server(pki: DevPKI, respond: Respond, reason: str) -> None:
    with pytest.raises(NotAFileServer) as info:
        _fetch_sync(pki, _handler(respond), "/x.bin", answer_timeout=0.5)
    assert info.value.reason == reason
    assert str(info.value) == f"the server is not a tcpls file server ({reason})"


def test_output_errors_are_local(pki: DevPKI, files: Path) -> None:
    class FullDisk(io.BytesIO):
        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError) as info:
        _fetch_sync(pki, make_file_handler(files), "/data.bin", out=FullDisk())
    assert info.value.strerror == "No space left on device"


def test_paths_with_line_breaks_are_refused_locally(pki: DevPKI, files: Path) -> None:
    with pytest.raises(FileTransferError, match="line breaks"):
        _fetch_sync(pki, make_file_handler(files), "/data.bin\r\nGET /other")
