"""Entering named network namespaces from inside one Python process.

``setns(2)`` changes the network namespace of the *calling thread* only. A socket, TUN
device or any other namespaced kernel object created while a thread is inside a namespace
stays in that namespace after the thread switches back, so one process can own sockets in
several namespaces. Python 3.11 has no ``os.setns``; libc's ``setns`` is called through
ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from tcpls.lab.errors import LabError, LabUnavailable

__all__ = ["NETNS_RUN_DIR", "in_namespace", "namespace_exists", "run_in_namespace"]

NETNS_RUN_DIR = "/run/netns"
"""Where ``ip netns add`` creates the bind mounts that name network namespaces."""

_CLONE_NEWNET = 0x40000000

_P = ParamSpec("_P")
_T = TypeVar("_T")

_libc_lock = threading.Lock()
_libc: ctypes.CDLL | None = None


def _get_libc() -> ctypes.CDLL:
    global _libc
    with _libc_lock:
        if _libc is None:
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.setns.restype = ctypes.c_int
            except (OSError, AttributeError) as exc:
                raise LabUnavailable(f"libc setns() is not available: {exc}") from exc
            _libc = libc
        return _libc


def _setns(fd: int) -> None:
    if _get_libc().setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET) failed: {os.strerror(err)}")


def namespace_exists(ns_name: str) -> bool:
    """Return whether ``ip netns`` knows a network namespace called ``ns_name``."""
    return os.path.exists(os.path.join(NETNS_RUN_DIR, ns_name))


@contextmanager
def in_namespace(ns_name: str) -> Iterator[None]:
    """Run the body of a ``with`` block on the current thread inside network namespace ``ns_name``.

    Only the current thread moves; it moves back when the block ends, even on error. Sockets
    (and TUN devices) created inside the block stay in ``ns_name``. Blocks nest.

    Do not ``await`` inside the block: other coroutines would then run inside the namespace.
    Create sockets synchronously instead (``socket.socket``, or ``Lab.socket``) and pass them to
    asyncio with ``sock=``.

    Raises :class:`LabError` when the namespace does not exist.
    """
    try:
        target = os.open(os.path.join(NETNS_RUN_DIR, ns_name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError(f"network namespace {ns_name!r} does not exist") from None
    try:
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                try:
                    _setns(original)
                except OSError as exc:  # pragma: no cover - would leave the thread stranded
                    raise RuntimeError(
                        f"could not return to the original network namespace: {exc}"
                    ) from exc
        finally:
            os.close(original)
    finally:
        os.close(target)


def run_in_namespace(
    ns_name: str, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """Call ``fn(*args, **kwargs)`` on a short-lived helper thread inside namespace ``ns_name``.

    The calling thread never changes namespace. The result (or the exception) of ``fn`` is
    passed back. Typical use: ``run_in_namespace(ns, socket.socket, AF_INET, SOCK_STREAM)``.
    """
    result: list[_T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            with in_namespace(ns_name):
                result.append(fn(*args, **kwargs))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name=f"netns-{ns_name}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
