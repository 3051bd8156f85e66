"""The fuzz targets in the test suite.

* Replay (fast, always runs): every seed of ``corpus/`` and every input of ``crashes/``
  goes through every target. A crash input stays here as a regression test; while its
  bug is open it is listed in ``known.py`` (a strict xfail: remove the entry with the fix).
* Short fuzzing (skipped without atheris): each target runs under atheris in a
  subprocess for a few seconds, all targets together within about a minute.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fuzz.known import KNOWN_BUGS
from tests.fuzz.run import DEFAULT_OPTIONS
from tests.fuzz.targets import TARGETS

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CORPUS = HERE / "corpus"
CRASHES = HERE / "crashes"

#: Crash inputs whose bug is not fixed yet (see known.py): a strict xfail until the fix.
OPEN_CRASHES = {crash: bug for bug in KNOWN_BUGS for crash in bug.crashes}

#: Wall time of all the short fuzzing runs together, in seconds (startup included).
SHORT_RUN_BUDGET = float(os.environ.get("TCPLS_FUZZ_BUDGET", "56"))


def _files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))


def _name(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def test_targets_and_options_agree() -> None:
    assert set(TARGETS) == set(DEFAULT_OPTIONS)
    for name in TARGETS:
        assert (CORPUS / name).is_dir(), f"no seed corpus for {name}"


def test_corpus_is_small() -> None:
    total = sum(p.stat().st_size for p in _files(CORPUS) + _files(CRASHES))
    assert total < 300 * 1024, f"the corpus holds {total} bytes; keep it small"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_replay_corpus(target: str) -> None:
    """Every seed of every target's corpus through ``target``."""
    run = TARGETS[target]
    files = _files(CORPUS)
    assert files
    for path in files:
        try:
            run(path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"{target} fails on {_name(path, CORPUS)}: {exc!r}") from exc


def _crash_params() -> list[object]:
    params: list[object] = []
    for path in _files(CRASHES):
        name = _name(path, CRASHES)
        marks = []
        bug = OPEN_CRASHES.get(name)
        if bug is not None:
            reason = f"open bug (tests/fuzz/known.py): {bug.summary}"
            marks.append(pytest.mark.xfail(reason=reason, strict=True))
        params.append(pytest.param(path, id=name, marks=marks))
    return params


@pytest.mark.parametrize("path", _crash_params())
def test_replay_crash(path: Path) -> None:
    """A crash input found by fuzzing, through every target."""
    data = path.read_bytes()
    failures: list[str] = []
    for target, run in sorted(TARGETS.items()):
        try:
            run(data)
        except Exception as exc:
            failures.append(f"{target}: {exc!r}")
    assert not failures, "; ".join(failures)


# --------------------------------------------------------------------------- short runs

_HAS_ATHERIS = importlib.util.find_spec("atheris") is not None


@pytest.mark.skipif(not _HAS_ATHERIS, reason="atheris is not installed (pip install atheris)")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_short_fuzz(target: str, tmp_path: Path) -> None:
    """``target`` under atheris for a few seconds, from its seeds; no crash allowed."""
    seconds = max(2, int(SHORT_RUN_BUDGET / len(TARGETS)) - 2)  # about 2 s go to startup
    scratch = tmp_path / "corpus"
    scratch.mkdir()
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.run",
        "--skip-known",  # open bugs are replayed above, as strict xfails
        target,
        f"-max_total_time={seconds}",
        f"-artifact_prefix={artifacts}/",
        "-timeout=5",
        str(scratch),
        str(CORPUS / target),
    ]
    start = time.monotonic()
    proc = subprocess.run(
        command,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=seconds + 40,
    )
    elapsed = time.monotonic() - start
    found = [p.name for p in artifacts.iterdir()]
    if proc.returncode != 0 or found:
        tail = "\n".join(proc.stderr.splitlines()[-60:])
        pytest.fail(
            f"atheris found a crash in {target} after {elapsed:.0f} s (inputs: {found} in "
            f"{artifacts}; replay: python -m tests.fuzz.run {target} FILE):\n{tail}"
        )
