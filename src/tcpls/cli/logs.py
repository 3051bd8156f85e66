"""Logging of the command line: the library's warnings as ``tcpls: <message>`` lines."""

from __future__ import annotations

import logging
import sys

from tcpls.cli.errors import one_line

__all__ = ["configure_logging"]


class _CleanFormatter(logging.Formatter):
    """``tcpls: <message>`` on one line, without tracebacks (the default, without --debug).

    Records of loggers outside the ``tcpls`` hierarchy also name their logger.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = one_line(record.getMessage())
        if record.name == "tcpls" or record.name.startswith("tcpls."):
            return f"tcpls: {message}"
        return f"tcpls: {record.name}: {message}"


class _StderrHandler(logging.Handler):
    """Writes to the current ``sys.stderr`` (so that a live progress display can redirect it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def configure_logging(debug: bool) -> None:
    """Warnings as ``tcpls: <message>`` lines; everything, with details, under ``--debug``."""
    handler = _StderrHandler()
    if debug:
        handler.setFormatter(logging.Formatter("tcpls: %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_CleanFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        # asyncio logs unretrieved exceptions with tracebacks; the commands report errors
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
