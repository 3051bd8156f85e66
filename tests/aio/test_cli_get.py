"""``tcpls get``: complete files only, one clear line for each failure, destinations kept."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import tcpls
from tcpls.devcert import DevPKI
from tests.aio.cli_util import TCPLS, running_server, start_server, stop_server
from tests.helpers import ThreadServer

OLD = b"the previous version of the file\n"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    root = tmp_path / "files"
    root.mkdir()
    (root / "data.bin").write_bytes(os.urandom(5 * (1 << 20) + 7))
    return root


@pytest.fixture
def file_server(pki: DevPKI, files: Path) -> Iterator[int]:
    """``tcpls serve --files`` on a free loopback port."""
    proc, port = start_server(pki, "--files", str(files), stderr=subprocess.PIPE)
    try:
        yield port
    finally:
        stop_server(proc)


def _get(
    pki: DevPKI, port: int, path: str, output: str | Path, *extra: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*TCPLS, "get", "127.0.0.1", str(port), path, "-o", str(output),
         "--cafile", str(pki.ca_file), *extra],
        capture_output=True,
        timeout=60,
    )  # fmt: skip


def _one_clean_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.decode()
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tcpls: ")
    return lines[0]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


def test_get_writes_the_file_and_its_digest(
    pki: DevPKI, file_server: int, files: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(OLD)
    proc = _get(pki, file_server, "/data.bin", out, "--sha256")
    assert proc.returncode == 0, proc.stderr
    payload = (files / "data.bin").read_bytes()
    assert out.read_bytes() == payload
    digest = hashlib.sha256(payload).hexdigest()
    assert proc.stdout.decode() == f"{digest}  {out}\n"
    assert _leftovers(tmp_path) == []


def test_get_to_stdout(pki: DevPKI, file_server: int, files: Path) -> None:
    proc = _get(pki, file_server, "/data.bin", "-", "--sha256")
    assert proc.returncode == 0, proc.stderr
    payload = (files / "data.bin").read_bytes()
    assert proc.stdout == payload  # the digest goes to standard error, not into the data
    assert hashlib.sha256(payload).hexdigest().encode() in proc.stderr


def test_missing_file_leaves_the_destination_alone(
    pki: DevPKI, file_server: int, tmp_path: Path
) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(OLD)
    line = _one_clean_line(_get(pki, file_server, "/missing.bin", out, "--sha256"))
    assert line == "tcpls: the server has no file /missing.bin"
    assert out.read_bytes() == OLD
    assert _leftovers(tmp_path) == []


def test_missing_file_creates_no_destination(
    pki: DevPKI, file_server: int, tmp_path: Path
) -> None:
    out = tmp_path / "new.bin"
    _one_clean_line(_get(pki, file_server, "/missing.bin", out))
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_not_a_file_server(pki: DevPKI, tmp_path: Path) -> None:
    with running_server(pki, "--echo") as port:
        line = _one_clean_line(_get(pki, port, "/data.bin", tmp_path / "out.bin"))
    assert line.startswith(f"tcpls: 127.0.0.1:{port} is not a tcpls file server (")
    assert not (tmp_path / "out.bin").exists()


def test_unwritable_destination_is_a_local_error(
    pki: DevPKI, file_server: int, tmp_path: Path
) -> None:
    line = _one_clean_line(_get(pki, file_server, "/data.bin", tmp_path))
    assert line == f"tcpls: cannot write {tmp_path}: it is a directory"
    line = _one_clean_line(_get(pki, file_server, "/data.bin", tmp_path / "no" / "out.bin"))
    assert line == f"tcpls: cannot write {tmp_path / 'no' / 'out.bin'}: No such file or directory"


# ------------------------------------------------------------------- truncation


async def _truncating(session: tcpls.Session) -> None:
    """Announces 6 GiB, sends 1 MiB, then ends the stream."""
    async for reader, writer in session:
        await reader.read()
        writer.write(f"OK {6 << 30}\r\n".encode() + b"\0" * (1 << 20))
        writer.write_eof()
        await writer.wait_closed()


async def _aborting(session: tcpls.Session) -> None:
    """Announces 6 GiB, sends 1 MiB, then aborts the whole session."""
    async for reader, writer in session:
        await reader.read()
        writer.write(f"OK {6 << 30}\r\n".encode() + b"\0" * (1 << 20))
        await writer.drain()
        await asyncio.sleep(0.2)
        session.abort()


@pytest.fixture(params=[_truncating, _aborting], ids=["fin", "abort"])
def cutting_server(request: pytest.FixtureRequest, pki: DevPKI) -> Iterator[int]:
    config = tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
    with ThreadServer(config, request.param) as server:
        yield server.port


def test_truncation_is_an_error_and_keeps_the_destination(
    pki: DevPKI, cutting_server: int, tmp_path: Path
) -> None:
    out = tmp_path / "x.bin"
    out.write_bytes(OLD)
    proc = _get(pki, cutting_server, "/x.bin", out, "--sha256", "--reconnect-timeout", "0")
    line = _one_clean_line(proc)
    assert line.startswith("tcpls: the transfer of /x.bin was cut short: 1.0 MiB of 6.0 GiB")
    assert proc.stdout == b""  # no digest of a partial file
    assert out.read_bytes() == OLD
    assert _leftovers(tmp_path) == []


def test_truncation_to_stdout_still_fails(pki: DevPKI, cutting_server: int) -> None:
    proc = _get(pki, cutting_server, "/x.bin", "-", "--reconnect-timeout", "0")
    line = _one_clean_line(proc)
    assert "was cut short" in line
    assert proc.stdout == b"\0" * (1 << 20)  # streamed as it arrived


def test_get_help_reads_well() -> None:
    out = subprocess.run([*TCPLS, "get", "--help"], capture_output=True, timeout=30)
    assert out.returncode == 0
    text = " ".join(out.stdout.decode().split())
    for needle in ("--reconnect-timeout", "temporary file", "--sha256", "standard output"):
        assert needle in text
