"""Configurations and sessions from the parsed options of a command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from tcpls.cli.errors import CommandError, describe_error
from tcpls.errors import TCPLSError

if TYPE_CHECKING:
    from tcpls.aio.session import Session
    from tcpls.config import ClientConfig, ServerConfig

__all__ = ["client_config", "load_ticket", "open_session", "save_ticket", "server_config"]

#: The command line's logger (every module of it logs as ``tcpls.cli``).
log = logging.getLogger("tcpls.cli")


async def open_session(
    args: argparse.Namespace, host: str, port: int, early_data: bytes | None = None
) -> Session:
    """Connect with the client options, then make the ``--join`` connections.

    ``early_data`` starts the first stream (0-RTT with ``--early-data``, design: Early data).
    """
    from tcpls.aio.api import connect

    target = f"{host}:{port}"
    local = (args.local, 0) if getattr(args, "local", None) else None
    try:
        session = await connect(
            host,
            port,
            config=client_config(args),
            local_addr=local,
            scheduler=getattr(args, "scheduler", "aggregate"),
            early_data=early_data,
        )
    except (TCPLSError, OSError) as exc:
        raise CommandError(describe_error(exc, target)) from None
    for join_host, join_port, join_local in getattr(args, "join", []):
        where = f"{join_host}:{join_port}"
        try:
            info = await session.join(
                join_host, join_port, (join_local, 0) if join_local else None
            )
        except (TCPLSError, OSError) as exc:
            session.abort()
            raise CommandError(f"cannot join {where}: {describe_error(exc)}") from None
        log.info("joined connection %d to %s", info.id, where)
    return session


def _ciphers(args: argparse.Namespace) -> list[str] | None:
    return args.ciphers.split(":") if args.ciphers else None


def _groups(args: argparse.Namespace) -> str | None:
    groups: str | None = getattr(args, "groups", None)
    return groups


def load_ticket(args: argparse.Namespace) -> Any:
    """The ticket saved in ``--session FILE`` (``None`` without one)."""
    path = getattr(args, "session", None)
    if not path:
        return None
    from tcpls.tls.hs.tickets import SessionTicket

    try:
        ticket = SessionTicket.load(path)
    except TCPLSError as exc:
        raise CommandError(f"--session {path}: {exc}") from None
    if ticket is None:
        log.info("no session ticket in %s yet: a full handshake", path)
    return ticket


def save_ticket(args: argparse.Namespace, session: Session) -> None:
    """Save the session's newest ticket to ``--session FILE`` (if given and one came)."""
    path = getattr(args, "session", None)
    ticket = session.session_ticket
    if not path or ticket is None:
        return
    try:
        ticket.save(path)
    except OSError as exc:
        log.warning("cannot save the session ticket to %s: %s", path, exc.strerror or exc)


def client_config(args: argparse.Namespace) -> ClientConfig:
    """A :class:`ClientConfig` from the client options."""
    from tcpls.config import ClientConfig

    config = ClientConfig(
        cafile=args.cafile,
        verify=not args.insecure,
        server_name=args.server_name,
        keylog_file=args.keylog,
        tcpls=not args.no_tcpls,
        cipher_suites=_ciphers(args),
        groups=_groups(args),
        user_timeout=args.user_timeout / 1000 if args.user_timeout else None,
        certfile=getattr(args, "cert", None),
        keyfile=getattr(args, "key", None),
        session_ticket=load_ticket(args),
        early_data=bool(getattr(args, "early_data", None)),
        fastopen=bool(getattr(args, "fastopen", False)),
        join_advertised=bool(getattr(args, "join_advertised", False)),
        qlog_dir=getattr(args, "qlog", None),
        qlog_records=getattr(args, "qlog_records", "sampled"),
    )
    reconnect = getattr(args, "reconnect_timeout", None)
    if reconnect is None:
        return config
    tuning = dataclasses.replace(config.tuning, rejoin_timeout=reconnect)
    return dataclasses.replace(config, tuning=tuning)


def server_config(args: argparse.Namespace) -> ServerConfig:
    """A :class:`ServerConfig` from the server options."""
    from tcpls.config import ServerConfig

    early = getattr(args, "early_data", None)
    return ServerConfig(
        certfile=args.cert,
        keyfile=args.key,
        keylog_file=args.keylog,
        tcpls=not args.no_tcpls,
        cipher_suites=_ciphers(args),
        groups=_groups(args),
        client_cafile=getattr(args, "client_ca", None),
        max_early_data=early if early and early > 0 else 0,
        fastopen=bool(getattr(args, "fastopen", False)),
        user_timeout=args.user_timeout / 1000 if args.user_timeout else None,
        max_connections=getattr(args, "max_connections", 4),
        advertise=tuple(getattr(args, "advertise", None) or ()),
        qlog_dir=getattr(args, "qlog", None),
        qlog_records=getattr(args, "qlog_records", "sampled"),
    )
