"""Crashes found by fuzzing whose bug in src is still open.

Each entry names the crash inputs under ``crashes/`` (replayed by ``test_fuzz.py`` as a
strict xfail while the entry is here) and how to recognise the failure, so that
``python -m tests.fuzz.run --skip-known TARGET ...`` keeps fuzzing past it to find the
next one. Remove the entry when the fix lands.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KNOWN_BUGS", "KnownBug", "is_known"]


@dataclass(frozen=True)
class KnownBug:
    """One open bug: its crash input, and the exception (anywhere in the chain) it raises."""

    crashes: tuple[str, ...]  # paths under tests/fuzz/crashes/, "<target>/<name>"
    targets: tuple[str, ...]  # the targets that fail on it
    exception: str  # class name of the exception, in the raised one or its causes
    message: str  # a part of that exception's message
    summary: str


KNOWN_BUGS: tuple[KnownBug, ...] = ()


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_known(target: str, exc: BaseException) -> KnownBug | None:
    """The open bug ``exc`` (raised by ``target``) is an instance of, if any."""
    for bug in KNOWN_BUGS:
        if target not in bug.targets:
            continue
        for link in _chain(exc):
            if type(link).__name__ == bug.exception and bug.message in str(link):
                return bug
    return None
