"""MMSelfSup 0.x's InterCLR config (``tests/fixtures/mmselfsup-0.x``: the config and its
``_base_`` files as 0.x ships them) migrates to a TOML that passes ``--check`` and names the
same components with the same settings as the shipped ImageNet config."""
from __future__ import annotations

from pathlib import Path

import pytest
from selfsup_core._compat import tomllib
from selfsup_core.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mmselfsup-0.x"
SOURCE = "configs/selfsup/interclr/interclr-moco_resnet50_8xb32-coslr-200e_in1k.py"
SHIPPED = (Path(__file__).resolve().parents[3] / "examples" / "configs"
           / "interclr-moco_resnet50_8xb32-coslr-200e_in1k.toml")


def test_the_0x_interclr_config_migrates_and_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(FIXTURES)
    out = tmp_path / "interclr.toml"
    assert main(["migrate", SOURCE, "-o", str(out), "--check"]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert f"{out}: OK, model InterCLRMoCo" in captured.out
    assert "dropped model.memory_bank.debug: no debug mode" in captured.err
    assert "dropped custom_hooks.0.clustering.type: InterCLRHook always runs k-means (Kmeans)" in captured.err
    migrated = tomllib.loads(out.read_text(encoding="utf-8"))
    shipped = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))
    assert migrated["model"] == shipped["model"]
    (hook,) = migrated["hooks"]
    (shipped_hook,) = shipped["hooks"]
    assert hook["type"] == "InterCLRHook"
    assert {k: v for k, v in hook.items() if k != "extractor"} == {
        k: v for k, v in shipped_hook.items() if k != "extractor"}
    assert hook["extractor"]["dataset"]["type"] == "OneViewDataset"
    assert hook["extractor"]["dataset"]["data_source"] == migrated["data"]["train"]["data_source"] == {
        "type": "ImageList", "ann_file": "data/imagenet/meta/train.txt", "root": "data/imagenet/train"}
    assert {k: migrated["data"][k] for k in ("samples_per_gpu", "replace", "drop_last")} == {
        k: shipped["data"][k] for k in ("samples_per_gpu", "replace", "drop_last")}
    assert migrated["optimizer"] == shipped["optimizer"] and migrated["lr_config"] == shipped["lr_config"]
    assert migrated["runner"]["max_epochs"] == 200
