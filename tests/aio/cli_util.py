"""Shared by the command-line tests: running ``tcpls`` and ``tcpls serve`` as processes."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tcpls.devcert import DevPKI
from tests.helpers import free_port, wait_port

#: The command line, as a test runs it.
TCPLS = [sys.executable, "-m", "tcpls"]


def start_server(
    pki: DevPKI, *mode: str, stderr: int = subprocess.DEVNULL
) -> tuple[subprocess.Popen[bytes], int]:
    """``tcpls serve MODE...`` on a free loopback port, listening when this returns."""
    port = free_port()
    proc = subprocess.Popen(
        [*TCPLS, "serve", "--cert", str(pki.cert_file), "--key", str(pki.key_file),
         "--host", "127.0.0.1", "--port", str(port), *mode],
        stderr=stderr,
    )  # fmt: skip
    wait_port(port, proc=proc)
    return proc, port


@contextmanager
def running_server(pki: DevPKI, *mode: str) -> Iterator[int]:
    """The port of a ``tcpls serve MODE...`` process that is killed afterwards."""
    proc, port = start_server(pki, *mode)
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


def stop_server(proc: subprocess.Popen[bytes]) -> int:
    """Interrupt a ``tcpls serve`` started with ``stderr=subprocess.PIPE`` as a user would
    (Ctrl-C), check that it printed no traceback, and return its exit code."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert b"Traceback" not in err, err
    return proc.returncode
