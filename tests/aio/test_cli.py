"""The command line: tcpls serve --echo and tcpls connect, and their error messages."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcpls.devcert import DevPKI
from tests.aio.cli_util import TCPLS, start_server, stop_server
from tests.helpers import free_port, wait_port


def _echo_server(
    pki: DevPKI, *extra: str, stderr: int = subprocess.PIPE
) -> tuple[subprocess.Popen[bytes], int]:
    """``tcpls serve --echo`` on a free loopback port, listening when this returns."""
    return start_server(pki, "--echo", *extra, stderr=stderr)


@pytest.fixture
def serve(pki: DevPKI) -> Iterator[int]:
    proc, port = _echo_server(pki)
    try:
        yield port
    finally:
        assert stop_server(proc) == 0


def _connect(
    port: int, *args: str, data: bytes = b"", host: str = "127.0.0.1"
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*TCPLS, "connect", host, str(port), *args], input=data, capture_output=True, timeout=30
    )


def test_echo_round_trip(serve: int, pki: DevPKI) -> None:
    data = os.urandom(2_000_000)
    proc = _connect(serve, "--cafile", str(pki.ca_file), data=data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data


def test_echo_plain_tls(serve: int, pki: DevPKI) -> None:
    proc = _connect(serve, "--cafile", str(pki.ca_file), "--no-tcpls", data=b"plain\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"plain\n"


def test_keylog_option(serve: int, pki: DevPKI, tmp_path: Path) -> None:
    keylog = tmp_path / "keys.log"
    proc = _connect(serve, "--cafile", str(pki.ca_file), "--keylog", str(keylog), data=b"k")
    assert proc.returncode == 0, proc.stderr
    assert len(keylog.read_text().splitlines()) == 5


def _one_clean_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_error_unknown_ca(serve: int, other_pki: DevPKI) -> None:
    line = _one_clean_line(_connect(serve, "--cafile", str(other_pki.ca_file)))
    assert "certificate verification failed" in line


def test_error_default_ca_rejects_private_ca(serve: int) -> None:
    line = _one_clean_line(_connect(serve))
    assert "certificate verification failed" in line


def test_error_wrong_name(serve: int, pki: DevPKI) -> None:
    line = _one_clean_line(
        _connect(serve, "--cafile", str(pki.ca_file), "--server-name", "x.example")
    )
    assert "x.example" in line


def test_error_refused() -> None:
    line = _one_clean_line(_connect(free_port(), "--insecure"))
    assert "connection refused" in line


def test_error_unresolvable() -> None:
    line = _one_clean_line(_connect(443, "--insecure", host="no-such-host.invalid"))
    assert "cannot resolve" in line


def test_error_missing_ca_file(tmp_path: Path) -> None:
    line = _one_clean_line(_connect(free_port(), "--cafile", str(tmp_path / "missing.pem")))
    assert "not found" in line


def test_error_handshake_alert(pki: DevPKI) -> None:
    """A server that only allows a suite we do not offer sends handshake_failure."""
    proc, port = _echo_server(
        pki, "--ciphers", "TLS_CHACHA20_POLY1305_SHA256", stderr=subprocess.DEVNULL
    )
    try:
        line = _one_clean_line(
            _connect(port, "--cafile", str(pki.ca_file), "--ciphers", "TLS_AES_128_GCM_SHA256")
        )
        assert "handshake_failure" in line
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--cert", "/missing.pem", "--key", "/missing.key"], "not found"),
        (["--cert", "{key}", "--key", "{key}"], "no PEM certificate"),
        (["--cert", "{cert}", "--key", "{cert}"], "no usable PEM private key"),
    ],
)
def test_serve_rejects_bad_files(pki: DevPKI, args: list[str], needle: str) -> None:
    args = [a.format(cert=pki.cert_file, key=pki.key_file) for a in args]
    proc = subprocess.run(
        [*TCPLS, "serve", *args, "--port", str(free_port()), "--echo"],
        capture_output=True,
        timeout=30,
    )
    assert needle in _one_clean_line(proc)


def test_help_explains_every_option() -> None:
    for cmd in (["serve"], ["connect"], []):
        proc = subprocess.run([*TCPLS, *cmd, "--help"], capture_output=True, timeout=30)
        assert proc.returncode == 0
        assert b"usage: tcpls" in proc.stdout
    out = subprocess.run([*TCPLS, "connect", "--help"], capture_output=True).stdout.decode()
    for option in ("--cafile", "--insecure", "--server-name", "--keylog"):
        assert option in out


def test_perf_between_two_processes(pki: DevPKI) -> None:
    import json

    port = free_port()
    server = subprocess.Popen(
        [
            *TCPLS,
            "perf",
            "-s",
            "--cert",
            str(pki.cert_file),
            "--key",
            str(pki.key_file),
            "--host",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        stderr=subprocess.PIPE,
    )
    try:
        wait_port(port, proc=server)  # type: ignore[arg-type]
        for extra in ([], ["-R"]):
            proc = subprocess.run(
                [
                    *TCPLS,
                    "perf",
                    "-c",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "--cafile",
                    str(pki.ca_file),
                    "-n",
                    "64M",
                    "-P",
                    "3",
                    "--json",
                    *extra,
                ],
                capture_output=True,
                timeout=60,
            )
            assert proc.returncode == 0, proc.stderr
            report = json.loads(proc.stdout)
            assert report["tcpls"] is True
            assert report["direction"] == ("download" if extra else "upload")
            assert report["bytes"] == 3 * ((64 << 20) // 3)
            assert len(report["streams"]) == 3
            assert all(s["confirmed_bytes"] == s["bytes"] for s in report["streams"])
            assert report["bits_per_second"] > 0
        timed = subprocess.run(
            [
                *TCPLS,
                "perf",
                "-c",
                "127.0.0.1",
                "-p",
                str(port),
                "--cafile",
                str(pki.ca_file),
                "-t",
                "1",
            ],
            capture_output=True,
            timeout=60,
        )
        assert timed.returncode == 0, timed.stderr
        assert b"total" in timed.stdout
    finally:
        stop_server(server)
