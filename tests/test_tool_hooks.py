"""The hooks through which plugins take over what were core tools: ``selfsup_convert_backbone``
(one answer: the first non-None) and ``selfsup_after_training`` (rows added to the end-of-run
summary; selfsup-trackers draws the curves there)."""
from __future__ import annotations

from pathlib import Path

from selfsup_core import hookspecs
from selfsup_core.cli import run_summary

RESULT = {"work_dir": "w", "epoch": 1, "iter": 2, "seconds": 3.0, "checkpoint": "w/latest.pth"}


def test_convert_backbone_takes_the_first_answer(selfsup_plugin_manager):
    assert hookspecs.selfsup_convert_backbone.selfsup_spec["firstresult"] is True

    class Declines:
        def selfsup_convert_backbone(self, state, direction, layout, backbone):
            return None

    class Renames:
        def selfsup_convert_backbone(self, state, direction, layout, backbone):
            if layout != "timm":
                return None
            return hookspecs.ConvertedBackbone({k.upper(): v for k, v in state.items()}, {"arch": backbone["type"]})

    selfsup_plugin_manager.register(Renames(), name="renames")
    selfsup_plugin_manager.register(Declines(), name="declines")
    hook = selfsup_plugin_manager.hook.selfsup_convert_backbone
    answer = hook(state={"w": 1}, direction="export", layout="timm", backbone={"type": "Net"})
    assert answer == ({"W": 1}, {"arch": "Net"}, ())
    assert hook(state={"w": 1}, direction="import", layout="mmcls", backbone=None) is None


def test_after_training_rows_go_into_the_summary_before_the_config(selfsup_plugin_manager):
    class Curves:
        def selfsup_after_training(self, config, work_dir, result):
            return [("curves", str(Path(work_dir) / "curves.png"))]

    selfsup_plugin_manager.register(Curves(), name="curves")
    rows = selfsup_plugin_manager.hook.selfsup_after_training(config=None, work_dir=Path("w"), result=RESULT)
    lines = run_summary(RESULT, rows=[row for found in rows for row in found]).splitlines()
    assert lines[-3:] == ["  metrics     w/metrics.jsonl", "  curves      w/curves.png", "  config      w/config.toml"]
    assert not [line for line in run_summary(RESULT).splitlines() if "curves" in line]  # no plugin, no row
