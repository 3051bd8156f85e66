"""A server on every core: worker processes sharing one port (design: Workers).

:func:`run_server` is the blocking entry point. Its process (the *supervisor*) opens
one listening socket per worker, all bound to the same port with ``SO_REUSEPORT`` so
that the kernel spreads new connections over them, then forks the workers; each runs
:func:`tcpls.serve` on its socket in its own event loop. The supervisor serves
nothing itself: it restarts a worker that dies, and it owns the listening sockets, so
that a restart loses no connection waiting in a queue.

Joins: the kernel may give a join's connection to any worker. Every worker mints
tokens that name it (design: Token steering) and passes a join for another worker's
session to that worker (design: Join handoff). With ``worker_ports``, worker *i* also
listens on port ``worker_ports + i`` of its own and advertises it to its sessions (New
Address), so that clients that join advertised addresses go straight to it.

Signals to the supervisor:

* ``SIGHUP``: graceful restart. A new generation of workers starts on the same
  sockets (certificates and files are read again); the old workers stop accepting,
  let their sessions finish within ``grace`` seconds, then close the rest with
  ``close_notify``. Joins for their sessions keep reaching them through the hand-off.
  At most :data:`MAX_DRAINING_GENERATIONS` old generations finish at a time: a quicker
  succession of restarts closes the oldest one's sessions at once.
* ``SIGTERM``: graceful stop, the same without a new generation.
* ``SIGINT`` (Ctrl-C), or a second ``SIGTERM``: the sessions are closed at once
  (``close_notify``).

Each worker prints one line when it ends: its sessions and joins passed and received.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import secrets
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, Literal

from tcpls.aio.server import Handler
from tcpls.config import ServerConfig, Steering
from tcpls.core.scheduler import SchedulerName
from tcpls.errors import ConfigurationError, TCPLSError

__all__ = ["DEFAULT_GRACE", "run_server", "worker_count"]

logger = logging.getLogger("tcpls.aio.api")

#: Seconds sessions have to finish after a restart or stop, by default.
DEFAULT_GRACE = 30.0
#: Most workers of one supervisor.
MAX_WORKERS = 256
#: Most generations of old workers still serving their sessions after restarts: a
#: further restart closes the oldest one's sessions at once (design: Graceful restart).
MAX_DRAINING_GENERATIONS = 3
#: Largest certificate, key or CA file a generation copies.
_MAX_FILE = 1 << 20
_PR_SET_PDEATHSIG = 1
#: Seconds between two restarts of a worker that keeps dying.
_RESPAWN_DELAY = 1.0


def worker_count(workers: int | Literal["auto"]) -> int:
    """The number of workers ``workers`` stands for (``"auto"``: one per usable core)."""
    if workers == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigurationError(f"workers must be between 1 and {MAX_WORKERS}")
    return workers


def run_server(
    handler: Handler,
    host: str | None,
    port: int,
    *,
    config: ServerConfig,
    workers: int | Literal["auto"] = "auto",
    grace: float = DEFAULT_GRACE,
    scheduler: SchedulerName = "aggregate",
    worker_ports: int | None = None,
    machine: int = 0,
    steering_key: bytes | None = None,
    ready: Callable[[list[tuple[str, int]]], None] | None = None,
) -> int:
    """Serve ``handler`` on ``host:port`` with ``workers`` processes until ``SIGTERM`` or
    ``SIGINT``; returns 0 after a graceful stop. Blocks; call it before any event loop
    runs in this process (it forks).

    ``machine`` and ``steering_key`` place this server among the machines of a
    deployment behind a load balancer (design: Token steering): every machine gets the
    same 16-byte key and its own ID; without a key, one is made for this server alone.
    ``ready`` is called with the listening addresses once the sockets are open.
    ``config.steering`` is filled in per worker.
    """
    count = worker_count(workers)
    if grace < 0:
        raise ConfigurationError("grace must be at least 0 seconds")
    config.check()  # fail here, once, rather than in every worker
    key = steering_key if steering_key is not None else secrets.token_bytes(16)
    Steering(key, machine=machine).check()
    supervisor = _Supervisor(
        handler, config, count, grace, scheduler, machine, key, host, port, worker_ports
    )
    try:
        return supervisor.run(ready)
    finally:
        supervisor.cleanup()


@dataclasses.dataclass
class _Worker:
    index: int
    worker_id: int
    generation: int
    draining: bool = False
    closing_now: bool = False  # told to close its sessions at once (SIGUSR2)


class _Supervisor:
    """Forks and watches the workers; owns the listening sockets and the hand-off dir."""

    def __init__(
        self,
        handler: Handler,
        config: ServerConfig,
        count: int,
        grace: float,
        scheduler: SchedulerName,
        machine: int,
        key: bytes,
        host: str | None,
        port: int,
        worker_ports: int | None,
    ) -> None:
        self.handler = handler
        self.config = config
        self.count = count
        self.grace = grace
        self.scheduler: SchedulerName = scheduler
        self.machine = machine
        self.key = key
        self.host = host
        self.port = port
        self.worker_ports = worker_ports
        self.shared: list[socket.socket] = []
        self.own: list[socket.socket] = []
        self.workers: dict[int, _Worker] = {}  # by pid
        self.generation = 0
        self.next_id = 0
        self.handoff_dir = tempfile.mkdtemp(prefix="tcpls-workers-")
        #: The configuration of each generation that has workers, and the descriptors of
        #: its copies of the files (see _snapshot).
        self.generations: dict[int, ServerConfig] = {}
        self.generation_fds: dict[int, list[int]] = {}
        self.pid = os.getpid()
        #: When the worker of each index last died (a worker that keeps dying waits).
        self.deaths: dict[int, float] = {}
        self.signals: list[int] = []

    def open_sockets(self) -> list[tuple[str, int]]:
        host = self.host or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        port = self.port
        for _ in range(self.count):
            sock = _listening_socket(family, host, port, reuseport=True)
            port = sock.getsockname()[1]  # port 0: the first socket's port for all
            self.shared.append(sock)
        if self.worker_ports is not None:
            for index in range(self.count):
                own_port = self.worker_ports + index
                self.own.append(_listening_socket(family, host, own_port, reuseport=False))
        if self.config.fastopen:
            from tcpls.aio import fastopen

            fastopen.enable_on_listener(self.shared + self.own)
        return [s.getsockname()[:2] for s in self.shared[:1] + self.own]

    def run(self, ready: Callable[[list[tuple[str, int]]], None] | None) -> int:
        # the signals are ours before anyone can connect: a SIGHUP or SIGTERM that comes
        # as early as that is acted on, not fatal
        wakeup_r, wakeup_w = os.pipe()
        os.set_blocking(wakeup_w, False)
        old_wakeup = signal.set_wakeup_fd(wakeup_w)
        handled = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            addresses = self.open_sockets()
            if ready is not None:
                ready(addresses)
            self._start_generation(self._snapshot(1))
            stopping_since: float | None = None
            while True:
                with contextlib.suppress(InterruptedError):
                    select.select([wakeup_r], [], [], 1.0)
                with contextlib.suppress(BlockingIOError):
                    os.read(wakeup_r, 512)
                signals, self.signals = self.signals, []
                stop = signal.SIGTERM in signals or signal.SIGINT in signals
                if stopping_since is not None and stop:  # again: end the grace period
                    self._signal_all(signal.SIGUSR2)
                elif stopping_since is None:
                    if stop:
                        stopping_since = time.monotonic()
                        now = signal.SIGINT in signals
                        _say(
                            "tcpls: stopping: closing the sessions"
                            if now
                            else f"tcpls: stopping: sessions have {self.grace:g}s to finish"
                        )
                        self._close_listeners()
                        self._drain(list(self.workers))
                        if now:
                            self._signal_all(signal.SIGUSR2)
                    elif signal.SIGHUP in signals:
                        self._restart()
                self._reap(respawn=stopping_since is None)
                if stopping_since is not None:
                    if not self.workers:
                        return 0
                    if time.monotonic() - stopping_since > self.grace + 15:
                        for pid in self.workers:  # a worker that hangs past its grace
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGKILL)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(old_wakeup)
            os.close(wakeup_r)
            os.close(wakeup_w)

    def _restart(self) -> None:
        try:
            snapshot = self._snapshot(self.generation + 1)
        except (TCPLSError, OSError) as exc:  # the old workers stay
            _say(f"tcpls: not restarting: {exc}")
            return
        _say("tcpls: restarting the workers")
        old = [pid for pid, w in self.workers.items() if not w.draining]
        self._start_generation(snapshot)
        self._drain(old)
        finishing = {w.generation for w in self.workers.values() if w.draining}
        finishing -= {w.generation for w in self.workers.values() if w.closing_now}
        for generation in sorted(finishing)[: max(0, len(finishing) - MAX_DRAINING_GENERATIONS)]:
            _say(
                f"tcpls: closing the sessions of generation {generation} now: more than "
                f"{MAX_DRAINING_GENERATIONS} generations of old workers were finishing"
            )
            for pid, worker in self.workers.items():
                if worker.generation == generation:
                    worker.closing_now = True
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGUSR2)

    def _snapshot(self, generation: int) -> ServerConfig:
        """The configuration of a generation, with in-memory copies (``memfd``) of the
        files its workers read (certificate, key, client CAs) taken now and checked: a
        worker started later, to replace one that died, reads what its generation read,
        whatever the files became, and no copy of the key is left on disk (design:
        Graceful restart)."""
        copies: dict[str, str] = {}
        fds: list[int] = []
        try:
            for name in ("certfile", "keyfile", "client_cafile"):
                path = getattr(self.config, name)
                if path is not None:
                    with open(path, "rb") as f:
                        data = f.read(_MAX_FILE + 1)
                    if len(data) > _MAX_FILE:
                        raise ConfigurationError(f"{path} is larger than {_MAX_FILE} bytes")
                    fd = os.memfd_create(f"tcpls-generation-{generation}-{name}")
                    fds.append(fd)
                    os.write(fd, data)
                    copies[name] = f"/proc/self/fd/{fd}"
            snapshot = dataclasses.replace(self.config, **copies)  # type: ignore[arg-type]
            snapshot.check()
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self.generation_fds[generation] = fds
        return snapshot

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)

    def _start_generation(self, config: ServerConfig) -> None:
        self.generation += 1
        self.generations[self.generation] = config
        for index in range(self.count):
            self._fork(index)
        self._forget_generations()

    def _forget_generations(self) -> None:
        for old in [g for g in self.generations if g not in self._live_generations()]:
            del self.generations[old]
            for fd in self.generation_fds.pop(old, ()):
                os.close(fd)

    def _live_generations(self) -> set[int]:
        return {w.generation for w in self.workers.values()} | {self.generation}

    def _fork(self, index: int, generation: int | None = None) -> None:
        live = {w.worker_id for w in self.workers.values()}
        while self.next_id in live:
            self.next_id = (self.next_id + 1) & 0xFFFF
        worker = _Worker(index, self.next_id, generation or self.generation)
        self.next_id = (self.next_id + 1) & 0xFFFF
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                status = self._worker_main(worker)
            except BaseException:
                logger.exception("worker %d failed", worker.worker_id)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        self.workers[pid] = worker

    def _drain(self, pids: list[int]) -> None:
        for pid in pids:
            worker = self.workers.get(pid)
            if worker is not None and not worker.draining:
                worker.draining = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def _signal_all(self, sig: int) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _reap(self, *, respawn: bool) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None or worker.draining or not respawn:
                self._forget_generations()  # (a drained generation's copies go)
                continue
            code = os.waitstatus_to_exitcode(status)
            _say(
                f"tcpls: worker {worker.worker_id} ended unexpectedly (status {code}); "
                "starting another"
            )
            # at once, unless it keeps dying: its socket's queue waits for the new one
            now = time.monotonic()
            if now - self.deaths.get(worker.index, -_RESPAWN_DELAY * 10) < _RESPAWN_DELAY * 10:
                time.sleep(_RESPAWN_DELAY)
            self.deaths[worker.index] = now
            self._fork(worker.index, worker.generation)

    def _close_listeners(self) -> None:
        for sock in self.shared + self.own:
            sock.close()
        self.shared.clear()
        self.own.clear()

    def cleanup(self) -> None:
        self._close_listeners()
        shutil.rmtree(self.handoff_dir, ignore_errors=True)

    # -- in the worker ------------------------------------------------------------

    def _worker_main(self, worker: _Worker) -> int:
        signal.set_wakeup_fd(-1)
        _die_with(self.pid)
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        # The supervisor decides what Ctrl-C (sent to the whole process group) and a
        # restart mean (`pkill -HUP` reaches the workers too).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        shared = self.shared[worker.index]
        own = self.own[worker.index] if self.own else None
        for sock in self.shared + self.own:
            if sock is not shared and sock is not own:
                sock.close()
        steering = Steering(
            self.key, machine=self.machine, worker=worker.worker_id, handoff_dir=self.handoff_dir
        )
        config = dataclasses.replace(self.generations[worker.generation], steering=steering)
        return asyncio.run(self._serve(worker, config, shared, own))

    async def _serve(
        self,
        worker: _Worker,
        config: ServerConfig,
        shared: socket.socket,
        own: socket.socket | None,
    ) -> int:
        from tcpls.aio.api import serve

        server = await serve(self.handler, config=config, sock=shared, scheduler=self.scheduler)
        if own is not None:
            await server.listen(None, None, sock=own)
            server.advertise_local_port(own.getsockname()[1])
        stop = asyncio.Event()
        at_once = False
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        # SIGUSR2: stop now (Ctrl-C, or a second stop signal to the supervisor), also when
        # it comes before the graceful stop began

        def now() -> None:
            nonlocal at_once
            at_once = True
            stop.set()
            server.end_grace()

        loop.add_signal_handler(signal.SIGUSR2, now)
        await stop.wait()
        await server.shutdown(0.0 if at_once else self.grace)
        counters = server.counters
        _say(
            f"tcpls: worker {worker.worker_id} stopped: {counters['sessions_served']} sessions, "
            f"{counters['joins_passed']} joins passed to another worker, "
            f"{counters['joins_received']} received, {counters['joins_not_passed']} not "
            f"passed, {counters['joins_foreign']} refused as another server's"
        )
        return 0


def _say(line: str) -> None:
    """One line on standard error in one write: the workers and the supervisor share it,
    and their lines must not interleave."""
    sys.stderr.flush()
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode(errors="replace"))


def _die_with(supervisor: int) -> None:
    """This worker gets SIGTERM (a graceful stop) when its supervisor dies: orphans would
    keep serving an old configuration on the port, next to a new supervisor's workers."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the call
        signal.raise_signal(signal.SIGTERM)


def _listening_socket(family: int, host: str, port: int, *, reuseport: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(4096)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock
