"""Failover cases on loopback, each a script that exits 0 when the session recovers.

Each script (under ``failover_cases/``) puts proxies between a client and a server to
play a path that dies in a particular way, and says in its docstring what must happen.
They run as separate processes because each builds its own event loop and servers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).parents[2]
CASES = sorted(
    p
    for p in (Path(__file__).parent / "failover_cases").glob("*.py")
    if p.stem not in ("__init__", "common")
)


@pytest.mark.parametrize("case", CASES, ids=[p.stem for p in CASES])
def test_failover_case(case: Path) -> None:
    module = f"tests.aio.failover_cases.{case.stem}"
    result = subprocess.run(
        [sys.executable, "-m", module], capture_output=True, text=True, timeout=90, cwd=_ROOT
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
