"""``selfsup-run eval`` with ``init_cfg`` Pretrained: the load is reported in one short line,
below ``[evaluation] min_loaded_share`` it is an error, and the results JSON names the file
read (issue 34, item 2)."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("selfsup_models")

from eval_online_toy import EVALUATION  # noqa: E402
from selfsup_core.api import cli_main as main  # noqa: E402
from selfsup_core.api import load_summary  # noqa: E402


def write(write_config, tmp_path, checkpoint, extra=""):
    path = write_config(EVALUATION + extra)
    text = path.read_text().replace(
        'type = "eval_online_toy:ToyAlgorithm"\ndim = 8',
        f'type = "eval_weights_toy:PretrainedToy"\ndim = 8\ninit_cfg = {{type = "Pretrained", checkpoint = "{checkpoint}"}}')
    path.write_text(text)
    return path


def test_summary_line_shows_counts_and_at_most_three_names():
    assert load_summary(0, [f"m{i}" for i in range(120)], ["u1", "u2"], ["s1"]) == (
        "loaded 0 of 121 tensors (120 missing, 2 unexpected, 1 shape mismatches; missing: m0, m1, m2 (+117 more); "
        "unexpected: u1, u2; shape mismatch: s1)")


def test_eval_refuses_weights_that_did_not_load_and_records_the_file_read(write_config, tmp_path, capsys):
    wrong = tmp_path / "wrong.pth"
    torch.save({f"layer{i}.weight": torch.zeros(3) for i in range(120)}, wrong)
    path = write(write_config, tmp_path, wrong)
    out = tmp_path / "r.json"
    assert main(["eval", str(path), "--evaluator", "toy", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if line.startswith("error:")]
    assert err == [f"error: {path}: model.backbone.init_cfg: loaded 0 of 4 backbone tensors (4 missing, 120 unexpected, "
                   "0 shape mismatches; missing: net.0.weight, net.0.bias, net.2.weight (+1 more); unexpected: "
                   f"layer0.weight, layer1.weight, layer2.weight (+117 more)) from {wrong}: below [evaluation] "
                   "min_loaded_share = 1.0; fix the checkpoint or its prefix, or lower min_loaded_share"]
    assert not out.exists()

    # allowed share: evaluated, and the JSON names the file that was read
    path = write(write_config, tmp_path, wrong, extra="")
    text = path.read_text().replace("[evaluation]\n", "[evaluation]\nmin_loaded_share = 0.0\n", 1)
    path.write_text(text)
    assert main(["eval", str(path), "--evaluator", "toy", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["checkpoint"] == str(wrong)

    good = tmp_path / "good.pth"
    torch.save({"net.0.weight": torch.ones(16, 8), "net.0.bias": torch.zeros(16), "net.2.weight": torch.ones(8, 16),
                "net.2.bias": torch.zeros(8)}, good)
    path = write(write_config, tmp_path, good)
    assert main(["eval", str(path), "--evaluator", "toy", "--out", str(out)]) == 0
    assert f"loaded 4 of 4 backbone tensors (0 missing, 0 unexpected, 0 shape mismatches) from {good}" in \
        capsys.readouterr().err
    assert json.loads(out.read_text())["checkpoint"] == str(good)


def test_min_loaded_share_is_validated(write_config, capsys):
    path = write_config(EVALUATION.replace("[evaluation]\n", "[evaluation]\nmin_loaded_share = 2\n", 1))
    assert main([str(path), "--check"]) == 2
    assert "evaluation.min_loaded_share: must be between 0 and 1, got 2" in capsys.readouterr().err
