"""Command line of the network lab: ``tcpls lab ...`` or ``python -m tcpls.lab ...``.

``add_subparser(subparsers)`` adds the ``lab`` command to another argparse parser; the
parsed namespace carries ``func`` (call ``args.func(args)``, which returns the exit code).
``main(argv)`` runs it standalone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, Protocol, cast

from tcpls.lab.errors import LabError
from tcpls.lab.lab import Lab
from tcpls.lab.model import STATE_DIR, CutMode, PathSpec

__all__ = ["add_subparser", "main", "run"]

_PROG = "tcpls lab"
_DEFAULT_NAME = "tcpls"

_DESCRIPTION = f"""\
Build and control a network lab: two network namespaces, <name>-c (client side) and
<name>-s (server side), joined by N emulated paths. Path i (0-based) joins the client
address 10.10.<i+1>.1/24 to the server address 10.10.<i+1>.2/24; a client reaches the
server over path i by connecting to 10.10.<i+1>.2. Paths without a delay are veth pairs
(tbf for the rate, a BPF filter for loss); paths with a delay go through a userspace
forwarder daemon over TUN devices. Run programs inside with `ip netns exec <name>-c ...`.
State lives in {STATE_DIR}/<name>.json. Needs root.
"""

_EPILOG = """\
examples:
  %(prog)s up --paths 2 --rate 20 50 --delay 10 0
  %(prog)s status
  %(prog)s cut 0 reset
  %(prog)s restore 0
  %(prog)s down
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parse_rate(text: str) -> float | None:
    if text.lower() in ("none", "unlimited", "inf", "0"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid rate {text!r} (Mbit/s or 'none')") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid rate {text!r}: must be positive")
    return value


def _parse_delay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid delay {text!r} (milliseconds)") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"invalid delay {text!r}: must be >= 0")
    return value


def _parse_loss(text: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid loss {text!r} (a probability like 0.01, or 1%)"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"invalid loss {text!r}: must be within 0..1 (0-100%)")
    return value


def _parse_queue(text: str) -> int | None:
    if text.lower() in ("auto", "default"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid queue {text!r} (KiB or 'auto')") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid queue {text!r}: must be positive")
    return value


def _parse_path(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid path {text!r} (an index: 0, 1, ...)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid path {text!r}: indexes start at 0")
    return value


def _add_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name",
        default=_DEFAULT_NAME,
        help=f"lab name; namespaces are NAME-c and NAME-s (default: {_DEFAULT_NAME})",
    )


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=run)
    sub = parser.add_subparsers(
        dest="lab_command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    formatter = argparse.RawDescriptionHelpFormatter

    up = sub.add_parser(
        "up",
        help="create a persistent lab",
        description=(
            "Create a persistent lab that stays until `down`. Each of --rate/--delay/--loss/"
            "--queue takes one value (used for every path) or one value per path."
        ),
        formatter_class=formatter,
    )
    _add_name(up)
    up.add_argument(
        "--paths",
        type=int,
        metavar="N",
        help="number of paths (default: the longest value list given, else 2)",
    )
    up.add_argument(
        "--rate",
        nargs="+",
        type=_parse_rate,
        metavar="MBIT",
        help="rate in Mbit/s, applied in each direction ('none' or 0: unlimited; default none)",
    )
    up.add_argument(
        "--delay",
        nargs="+",
        type=_parse_delay,
        metavar="MS",
        help="one-way delay in ms (RTT is twice it); >0 uses the forwarder (default 0)",
    )
    up.add_argument(
        "--loss",
        nargs="+",
        type=_parse_loss,
        metavar="P",
        help="random loss per packet and direction: a probability (0.01) or percent (1%%)",
    )
    up.add_argument(
        "--queue",
        nargs="+",
        type=_parse_queue,
        metavar="KB",
        help="drop-tail queue in KiB ('auto': max(100 packets, one BDP); default auto)",
    )

    down = sub.add_parser(
        "down",
        help="remove a lab",
        description="Remove a lab: kill its processes and sockets, its forwarder, namespaces.",
    )
    _add_name(down)

    cut = sub.add_parser(
        "cut",
        help="break a path",
        description="Break one path until `restore`.",
        epilog=(
            "modes:\n"
            "  blackhole  drop every packet silently in both directions; connections notice\n"
            "             only by timeout (TCP_USER_TIMEOUT), new connects hang\n"
            "  reset      set the client side down, then destroy every TCP socket on the path\n"
            "             in both namespaces (ss -K): both ends get ECONNABORTED at once, new\n"
            "             client connects fail with ENETUNREACH (the path stays down)\n"
            "  down       `ip link set down` on the client side: new client connects fail with\n"
            "             ENETUNREACH, established sockets notice only when they time out\n"
        ),
        formatter_class=formatter,
    )
    cut.add_argument("path", type=_parse_path, metavar="PATH", help="path index (0, 1, ...)")
    cut.add_argument(
        "mode", choices=["blackhole", "reset", "down"], metavar="MODE", help="see below"
    )
    _add_name(cut)

    restore = sub.add_parser(
        "restore", help="undo a cut", description="Undo `cut` on a path (no-op if it is up)."
    )
    restore.add_argument("path", type=_parse_path, metavar="PATH", help="path index (0, 1, ...)")
    _add_name(restore)

    status = sub.add_parser(
        "status",
        help="describe a lab",
        description="Show namespaces, paths, their state, qdiscs and forwarder counters.",
    )
    _add_name(status)
    status.add_argument("--json", action="store_true", help="print the full status as JSON")

    sub.add_parser(
        "list", help="list labs", description=f"List the labs that have state in {STATE_DIR}."
    )
    sub.add_parser(
        "cleanup",
        help="remove labs left by dead processes",
        description="Remove the labs whose owning process died without closing them.",
    )


class Subparsers(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as far as we use it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """A parser for the subcommand ``name``."""
        ...


def add_subparser(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Add the ``lab`` command to ``subparsers``; return its parser.

    The parsed namespace has ``func``: ``args.func(args)`` runs the command and returns the
    exit status.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "lab",
        help="network lab: namespaces joined by emulated paths",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _configure(parser)
    return parser


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=_PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _configure(parser)
    return parser


def _per_path(values: Sequence[Any] | None, count: int, option: str, default: Any) -> list[Any]:
    if not values:
        return [default] * count
    if len(values) == 1:
        return list(values) * count
    if len(values) != count:
        raise LabError(f"{option} takes 1 value or {count} (one per path), got {len(values)}")
    return list(values)


def _specs_from_args(args: argparse.Namespace) -> list[PathSpec]:
    lists = [args.rate, args.delay, args.loss, args.queue]
    count = args.paths
    if count is None:
        count = max([len(v) for v in lists if v] + [2])
    if not 1 <= count <= 250:
        raise LabError(f"--paths must be within 1..250, got {count}")
    rates = _per_path(args.rate, count, "--rate", None)
    delays = _per_path(args.delay, count, "--delay", 0.0)
    losses = _per_path(args.loss, count, "--loss", 0.0)
    queues = _per_path(args.queue, count, "--queue", None)
    return [
        PathSpec(rate_mbit=r, delay_ms=d, loss=lo, queue_kb=q)
        for r, d, lo, q in zip(rates, delays, losses, queues, strict=True)
    ]


def _print_summary(lab: Lab) -> None:
    print(f"lab {lab.name}: client namespace {lab.client_ns}, server namespace {lab.server_ns}")
    for p in lab.paths:
        print(
            f"  path {p.index}: {p.client_ip} <-> {p.server_ip}  "
            f"{p.spec.describe()}  [{p.kind}, {p.state}]"
        )


def _format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def _link_state(link: dict[str, Any] | None) -> str:
    # From the flags: the kernel updates "operstate" up to a second late.
    if link is None:
        return "missing"
    flags = link.get("flags") or []
    if "UP" not in flags:
        return "down"
    return "up" if "LOWER_UP" in flags else "no-carrier"


def _print_status(status: dict[str, Any]) -> None:
    ns = status["namespaces"]
    print(
        f"lab {status['name']}: client {ns['client']['name']}"
        f"{'' if ns['client']['exists'] else ' (MISSING)'}, server {ns['server']['name']}"
        f"{'' if ns['server']['exists'] else ' (MISSING)'}"
        + (f", owned by pid {status['owner_pid']}" if status["owner_pid"] else "")
    )
    fwd = status["forwarder"]
    if fwd is not None:
        state = "running" if fwd["alive"] else f"NOT ANSWERING ({fwd['error']})"
        print(f"forwarder pid {fwd['pid']}: {state}")
    for p in status["paths"]:
        spec = PathSpec.from_json(p["spec"])
        links = p["links"]
        oper = "/".join(_link_state(links[side]) for side in ("client", "server"))
        print(
            f"path {p['index']}: {p['client_ip']} <-> {p['server_ip']}  {spec.describe()}  "
            f"state {p['state']}  ({p['kind']}: {p['client_dev']} link {oper})"
        )
        for side in ("client", "server"):
            for q in p["qdiscs"][side]:
                if q.get("kind") in ("tbf",):
                    print(
                        f"    {side} {q['kind']}: sent {_format_bytes(q.get('bytes', 0))} "
                        f"{q.get('packets', 0)} pkts, dropped {q.get('drops', 0)}, "
                        f"backlog {q.get('backlog', 0)} B"
                    )
        if p["forwarder"]:
            for direction in ("c2s", "s2c"):
                s = p["forwarder"][direction]
                print(
                    f"    forwarder {direction}: {s['forwarded']} pkts "
                    f"({_format_bytes(s['forwarded_bytes'])}), dropped loss {s['dropped_loss']} "
                    f"queue {s['dropped_queue']} cut {s['dropped_cut']}, queued {s['queued']}"
                )


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``lab`` command; print errors as one line; return the exit status."""
    try:
        return _dispatch(args)
    except LabError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    command = args.lab_command
    if command == "up":
        lab = Lab.up(args.name, _specs_from_args(args))
        _print_summary(lab)
        print(
            f"run programs with `ip netns exec {lab.client_ns} ...` / "
            f"`ip netns exec {lab.server_ns} ...`; remove with `{_PROG} down --name {lab.name}`"
        )
        return 0
    if command == "down":
        Lab.down(args.name)
        print(f"lab {args.name} removed")
        return 0
    if command == "cut":
        lab = Lab.attach(args.name)
        lab.cut(args.path, cast(CutMode, args.mode))
        state = lab.path(args.path).state
        print(f"lab {args.name}: path {args.path} cut ({args.mode}), now {state}")
        return 0
    if command == "restore":
        lab = Lab.attach(args.name)
        lab.restore(args.path)
        print(f"lab {args.name}: path {args.path} restored")
        return 0
    if command == "status":
        status = Lab.attach(args.name).status()
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            _print_status(status)
        return 0
    if command == "list":
        for name in Lab.list_labs():
            print(name)
        return 0
    if command == "cleanup":
        removed = Lab.cleanup_stale()
        print(f"removed {len(removed)} stale lab(s){': ' if removed else ''}{', '.join(removed)}")
        return 0
    raise LabError(f"unknown command {command!r}")  # pragma: no cover - argparse prevents it


def main(argv: list[str] | None = None) -> int:
    """Run ``tcpls lab`` standalone (``python -m tcpls.lab``); return the exit status."""
    args = _build_parser().parse_args(argv)
    return run(args)
