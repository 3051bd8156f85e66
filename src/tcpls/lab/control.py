"""Parent side of the forwarder: starting it, talking to it, stopping it.

:class:`Forwarder` is a lab's handle on its forwarder process (started by this process, or
found in a lab's state file); the functions underneath work on a pid and a socket path.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from tcpls.lab import forwarder
from tcpls.lab.errors import LabError
from tcpls.lab.forwarder import ForwarderPath

__all__ = [
    "Forwarder",
    "forwarder_request",
    "is_forwarder_pid",
    "start_forwarder",
    "stop_process",
]


class Forwarder:
    """The forwarder of one lab: its pid, its control socket and, if we started it, its process.

    A forwarder started with :meth:`start` as a non-daemon exits when :meth:`stop` closes
    its lifeline (or when this process dies). A daemon one, or one found in a state file
    (:meth:`__init__` with a pid only), is asked to quit, then signalled.
    """

    def __init__(
        self,
        pid: int,
        control_path: str | None,
        proc: subprocess.Popen[bytes] | None = None,
        lifeline: int | None = None,
    ) -> None:
        self.pid = pid
        #: The Unix socket it answers requests on (``None``: unknown, nothing to ask).
        self.control_path = control_path
        self._proc = proc
        self._lifeline = lifeline

    @classmethod
    def start(
        cls,
        paths: Sequence[ForwarderPath],
        control_path: str,
        *,
        daemon: bool,
        log_path: str | None = None,
    ) -> Forwarder:
        """Start a forwarder for ``paths`` (see :func:`start_forwarder`)."""
        proc, lifeline = start_forwarder(paths, control_path, daemon=daemon, log_path=log_path)
        if daemon:
            # The daemon outlives us; let go of it (it is reparented and reaped by init).
            proc.returncode = 0
            return cls(proc.pid, control_path, lifeline=lifeline)
        return cls(proc.pid, control_path, proc, lifeline)

    def request(self, request: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
        """Send one control request; raise :class:`LabError` if it fails or none can be sent."""
        if self.control_path is None:
            raise LabError(f"the forwarder (pid {self.pid}) has no control socket")
        return forwarder_request(self.control_path, request, timeout)

    def stats(self) -> list[dict[str, Any]] | None:
        """Per-path counters (``None`` without a control socket)."""
        if self.control_path is None:
            return None
        stats: list[dict[str, Any]] = self.request({"op": "stats"})["paths"]
        return stats

    def stop(self) -> None:
        """Stop the forwarder (its TUN devices vanish with it)."""
        if self._lifeline is not None:
            with contextlib.suppress(OSError):
                os.close(self._lifeline)
            self._lifeline = None
        if self._proc is not None:
            stop_process(self._proc.pid, self._proc)
            self._proc = None
            return
        if self.control_path is not None and is_forwarder_pid(self.pid):
            with contextlib.suppress(LabError):
                forwarder_request(self.control_path, {"op": "quit"}, timeout=1.0)
        stop_process(self.pid)


def start_forwarder(
    paths: Sequence[ForwarderPath],
    control_path: str,
    *,
    daemon: bool,
    log_path: str | None = None,
    ready_timeout: float = 10.0,
) -> tuple[subprocess.Popen[bytes], int | None]:
    """Start the forwarder (``python -I .../forwarder.py``); wait until its TUN devices exist.

    Returns the process and, unless ``daemon``, the write end of its lifeline pipe: the
    forwarder exits when that fd is closed (explicitly, or because this process died). A
    daemon forwarder survives this process and must be stopped with a ``quit`` request.
    """
    config = json.dumps({"paths": [p.to_json() for p in paths]})
    # -I: the forwarder is standard library only; do not import tcpls or site customisations.
    argv = [sys.executable, "-I", forwarder.__file__, "--config", config]
    argv += ["--control", control_path]
    lifeline_r: int | None = None
    lifeline_w: int | None = None
    pass_fds: tuple[int, ...] = ()
    if not daemon:
        lifeline_r, lifeline_w = os.pipe()
        argv += ["--lifeline", str(lifeline_r)]
        pass_fds = (lifeline_r,)
    stderr: Any = None
    log_file = None
    if log_path is not None:
        log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        stderr = log_file
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            pass_fds=pass_fds,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        for fd in (lifeline_r, lifeline_w):
            if fd is not None:
                os.close(fd)
        raise LabError(f"cannot start the forwarder: {exc}") from exc
    finally:
        if log_file is not None:
            log_file.close()
        if lifeline_r is not None:
            os.close(lifeline_r)
    assert proc.stdout is not None
    line = b""
    deadline = time.monotonic() + ready_timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
    proc.stdout.close()
    text = line.decode(errors="replace").strip()
    if text != "ready":
        stop_process(proc.pid, proc)
        if lifeline_w is not None:
            os.close(lifeline_w)
        reason = text.removeprefix("error: ") or "no answer (see its stderr)"
        raise LabError(f"forwarder failed to start: {reason}")
    return proc, lifeline_w


def forwarder_request(
    control_path: str, request: dict[str, Any], timeout: float = 3.0
) -> dict[str, Any]:
    """Send one control request to the forwarder listening on ``control_path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(control_path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except OSError as exc:
        raise LabError(f"forwarder at {control_path} is not answering: {exc}") from exc
    try:
        reply = json.loads(buf.decode())
    except ValueError as exc:
        raise LabError(f"bad reply from the forwarder at {control_path}") from exc
    if not isinstance(reply, dict):
        raise LabError(f"bad reply from the forwarder at {control_path}")
    if not reply.get("ok"):
        raise LabError(f"forwarder: {reply.get('error', 'request failed')}")
    return reply


def _process_state(pid: int) -> str | None:
    """The state letter of ``pid`` (``R``, ``S``, ``Z``...), or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[-1].split()
    except OSError:
        return None
    return fields[0].decode() if fields else None


def _is_gone(pid: int) -> bool:
    return _process_state(pid) in (None, "Z", "X")


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def is_forwarder_pid(pid: int) -> bool:
    """Return whether ``pid`` is a live (not exiting, not zombie) forwarder process."""
    return forwarder.MARKER.encode() in _cmdline(pid) and not _is_gone(pid)


def stop_process(
    pid: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 2.0
) -> None:
    """Stop a forwarder: SIGTERM, wait up to ``timeout`` until it is gone, then SIGKILL.

    Without ``proc``, ``pid`` is signalled only if it is a forwarder (pid reuse safety).
    Reaps the process when it is our child.
    """
    if proc is not None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout)
        return
    if is_forwarder_pid(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    elif _is_gone(pid) or _cmdline(pid):
        _reap(pid)  # gone, or the pid now belongs to another program
        return
    # Either we just signalled it, or it is exiting (the cmdline of an exiting process is empty).
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid, wait=0.0)
        if _is_gone(pid):
            _reap(pid)
            return
        time.sleep(0.005)
    if is_forwarder_pid(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int, wait: float = 1.0) -> None:
    # Reap our own (daemon) child if it is one; other processes are reaped by their parent.
    deadline = time.monotonic() + wait
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done or time.monotonic() >= deadline:
            return
        time.sleep(0.01)
