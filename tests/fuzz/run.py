"""Run one fuzz target under atheris (libFuzzer).

Usage, from the repository root::

    python -m tests.fuzz.run [--skip-known] TARGET [libFuzzer options] [corpus dirs]
    python -m tests.fuzz.run session -max_total_time=300 /tmp/session tests/fuzz/corpus/session

libFuzzer writes the inputs it finds to the **first** corpus directory: give a scratch
directory first and the seed corpus after it, so that the seeds in git stay small. Crashes
are written as ``crash-<sha1>`` in the current directory (``-artifact_prefix=DIR/`` to
change). ``python -m tests.fuzz.run TARGET CRASH_FILE`` runs one input again. ``--skip-known``
lets the inputs that hit a bug listed in :mod:`tests.fuzz.known` pass, to look for others.

Only ``tcpls`` is instrumented for coverage; it is imported here,
inside :func:`atheris.instrument_imports`, before anything else imports it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

#: libFuzzer options each target gets unless the command line sets them.
DEFAULT_OPTIONS: dict[str, tuple[str, ...]] = {
    "record_reader": ("-max_len=40000",),
    "record_open": ("-max_len=17000",),
    "frames": ("-max_len=17000",),
    "extensions": ("-max_len=128",),
    "client_hello": ("-max_len=4096",),
    "join_server_hello": ("-max_len=1024",),
    "tls_server": ("-max_len=8192",),
    "tls_join_client": ("-max_len=8192",),
    "session": ("-max_len=20000",),
    "handshake_engine": ("-max_len=8192",),
}
#: Options for every target: an input that takes 10 s or 2 GiB is a finding too.
COMMON_OPTIONS = ("-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1")


def _with_defaults(target: str, args: list[str]) -> list[str]:
    given = {a.split("=", 1)[0] for a in args if a.startswith("-")}
    extra = [
        option
        for option in (*DEFAULT_OPTIONS[target], *COMMON_OPTIONS)
        if option.split("=", 1)[0] not in given
    ]
    return [*extra, *args]


def _skipping_known(name: str, target: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """``target``, but an input that hits a bug listed in :mod:`tests.fuzz.known` passes."""
    from tests.fuzz.known import is_known

    def run(data: bytes) -> None:
        try:
            target(data)
        except Exception as exc:
            if is_known(name, exc) is None:
                raise

    return run


def main(argv: list[str]) -> None:
    skip_known = "--skip-known" in argv
    argv = [a for a in argv if a != "--skip-known"]
    if len(argv) < 2 or argv[1] not in DEFAULT_OPTIONS:
        names = ", ".join(DEFAULT_OPTIONS)
        sys.exit(
            "usage: python -m tests.fuzz.run [--skip-known] TARGET [libFuzzer options] [dirs]\n"
            f"targets: {names}"
        )
    try:
        import atheris  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        sys.exit("atheris is not installed: pip install 'atheris==3.0.0'")
    target = argv[1]
    for arg in argv[2:]:
        if not arg.startswith("-") and not Path(arg).exists():
            Path(arg).mkdir(parents=True, exist_ok=True)  # a new scratch corpus directory
    with atheris.instrument_imports(include=["tcpls"]):
        from tests.fuzz.targets import TARGETS
    run = TARGETS[target]
    if skip_known:
        run = _skipping_known(target, run)
    atheris.Setup([argv[0], *_with_defaults(target, argv[2:])], run)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
