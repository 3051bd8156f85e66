"""The :class:`Lab`: two network namespaces joined by emulated paths.

This module owns the :class:`Lab` object and its life cycle: building a lab (owned by this
process, or persistent with :meth:`Lab.up`), opening one (:meth:`Lab.attach`), using its
namespaces, cutting and restoring paths, and tearing it down; also the labs this process
owns, torn down at exit. The commands it runs come from :mod:`tcpls.lab.topology` and
:mod:`tcpls.lab.teardown`, its forwarder is a :class:`~tcpls.lab.control.Forwarder`, and
its status is gathered by :mod:`tcpls.lab.status`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, get_args

from tcpls.lab.control import Forwarder
from tcpls.lab.errors import LabError, LabUnavailable
from tcpls.lab.model import STATE_DIR, CutMode, Path, PathSpec, Side
from tcpls.lab.netns import namespace_exists, run_in_namespace
from tcpls.lab.status import describe_lab
from tcpls.lab.system import (
    check_tools,
    disable_ipv6_default,
    process_start_time,
    require_available,
    run_command,
    run_parallel,
    state_path,
    validate_name,
    write_json_atomic,
)
from tcpls.lab.teardown import (
    delete_namespaces,
    destroy_sockets,
    kill_namespace_processes,
    remove_state_files,
    stop_children,
)
from tcpls.lab.topology import (
    blackhole_commands,
    build_commands,
    forwarder_path,
    kill_socket_commands,
    link_command,
)

__all__ = ["Lab"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

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
        validate_name(name_prefix, "name prefix")
        specs = self._check_specs(paths)
        require_available(any(s.kind == "tun" for s in specs))
        self._init_fields(f"{name_prefix}-{secrets.token_hex(3)}", specs)
        self._owner_pid = os.getpid()
        self._owner_start = process_start_time(self._owner_pid)
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
        self._forwarder: Forwarder | None = None
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
        validate_name(name, "lab name")
        specs = cls._check_specs(paths)
        require_available(any(s.kind == "tun" for s in specs))
        lab = cls.__new__(cls)
        lab._init_fields(name, specs)
        if (
            os.path.exists(state_path(name))
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
        validate_name(name, "lab name")
        problem = check_tools()
        if problem:
            raise LabUnavailable(problem)
        try:
            with open(state_path(name)) as f:
                data = json.load(f)
        except FileNotFoundError:
            if namespace_exists(f"{name}-c") or namespace_exists(f"{name}-s"):
                raise LabError(
                    f"lab {name!r} has namespaces but no state file {state_path(name)}; "
                    f"remove it with `tcpls lab down --name {name}`"
                ) from None
            raise LabError(
                f"no lab named {name!r} (no {state_path(name)}); "
                f"create one with `tcpls lab up --name {name}`"
            ) from None
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read {state_path(name)}: {exc}") from exc
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
            forwarder_pid = data.get("forwarder_pid")
            if forwarder_pid is not None:
                lab._forwarder = Forwarder(int(forwarder_pid), data.get("control"))
        except (KeyError, TypeError, ValueError) as exc:
            raise LabError(f"corrupt state file {state_path(name)}: {exc}") from exc
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
                or os.path.exists(state_path(name))
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
                with open(state_path(name)) as f:
                    data = json.load(f)
                owner, start = data.get("owner_pid"), data.get("owner_start")
            except (OSError, ValueError, AttributeError):
                continue
            if owner is None:
                continue  # persistent lab
            if process_start_time(int(owner)) != start:
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
                run_command(["ip", "netns", "add", ns])
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
            run_in_namespace(ns, disable_ipv6_default)
        self._save_state()
        links, ip_commands, tc_commands = build_commands(
            self.client_ns, self.server_ns, self.paths
        )
        forwarded = [p for p in self.paths if p.kind == "tun"]
        if forwarded:
            self._forwarder = Forwarder.start(
                [forwarder_path(self.client_ns, self.server_ns, p) for p in forwarded],
                os.path.join(STATE_DIR, f"{self.name}.sock"),
                daemon=daemon,
                log_path=os.path.join(STATE_DIR, f"{self.name}.log") if daemon else None,
            )
            self._save_state()
        if links:
            run_command(["ip", "-batch", "-"], links)
        run_parallel(ip_commands)
        if tc_commands:
            run_parallel(tc_commands)
        self._save_state()

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
            "forwarder_pid": None if self._forwarder is None else self._forwarder.pid,
            "control": None if self._forwarder is None else self._forwarder.control_path,
            "paths": [p.to_json() for p in self.paths],
        }

    def _save_state(self) -> None:
        write_json_atomic(state_path(self.name), self._state_dict())

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
        children, self._children = self._children, []
        with contextlib.suppress(Exception):
            stop_children(children)
        with contextlib.suppress(Exception):
            kill_namespace_processes(namespaces)
        if namespaces:
            with contextlib.suppress(Exception):
                destroy_sockets(namespaces)
        if self._forwarder is not None:
            with contextlib.suppress(Exception):
                self._forwarder.stop()  # its TUN devices vanish with it
                self._forwarder = None
        if namespaces:
            with contextlib.suppress(Exception):
                delete_namespaces(namespaces)
        if only is None or len(only) == 2:
            remove_state_files(self.name)
        with _owned_lock:
            _owned_labs.discard(self)
        left = [ns for ns in candidates if namespace_exists(ns)]
        if left:
            raise LabError(f"could not delete network namespace(s) {', '.join(left)}")

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
                run_command(link_command(self.client_ns, path, up=False))
                path.state = "down"
                if mode == "reset":
                    run_parallel(kill_socket_commands(self.client_ns, self.server_ns, path))
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
            run_command(link_command(self.client_ns, path, up=True))
        path.state = "up"

    def _set_blackhole(self, path: Path, on: bool) -> None:
        if path.kind == "veth":
            run_parallel(blackhole_commands(self.client_ns, self.server_ns, path, on))
            return
        forwarder = self._forwarder
        if forwarder is None or forwarder.control_path is None:
            raise LabError(f"lab {self.name} has no forwarder for path {path.index}")
        forwarder.request({"op": "blackhole", "path": path.index, "on": on})

    # -- status -------------------------------------------------------------------------------

    def forwarder_stats(self) -> list[dict[str, Any]] | None:
        """Per-path forwarder counters (see :meth:`status`), or ``None`` without a forwarder."""
        return None if self._forwarder is None else self._forwarder.stats()

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
            owner = self._owner_pid if self._owner_pid is not None else self._attached_owner[0]
            return describe_lab(
                name=self.name,
                owned=self.owned,
                owner_pid=owner,
                client_ns=self.client_ns,
                server_ns=self.server_ns,
                paths=self.paths,
                forwarder=self._forwarder,
            )
