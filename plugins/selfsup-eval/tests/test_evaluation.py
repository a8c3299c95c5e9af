"""The [evaluation] table: online monitoring during training and ``selfsup-run eval``, with a
toy evaluator (the real evaluators are tested in their own files). Moved here from the core's
tests with the evaluation engine."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from eval_online_toy import EVALUATION
from selfsup_core.api import ConfigError, SelfSupError, Trainer, load_config
from selfsup_eval.evaluation import read_eval_settings, select_evaluators



@pytest.fixture(autouse=True)
def _fresh_calls(toy_types):
    import eval_online_toy

    eval_online_toy.ToyEvaluator.calls.clear()
    yield eval_online_toy.ToyEvaluator.calls


def _records(work_dir):
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


def test_online_evaluation_runs_every_interval_and_after_the_last_epoch(write_config, tmp_path, _fresh_calls):
    config = load_config(write_config(EVALUATION), ["evaluation.initial=true"])
    work = tmp_path / "run"
    Trainer(config, work_dir=work).run()
    evals = [r for r in _records(work) if r["mode"] == "eval"]
    # before training (initial), after epoch 2 (interval) and after epoch 3 (the last)
    assert [r["epoch"] for r in evals] == [0, 2, 3]
    assert all(0.0 <= r["toy_top1"] <= 1.0 for r in evals)
    best = [r["best_toy_top1"] for r in evals]
    assert best == [max(r["toy_top1"] for r in evals[: i + 1]) for i in range(3)]
    assert evals[1]["toy_note"] == "epoch 2" and evals[1]["iter"] == 16
    assert [c["tag"] for c in _fresh_calls] == ["epoch_0", "epoch_2", "epoch_3"]
    assert not any(c["training_inside"] for c in _fresh_calls)  # evaluated in eval mode
    assert all(c["train_len"] == 24 for c in _fresh_calls)
    state = torch.load(work / "latest.pth", weights_only=True)
    assert state["hooks"]["evaluation"] == {"best": {"best_toy_top1": best[-1]}}


def test_online_evaluation_does_not_change_training(write_config, tmp_path):
    """Evaluating between epochs must not touch the training RNG streams or the model's mode:
    the trained weights are bitwise equal with and without it."""
    with_eval = tmp_path / "with"
    without = tmp_path / "without"
    Trainer(load_config(write_config(EVALUATION, name="eval.toml"), ["evaluation.interval=1"]), work_dir=with_eval).run()
    Trainer(load_config(write_config("", name="plain.toml")), work_dir=without).run()
    a = torch.load(with_eval / "latest.pth", weights_only=True)["state_dict"]
    b = torch.load(without / "latest.pth", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_best_value_survives_a_resume(write_config, tmp_path):
    path = write_config(EVALUATION)
    work = tmp_path / "run"
    Trainer(load_config(path, ["runner.max_epochs=2"]), work_dir=work).run()
    first = [r for r in _records(work) if r["mode"] == "eval"]
    Trainer(load_config(path, ["runner.max_epochs=4"]), work_dir=work, resume="auto").run()
    evals = [r for r in _records(work) if r["mode"] == "eval"]
    assert [r["epoch"] for r in evals] == [2, 4]
    assert evals[-1]["best_toy_top1"] == max(first[0]["toy_top1"], evals[-1]["toy_top1"])


def test_evaluation_table_is_validated_with_file_and_key(write_config):
    config = load_config(write_config(EVALUATION.replace("interval = 2\n", "interval = 2\nintervall = 3\n"), name="bad.toml"), ["evaluation.samples_per_gpu=0"])
    with pytest.raises(ConfigError) as info:
        read_eval_settings(config)
    text = str(info.value)
    assert "bad.toml: evaluation.intervall: unknown key of [evaluation]; did you mean 'interval'?" in text
    assert "evaluation.samples_per_gpu: must be >= 1, got 0" in text


def test_online_evaluation_without_datasets_fails_before_training(write_config, tmp_path):
    config = load_config(write_config("[evaluation]\ninterval = 1\nonline = 'ToyEvaluator'\n"
                                      "[[evaluation.evaluators]]\ntype = 'eval_online_toy:ToyEvaluator'\n"))
    with pytest.raises(ConfigError, match=r"evaluation.train: missing; online evaluation needs"):
        Trainer(config, work_dir=tmp_path / "run").run()
    assert not (tmp_path / "run" / "latest.pth").exists()


def test_evaluator_names_match_by_type_or_its_start(write_config):
    config = load_config(write_config(EVALUATION + "[[evaluation.evaluators]]\ntype = 'eval_online_toy:ToyEvaluator'\n"
                                                   "threshold = 1.0\n"))
    chosen = select_evaluators(config, ["toy"])
    assert [path for path, _ in chosen] == [("evaluation", "evaluators", 0), ("evaluation", "evaluators", 1)]
    assert select_evaluators(config, None) == chosen
    with pytest.raises(SelfSupError, match=r"--evaluator nothing: no installed evaluator matches"):
        select_evaluators(config, ["nothing"])


def _selfsup(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "selfsup_core.cli", *args, "--allow-import-paths"], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_selfsup_run_eval_scores_a_checkpoint_and_writes_json(write_config, tmp_path, toy_env):
    path = write_config(EVALUATION)
    work = tmp_path / "run"
    trained = _selfsup([str(path), "--work-dir", str(work), "--set", "runner.max_epochs=1"], toy_env, tmp_path)
    assert trained.returncode == 0, trained.stderr
    result = _selfsup(["eval", str(path), "--checkpoint", str(work / "latest.pth"), "--evaluator", "toy"],
                      toy_env, tmp_path)
    assert result.returncode == 0, result.stderr
    output = work / "eval" / "latest_toyevaluator.json"
    assert f"results written to {output}" in result.stdout
    record = json.loads(output.read_text())
    assert record["epoch"] == 1 and record["checkpoint"] == str(work / "latest.pth")
    # the online evaluation after epoch 1 saw the same weights
    online = [r for r in _records(work) if r["mode"] == "eval"][-1]
    assert record["results"]["toy_top1"] == online["toy_top1"]
    assert "toy_top1" in result.stdout


def test_selfsup_run_eval_errors_are_one_line(write_config, tmp_path, toy_env):
    path = write_config(EVALUATION)
    missing = _selfsup(["eval", str(path), "--checkpoint", str(tmp_path / "nope.pth")], toy_env, tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"error: --checkpoint {tmp_path / 'nope.pth'}: no such checkpoint file"]
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"weight": torch.zeros(2)}, "meta": {"epoch": 1}}, other)
    wrong = _selfsup(["eval", str(path), "--checkpoint", str(other)], toy_env, tmp_path)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1
    assert "does not fit this config's model" in wrong.stderr
    unknown = _selfsup(["eval", str(path), "--evaluator", "nothing"], toy_env, tmp_path)
    assert unknown.returncode == 2 and "--evaluator nothing: no installed evaluator matches" in unknown.stderr


def test_a_failing_online_evaluator_does_not_lose_the_training_run(write_config, tmp_path):
    import eval_online_toy

    eval_online_toy.FailingEvaluator.calls = 0
    extra = EVALUATION.replace("eval_online_toy:ToyEvaluator", "eval_online_toy:FailingEvaluator").replace(
        'online = "ToyEvaluator"', 'online = "FailingEvaluator"').replace("threshold = 0.0", "fail_at = 2")
    work = tmp_path / "run"
    stream = __import__("io").StringIO()
    result = Trainer(load_config(write_config(extra), ["evaluation.interval=1"]), work_dir=work, stream=stream).run()
    assert result["epoch"] == 3 and (work / "epoch_3.pth").exists()
    evals = [r for r in _records(work) if r["mode"] == "eval"]
    assert [(r["epoch"], r.get("toy_top1"), r.get("error")) for r in evals] == [
        (1, 0.5, None), (2, None, "ValueError: the test split has no labels")]
    assert eval_online_toy.FailingEvaluator.calls == 2  # switched off after the failure
    assert "error: evaluation after epoch 2 failed (ValueError: the test split has no labels)" in stream.getvalue()
