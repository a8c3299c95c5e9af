"""How many tensors ``init_cfg`` ``Pretrained`` loaded, and the ``[evaluation]
min_loaded_share`` check of ``selfsup-run eval``: evaluating a model whose pretrained weights
did not load (wrong ``prefix``, another architecture) is an error, not a score of random
weights.

Reads the ``init_report`` that components built on ``selfsup_models.init.BaseModule`` keep
(``loaded``, ``missing``, ``unexpected``, ``mismatched``, ``sources``); torch-free apart from
walking ``model.named_modules()``.
"""
from __future__ import annotations

from typing import Any

from selfsup_core.api import Config, Problems, load_summary


def pretrained_reports(model: Any) -> list[tuple[str, Any]]:
    """``(module name, init_report)`` for every module of ``model`` whose ``init_cfg`` read a
    checkpoint; copies of a module (a momentum encoder) are counted once."""
    found: list[tuple[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for name, module in model.named_modules():
        report = getattr(module, "init_report", None)
        if report is None or not getattr(report, "sources", None):
            continue
        key = (tuple(report.sources), tuple(report.loaded), tuple(report.missing), tuple(report.mismatched))
        if key in seen:
            continue
        seen.add(key)
        found.append((name, report))
    return found


def weights_read(model: Any) -> list[str]:
    """The checkpoint files ``init_cfg`` Pretrained read into ``model``."""
    return [source for _, report in pretrained_reports(model) for source in report.sources]


def check_loaded_share(config: Config, model: Any, min_share: float) -> list[str]:
    """Raise one :class:`ConfigError` line per pretrained module of ``model`` that loaded less
    than ``min_share`` of its tensors; returns the summary lines (one per module) otherwise.
    Called by ``selfsup-run eval`` after the model is built."""
    lines: list[str] = []
    problems = Problems(config)
    for name, report in pretrained_reports(model):
        what = f"{name or 'model'} tensors"
        total = len(report.loaded) + len(report.missing) + len(report.mismatched)
        summary = f"{load_summary(len(report.loaded), report.missing, report.unexpected, report.mismatched, what)}" \
                  f" from {', '.join(report.sources)}"
        share = len(report.loaded) / total if total else 1.0
        if share < min_share:
            path = ("model", *name.split("."), "init_cfg") if name else ("model", "init_cfg")
            problems.add(path, f"{summary}: below [evaluation] min_loaded_share = {min_share}; "
                               "fix the checkpoint or its prefix, or lower min_loaded_share")
        lines.append(summary)
    problems.raise_if_any()
    return lines
