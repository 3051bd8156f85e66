"""Failover at the speed of the path, with default settings (design: Failure detection).

Runs ``benchmarks/failover.py`` (two 20 Mbit/s paths, RTT 20 ms, a download over both
with the aggregate scheduler, default ``ClientConfig`` and ``ServerConfig``) and checks
its figures; the gaps are measured by the client at the application, between reads:

* blackhole: path A drops everything at a third of the download; the longest gap after
  the cut stays short and the file is intact;
* reset: path A is reset; the gap stays within what it was before;
* restore: path A is blackholed and comes back 0.5 s later: its connection carries data
  again, with no new join and no failure;
* slowpath: 12 s with a competing flow swinging path A's queueing delay between 0 and
  about 200 ms: no connection is declared failed and duplicates stay under 1 %.

The 30 s run of the last one is the benchmark's (BENCHMARKS.md). Needs root (skips
otherwise); about 60 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tcpls.lab import lab_available

pytestmark = pytest.mark.lab

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "failover.py"
#: The longest gap after a blackhole at RTT 20 ms (the issue's 0.2 s; the benchmark
#: measured 0.19-0.21 s on the 2-vCPU VM, so the test allows for a loaded machine).
BLACKHOLE_GAP = 0.3
#: The longest gap after a reset here: the data waits behind B's queues, as before
#: (0.03-0.14 s before the suspect state, 0.07-0.14 s after, on these 20 Mbit/s paths).
#: The 5-21 ms of 150 Mbit/s paths is checked by ``test_multipath.py``.
RESET_GAP = 0.2


def _run(*args: str) -> list[dict[str, Any]]:
    ok, reason = lab_available()
    if not ok:
        pytest.skip(reason)
    cp = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert cp.returncode == 0, cp.stderr[-3000:]
    out = json.loads(cp.stdout.strip().splitlines()[-1])
    assert out["ok"], out
    for run in out["runs"]:
        print(f"\n{run['scenario']}: " + json.dumps(run))
    return list(out["runs"])


def test_blackhole_reset_and_restore_with_default_settings() -> None:
    runs = {
        r["scenario"]: r for r in _run("--scenarios", "blackhole,reset,restore", "--rtts", "20")
    }
    for run in runs.values():
        assert run["error"] is None and run["intact"], run
    assert runs["blackhole"]["gap_after_cut_s"] <= BLACKHOLE_GAP, runs["blackhole"]
    assert runs["reset"]["gap_after_cut_s"] <= RESET_GAP, runs["reset"]
    restore = runs["restore"]
    assert restore["a_kept"], restore  # no failure, no join: connections 0 and 1
    assert restore["server_connections"] == [0, 1], restore
    assert restore["a_bytes_after_restore"] > 1_000_000, restore  # path A carries data again


def test_no_false_alarm_on_a_path_with_varying_queueing_delay() -> None:
    (run,) = _run("--scenarios", "slowpath", "--seconds", "12")
    assert run["error"] is None and run["intact"], run
    assert run["connections_failed"] == 0, run
    assert run["server_connections"] == [0, 1], run
    assert run["duplicate_share"] < 0.01, run
