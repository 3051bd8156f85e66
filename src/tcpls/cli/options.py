"""Arguments of the ``tcpls`` command: the parser, its option groups and their checks.

The option groups are shared by the commands (:func:`add_tls_client_options`,
:func:`add_server_options`, ...); the type functions turn a bad value into
argparse's usage error (exit status 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from tcpls.cli.connect import cmd_connect
from tcpls.cli.get import cmd_get
from tcpls.cli.perf import PERF_ANSWER_TIMEOUT, PERF_GRACE, cmd_perf
from tcpls.cli.serve import cmd_serve

__all__ = [
    "DEFAULT_RECONNECT_TIMEOUT",
    "add_common_tls_options",
    "add_multipath_options",
    "add_reconnect_option",
    "add_resumption_options",
    "add_scheduler_option",
    "add_server_options",
    "add_tls_client_options",
    "build_parser",
]

# Accepted --ciphers names (kept here so that --help needs no TLS import)
_CIPHER_NAMES = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
)


#: Seconds a client keeps trying to join again after losing every connection.
DEFAULT_RECONNECT_TIMEOUT = 30.0


def add_tls_client_options(p: argparse.ArgumentParser) -> None:
    """Options shared by the client commands."""
    verify = p.add_mutually_exclusive_group()
    verify.add_argument(
        "--cafile",
        metavar="FILE",
        help="PEM file of CA certificates to verify the server with "
        "(default: the certifi bundle of public CAs)",
    )
    verify.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the server's certificate (testing only: anyone can impersonate it)",
    )
    p.add_argument(
        "--server-name",
        metavar="NAME",
        help="name sent in SNI and checked against the certificate (default: HOST)",
    )
    p.add_argument(
        "--keylog",
        metavar="FILE",
        help="append TLS secrets to FILE in NSS key log format, for Wireshark "
        "(default: $SSLKEYLOGFILE when set)",
    )
    p.add_argument(
        "--cert", metavar="FILE", help="PEM client certificate (chain), when the server asks"
    )
    p.add_argument("--key", metavar="FILE", help="PEM private key of --cert")
    add_resumption_options(p)
    add_multipath_options(p)
    add_reconnect_option(p)
    add_common_tls_options(p)


def add_resumption_options(p: argparse.ArgumentParser, *, both_roles: bool = False) -> None:
    """--session and --early-data, for the client commands (and ``perf``, both roles)."""
    prefix = "client: " if both_roles else ""
    p.add_argument(
        "--session",
        metavar="FILE",
        help=f"{prefix}resume with the session ticket in FILE if there is one, and save the "
        "newest ticket to FILE (it holds a secret: keep it private)",
    )
    if both_roles:
        p.add_argument(
            "--early-data",
            nargs="?",
            const=-1,
            type=_size,
            metavar="BYTES",
            help="client (no BYTES): send the first request as early data (0-RTT) when the "
            "--session ticket allows it; server: accept up to BYTES of early data per "
            "session (default: off)",
        )
        return
    p.add_argument(
        "--early-data",
        action="store_true",
        help="send the first request as early data (0-RTT) when the --session ticket "
        "allows it; it reaches the server one round trip sooner, but can be replayed: "
        "use it for idempotent requests",
    )


def add_reconnect_option(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """--reconnect-timeout, for the client commands."""
    p.add_argument(
        "--reconnect-timeout",
        metavar="SECONDS",
        type=_non_negative_seconds,
        default=DEFAULT_RECONNECT_TIMEOUT,
        help=f"{prefix}when every TCP connection to the server has failed, keep trying to "
        "join the session again for this long before giving up; 0: give up at once "
        f"(default: {DEFAULT_RECONNECT_TIMEOUT:g})",
    )


def add_multipath_options(p: argparse.ArgumentParser) -> None:
    """Client options for the TCP connections of a session."""
    p.add_argument(
        "--join",
        metavar="HOST:PORT[@LOCAL_IP]",
        action="append",
        default=[],
        type=_join_target,
        help="after connecting, join another TCP connection to HOST:PORT (from LOCAL_IP if "
        "given) with a server-issued token; repeatable",
    )
    p.add_argument(
        "--local",
        metavar="IP",
        help="local address of the first connection (default: chosen by the kernel)",
    )
    p.add_argument(
        "--join-advertised",
        action="store_true",
        help="join every address the server advertises (New Address) as soon as it does, "
        "e.g. a server's own address behind a load balancer",
    )
    add_scheduler_option(p)


def add_scheduler_option(p: argparse.ArgumentParser) -> None:
    """--scheduler, for clients and servers."""
    p.add_argument(
        "--scheduler",
        choices=("aggregate", "pinned", "backup"),
        default="aggregate",
        help="how THIS END spreads the data it sends over the session's connections "
        "(each end schedules its own sending: a download follows the server's choice): "
        "aggregate (every connection, the default), pinned (each stream stays on one), "
        "backup (the first connection; the others only when it fails)",
    )


def _join_target(text: str) -> tuple[str, int, str | None]:
    target, _, local = text.partition("@")
    host, sep, port_text = target.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT[@LOCAL_IP], got {text!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host.strip("[]"), port, local or None


def add_common_tls_options(p: argparse.ArgumentParser) -> None:
    """Options shared by clients and servers."""
    p.add_argument(
        "--ciphers",
        metavar="LIST",
        help="colon-separated TLS 1.3 cipher suites in preference order, e.g. "
        "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256 "
        f"(known: {', '.join(_CIPHER_NAMES)})",
    )
    p.add_argument(
        "--no-tcpls",
        action="store_true",
        help="speak plain TLS 1.3 only (do not offer or accept TCPLS)",
    )
    p.add_argument(
        "--user-timeout",
        metavar="MS",
        type=_positive_int,
        help="TCP_USER_TIMEOUT for every connection, in milliseconds (default: 2000)",
    )
    p.add_argument(
        "--groups",
        metavar="LIST",
        help="colon- or comma-separated key exchange groups in preference order "
        "(default: X25519MLKEM768:x25519:secp256r1:secp384r1; known: X25519MLKEM768, "
        "x25519, x448, secp256r1, secp384r1, secp521r1)",
    )
    p.add_argument(
        "--fastopen",
        action="store_true",
        help="TCP Fast Open: the first flight rides in the SYN once the kernel holds a "
        "cookie for the server (some middleboxes drop such SYNs). A SYN carries about "
        "1420 bytes: with the default post-quantum key share the ClientHello does not "
        "fit, add --groups x25519 to trade it for the round trip (joins always fit)",
    )
    p.add_argument(
        "--qlog",
        metavar="DIR",
        help="write a qlog file (JSON-SEQ) per session into DIR; read one with "
        "`tcpls qlog summary FILE`",
    )
    p.add_argument(
        "--qlog-records",
        choices=("all", "sampled", "none"),
        default="sampled",
        help="what --qlog logs of records and frames: all, 1 in 16 and those around "
        "failures and stalls (sampled, the default), or none",
    )
    p.add_argument("--debug", action="store_true", help="log protocol details and tracebacks")


def _positive_int(text: str) -> int:
    return int(_positive(text, int, "a number"))


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number of seconds, 0 or more")
    return value


def _positive(text: str, kind: Callable[[str], float], what: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError("port must be between 0 and 65535")
    return value


def add_server_options(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """Options shared by the server commands."""
    p.add_argument(
        "--cert", required=required, metavar="FILE", help="PEM certificate (chain) file"
    )
    p.add_argument("--key", required=required, metavar="FILE", help="PEM private key file")
    p.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0, all IPv4)"
    )
    p.add_argument("--keylog", metavar="FILE", help="append TLS secrets to FILE (NSS format)")
    p.add_argument(
        "--advertise",
        metavar="IP:PORT",
        action="append",
        default=[],
        help="advertise another address of this server to clients (New Address); they may "
        "join or fail over to it; repeatable",
    )
    p.add_argument(
        "--client-ca",
        metavar="FILE",
        help="require a client certificate that chains to a CA in FILE (PEM)",
    )
    p.add_argument(
        "--max-connections",
        metavar="N",
        type=_positive_int,
        default=4,
        help="TCP connections allowed per session, the first included: the server hands out "
        "N-1 join tokens and replenishes them as connections leave (default: 4)",
    )


def add_worker_options(p: argparse.ArgumentParser) -> None:
    """``tcpls serve``: worker processes, graceful stop, several machines."""
    p.add_argument(
        "--workers",
        metavar="N",
        type=_workers,
        help="serve with N worker processes sharing the port (SO_REUSEPORT), or `auto` "
        "(one per core); joins reach the worker of their session wherever they land. "
        "SIGHUP restarts the workers gracefully (default: one process, no workers)",
    )
    p.add_argument(
        "--grace",
        metavar="SECONDS",
        type=_non_negative_seconds,
        default=30.0,
        help="on SIGTERM or a restart (SIGHUP, with --workers), stop accepting and give the "
        "open sessions this long to finish before closing them; SIGINT (Ctrl-C) closes "
        "them at once (default: 30)",
    )
    p.add_argument(
        "--worker-ports",
        metavar="PORT",
        type=_port,
        help="with --workers: worker i also listens on PORT+i and advertises it to its "
        "sessions (New Address), so that joins to it go straight to the right worker",
    )
    p.add_argument(
        "--machine-id",
        metavar="N",
        type=_machine_id,
        default=0,
        help="with --workers: this machine's ID among the servers behind one load balancer "
        "(0-65535, one per machine; default: 0)",
    )
    p.add_argument(
        "--steering-key",
        metavar="FILE",
        help="with --workers: FILE holds the 32 hex digits every machine behind one load "
        "balancer shares (`openssl rand -hex 16`): a join that reaches the wrong machine is "
        "then refused cleanly (default: a key of this server alone)",
    )


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    value = _positive_int(text)
    if value > 256:
        raise argparse.ArgumentTypeError("at most 256 workers")
    return value


def _machine_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError("machine IDs run from 0 to 65535")
    return value


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    suffix = raw[-1:] if raw[-1:] in units else ""
    try:
        value = float(raw[: len(raw) - len(suffix)]) * units[suffix]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 100M, 1G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return int(value)


def _seconds(text: str) -> float:
    return _positive(text, float, "a number of seconds")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tcpls`` command."""
    parser = argparse.ArgumentParser(
        prog="tcpls",
        description="TCPLS (draft-piraux-tcpls-04): TLS 1.3 over one or more TCP connections, "
        "with streams, joins and failover. Falls back to plain TLS 1.3 with ordinary peers.",
    )
    parser.add_argument("--version", action="version", version=f"tcpls {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "serve",
        help="run a server (echo, or files for `tcpls get`)",
        description="Accept TCPLS and TLS 1.3 sessions. With --echo, every byte received on a "
        "stream is sent back on it, and our direction ends after the peer's. Runs until "
        "interrupted; a failing session never stops the server.",
    )
    add_server_options(p)
    p.add_argument(
        "--early-data",
        type=_size,
        metavar="BYTES",
        help="accept up to BYTES of early data (0-RTT) per resumed session (default: off); "
        "early data can be replayed to another server: serve only idempotent requests so",
    )
    p.add_argument("--port", "-p", type=_port, default=8443, help="TCP port (default: 8443)")
    add_scheduler_option(p)
    add_common_tls_options(p)
    add_worker_options(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--echo", action="store_true", help="echo every stream back to its sender")
    mode.add_argument(
        "--files",
        metavar="DIR",
        help="serve the files under DIR: a client writes `GET /path\\r\\n` on a stream; the "
        "server answers `OK <size>\\r\\n` and the file, or `ERR <code> <reason>\\r\\n`, "
        "and ends the stream (see `tcpls get`)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "connect",
        help="connect and relay standard input/output",
        description="Connect to HOST PORT (TCPLS, or plain TLS 1.3 if the server has no TCPLS), "
        "like `openssl s_client -quiet`: standard input goes to the server, what the server "
        "sends goes to standard output. EOF on standard input ends our direction; the command "
        "exits 0 when the server's direction ends cleanly and the session closes, and 1 when "
        "what it sent may not have arrived (the server ended before all of a piped standard "
        "input was sent, or did not finish the close).",
    )
    p.add_argument("host", metavar="HOST", help="server name or address")
    p.add_argument("port", metavar="PORT", type=_port, help="server TCP port")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print the session's parameters on standard error once connected: TCPLS or "
        "plain TLS, cipher suite, key exchange group, resumed or not, early data accepted",
    )
    add_tls_client_options(p)
    p.set_defaults(func=cmd_connect)

    p = sub.add_parser(
        "perf",
        help="measure goodput, like iperf3",
        description="Measure goodput between two hosts, like iperf3. Run `tcpls perf -s --cert "
        "F --key F` on one and `tcpls perf -c HOST` on the other. The client shows live "
        "progress and a final table (or one JSON object with --json). The client gives up "
        f"when the server has not accepted the test within {PERF_ANSWER_TIMEOUT:g} s (it is "
        f"not a perf server); a test of -t T seconds fails if it has not ended after T + "
        f"{PERF_ANSWER_TIMEOUT + PERF_GRACE:g} s.",
    )
    role = p.add_mutually_exclusive_group()
    role.add_argument("-s", "--server", action="store_true", help="run the server")
    role.add_argument("-c", "--client", metavar="HOST", help="run the client against HOST")
    p.add_argument("-p", "--port", type=_port, default=5201, help="TCP port (default: 5201)")
    add_server_options(p, required=False)
    amount = p.add_mutually_exclusive_group()
    amount.add_argument(
        "-t",
        "--time",
        type=_seconds,
        default=10.0,
        help="client: seconds to transmit (10); also bounds the whole run (see above)",
    )
    amount.add_argument(
        "-n", "--bytes", type=_size, help="client: bytes to transmit instead (e.g. 1G, 100M)"
    )
    p.add_argument(
        "-P", "--parallel", type=_positive_int, default=1, help="client: parallel streams (1)"
    )
    p.add_argument(
        "-R", "--reverse", action="store_true", help="client: the server sends, we receive"
    )
    p.add_argument(
        "-i", "--interval", type=_seconds, default=1.0, help="seconds between reports (1)"
    )
    p.add_argument("--json", action="store_true", help="client: print one JSON object")
    verify = p.add_mutually_exclusive_group()
    verify.add_argument("--cafile", metavar="FILE", help="client: CA certificates to verify with")
    verify.add_argument(
        "--insecure", action="store_true", help="client: do not verify the certificate"
    )
    p.add_argument("--server-name", metavar="NAME", help="client: name for SNI and verification")
    add_resumption_options(p, both_roles=True)
    add_multipath_options(p)
    add_reconnect_option(p, prefix="client: ")
    add_common_tls_options(p)
    p.set_defaults(func=cmd_perf)

    p = sub.add_parser(
        "get",
        help="download a file from `tcpls serve --files`",
        description="Download PATH from a `tcpls serve --files DIR` server over one stream, "
        "with a progress bar and the rate of each TCP connection of the session. The server "
        "announces the file's size first: a missing file, a file the server cannot read and a "
        "transfer cut short are each reported as an error (exit status 1). The file is written "
        "to a temporary file next to FILE and renamed over it only when complete, so a failed "
        "download never damages an existing FILE.",
    )
    p.add_argument("host", metavar="HOST", help="server name or address")
    p.add_argument("port", metavar="PORT", type=_port, help="server TCP port")
    p.add_argument("path", metavar="PATH", help="the file to fetch, e.g. /big.bin")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        required=True,
        help="where to write it; - for standard output (streamed as it arrives: a transfer "
        "cut short leaves partial output there, and the exit status is 1)",
    )
    p.add_argument(
        "--sha256",
        action="store_true",
        help="after a complete download, print the SHA-256 of the file (on standard output, "
        "or on standard error with -o -)",
    )
    add_tls_client_options(p)
    p.set_defaults(func=cmd_get)

    from tcpls.cli.cert import add_subparser as add_cert

    add_cert(sub)

    from tcpls.cli.qlog import add_subparser as add_qlog

    add_qlog(sub)

    from tcpls.cli.tunnel import add_subparser as add_tunnel

    add_tunnel(
        sub,
        client_options=[add_tls_client_options],
        server_options=[add_server_options, add_scheduler_option, add_common_tls_options],
    )

    from tcpls.lab.cli import add_subparser as add_lab

    add_lab(sub)
    return parser


def _version() -> str:
    from tcpls import __version__

    return __version__
