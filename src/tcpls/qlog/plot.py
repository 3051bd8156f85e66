"""The rate of each connection of a session over time, with its failures marked.

Needs matplotlib, the ``plot`` extra (``pip install 'tcpls[plot]'``); without it
:func:`plot_rates` raises :class:`~tcpls.qlog.summary.QlogError` with that advice.
"""

from __future__ import annotations

import os

from tcpls.qlog.summary import QlogError, QlogFile, rates, summarize

__all__ = ["plot_rates"]


def plot_rates(qlog: QlogFile, out: str | os.PathLike[str], title: str = "") -> None:
    """Draw the rate of each connection (Mbit/s) of ``qlog`` into the image ``out`` (PNG,
    SVG or PDF, by its extension), each failure a dashed vertical line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise QlogError(
            "--plot needs matplotlib: pip install 'tcpls[plot]' (or matplotlib)"
        ) from None
    direction, series = rates(qlog)
    summary = summarize(qlog)
    figure, axes = plt.subplots(figsize=(10, 4.5))
    try:
        for cid in sorted(series):
            points = series[cid]
            axes.plot(
                [t for t, _ in points],
                [rate * 8 / 1e6 for _, rate in points],
                label=f"connection {cid}",
            )
        for when, cid in summary.failures:
            axes.axvline(when, color="red", linestyle="--", linewidth=1)
            axes.annotate(
                f"connection {cid} failed",
                (when, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -4),
                textcoords="offset points",
                rotation=90,
                va="top",
                ha="left",
                color="red",
                fontsize=8,
            )
        axes.set_xlabel("seconds since the session started")
        axes.set_ylabel(f"Mbit/s {direction} (record payloads)")
        axes.set_title(title or f"tcpls {qlog.vantage_point}: rate per connection")
        axes.grid(True, alpha=0.3)
        if series:
            axes.legend(loc="upper right")
        figure.tight_layout()
        try:
            figure.savefig(os.fspath(out), dpi=100)
        except (OSError, ValueError) as exc:
            raise QlogError(f"cannot write {os.fspath(out)}: {exc}") from None
    finally:
        plt.close(figure)
