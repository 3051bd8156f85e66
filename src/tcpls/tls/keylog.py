"""NSS key log output, so that Wireshark and other tools can decrypt a capture.

Lines have the form ``LABEL <client_random hex> <secret hex>`` (the format of
``SSLKEYLOGFILE`` used by NSS, OpenSSL and browsers). The file is named by the
configuration or, when that is unset, by the ``SSLKEYLOGFILE`` environment
variable. Lines are appended and flushed at once; the file is created with mode
0600 because it holds secrets.
"""

from __future__ import annotations

import os
import threading

__all__ = ["KeyLog", "keylog_path"]

_lock = threading.Lock()


def keylog_path(configured: str | os.PathLike[str] | None) -> str | None:
    """The key log file to use: the configured one, else ``$SSLKEYLOGFILE``, else none."""
    if configured:
        return os.fspath(configured)
    return os.environ.get("SSLKEYLOGFILE") or None


class KeyLog:
    """Appends NSS key log lines to one file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def write(self, label: str, client_random: bytes, secret: bytes) -> None:
        """Append one line; errors writing the file are reported as ``OSError``."""
        line = f"{label} {client_random.hex()} {secret.hex()}\n"
        with _lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
