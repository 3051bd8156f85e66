"""``tcpls tunnel server`` and ``tcpls tunnel client``: TCP connections carried over one
TCPLS session (:mod:`tcpls.apps.tunnel`).

The parser of ``tunnel`` is built here, with the option groups the caller
(:func:`tcpls.cli.options.build_parser`) passes in, so that this module does not import
the options module back.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from tcpls.cli.errors import EXIT_OK, EXIT_USAGE, CommandError, describe_error, log
from tcpls.cli.sessions import client_config, open_session, save_ticket, server_config
from tcpls.errors import TCPLSError

if TYPE_CHECKING:
    from tcpls.aio.session import Session
    from tcpls.apps.tunnel import Destination

__all__ = ["ANSWER_TIMEOUT", "add_subparser", "cmd_tunnel_client", "cmd_tunnel_server"]

#: Seconds a client waits for the server's answer to a request, beyond --reconnect-timeout.
ANSWER_TIMEOUT = 20.0

#: Adds a group of options to a parser.
OptionGroup = Callable[[argparse.ArgumentParser], None]


class Subparsers(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as far as it is used here."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """A parser for the subcommand ``name``."""
        ...


_DESCRIPTION = (
    "Carry ordinary TCP connections over one TCPLS session, with its joined connections: "
    "any TCP application gets failover and aggregation without changing. The client "
    "accepts connections on --listen (each to --to HOST:PORT) or as a SOCKS5 proxy on "
    "--socks; each becomes one stream of the session, and the server connects it to its "
    "destination if --allow lists it. Half-closed connections work; a refused or dead "
    "destination closes the local connection, with one line from the client saying why."
)


def add_subparser(
    sub: Subparsers,
    *,
    client_options: Sequence[OptionGroup],
    server_options: Sequence[OptionGroup],
) -> None:
    """Add ``tunnel server`` and ``tunnel client`` to ``sub``, each with its option groups
    (the TLS options shared by the other commands)."""
    from tcpls.apps.tunnel.protocol import DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_TUNNELS

    tunnel = sub.add_parser(
        "tunnel", help="carry TCP connections over TCPLS", description=_DESCRIPTION
    )
    roles = tunnel.add_subparsers(dest="role", metavar="ROLE", required=True)

    p = roles.add_parser(
        "server",
        help="connect the client's streams to the destinations on the allow list",
        description="Accept tunnel clients and connect each of their streams to the "
        "destination it names, only if an --allow entry matches it as given (names are "
        "not resolved to compare: localhost:80 does not allow 127.0.0.1:80). Everything "
        "else is refused with a reason the client prints. Runs until interrupted.",
    )
    for group in server_options:
        group(p)
    p.add_argument("--port", "-p", type=_port, default=8443, help="TCP port (default: 8443)")
    p.add_argument(
        "--allow",
        metavar="HOST:PORT",
        action="append",
        required=True,
        type=_allow_entry,
        help="a destination clients may reach: a name or IP address ([IPv6]) and a port, "
        "or * for every port; repeatable",
    )
    p.add_argument(
        "--connect-timeout",
        metavar="SECONDS",
        type=_seconds,
        default=DEFAULT_CONNECT_TIMEOUT,
        help=f"give up connecting to a destination after this long "
        f"(default: {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    p.add_argument(
        "--max-tunnels",
        metavar="N",
        type=_count,
        default=DEFAULT_MAX_TUNNELS,
        help=f"connections one session may carry at once (default: {DEFAULT_MAX_TUNNELS})",
    )
    p.set_defaults(func=cmd_tunnel_server)

    p = roles.add_parser(
        "client",
        help="accept local TCP connections and carry them to a tunnel server",
        description="Open one session to the tunnel server SERVER PORT (with the --join "
        "connections) and carry every connection accepted on --listen or --socks over "
        "it. The session is kept for every connection, and opened again when it ends. "
        "Runs until interrupted.",
    )
    p.add_argument("server", metavar="SERVER", help="tunnel server name or address")
    p.add_argument("port", metavar="PORT", type=_port, help="tunnel server TCP port")
    p.add_argument(
        "--listen",
        metavar="[ADDR:]PORT",
        type=_listen_address,
        help="accept TCP connections there (address default: 127.0.0.1), each carried to --to",
    )
    p.add_argument(
        "--to", metavar="HOST:PORT", type=_destination, help="where --listen connections go"
    )
    p.add_argument(
        "--socks",
        metavar="[ADDR:]PORT",
        type=_listen_address,
        help="be a SOCKS5 proxy there (no authentication, CONNECT): each client names its "
        "destination, e.g. curl --socks5-hostname 127.0.0.1:1080 or socks5h:// URLs",
    )
    p.add_argument(
        "--max-tunnels",
        metavar="N",
        type=_count,
        default=DEFAULT_MAX_TUNNELS,
        help=f"local connections carried at once; more are closed (default: "
        f"{DEFAULT_MAX_TUNNELS})",
    )
    for group in client_options:
        group(p)
    p.set_defaults(func=cmd_tunnel_client)


# -- argument types -------------------------------------------------------------------------


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _allow_entry(text: str) -> str:
    from tcpls.apps.tunnel import AllowList

    try:
        AllowList([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _destination(text: str) -> Destination:
    from tcpls.apps.tunnel import parse_destination

    try:
        return parse_destination(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    return host.strip("[]") or "127.0.0.1", _port(port)


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- the commands ---------------------------------------------------------------------------


async def _until_interrupted() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def cmd_tunnel_server(args: argparse.Namespace) -> int:
    """``tcpls tunnel server``."""
    from tcpls.aio.api import serve
    from tcpls.apps.tunnel import AllowList, TunnelServer

    if args.no_tcpls:
        raise CommandError("a tunnel needs TCPLS streams: drop --no-tcpls", EXIT_USAGE)
    allow = AllowList(args.allow)
    tunnel = TunnelServer(
        allow, connect_timeout=args.connect_timeout, max_tunnels=args.max_tunnels
    )
    server = await serve(
        tunnel.handle, args.host, args.port, config=server_config(args), scheduler=args.scheduler
    )
    addresses = ", ".join(_show(*s.getsockname()[:2]) for s in server.sockets)
    print(f"tcpls tunnel: serving on {addresses}; allowed: {allow}", file=sys.stderr, flush=True)
    await _until_interrupted()
    print("tcpls tunnel: shutting down", file=sys.stderr, flush=True)
    await tunnel.abort_carrying()
    server.close()
    await server.wait_closed()
    return EXIT_OK


async def _open(args: argparse.Namespace, hello: bytes) -> Session:
    """A new session after the first one: a --join that fails is a warning, not an end."""
    from tcpls.aio.api import connect

    target = f"{args.server}:{args.port}"
    try:
        session = await connect(
            args.server,
            args.port,
            config=client_config(args),
            local_addr=(args.local, 0) if args.local else None,
            scheduler=args.scheduler,
            early_data=hello,
        )
    except (TCPLSError, OSError) as exc:
        raise CommandError(describe_error(exc, target)) from None
    for host, port, local in args.join:
        try:
            await session.join(host, port, (local, 0) if local else None)
        except (TCPLSError, OSError) as exc:
            log.warning("cannot join %s:%d: %s", host, port, describe_error(exc))
    return session


async def cmd_tunnel_client(args: argparse.Namespace) -> int:
    """``tcpls tunnel client``."""
    from tcpls.apps.tunnel import NotATunnelServer, TunnelClient

    if args.no_tcpls:
        raise CommandError("a tunnel needs TCPLS streams: drop --no-tcpls", EXIT_USAGE)
    if bool(args.listen) != bool(args.to):
        raise CommandError("--listen and --to go together", EXIT_USAGE)
    if not args.listen and not args.socks:
        raise CommandError(
            "say what to carry: --listen PORT --to HOST:PORT, or --socks PORT", EXIT_USAGE
        )
    target = f"{args.server}:{args.port}"
    opened = 0

    async def opener(hello: bytes) -> Session:
        nonlocal opened
        opened += 1
        if opened == 1:  # the first session: every problem is an error
            return await open_session(args, args.server, args.port, hello)
        return await _open(args, hello)

    client = TunnelClient(
        opener,
        max_tunnels=args.max_tunnels,
        answer_timeout=ANSWER_TIMEOUT + args.reconnect_timeout,
        on_closed=lambda session: save_ticket(args, session),
    )
    try:
        session = await client.start()
    except NotATunnelServer as exc:
        raise CommandError(f"{target} is not a tcpls tunnel server ({exc})") from None
    except (TCPLSError, OSError) as exc:
        raise CommandError(describe_error(exc, target)) from None
    save_ticket(args, session)
    try:
        for address, to in ((args.listen, args.to), (args.socks, None)):
            if address is None:
                continue
            where = _show(*address)
            try:
                await client.listen(address[0], address[1], to)
            except OSError as exc:
                raise CommandError(f"cannot listen on {where}: {describe_error(exc)}") from None
            what = f"{where} -> {to}" if to is not None else f"SOCKS5 proxy on {where}"
            print(f"tcpls tunnel: {what} through {target}", file=sys.stderr, flush=True)
        await _until_interrupted()
        print("tcpls tunnel: shutting down", file=sys.stderr, flush=True)
    finally:
        await client.aclose()
    return EXIT_OK
