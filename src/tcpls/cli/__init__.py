"""The ``tcpls`` command line (also ``python -m tcpls``).

Every command prints one clear line to standard error and exits non-zero on
errors (unreachable host, refused connection, bad certificate, handshake
alert, missing or truncated files, a peer that is not the right kind of
server); warnings of the library, such as a client reconnecting after losing
every connection, are ``tcpls: <message>`` lines too. ``--debug`` shows
tracebacks and protocol logs.

The modules: :mod:`~tcpls.cli.options` (the parser and its checks),
:mod:`~tcpls.cli.errors` (exit statuses and error lines), :mod:`~tcpls.cli.logs`,
:mod:`~tcpls.cli.sessions` (configurations and sessions from the options),
:mod:`~tcpls.cli.progress` (live displays), and one module per command:
:mod:`~tcpls.cli.serve`, :mod:`~tcpls.cli.connect`, :mod:`~tcpls.cli.perf`,
:mod:`~tcpls.cli.get` (``tcpls lab`` is :mod:`tcpls.lab.cli`). The applications
they run are in :mod:`tcpls.apps`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tcpls.cli.errors import EXIT_USAGE, run
from tcpls.cli.logs import configure_logging
from tcpls.cli.options import build_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tcpls`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False)) or bool(os.environ.get("TCPLS_DEBUG"))
    configure_logging(debug)
    func: Callable[[argparse.Namespace], Any] = args.func
    try:
        if not asyncio.iscoroutinefunction(func):
            status: int = func(args)  # synchronous commands (lab, cert) report their errors
            return status
        return run(lambda: func(args), debug=debug)
    except BrokenPipeError:
        # whoever read our output stopped (`tcpls cert | head`): end quietly, and keep
        # Python from complaining when it flushes standard output at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
