"""``python -m tcpls.lab``: the lab command line (see :mod:`tcpls.lab.cli`)."""

from __future__ import annotations

import sys

from tcpls.lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
