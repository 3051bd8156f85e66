"""When the server dies, the client says it reconnects, and gives up after --reconnect-timeout."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpls.devcert import DevPKI
from tests.aio.cli_util import TCPLS, start_server

RECONNECTING = "tcpls: every connection to the server failed; reconnecting for up to 2 s"


class _Lines:
    """The lines of a pipe, each with the monotonic time it arrived."""

    def __init__(self, pipe: object) -> None:
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: object) -> None:
        for raw in pipe:  # type: ignore[attr-defined]
            self.lines.append((time.monotonic(), raw.decode().rstrip("\n")))

    def join(self) -> list[tuple[float, str]]:
        self._thread.join(10)
        return self.lines


def _server(pki: DevPKI, *mode: str) -> tuple[subprocess.Popen[bytes], int]:
    return start_server(pki, *mode)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _check_stderr(lines: list[tuple[float, str]], killed: float, exited: float) -> str:
    """The reconnecting line came within 3 s of the kill; return the final error line."""
    assert [text for _, text in lines][:1] == [RECONNECTING], lines
    assert lines[0][0] - killed < 3
    assert len(lines) == 2, lines
    assert "Traceback" not in lines[1][1]
    assert exited - killed < 2 + 4  # the reconnect timeout, plus slack for a busy machine
    return lines[1][1]


def _echo_session_then_kill_server(
    pki: DevPKI, processes: list[subprocess.Popen[bytes]], reconnect_timeout: str
) -> tuple[_Lines, subprocess.Popen[bytes], int, float]:
    """Start an echo server and ``tcpls connect`` to it, see one line echoed, kill the
    server; return the client's stderr lines, the client, the port and the kill time."""
    server, port = _server(pki, "--echo")
    processes.append(server)
    client = subprocess.Popen(
        [*TCPLS, "connect", "127.0.0.1", str(port), "--cafile", str(pki.ca_file),
         "--reconnect-timeout", reconnect_timeout],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    processes.append(client)
    assert client.stdin is not None and client.stdout is not None
    errors = _Lines(client.stderr)
    client.stdin.write(b"hello\n")
    client.stdin.flush()
    assert client.stdout.readline() == b"hello\n"  # the session is up
    server.send_signal(signal.SIGKILL)
    return errors, client, port, time.monotonic()


def test_connect_reports_reconnecting_then_gives_up(
    pki: DevPKI, processes: list[subprocess.Popen[bytes]]
) -> None:
    errors, client, port, killed = _echo_session_then_kill_server(pki, processes, "2")
    # standard input stays open: the command must not wait for it to end
    assert client.wait(timeout=15) == 1
    exited = time.monotonic()
    line = _check_stderr(errors.join(), killed, exited)
    assert line.startswith(f"tcpls: connection 127.0.0.1:{port} closed: ")


def test_get_reports_reconnecting_and_keeps_the_destination(
    pki: DevPKI, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    with open(files / "big.bin", "wb") as f:
        f.truncate(4 << 30)  # sparse: costs no disk, takes many seconds to send
    server, port = _server(pki, "--files", str(files))
    processes.append(server)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "big.bin"
    out.write_bytes(b"old\n")
    client = subprocess.Popen(
        [*TCPLS, "get", "127.0.0.1", str(port), "/big.bin", "-o", str(out),
         "--cafile", str(pki.ca_file), "--reconnect-timeout", "2"],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    processes.append(client)
    errors = _Lines(client.stderr)
    deadline = time.monotonic() + 20
    while not any(p.stat().st_size > 4 << 20 for p in out_dir.glob(".big.bin.*.part")):
        assert client.poll() is None, errors.join()
        assert time.monotonic() < deadline, "the download did not start"
        time.sleep(0.02)
    server.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    assert client.wait(timeout=15) == 1
    exited = time.monotonic()
    line = _check_stderr(errors.join(), killed, exited)
    assert line.startswith("tcpls: the transfer of /big.bin was cut short: ")
    assert " of 4.0 GiB received (" in line  # and why: the session failed
    assert out.read_bytes() == b"old\n"
    assert sorted(p.name for p in out_dir.iterdir()) == ["big.bin"]


def test_reconnect_timeout_zero_gives_up_at_once(
    pki: DevPKI, processes: list[subprocess.Popen[bytes]]
) -> None:
    errors, client, _, killed = _echo_session_then_kill_server(pki, processes, "0")
    assert client.wait(timeout=15) == 1
    assert time.monotonic() - killed < 2
    lines = [text for _, text in errors.join()]
    assert len(lines) == 1, lines
    assert "reconnecting" not in lines[0]


@pytest.mark.parametrize("command", [["connect", "h", "1"], ["get", "h", "1", "/f", "-o", "f"]])
def test_reconnect_timeout_is_validated(command: list[str]) -> None:
    proc = subprocess.run(
        [*TCPLS, *command, "--reconnect-timeout", "-1"], capture_output=True, timeout=30
    )
    assert proc.returncode == 2
    assert b"--reconnect-timeout" in proc.stderr


def test_client_commands_explain_reconnect_timeout() -> None:
    for command in ("connect", "get", "perf"):
        out = subprocess.run([*TCPLS, command, "--help"], capture_output=True, timeout=30)
        text = " ".join(out.stdout.decode().split())
        assert "--reconnect-timeout SECONDS" in text
        assert "(default: 30)" in text
