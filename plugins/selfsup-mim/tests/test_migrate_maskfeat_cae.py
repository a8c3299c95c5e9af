"""MMSelfSup 0.x's MaskFeat and CAE configs (fixtures with their _base_ files, as in the 0.x
tree) migrate to TOML that names the same components and passes ``--check``."""
from __future__ import annotations

from pathlib import Path

import pytest

from selfsup_core._compat import tomllib
from selfsup_core.cli import main

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "mmselfsup-0.x" / "configs" / "selfsup"
CAE = ["cae_vit-base-p16_32xb64-fp16-coslr-300e_in1k", "cae_vit-base-p16_16xb128-fp16-coslr-300e_in1k",
       "cae_vit-base-p16_8xb256-fp16-coslr-300e_in1k"]


def migrate(tmp_path: Path, capsys: pytest.CaptureFixture[str], source: Path, *extra: str) -> tuple[dict, str]:
    out = tmp_path / (source.stem + ".toml")
    code = main(["migrate", str(source), "-o", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return tomllib.loads(out.read_text(encoding="utf-8")), captured.out


def test_maskfeat_converts_and_checks(tmp_path, capsys):
    data, out = migrate(tmp_path, capsys, CONFIGS / "maskfeat" / "maskfeat_vit-base-p16_8xb256-coslr-300e_in1k.py",
                        "--check")
    assert "OK, model MaskFeat" in out
    model = data["model"]
    assert (model["type"], model["backbone"]["type"], model["head"]["type"]) == (
        "MaskFeat", "MaskFeatViT", "MaskFeatPretrainHead")
    assert model["hog_para"] == {"nbins": 9, "pool": 8, "gaussian_window": 16}
    assert data["data"]["train"]["pipeline"][-1] == {"type": "MaskFeatMaskGenerator", "mask_window_size": 14,
                                                    "mask_ratio": 0.4, "min_num_patches": 15, "min_aspect": 0.3}
    assert data["optimizer_config"]["grad_clip"] == {"max_norm": 0.02}
    assert data["lr_config"]["warmup_iters"] == 30 and data["runner"]["max_epochs"] == 300


def test_the_three_cae_configs_convert_and_check(tmp_path, capsys):
    converted = {}
    for i, name in enumerate(CAE):
        # --check builds the 288M-parameter model: once is enough, the other two differ only in data
        extra = ("--check",) if i == 0 else ()
        data, out = migrate(tmp_path, capsys, CONFIGS / "cae" / f"{name}.py", *extra)
        if extra:
            assert "OK, model CAE" in out
        converted[name] = data
    base = converted[CAE[0]]
    model = base["model"]
    assert (model["type"], model["backbone"]["type"], model["neck"]["type"], model["head"]["type"]) == (
        "CAE", "CAEViT", "CAENeck", "CAEHead")
    assert model["head"] == {"type": "CAEHead", "tokenizer_path": "cae_ckpt/encoder_stat_dict.pth", "lambd": 2}
    assert model["base_momentum"] == 0.0
    pipeline = [step["type"] for step in base["data"]["train"]["pipeline"]]
    assert pipeline[:2] == ["RandomHorizontalFlip", "RandomResizedCropAndInterpolationWithTwoPic"]
    assert pipeline[-1] == "BEiTMaskGenerator"
    assert base["lr_config"]["policy"] == "StepFixCosineAnnealing" and base["runner"]["precision"] == "fp16"
    for name, batch in zip(CAE, (64, 128, 256)):
        data = converted[name]
        assert data["data"]["samples_per_gpu"] == batch
        assert {k: v for k, v in data.items() if k != "data"} == {k: v for k, v in base.items() if k != "data"}
        assert data["data"]["train"] == base["data"]["train"]
