"""tcpls: TCPLS (draft-piraux-tcpls-04) for Python.

TLS 1.3 over one or more TCP connections, with multiplexed streams. Against an
ordinary TLS 1.3 peer a session falls back to plain TLS (``tcpls_negotiated``
is false). Start with :func:`connect` and :func:`serve`.
"""

from tcpls.aio.api import Server, connect, serve
from tcpls.aio.session import ConnectionInfo, Session
from tcpls.aio.streams import StreamReader, StreamWriter
from tcpls.config import ClientConfig, ServerConfig, SessionTuning
from tcpls.errors import (
    CertificateVerificationError,
    ConfigurationError,
    ConnectionClosedError,
    PeerAlert,
    ProtocolError,
    TCPLSError,
)

__version__ = "0.1.0"

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
    "StreamReader",
    "StreamWriter",
    "TCPLSError",
    "__version__",
    "connect",
    "serve",
]
