"""tcpls: TCPLS (draft-piraux-tcpls-04) for Python.

TLS 1.3 over one or more TCP connections, with multiplexed streams. Against an
ordinary TLS 1.3 peer a session falls back to plain TLS (``tcpls_negotiated``
is false). Start with :func:`connect` and :func:`serve`.

The public names are imported lazily, so ``import tcpls.lab`` (and the
command line's lab commands) do not pay for the TLS stack.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

#: The version of tcpls (as in the package metadata).
__version__ = "0.1.0"

# A library is silent unless the application configures logging (the command line does).
logging.getLogger("tcpls").addHandler(logging.NullHandler())

_EXPORTS = {
    "Server": "tcpls.aio.api",
    "connect": "tcpls.aio.api",
    "serve": "tcpls.aio.api",
    "run_server": "tcpls.aio.workers",
    "ConnectionInfo": "tcpls.aio.session",
    "Session": "tcpls.aio.session",
    "StreamReader": "tcpls.aio.streams",
    "StreamWriter": "tcpls.aio.streams",
    "ClientConfig": "tcpls.config",
    "ServerConfig": "tcpls.config",
    "SessionTuning": "tcpls.config",
    "Steering": "tcpls.config",
    "CertificateVerificationError": "tcpls.errors",
    "ConfigurationError": "tcpls.errors",
    "ConnectionClosedError": "tcpls.errors",
    "PeerAlert": "tcpls.errors",
    "ProtocolError": "tcpls.errors",
    "TCPLSError": "tcpls.errors",
}

__all__ = [
    "CertificateVerificationError",
    "ClientConfig",
    "ConfigurationError",
    "ConnectionClosedError",
    "ConnectionInfo",
    "PeerAlert",
    "ProtocolError",
    "Server",
    "ServerConfig",
    "Session",
    "SessionTuning",
    "Steering",
    "StreamReader",
    "StreamWriter",
    "TCPLSError",
    "__version__",
    "connect",
    "run_server",
    "serve",
]

if TYPE_CHECKING:
    from tcpls.aio.api import Server, connect, serve
    from tcpls.aio.session import ConnectionInfo, Session
    from tcpls.aio.streams import StreamReader, StreamWriter
    from tcpls.aio.workers import run_server
    from tcpls.config import ClientConfig, ServerConfig, SessionTuning, Steering
    from tcpls.errors import (
        CertificateVerificationError,
        ConfigurationError,
        ConnectionClosedError,
        PeerAlert,
        ProtocolError,
        TCPLSError,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tcpls' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
