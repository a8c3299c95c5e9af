"""The training loop: resume exactness, stopping, non-finite losses, checkpoints, accumulation."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from selfsup_core.config import load_config
from selfsup_core.engine import checkpoint as ckpt
from selfsup_core.engine.trainer import NonFiniteLossError, RunInterrupted, Trainer
from selfsup_core.errors import ConfigError, SelfSupError
from selfsup_core.testing import assert_bitwise_equal


def run(path: Path, work_dir: Path, overrides=(), **kwargs):
    return Trainer(load_config(path, list(overrides)), work_dir=work_dir, **kwargs).run()


def final_state(work_dir: Path) -> dict:
    return torch.load(work_dir / "latest.pth", weights_only=True)


def test_a_run_writes_checkpoints_metrics_and_the_resolved_config(write_config, tmp_path):
    config = write_config()
    work = tmp_path / "run"
    result = run(config, work, ["checkpoint_config.max_keep_ckpts=2"])
    assert result["epoch"] == 3 and result["iter"] == 24
    names = sorted(p.name for p in work.iterdir())
    assert names == ["config.toml", "epoch_2.pth", "epoch_3.pth", "latest.pth", "metrics.jsonl", "run.log"]
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["mode"] == "train"]
    assert [r["iter"] for r in train] == list(range(2, 25, 2))
    assert {"loss", "loss_mse", "loss_l2", "lr", "images_per_s"} <= set(train[0])
    assert train[0]["loss"] == pytest.approx(train[0]["loss_mse"] + train[0]["loss_l2"], rel=1e-6)
    epochs = [r for r in records if r["mode"] == "train_epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    state = final_state(work)
    assert state["meta"]["epoch"] == 3 and state["meta"]["iter"] == 24 and state["meta"]["inner_iter"] == 0
    assert int(state["state_dict"]["seen"]) == 3 * 64
    assert load_config(work / "config.toml").data["optimizer"]["lr"] == 0.05
    # latest.pth and the newest epoch file hold the same state
    assert_bitwise_equal(torch.load(work / "epoch_3.pth", weights_only=True)["state_dict"], state["state_dict"])


def test_interrupted_and_resumed_run_is_bitwise_equal_to_an_uninterrupted_one(write_config, tmp_path):
    config = write_config('[[hooks]]\ntype = "selfsup_toy:SignalAt"\nat = 10\n', name="stop.toml")
    plain = write_config("", name="plain.toml")
    reference = tmp_path / "reference"
    run(plain, reference)

    work = tmp_path / "interrupted"
    with pytest.raises(RunInterrupted) as info:
        run(config, work)
    assert info.value.exit_code == 128 + signal.SIGTERM
    assert "--resume" in str(info.value)
    stopped = final_state(work)["meta"]
    assert (stopped["epoch"], stopped["inner_iter"], stopped["iter"]) == (1, 3, 11)
    run(plain, work, resume="auto")  # same config without the signalling hook

    a, b = final_state(reference), final_state(work)
    assert_bitwise_equal(a["state_dict"], b["state_dict"], "state_dict")
    assert_bitwise_equal(a["optimizer"], b["optimizer"], "optimizer")
    assert a["meta"]["iter"] == b["meta"]["iter"] == 24


def test_sigterm_to_a_real_selfsup_run_saves_then_resumes_exactly(write_config, tmp_path, toy_env):
    extra = "[data.train]\ntype = \"selfsup_toy:ToyDataset\"\nlength = 64\ndelay = 0.01\n"
    config = write_config("", name="sub.toml")
    text = config.read_text().replace('[data.train]\ntype = "selfsup_toy:ToyDataset"\nlength = 64\n', extra)
    text = text.replace("workers_per_gpu = 0", "workers_per_gpu = 2")
    config.write_text(text)
    cli = [sys.executable, "-m", "selfsup_core.cli", str(config), "--allow-import-paths"]

    reference = tmp_path / "reference"
    done = subprocess.run([*cli, "--work-dir", str(reference)], env=toy_env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr

    work = tmp_path / "work"
    process = subprocess.Popen([*cli, "--work-dir", str(work)], env=toy_env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    metrics = work / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    meta = final_state(work)["meta"]
    assert 0 < meta["iter"] < 24

    resumed = subprocess.run([*cli, "--work-dir", str(work), "--resume"], env=toy_env, capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {work / 'latest.pth'}" in resumed.stderr
    a, b = final_state(reference), final_state(work)
    assert_bitwise_equal(a["state_dict"], b["state_dict"], "state_dict")
    assert_bitwise_equal(a["optimizer"], b["optimizer"], "optimizer")


def test_a_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(write_config, tmp_path):
    config = write_config()
    work = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError) as info:
        run(config, work, ["model.nan_at_call=12"])  # iteration 12 = epoch 2, 4th iteration
    message = str(info.value)
    assert "non-finite loss (loss, loss_mse) in epoch 2, iteration 12" in message
    assert f"the last good checkpoint {work / 'latest.pth'} is intact" in message
    state = final_state(work)
    assert state["meta"]["epoch"] == 1 and state["meta"]["iter"] == 8
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_corrupted_checkpoint_is_refused_with_a_clear_message(write_config, tmp_path, damage, toy_env):
    config = write_config()
    work = tmp_path / "run"
    run(config, work, ["runner.max_epochs=1"])
    latest = work / "latest.pth"
    data = latest.read_bytes()
    if damage == "truncate":
        os.unlink(latest)
        latest.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        os.unlink(latest)
        latest.write_bytes(b"not a checkpoint" * 10)
    else:
        os.unlink(latest)
        latest.write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupted"):
        run(config, work, resume="auto")
    result = subprocess.run([sys.executable, "-m", "selfsup_core.cli", str(config), "--allow-import-paths",
                             "--work-dir", str(work),
                             "--resume", str(latest)], env=toy_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint {latest} cannot be read"), result.stderr


def test_an_existing_run_is_never_clobbered(write_config, tmp_path):
    config = write_config()
    work = tmp_path / "run"
    run(config, work, ["runner.max_epochs=1"])
    before = {p.name: p.stat().st_mtime_ns for p in work.iterdir()}
    with pytest.raises(SelfSupError, match="already holds a run .*--resume.*--work-dir"):
        run(config, work, ["runner.max_epochs=2"])
    assert {p.name: p.stat().st_mtime_ns for p in work.iterdir()} == before


def test_resume_continues_to_a_longer_schedule(write_config, tmp_path):
    config = write_config()
    work = tmp_path / "run"
    run(config, work, ["runner.max_epochs=1"])
    result = run(config, work, ["runner.max_epochs=2"], resume="auto")
    assert (result["epoch"], result["iter"]) == (2, 16)


def _linear_config(write_config, batch: int, accumulate: int, name: str) -> Path:
    text = f"""
[model]
type = "selfsup_toy:ToyAlgorithm"
dropout = 0.0
[data]
samples_per_gpu = {batch}
workers_per_gpu = 0
[data.train]
type = "selfsup_toy:ToyDataset"
length = 16
[optimizer]
type = "SGD"
lr = 0.1
momentum = 0.9
[optimizer_config]
accumulate_steps = {accumulate}
[runner]
max_epochs = 2
[log_config]
progress = "none"
"""
    path = write_config("", name=name)
    path.write_text(text)
    return path


def test_gradient_accumulation_over_4_steps_equals_one_step_on_the_4x_batch(write_config, tmp_path):
    small = _linear_config(write_config, batch=2, accumulate=4, name="acc.toml")
    large = _linear_config(write_config, batch=8, accumulate=1, name="big.toml")
    run(small, tmp_path / "acc")
    run(large, tmp_path / "big")
    a, b = final_state(tmp_path / "acc"), final_state(tmp_path / "big")
    assert a["meta"]["iter"] == 16 and b["meta"]["iter"] == 4
    for key, value in a["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, b["state_dict"][key], rtol=1e-5, atol=1e-6)
    # same number of optimizer steps: momentum buffers agree too
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        torch.testing.assert_close(sa["momentum_buffer"], sb["momentum_buffer"], rtol=1e-5, atol=1e-6)


def test_two_gloo_processes_under_torchrun_match_one_process_on_the_full_batch(write_config, tmp_path, toy_env):
    pytest.importorskip("torch.distributed.run")
    two = _linear_config(write_config, batch=4, accumulate=1, name="ddp.toml")
    one = _linear_config(write_config, batch=8, accumulate=1, name="single.toml")
    env = dict(toy_env, OMP_NUM_THREADS="1")
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "selfsup_core.cli",
         str(two), "--allow-import-paths", "--work-dir", str(tmp_path / "ddp"), "--device", "cpu"],
        env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "x 2 processes" in ddp.stderr
    single = subprocess.run([sys.executable, "-m", "selfsup_core.cli", str(one), "--allow-import-paths",
                             "--work-dir", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    a, b = final_state(tmp_path / "ddp"), final_state(tmp_path / "one")
    assert a["meta"]["world_size"] == 2 and len(a["rng"]) == 2
    for key, value in a["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, b["state_dict"][key], rtol=1e-5, atol=1e-6)


def test_momentum_update_follows_the_cosine_schedule(write_config, tmp_path):
    from selfsup_core.engine.hooks import cosine_momentum

    config = write_config('[[hooks]]\ntype = "MomentumUpdate"\nend_momentum = 1.0\n')
    text = config.read_text().replace('type = "selfsup_toy:ToyAlgorithm"\ndim = 8', 'type = "selfsup_toy:ToyEMA"\nbase_momentum = 0.9')
    config.write_text(text)
    trainer = Trainer(load_config(config, ["runner.max_epochs=1"]), work_dir=tmp_path / "ema")
    trainer.run()
    model = trainer.model
    assert model.history == [cosine_momentum(i, 8, 0.9, 1.0) for i in range(8)]
    assert model.history[0] == pytest.approx(0.9)
    assert all(not p.requires_grad and p.grad is None for p in model.target.parameters())


def test_trainer_sections_are_validated_with_file_and_key(write_config):
    config = write_config()
    text = config.read_text().replace("max_epochs = 3", "max_epoch = 3\nprecision = 'bf17'")
    text = text.replace("[log_config]\ninterval = 2", "[log_config]\ninterval = 0\nplot = 'yes'")
    text = "optimiser = 1\n" + text
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        Trainer(load_config(config))
    message = str(info.value)
    assert "toy.toml: runner.max_epoch: unknown key of [runner]; did you mean 'max_epochs'?" in message
    assert "toy.toml: runner.precision: must be one of" in message and "did you mean 'bf16'?" in message
    assert "toy.toml: log_config.interval: must be >= 1" in message
    assert "toy.toml: log_config.plot: must be true, false or 'auto', got 'yes'" in message
    assert "toy.toml: optimiser: unknown top-level key; did you mean 'optimizer'?" in message


def test_device_transform_and_channels_last_reach_the_model(write_config, tmp_path):
    config = write_config()
    text = config.read_text()
    text = text.replace('type = "selfsup_toy:ToyAlgorithm"\ndim = 8', 'type = "selfsup_toy:ToyConv"')
    text = text.replace('type = "selfsup_toy:ToyDataset"\nlength = 64', 'type = "selfsup_toy:ToyImages"')
    config.write_text(text)
    trainer = Trainer(load_config(config, ["runner.max_epochs=1", "runner.channels_last=true"]), work_dir=tmp_path / "w")
    trainer.run()
    assert trainer.device_transform.calls == 2  # 16 images, batches of 8 (a copy moved to the device)
    assert trainer.dataset.device_transform.calls == 0
    assert trainer.model.seen == [(torch.float32, True)] * 2
    records = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    epoch = next(r for r in records if r["mode"] == "train_epoch")
    assert epoch["acc"] == 50.0 and epoch["loss"] > 0  # logged, and not added to the loss


def test_resume_auto_without_a_checkpoint_starts_a_fresh_run(write_config, tmp_path):
    config = write_config()
    result = run(config, tmp_path / "fresh", ["runner.max_epochs=1"], resume="auto")
    assert result["epoch"] == 1


def test_fp16_on_a_cpu_is_refused_in_one_line(write_config, tmp_path, toy_env):
    config = write_config()
    result = subprocess.run([sys.executable, "-m", "selfsup_core.cli", str(config), "--allow-import-paths",
                             "--work-dir", str(tmp_path / "w"),
                             "--cfg-options", "runner.precision=fp16", "runner.device=cpu"],
                            env=toy_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: precision 'fp16' needs a CUDA device (this run uses cpu); use 'bf16' or 'fp32'")


def test_resuming_a_one_process_run_under_two_processes_restarts_the_epoch(write_config, tmp_path, toy_env):
    config = write_config('[[hooks]]\ntype = "selfsup_toy:SignalAt"\nat = 10\n', name="stop.toml")
    work = tmp_path / "w"
    with pytest.raises(RunInterrupted):
        run(config, work)
    assert final_state(work)["meta"]["inner_iter"] == 3
    plain = write_config("", name="plain.toml")
    env = dict(toy_env, OMP_NUM_THREADS="1")
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "selfsup_core.cli",
         str(plain), "--allow-import-paths", "--work-dir", str(work), "--device", "cpu", "--resume",
         "--resume-with-changes"],  # plain.toml: the same run without the stopping hook
        env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "comes from 1 processes, this run has 2" in ddp.stderr
    assert "epoch 2 was stopped part-way: it restarts from its beginning" in ddp.stderr
    meta = final_state(work)["meta"]
    assert (meta["epoch"], meta["iter"], meta["world_size"]) == (3, 12, 2)  # 4 iterations/epoch with 2 processes


def test_replace_sampler_feeds_the_next_epoch_and_must_keep_the_epoch_length(write_config, tmp_path):
    from selfsup_core.engine.data import SeededSampler

    trainer = Trainer(load_config(write_config(), ["runner.max_epochs=1"]), work_dir=tmp_path / "w")
    trainer._setup()
    try:
        with pytest.raises(ValueError, match="gives 63 indices per epoch, the current one 64"):
            trainer.replace_sampler(SeededSampler(63))
        in_order = SeededSampler(64, shuffle=False)
        trainer.replace_sampler(in_order)
        assert trainer.sampler is in_order
        assert next(iter(trainer.data_loader))["idx"].tolist() == list(range(8))
    finally:
        trainer._teardown()
