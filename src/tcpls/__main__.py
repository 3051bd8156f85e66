"""``python -m tcpls``: the command line."""

import sys

from tcpls.cli import main

sys.exit(main())
