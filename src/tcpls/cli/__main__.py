"""``python -m tcpls.cli``: the command line, as ``python -m tcpls``."""

import sys

from tcpls.cli import main

sys.exit(main())
