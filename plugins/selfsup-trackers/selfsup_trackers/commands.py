"""The ``plot-log`` sub-command of ``selfsup-run`` and the end-of-run curves, both through
hooks (``selfsup_register_commands``, ``selfsup_after_training``).

Loaded by every ``selfsup-run`` call, ``--help`` included: nothing here imports matplotlib
(or :mod:`selfsup_trackers.plot_log`) until a command or the end of a run needs it.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from selfsup_core.api import describe_exception, hookimpl


def run(args: argparse.Namespace) -> int:
    """Run ``selfsup-run plot-log`` (see :func:`selfsup_trackers.plot_log.run`)."""
    from .plot_log import run as plot_log

    return plot_log(args)


@hookimpl
def selfsup_register_commands(commands: argparse._SubParsersAction) -> None:
    plot = commands.add_parser("plot-log", help="plot loss, lr and kNN accuracy curves of a run's metrics log (PNG)")
    plot.add_argument("work_dir", metavar="WORK_DIR", help="a run's work dir (or its metrics.jsonl)")
    plot.add_argument("-o", "--out", metavar="OUT", help="the PNG (default: WORK_DIR/curves.png)")
    plot.set_defaults(selfsup_run=run)


@hookimpl
def selfsup_after_training(config: Any, work_dir: Path, result: dict[str, Any]) -> list[tuple[str, str]]:
    """Draw the finished run's ``curves.png`` (``[log_config] plot``: ``true``, ``false`` or
    ``"auto"``, validated by the core before the run) and name it in the summary, or say why not."""
    plot, note = plot_curves(Path(work_dir), config.data.get("log_config", {}).get("plot", "auto"))
    return [("curves", str(plot) if plot else f"not drawn: {note}")]


def plot_curves(work_dir: Path, setting: bool | str) -> tuple[Path | None, str]:
    """The run's curves PNG, or None and why not; a failure to plot is reported, never
    raised (the run is trained and saved)."""
    if setting is False:
        return None, "[log_config] plot = false"
    try:
        from .plot_log import plot_run

        path, _ = plot_run(work_dir)
    except Exception as exc:  # noqa: BLE001
        text = describe_exception(exc).splitlines()[0]
        if "matplotlib" in text:
            return None, "matplotlib is not installed (pip install matplotlib; then selfsup-run plot-log WORK_DIR)"
        return None, text
    return path, ""
