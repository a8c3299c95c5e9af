"""How many tensors ``init_cfg`` ``Pretrained`` loaded, and the ``[evaluation]
min_loaded_share`` check: evaluating a model whose pretrained weights did not load (wrong
``prefix``, another architecture) is an error, not a score of random weights.

Reads the ``init_report`` that components built on ``selfsup_models.init.BaseModule`` keep
(``loaded``, ``missing``, ``unexpected``, ``mismatched``, ``sources``); torch-free apart from
walking ``model.named_modules()``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import Config
from ..errors import Problems

#: names shown per category in a summary line
SHOWN_NAMES = 3


def summarise_names(names: Sequence[str], shown: int = SHOWN_NAMES) -> str:
    """``"a, b, c (+7 more)"``: at most ``shown`` names of a list."""
    head = ", ".join(names[:shown])
    return head + (f" (+{len(names) - shown} more)" if len(names) > shown else "")


def load_summary(loaded: int, missing: Sequence[str], unexpected: Sequence[str], mismatched: Sequence[str],
                 what: str = "tensors") -> str:
    """``"loaded N of M tensors (K missing, U unexpected, S shape mismatches; missing: a, b (+3 more))"``;
    ``M`` = loaded + missing + mismatched (the module's own tensors)."""
    total = loaded + len(missing) + len(mismatched)
    text = (f"loaded {loaded} of {total} {what} ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} shape mismatches")
    examples = [f"{label}: {summarise_names(names)}" for label, names in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if names]
    return text + ("; " + "; ".join(examples) if examples else "") + ")"


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
