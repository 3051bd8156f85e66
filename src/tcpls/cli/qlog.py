"""``tcpls qlog summary FILE``: the story of a session from its qlog file (design: qlog).

Prints the timeline (connections added, joined and failed, Connection Resets, what was
sent again, when data moved again, stalls, the end) and one line per connection; with
``--plot OUT.png``, draws the rate of each connection with its failures marked
(matplotlib, the ``plot`` extra). A file that is not qlog, or a missing matplotlib, is
one line on standard error and exit status 1.
"""

from __future__ import annotations

import argparse
import sys

from tcpls.cli.cert import Subparsers
from tcpls.cli.errors import EXIT_ERROR, EXIT_OK
from tcpls.qlog.summary import DEFAULT_STALL, QlogError, format_summary, read_qlog, summarize

__all__ = ["add_subparser", "cmd_qlog_summary"]

_DESCRIPTION = (
    "Read the qlog files that --qlog DIR writes (one per session, JSON-SEQ). `summary` "
    "prints the story of a session: its connections, failures and the Connection Resets "
    "that followed, the byte ranges sent again, when data moved again, the stalls (no "
    "record received for --stall seconds) and how it ended; --plot also draws the rate "
    "of each connection, failures marked (needs matplotlib: pip install 'tcpls[plot]')."
)


def add_subparser(sub: Subparsers) -> argparse.ArgumentParser:
    """Add the ``qlog`` command to the subparsers of ``tcpls``; return its parser."""
    p = sub.add_parser(
        "qlog", help="read the qlog file of a session (--qlog DIR)", description=_DESCRIPTION
    )
    actions = p.add_subparsers(dest="qlog_command", metavar="ACTION", required=True)
    s = actions.add_parser(
        "summary",
        help="print the timeline of a session; --plot draws its rates",
        description=_DESCRIPTION,
    )
    s.add_argument("file", metavar="FILE", help="a qlog file (.sqlog) written by --qlog")
    s.add_argument(
        "--plot",
        metavar="OUT.png",
        help="also draw the rate of each connection, failures marked, into OUT.png",
    )
    s.add_argument(
        "--stall",
        metavar="SECONDS",
        type=_seconds,
        default=DEFAULT_STALL,
        help=f"report silences of at least this long as stalls (default: {DEFAULT_STALL:g})",
    )
    s.set_defaults(func=cmd_qlog_summary)
    return p


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def cmd_qlog_summary(args: argparse.Namespace) -> int:
    """``tcpls qlog summary``: errors are one line on standard error and exit status 1."""
    try:
        qlog = read_qlog(args.file)
        sys.stdout.write(format_summary(summarize(qlog, args.stall), args.file))
        if qlog.truncated:
            sys.stdout.write("(the last record was cut short and left out)\n")
        if args.plot:
            from tcpls.qlog.plot import plot_rates

            plot_rates(qlog, args.plot)
            sys.stdout.write(f"plot: {args.plot}\n")
    except QlogError as exc:
        print(f"tcpls: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
