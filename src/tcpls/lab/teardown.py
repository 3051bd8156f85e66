"""Tearing a lab down: its processes, their TCP sockets, its namespaces, its state files.

The steps :meth:`~tcpls.lab.lab.Lab.destroy` takes, in its order: processes, then TCP
sockets (an orphaned socket keeps a deleted namespace alive invisibly), then the forwarder
(the lab's), then namespaces and files. Each is a plain function over names and processes;
each raises on failure, and the lab decides what to ignore.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from tcpls.lab.model import STATE_DIR
from tcpls.lab.system import ancestors, process_start_time, run_command, run_parallel

__all__ = [
    "delete_namespaces",
    "destroy_sockets",
    "kill_namespace_processes",
    "remove_state_files",
    "stop_children",
]


def stop_children(children: Sequence[subprocess.Popen[Any]]) -> None:
    """Terminate processes started in the lab (then kill those still alive after 1 s)."""
    for proc in children:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    for proc in children:
        try:
            proc.wait(1.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)


def kill_namespace_processes(namespaces: Sequence[str]) -> None:
    """SIGTERM the processes in ``namespaces`` (not ours or our ancestors), SIGKILL after 1 s."""
    if not namespaces:
        return
    outputs = run_parallel([(["ip", "netns", "pids", ns], None) for ns in namespaces], False)
    spare = ancestors()
    pids = {int(tok) for out in outputs for tok in out.split() if tok.isdigit()} - spare
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 1.0
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if process_start_time(p) is not None}
        if pids:
            time.sleep(0.02)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def destroy_sockets(namespaces: Sequence[str]) -> None:
    """``ss -K`` every TCP socket in ``namespaces``."""
    run_parallel([(["ss", "-N", ns, "-K", "-t", "-a", "-n"], None) for ns in namespaces], False)


def delete_namespaces(namespaces: Sequence[str]) -> None:
    """Delete ``namespaces`` (their veths go with them)."""
    batch = "".join(f"netns del {ns}\n" for ns in namespaces)
    run_command(["ip", "-force", "-batch", "-"], batch, check=False)


def remove_state_files(name: str) -> None:
    """Remove the state file, forwarder socket and forwarder log of lab ``name``."""
    for suffix in (".json", ".sock", ".log"):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(STATE_DIR, name + suffix))
