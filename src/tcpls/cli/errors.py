"""Errors of the command line: exit statuses, :class:`CommandError`, and one line per error.

:func:`run` runs a command coroutine and turns what it raises into one line on
standard error and an exit status; :func:`describe_error` words an exception of
the library or of the network for a person.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from tcpls.errors import (
    CertificateVerificationError,
    ConfigurationError,
    ConnectionClosedError,
    NotTLSError,
    PeerAlert,
    ProtocolError,
    TCPLSError,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandError",
    "describe_error",
    "one_line",
    "run",
    "run_command",
]

#: The command line's logger (every module of it logs as ``tcpls.cli``).
log = logging.getLogger("tcpls.cli")

#: Exit status of a command that succeeded.
EXIT_OK = 0
#: Exit status of a command that failed.
EXIT_ERROR = 1
#: Exit status of a command line that does not say what to do.
EXIT_USAGE = 2
#: Exit status after Ctrl-C.
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """An error to print as one line, with an exit status."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


def describe_error(exc: BaseException, target: str = "") -> str:
    """One line explaining ``exc`` to a person (no class names, no reprs)."""
    where = f" {target}" if target else ""
    text = one_line(str(exc))
    if isinstance(exc, CertificateVerificationError):
        return f"certificate verification failed for{where or ' the peer'}: {_strip(text)}"
    if isinstance(exc, NotTLSError):
        return f"{target or 'the peer'} is not a TLS {exc.peer}: it sent {exc.sent}"
    if isinstance(exc, PeerAlert):
        return f"the peer{where} rejected the connection: {text}"
    if isinstance(exc, ProtocolError):
        return f"TLS/TCPLS protocol error with{where or ' the peer'}: {text}"
    if isinstance(exc, ConfigurationError):
        return text or "invalid configuration"
    if isinstance(exc, ConnectionClosedError):
        return f"connection{where} closed: {text}" if text else f"connection{where} closed"
    if isinstance(exc, TCPLSError):
        return text or f"the session{where} failed"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve{where}: {exc.strerror or text or 'unknown host'}"
    if isinstance(exc, ConnectionRefusedError):
        return f"cannot connect to{where}: connection refused"
    if isinstance(exc, TimeoutError):
        return text or f"timed out{where}"
    if isinstance(exc, OSError):
        reason = one_line(exc.strerror or "") or text or "input/output error"
        return f"cannot connect to{where}: {reason}" if target else reason
    return f"{exc.__class__.__name__}: {text}"


def one_line(text: str) -> str:
    """``text`` with every run of whitespace, line breaks included, as one space."""
    return " ".join(text.split())


def _strip(text: str) -> str:
    prefix = "certificate verification failed: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def run(coro_factory: Callable[[], Coroutine[Any, Any, int]], debug: bool = False) -> int:
    """Run a command coroutine: errors become one line on stderr and an exit status."""
    return run_command(lambda: asyncio.run(coro_factory(), debug=False), debug)


def run_command(body: Callable[[], int], debug: bool = False) -> int:
    """Run a command (``body`` returns its exit status): errors become one line on
    stderr and an exit status."""
    try:
        return body()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except CommandError as exc:
        print(f"tcpls: {exc}", file=sys.stderr)
        return exc.status
    except (TCPLSError, OSError) as exc:
        if debug:
            log.exception("command failed")
        print(f"tcpls: {describe_error(exc)}", file=sys.stderr)
        return EXIT_ERROR
