"""tcpls: TCPLS (draft-piraux-tcpls-04) for Python."""

__version__ = "0.1.0"
