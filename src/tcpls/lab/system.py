"""The lab's dealings with the system: availability, commands, names, processes, state files.

Everything here is a plain function over the system (no lab object): whether labs can run
here, running commands (alone or several at once) with one-line errors, the names a lab may
have, what ``/proc`` says about a process, and the lab's state files in
:data:`~tcpls.lab.model.STATE_DIR`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from functools import cache
from typing import Any

from tcpls.lab.errors import LabError, LabUnavailable
from tcpls.lab.model import STATE_DIR

__all__ = [
    "ancestors",
    "check_tools",
    "disable_ipv6_default",
    "lab_available",
    "process_start_time",
    "require_available",
    "run_command",
    "run_parallel",
    "state_path",
    "validate_name",
    "write_json_atomic",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]{0,23}(?:-[A-Za-z0-9_.]{1,24})*$")
_MAX_NAME = 40
#: Seconds an iproute2 command may take.
_CMD_TIMEOUT = 15.0

# ---------------------------------------------------------------------------------------------
# Availability and commands.


def check_tools() -> str | None:
    """Why labs cannot run here (not root, iproute2 missing), or ``None``."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, veth, tc)"
    for tool in ("ip", "tc", "ss"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (install iproute2)"
    return None


@cache
def _probe() -> tuple[bool, str]:
    problem = check_tools()
    if problem:
        return False, problem
    probe = f"tcpls-probe-{os.getpid()}-{secrets.token_hex(2)}"
    try:
        cp = subprocess.run(
            ["ip", "netns", "add", probe], capture_output=True, text=True, timeout=_CMD_TIMEOUT
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"cannot run `ip netns add`: {exc}"
    if cp.returncode != 0:
        return False, f"cannot create a network namespace: {_one_line(cp.stderr)}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=_CMD_TIMEOUT)
    return True, "ok"


def lab_available() -> tuple[bool, str]:
    """Return ``(True, "ok")`` when labs can be built here, else ``(False, reason)``.

    Checks root, ``ip``/``tc``/``ss`` and that a network namespace can actually be created
    (the result is cached). Paths with a delay also need ``/dev/net/tun``; that is checked
    when such a lab is built. Tests: ``ok, why = lab_available(); if not ok: pytest.skip(why)``.
    """
    return _probe()


def require_available(need_tun: bool) -> None:
    """Raise :class:`LabUnavailable` unless a lab (with TUN devices if ``need_tun``) can run."""
    ok, reason = lab_available()
    if not ok:
        raise LabUnavailable(reason)
    if need_tun and not os.path.exists("/dev/net/tun"):
        raise LabUnavailable("/dev/net/tun is missing: paths with a delay need TUN devices")


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def _command_error(argv: Sequence[str], cp: subprocess.CompletedProcess[str]) -> LabError:
    shown = " ".join(argv)
    return LabError(f"`{shown}` failed ({cp.returncode}): {_one_line(cp.stderr or cp.stdout)}")


def run_command(argv: Sequence[str], input: str | None = None, check: bool = True) -> str:
    """Run an iproute2 command; return stdout; raise :class:`LabError` on failure."""
    try:
        cp = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=_CMD_TIMEOUT
        )
    except FileNotFoundError:
        raise LabUnavailable(f"`{argv[0]}` not found (install iproute2)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(argv)}` timed out") from None
    if check and cp.returncode != 0:
        raise _command_error(argv, cp)
    return cp.stdout


def run_parallel(
    commands: Sequence[tuple[Sequence[str], str | None]], check: bool = True
) -> list[str]:
    """Run independent commands concurrently (saves a few ms per command)."""
    if len(commands) == 1:
        argv, stdin = commands[0]
        return [run_command(argv, stdin, check)]
    procs: list[tuple[Sequence[str], subprocess.Popen[str], str | None]] = []
    try:
        for argv, stdin in commands:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append((argv, proc, stdin))
    except FileNotFoundError as exc:
        for _, proc, _ in procs:
            proc.kill()
            proc.wait()
        raise LabUnavailable(f"`{exc.filename}` not found (install iproute2)") from None
    outputs: list[str] = []
    error: LabError | None = None
    for argv, proc, stdin in procs:
        try:
            out, err = proc.communicate(stdin, timeout=_CMD_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            error = error or LabError(f"`{' '.join(argv)}` timed out")
        if check and proc.returncode != 0 and error is None:
            cp = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
            error = _command_error(argv, cp)
        outputs.append(out)
    if error is not None:
        raise error
    return outputs


def validate_name(name: str, what: str) -> None:
    """Raise :class:`LabError` unless ``name`` can name a lab (``what`` it is, for the message)."""
    if len(name) > _MAX_NAME or not _NAME_RE.match(name):
        raise LabError(
            f"invalid {what} {name!r}: use up to {_MAX_NAME} letters, digits, '_', '.', "
            "single '-' between them"
        )


def disable_ipv6_default() -> None:
    """In the namespace of the calling thread: devices created afterwards get no IPv6.

    (No router or neighbour solicitations on the paths.)
    """
    with (
        contextlib.suppress(OSError),
        open("/proc/sys/net/ipv6/conf/default/disable_ipv6", "w") as f,
    ):
        f.write("1")


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or ``None`` if it is gone or a zombie.

    With the pid it identifies a process even after the pid is reused.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[-1].split()
    except OSError:
        return None
    if not fields or fields[0] == b"Z":
        return None
    return int(fields[19])


def ancestors() -> set[int]:
    """This process and its ancestors: processes a teardown must not kill."""
    pids = {os.getpid()}
    pid = os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                pid = int(f.read().rsplit(b")", 1)[-1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def state_path(name: str) -> str:
    """The state file of lab ``name``."""
    return os.path.join(STATE_DIR, f"{name}.json")


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` as JSON; readers see the old file or the new one."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
