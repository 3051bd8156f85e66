"""The :class:`Lab`: two network namespaces joined by emulated paths."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, get_args

from tcpls.lab.bpf import drop_all_bytecode, random_loss_bytecode
from tcpls.lab.control import (
    forwarder_request,
    is_forwarder_pid,
    start_forwarder,
    stop_process,
)
from tcpls.lab.errors import LabError, LabUnavailable
from tcpls.lab.forwarder import ForwarderPath
from tcpls.lab.model import (
    _BLACKHOLE_PRIO,
    _ETH_FRAME,
    _LOSS_PRIO,
    _P,
    _T,
    STATE_DIR,
    CutMode,
    Path,
    PathKind,
    PathSpec,
    PathState,
    Side,
)
from tcpls.lab.netns import namespace_exists, run_in_namespace
from tcpls.lab.system import (
    _ancestors,
    _check_tools,
    _disable_ipv6_default,
    _process_start_time,
    _require_available,
    _run,
    _run_parallel,
    _state_path,
    _validate_name,
    _write_json_atomic,
    lab_available,
)

__all__ = [
    "STATE_DIR",
    "CutMode",
    "Lab",
    "Path",
    "PathKind",
    "PathSpec",
    "PathState",
    "Side",
    "lab_available",
]

# ---------------------------------------------------------------------------------------------
# Labs owned by this process are torn down at exit.

_owned_lock = threading.Lock()
_owned_labs: set[Lab] = set()


def _close_owned_labs() -> None:
    with _owned_lock:
        labs = list(_owned_labs)
    for lab in labs:
        with contextlib.suppress(Exception):
            lab.close()


atexit.register(_close_owned_labs)


class Lab:
    """Two network namespaces (client side, server side) joined by one emulated path per spec.

    ``Lab(specs)`` builds a lab owned by this process (random names ``<prefix>-<hex>-c/-s``);
    :meth:`close` (or leaving the ``with`` block, or interpreter exit) tears it down.
    :meth:`up` builds a persistent lab with deterministic names that outlives this process
    and :meth:`attach` opens it from any process; :meth:`destroy`/:meth:`down` remove it.

    Path ``i`` joins client address ``10.10.<i+1>.1/24`` to server address ``10.10.<i+1>.2/24``.
    """

    name: str
    """Base name: namespaces are ``<name>-c`` and ``<name>-s``."""
    client_ns: str
    """Name of the client-side network namespace."""
    server_ns: str
    """Name of the server-side network namespace."""
    paths: list[Path]
    """The paths, in spec order (``paths[i].index == i``)."""
    _owner_pid: int | None
    _owner_start: int | None

    def __init__(self, paths: Sequence[PathSpec], name_prefix: str = "tcpls") -> None:
        """Build a lab owned by this process; raise :class:`LabUnavailable` if impossible."""
        _validate_name(name_prefix, "name prefix")
        specs = self._check_specs(paths)
        _require_available(any(s.kind == "tun" for s in specs))
        self._init_fields(f"{name_prefix}-{secrets.token_hex(3)}", specs)
        self._owner_pid = os.getpid()
        self._owner_start = _process_start_time(self._owner_pid)
        with _owned_lock:
            _owned_labs.add(self)
        self._build(daemon=False)

    # -- construction -------------------------------------------------------------------------

    @staticmethod
    def _check_specs(paths: Sequence[PathSpec]) -> list[PathSpec]:
        specs = list(paths)
        if not specs:
            raise LabError("a lab needs at least one path")
        if len(specs) > 250:
            raise LabError("a lab supports at most 250 paths")
        for spec in specs:
            if not isinstance(spec, PathSpec):
                raise TypeError(f"paths must be PathSpec objects, got {type(spec).__name__}")
        return specs

    def _init_fields(self, name: str, specs: Sequence[PathSpec]) -> None:
        self.name = name
        self.client_ns = f"{name}-c"
        self.server_ns = f"{name}-s"
        self.paths = []
        for i, spec in enumerate(specs):
            dev = f"{spec.kind}{i}"
            self.paths.append(
                Path(
                    index=i,
                    client_ip=f"10.10.{i + 1}.1",
                    server_ip=f"10.10.{i + 1}.2",
                    spec=spec,
                    kind=spec.kind,
                    client_dev=dev,
                    server_dev=dev,
                )
            )
        self._lock = threading.RLock()
        self._closed = False
        self._owner_pid = None
        self._owner_start = None
        self._forwarder_proc: subprocess.Popen[bytes] | None = None
        self._forwarder_pid: int | None = None
        self._lifeline: int | None = None
        self._control_path: str | None = None
        self._children: list[subprocess.Popen[Any]] = []
        self._attached_owner: tuple[int | None, int | None] = (None, None)
        self.setup_seconds = 0.0
        """Seconds :meth:`__init__`/:meth:`up` took to build the lab."""

    @property
    def owned(self) -> bool:
        """Whether this object tears the lab down on :meth:`close` (built by ``Lab(...)``)."""
        return self._owner_pid is not None and self._owner_pid == os.getpid()

    @classmethod
    def up(cls, name: str, paths: Sequence[PathSpec]) -> Lab:
        """Build a persistent lab ``name`` (namespaces ``<name>-c``/``<name>-s``).

        It survives this process: the forwarder (if any path has a delay) runs as a daemon and
        the topology is saved in ``/run/tcpls-lab/<name>.json``. The returned object is not
        owned: :meth:`close` only forgets it; use :meth:`destroy` or :meth:`down` to remove it.
        """
        _validate_name(name, "lab name")
        specs = cls._check_specs(paths)
        _require_available(any(s.kind == "tun" for s in specs))
        lab = cls.__new__(cls)
        lab._init_fields(name, specs)
        if (
            os.path.exists(_state_path(name))
            or namespace_exists(lab.client_ns)
            or namespace_exists(lab.server_ns)
        ):
            raise LabError(
                f"lab {name!r} already exists (namespaces {lab.client_ns}/{lab.server_ns}); "
                f"remove it with `tcpls lab down --name {name}`"
            )
        lab._build(daemon=True)
        return lab

    @classmethod
    def attach(cls, name: str) -> Lab:
        """Open the existing lab ``name`` (built by :meth:`up`, or by another process)."""
        _validate_name(name, "lab name")
        problem = _check_tools()
        if problem:
            raise LabUnavailable(problem)
        try:
            with open(_state_path(name)) as f:
                data = json.load(f)
        except FileNotFoundError:
            if namespace_exists(f"{name}-c") or namespace_exists(f"{name}-s"):
                raise LabError(
                    f"lab {name!r} has namespaces but no state file {_state_path(name)}; "
                    f"remove it with `tcpls lab down --name {name}`"
                ) from None
            raise LabError(
                f"no lab named {name!r} (no {_state_path(name)}); "
                f"create one with `tcpls lab up --name {name}`"
            ) from None
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read {_state_path(name)}: {exc}") from exc
        try:
            lab = cls.__new__(cls)
            lab._init_fields(name, [])
            lab.paths = [Path.from_json(p) for p in data["paths"]]
            owner = data.get("owner_pid")
            owner_start = data.get("owner_start")
            # Not owned by this process even when the owner is alive: only it tears down.
            lab._owner_pid = None
            lab._attached_owner = (
                None if owner is None else int(owner),
                None if owner_start is None else int(owner_start),
            )
            lab._forwarder_pid = data.get("forwarder_pid")
            lab._control_path = data.get("control")
        except (KeyError, TypeError, ValueError) as exc:
            raise LabError(f"corrupt state file {_state_path(name)}: {exc}") from exc
        return lab

    @classmethod
    def down(cls, name: str) -> None:
        """Tear down lab ``name`` completely, even when its state file is missing or stale."""
        try:
            lab = cls.attach(name)
        except LabUnavailable:
            raise
        except LabError:
            if not (
                namespace_exists(f"{name}-c")
                or namespace_exists(f"{name}-s")
                or os.path.exists(_state_path(name))
            ):
                raise LabError(f"no lab named {name!r}") from None
            lab = cls.__new__(cls)
            lab._init_fields(name, [])
        lab.destroy()

    @classmethod
    def list_labs(cls) -> list[str]:
        """Names of the labs that have a state file in :data:`STATE_DIR`."""
        try:
            entries = os.listdir(STATE_DIR)
        except FileNotFoundError:
            return []
        return sorted(e[:-5] for e in entries if e.endswith(".json"))

    @classmethod
    def cleanup_stale(cls) -> list[str]:
        """Destroy labs whose owning process died without closing them; return their names."""
        removed = []
        for name in cls.list_labs():
            try:
                with open(_state_path(name)) as f:
                    data = json.load(f)
                owner, start = data.get("owner_pid"), data.get("owner_start")
            except (OSError, ValueError, AttributeError):
                continue
            if owner is None:
                continue  # persistent lab
            if _process_start_time(int(owner)) != start:
                cls.down(name)
                removed.append(name)
        return removed

    def _build(self, daemon: bool) -> None:
        t0 = time.monotonic()
        os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
        for ns in (self.client_ns, self.server_ns):
            if namespace_exists(ns):
                raise LabError(f"network namespace {ns} already exists")
        created: list[str] = []
        try:
            for ns in (self.client_ns, self.server_ns):
                _run(["ip", "netns", "add", ns])
                created.append(ns)
            self._create(daemon)
        except BaseException:
            # Only what this call created: a name clash must not delete someone else's lab.
            with contextlib.suppress(Exception):
                self._teardown(created)
            raise
        self.setup_seconds = time.monotonic() - t0

    def _create(self, daemon: bool) -> None:
        for ns in (self.client_ns, self.server_ns):
            run_in_namespace(ns, _disable_ipv6_default)
        self._save_state()

        link_lines = []
        ip_lines: dict[str, list[str]] = {self.client_ns: [], self.server_ns: []}
        tc_lines: dict[str, list[str]] = {self.client_ns: [], self.server_ns: []}
        for ns in ip_lines:
            ip_lines[ns].append("link set dev lo up")
        for path in self.paths:
            if path.kind == "veth":
                link_lines.append(
                    f"link add name {path.client_dev} netns {self.client_ns} type veth "
                    f"peer name {path.server_dev} netns {self.server_ns}"
                )
            for ns, dev, ip in (
                (self.client_ns, path.client_dev, path.client_ip),
                (self.server_ns, path.server_dev, path.server_ip),
            ):
                ip_lines[ns].append(f"addr add {ip}/24 dev {dev}")
                ip_lines[ns].append(f"link set dev {dev} up")
                if path.kind == "veth":
                    tc_lines[ns].extend(self._veth_qdisc_lines(dev, path.spec))

        forwarded = [p for p in self.paths if p.kind == "tun"]
        if forwarded:
            self._control_path = os.path.join(STATE_DIR, f"{self.name}.sock")
            log_path = os.path.join(STATE_DIR, f"{self.name}.log") if daemon else None
            proc, lifeline = start_forwarder(
                [self._forwarder_config(p) for p in forwarded],
                self._control_path,
                daemon=daemon,
                log_path=log_path,
            )
            self._forwarder_pid = proc.pid
            self._lifeline = lifeline
            if daemon:
                # The daemon outlives us; let go of it (it is reparented and reaped by init).
                proc.returncode = 0
            else:
                self._forwarder_proc = proc
            self._save_state()
        if link_lines:
            _run(["ip", "-batch", "-"], "\n".join(link_lines) + "\n")
        _run_parallel(
            [
                (["ip", "-n", ns, "-batch", "-"], "\n".join(lines) + "\n")
                for ns, lines in ip_lines.items()
            ]
        )
        tc_cmds = [
            (["tc", "-n", ns, "-batch", "-"], "\n".join(lines) + "\n")
            for ns, lines in tc_lines.items()
            if lines
        ]
        if tc_cmds:
            _run_parallel(tc_cmds)
        self._save_state()

    @staticmethod
    def _veth_qdisc_lines(dev: str, spec: PathSpec) -> list[str]:
        lines = [f"qdisc add dev {dev} clsact"]
        if spec.rate_mbit is not None:
            rate_bytes = spec.rate_mbit * 1e6 / 8
            # Bucket of ~5 ms of traffic (timer granularity), at least a few full frames.
            burst = max(int(rate_bytes * 0.005), 4 * _ETH_FRAME)
            limit = max(spec.queue_bytes, burst)
            lines.append(
                f"qdisc add dev {dev} root tbf rate {int(spec.rate_mbit * 1e6)}bit "
                f"burst {burst} limit {limit}"
            )
        if spec.loss > 0:
            lines.append(
                f"filter add dev {dev} ingress prio {_LOSS_PRIO} handle {_LOSS_PRIO} bpf da "
                f'bytecode "{random_loss_bytecode(spec.loss)}"'
            )
        return lines

    def _forwarder_config(self, path: Path) -> ForwarderPath:
        spec = path.spec
        return ForwarderPath(
            index=path.index,
            client_ns=self.client_ns,
            server_ns=self.server_ns,
            client_dev=path.client_dev,
            server_dev=path.server_dev,
            rate_bps=None if spec.rate_mbit is None else spec.rate_mbit * 1e6,
            delay_s=spec.delay_ms / 1000,
            loss=spec.loss,
            queue_bytes=spec.queue_bytes,
        )

    def _state_dict(self) -> dict[str, Any]:
        owner, owner_start = self._owner_pid, self._owner_start
        if owner is None:
            owner, owner_start = self._attached_owner
        return {
            "version": 1,
            "name": self.name,
            "client_ns": self.client_ns,
            "server_ns": self.server_ns,
            "owner_pid": owner,
            "owner_start": owner_start,
            "forwarder_pid": self._forwarder_pid,
            "control": self._control_path,
            "paths": [p.to_json() for p in self.paths],
        }

    def _save_state(self) -> None:
        _write_json_atomic(_state_path(self.name), self._state_dict())

    # -- context manager and teardown ---------------------------------------------------------

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        paths = "; ".join(f"{p.index}: {p.spec.describe()} [{p.state}]" for p in self.paths)
        return f"<Lab {self.name} owned={self.owned} paths=({paths})>"

    def close(self) -> None:
        """Tear the lab down if this process owns it, else just forget it. Idempotent."""
        if self.owned:
            self.destroy()
        else:
            self._closed = True

    def destroy(self) -> None:
        """Tear the lab down, whoever built it. Idempotent; never leaves anything behind.

        Order: stop processes started in the namespaces, ``ss -K`` every TCP socket in them
        (orphaned sockets would keep a deleted namespace alive), stop the forwarder (its TUN
        devices vanish with it), delete both namespaces (their veths go with them), remove the
        state file. Raises :class:`LabError` only if a namespace could not be deleted.
        """
        with self._lock:
            if self._closed and not (
                namespace_exists(self.client_ns) or namespace_exists(self.server_ns)
            ):
                return
            self._closed = True
            self._teardown()

    def _teardown(self, only: Sequence[str] | None = None) -> None:
        candidates = (self.client_ns, self.server_ns) if only is None else only
        namespaces = [ns for ns in candidates if namespace_exists(ns)]
        with contextlib.suppress(Exception):
            self._stop_children()
        with contextlib.suppress(Exception):
            self._kill_namespace_processes(namespaces)
        if namespaces:
            with contextlib.suppress(Exception):
                _run_parallel(
                    [(["ss", "-N", ns, "-K", "-t", "-a", "-n"], None) for ns in namespaces],
                    check=False,
                )
        with contextlib.suppress(Exception):
            self._stop_forwarder()
        if namespaces:
            with contextlib.suppress(Exception):
                _run(
                    ["ip", "-force", "-batch", "-"],
                    "".join(f"netns del {ns}\n" for ns in namespaces),
                    check=False,
                )
        if only is None or len(only) == 2:
            for suffix in (".json", ".sock", ".log"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(STATE_DIR, self.name + suffix))
        with _owned_lock:
            _owned_labs.discard(self)
        left = [ns for ns in candidates if namespace_exists(ns)]
        if left:
            raise LabError(f"could not delete network namespace(s) {', '.join(left)}")

    def _stop_children(self) -> None:
        children, self._children = self._children, []
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

    def _kill_namespace_processes(self, namespaces: Sequence[str]) -> None:
        if not namespaces:
            return
        outputs = _run_parallel([(["ip", "netns", "pids", ns], None) for ns in namespaces], False)
        spare = _ancestors()
        pids = {int(tok) for out in outputs for tok in out.split() if tok.isdigit()} - spare
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        while pids and time.monotonic() < deadline:
            pids = {p for p in pids if _process_start_time(p) is not None}
            if pids:
                time.sleep(0.02)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _stop_forwarder(self) -> None:
        if self._lifeline is not None:
            with contextlib.suppress(OSError):
                os.close(self._lifeline)
            self._lifeline = None
        if self._forwarder_proc is not None:
            stop_process(self._forwarder_proc.pid, self._forwarder_proc)
            self._forwarder_proc = None
        elif self._forwarder_pid is not None:
            if self._control_path is not None and is_forwarder_pid(self._forwarder_pid):
                with contextlib.suppress(LabError):
                    forwarder_request(self._control_path, {"op": "quit"}, timeout=1.0)
            stop_process(self._forwarder_pid)
        self._forwarder_pid = None

    # -- using the namespaces -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LabError(f"lab {self.name} is closed")

    def namespace(self, side: Side) -> str:
        """Name of the client-side or server-side namespace."""
        if side == "client":
            return self.client_ns
        if side == "server":
            return self.server_ns
        raise ValueError(f"side must be 'client' or 'server', got {side!r}")

    def path(self, index: int) -> Path:
        """Return path ``index`` (0-based); :class:`LabError` if there is none."""
        if not isinstance(index, int) or not 0 <= index < len(self.paths):
            raise LabError(
                f"no path {index!r}: lab {self.name} has paths 0..{len(self.paths) - 1}"
            )
        return self.paths[index]

    def socket(
        self,
        side: Side,
        family: int = socket.AF_INET,
        type: int = socket.SOCK_STREAM,
        proto: int = 0,
    ) -> socket.socket:
        """Create a socket inside the ``side`` namespace (on a helper thread; see ``call``).

        The socket stays in that namespace: bind/listen/connect it from anywhere, or hand it
        to asyncio (``asyncio.start_server(..., sock=s)``, ``open_connection(sock=s)``).
        """
        self._check_open()
        return run_in_namespace(self.namespace(side), socket.socket, family, type, proto)

    def call(self, side: Side, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn(*args, **kwargs)`` on a helper thread inside the ``side`` namespace."""
        self._check_open()
        return run_in_namespace(self.namespace(side), fn, *args, **kwargs)

    def run(
        self,
        side: Side,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the ``side`` namespace (``ip netns exec``), capturing text output."""
        self._check_open()
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace(side), *argv],
            check=check,
            timeout=timeout,
            input=input,
            capture_output=True,
            text=True,
        )

    def popen(self, side: Side, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in the ``side`` namespace; ``kwargs`` go to :class:`subprocess.Popen`.

        The process is terminated (then killed) when the lab is torn down.
        """
        self._check_open()
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace(side), *argv], **kwargs
        )
        with self._lock:
            self._children = [p for p in self._children if p.poll() is None]
            self._children.append(proc)
        return proc

    # -- cutting paths ------------------------------------------------------------------------

    def cut(self, path_index: int, mode: CutMode) -> None:
        """Break path ``path_index``; undo with :meth:`restore`.

        * ``"blackhole"``: every packet is silently dropped in both directions (veth paths: a
          drop-all BPF filter on both ingresses; delayed paths: the forwarder drops them).
          Established connections notice only through timeouts (``TCP_USER_TIMEOUT``); new
          connects hang. State becomes ``"blackhole"``.
        * ``"reset"``: the client side of the path is set down (new client connects fail at
          once with ENETUNREACH), then every TCP socket on the path is destroyed with
          ``ss -K`` in BOTH namespaces, so both applications see ``ECONNABORTED`` at once
          (pending or next recv/send). State becomes ``"down"``.
        * ``"down"``: ``ip link set down`` on the client side (the server end of a veth loses
          carrier). New client connects fail with ENETUNREACH; established sockets see nothing
          until their retransmissions time out. State becomes ``"down"``.

        A path that is already cut is restored first.
        """
        if mode not in get_args(CutMode):
            raise LabError(f"cut mode must be one of blackhole, reset, down; got {mode!r}")
        with self._lock:
            self._check_open()
            path = self.path(path_index)
            if path.state != "up":
                self._restore(path)
            if mode == "blackhole":
                self._set_blackhole(path, True)
                path.state = "blackhole"
            else:
                _run(["ip", "-n", self.client_ns, "link", "set", "dev", path.client_dev, "down"])
                path.state = "down"
                if mode == "reset":
                    self._kill_path_sockets(path)
            self._save_state()

    def restore(self, path_index: int) -> None:
        """Undo :meth:`cut` on path ``path_index`` (no-op if it is up)."""
        with self._lock:
            self._check_open()
            path = self.path(path_index)
            if path.state != "up":
                self._restore(path)
                self._save_state()

    def _restore(self, path: Path) -> None:
        if path.state == "blackhole":
            self._set_blackhole(path, False)
        elif path.state == "down":
            _run(["ip", "-n", self.client_ns, "link", "set", "dev", path.client_dev, "up"])
        path.state = "up"

    def _set_blackhole(self, path: Path, on: bool) -> None:
        if path.kind == "tun":
            if self._control_path is None:
                raise LabError(f"lab {self.name} has no forwarder for path {path.index}")
            forwarder_request(
                self._control_path, {"op": "blackhole", "path": path.index, "on": on}
            )
            return
        commands: list[tuple[Sequence[str], str | None]] = []
        for ns, dev in ((self.client_ns, path.client_dev), (self.server_ns, path.server_dev)):
            if on:
                argv = ["tc", "-n", ns, "filter", "add", "dev", dev, "ingress"]
                argv += ["prio", str(_BLACKHOLE_PRIO), "handle", str(_BLACKHOLE_PRIO)]
                argv += ["bpf", "da", "bytecode", drop_all_bytecode()]
            else:
                argv = ["tc", "-n", ns, "filter", "del", "dev", dev, "ingress"]
                argv += ["prio", str(_BLACKHOLE_PRIO)]
            commands.append((argv, None))
        _run_parallel(commands)

    def _kill_path_sockets(self, path: Path) -> None:
        def ss_kill(ns: str, local: str, remote: str) -> list[str]:
            argv = ["ss", "-N", ns, "-K", "-t", "-n", "state", "connected"]
            return [*argv, "(", "src", local, "or", "dst", remote, ")"]

        _run_parallel(
            [
                (ss_kill(self.client_ns, path.client_ip, path.server_ip), None),
                (ss_kill(self.server_ns, path.server_ip, path.client_ip), None),
            ]
        )

    # -- status -------------------------------------------------------------------------------

    def forwarder_stats(self) -> list[dict[str, Any]] | None:
        """Per-path forwarder counters (see :meth:`status`), or ``None`` without a forwarder."""
        if self._control_path is None or self._forwarder_pid is None:
            return None
        reply = forwarder_request(self._control_path, {"op": "stats"})
        stats: list[dict[str, Any]] = reply["paths"]
        return stats

    def status(self) -> dict[str, Any]:
        """Describe the lab: namespaces, paths (links, qdiscs, state) and forwarder counters.

        Keys: ``name``, ``owned``, ``owner_pid``, ``namespaces`` (``client``/``server`` ->
        name and existence), ``forwarder`` (``None`` or ``pid``, ``alive``, ``error``) and
        ``paths``: one dict per path with ``index``, ``kind``, ``client_ip``, ``server_ip``,
        ``client_dev``, ``server_dev``, ``spec``, ``state``, ``links`` (per side: operstate,
        flags, mtu, or ``None`` if missing), ``qdiscs`` (per side: ``tc -s -j qdisc`` entries)
        and ``forwarder`` (``None`` or per-direction ``c2s``/``s2c`` counters: received,
        forwarded, forwarded_bytes, dropped_loss, dropped_queue, dropped_cut, write_errors,
        queued).
        """
        with self._lock:
            sides: dict[str, str] = {"client": self.client_ns, "server": self.server_ns}
            exists = {side: namespace_exists(ns) for side, ns in sides.items()}
            live = [side for side in sides if exists[side]]
            commands: list[tuple[Sequence[str], str | None]] = []
            for side in live:
                commands.append((["ip", "-j", "-n", sides[side], "link", "show"], None))
                commands.append((["tc", "-s", "-j", "-n", sides[side], "qdisc", "show"], None))
            outputs = _run_parallel(commands, check=False) if commands else []
            links: dict[str, dict[str, Any]] = {}
            qdiscs: dict[str, list[dict[str, Any]]] = {}
            for i, side in enumerate(live):
                try:
                    links[side] = {d["ifname"]: d for d in json.loads(outputs[2 * i] or "[]")}
                except (ValueError, KeyError, TypeError):
                    links[side] = {}
                try:
                    qdiscs[side] = json.loads(outputs[2 * i + 1] or "[]")
                except ValueError:
                    qdiscs[side] = []
            forwarder: dict[str, Any] | None = None
            fwd_paths: dict[int, dict[str, Any]] = {}
            if self._forwarder_pid is not None:
                forwarder = {"pid": self._forwarder_pid, "alive": False, "error": None}
                try:
                    for entry in self.forwarder_stats() or []:
                        fwd_paths[int(entry["index"])] = entry
                    forwarder["alive"] = True
                except LabError as exc:
                    forwarder["error"] = str(exc)
            paths = []
            for path in self.paths:
                entry = path.to_json()
                entry["links"] = {}
                entry["qdiscs"] = {}
                for side, dev in (("client", path.client_dev), ("server", path.server_dev)):
                    link = links.get(side, {}).get(dev)
                    entry["links"][side] = (
                        None
                        if link is None
                        else {
                            "operstate": link.get("operstate"),
                            "flags": link.get("flags", []),
                            "mtu": link.get("mtu"),
                        }
                    )
                    entry["qdiscs"][side] = [
                        q for q in qdiscs.get(side, []) if q.get("dev") == dev
                    ]
                fwd = fwd_paths.get(path.index)
                entry["forwarder"] = (
                    None if fwd is None else {"c2s": fwd["c2s"], "s2c": fwd["s2c"]}
                )
                paths.append(entry)
            owner = self._owner_pid if self._owner_pid is not None else self._attached_owner[0]
            return {
                "name": self.name,
                "owned": self.owned,
                "owner_pid": owner,
                "namespaces": {
                    side: {"name": ns, "exists": exists[side]} for side, ns in sides.items()
                },
                "forwarder": forwarder,
                "paths": paths,
            }
