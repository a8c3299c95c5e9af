"""The fsdp2 runtime (README "Scaling out"): sharding units, activation checkpointing, sharded
checkpoints and resume, and its refusals. The multi-process runs are 2 gloo CPU processes
started as fake Slurm tasks, training a tiny MLP for 2 epochs of 2 iterations."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from selfsup_core.api import ActiveRuntime, CheckpointError, Trainer, WeightsError, load_config, read_state_dict, session
from selfsup_core.testing import assert_bitwise_equal, assert_close_weights, fake_srun

HERE = Path(__file__).resolve().parent
CONFIG = """
seed = 3
deterministic = true
[model]
type = "fsdp_toy:ToyBlocks"
[data]
samples_per_gpu = {batch}
workers_per_gpu = 0
[data.train]
type = "fsdp_toy:ToyDataset"
length = 16
[optimizer]
type = "SGD"
lr = 0.1
momentum = 0.9
[runner]
max_epochs = 2
{runner}
[log_config]
progress = "none"
plot = false
"""


def write(folder: Path, name: str, batch: int = 4, runner: str = "") -> Path:
    path = folder / name
    path.write_text(CONFIG.format(batch=batch, runner=runner), encoding="utf-8")
    return path


def srun(config: Path, work: Path, env: dict, *extra: str, world: int = 2, ranks=None, timeout: int = 120):
    """The ranks of a fake ``srun`` job running the CLI on ``config`` (see ``fake_srun``)."""
    command = [sys.executable, "-m", "selfsup_core.cli", str(config), "--allow-import-paths", "--work-dir", str(work),
               "--device", "cpu", *extra]
    return fake_srun(command, env, world=world, ranks=ranks, timeout=timeout)


def weights(path: Path) -> dict:
    """Model and optimizer state of a checkpoint: a plain one, or an fsdp2 one's shards."""
    state = torch.load(path, weights_only=True)
    sharded = state["meta"].get("sharded")
    if not sharded:
        return {"model": state["state_dict"], "optimizer": state["optimizer"]}
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    full = path.parent / "consolidated.pth"
    dcp_to_torch_save(path.parent / sharded, full)
    return torch.load(full, weights_only=True)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    """The reference: one process on the full batch of 8 (in-process)."""
    import importlib

    from selfsup_core.import_paths import allowing

    folder = tmp_path_factory.mktemp("single")
    sys.path.insert(0, str(HERE))
    try:
        importlib.invalidate_caches()
        with allowing():
            Trainer(load_config(write(folder, "one.toml", batch=8)), work_dir=folder / "w").run()
    finally:
        sys.path.remove(str(HERE))
    return weights(folder / "w" / "latest.pth")["model"]


def test_fsdp2_is_the_plugins_registered_runtime():
    from selfsup_fsdp.runtime import FSDP2

    entry = session.registries()["runtimes"].lookup("fsdp2")
    assert entry.dist == "selfsup-fsdp" and entry.load() is FSDP2


def test_fsdp2_shards_units_and_checkpoints_activations(tmp_path, toy_types):
    """In-process, world size 1: the units are the ModuleList's blocks; with activation
    checkpointing each block's forward runs again in the backward pass."""
    import torch.distributed as torch_dist
    from fsdp_toy import ToyBlocks

    from selfsup_fsdp.runtime import FSDP2, is_sharded, sharding_units

    assert [type(u).__name__ for u in sharding_units(ToyBlocks())] == ["Sequential", "Sequential"]
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        calls = {}
        for checkpointing in (False, True):
            model = ToyBlocks()
            counted = model.blocks[0][0]
            calls[checkpointing] = 0

            def count(*_, key=checkpointing):
                calls[key] += 1

            counted.register_forward_hook(count)
            sharded = FSDP2(model, device=torch.device("cpu"), settings=SimpleNamespace(activation_checkpointing=checkpointing))
            assert is_sharded(sharded) and is_sharded(sharded.blocks[0])
            sharded(torch.randn(2, 8))["loss"].backward()
        assert calls == {False: 1, True: 2}
    finally:
        torch_dist.destroy_process_group()


def test_fsdp2_under_two_fake_srun_tasks_matches_one_process_and_resumes_from_its_shards(tmp_path, toy_env, single):
    """Two Slurm tasks (SLURM_* variables only) train with fsdp2 and activation checkpointing;
    [data] global_batch_size = 8 gives each 4, the single run's 8 in all."""
    runner = 'distributed = "fsdp2"\nactivation_checkpointing = true'
    config = write(tmp_path, "fsdp.toml", runner=runner)
    config.write_text(config.read_text().replace("samples_per_gpu = 4", "global_batch_size = 8"))
    results = srun(config, tmp_path / "w", toy_env)
    assert [r.returncode for r in results] == [0, 0], results[0].stderr[-3000:] + results[1].stderr[-3000:]
    assert "FSDPToyBlocks on cpu x 2 processes" in results[0].stderr and "2 iterations/epoch" in results[0].stderr
    assert results[1].stdout == "" and results[0].stdout.startswith("done: epoch 2, iteration 4")
    state = torch.load(tmp_path / "w" / "latest.pth", weights_only=True)
    assert state["state_dict"] == {} and state["meta"]["sharded"] == "shards/iter_4"
    assert (state["meta"]["runtime"], state["meta"]["runtime_state"]) == ("fsdp2", "FSDP2 shards (shards/iter_4)")
    assert sorted(p.name for p in (tmp_path / "w" / "shards").iterdir()) == ["iter_2", "iter_4"]  # epoch_1, epoch_2
    full = weights(tmp_path / "w" / "latest.pth")
    assert_close_weights(full["model"], single)
    # resume epoch 2 from epoch 1's shards in a new work dir: bitwise the same end
    again = srun(config, tmp_path / "again", toy_env, "--resume", str(tmp_path / "w" / "epoch_1.pth"))
    assert [r.returncode for r in again] == [0, 0], again[0].stderr[-3000:]
    assert "resumed from" in again[0].stderr
    resumed = weights(tmp_path / "again" / "latest.pth")
    assert_bitwise_equal(resumed["model"], full["model"])
    assert_bitwise_equal(resumed["optimizer"]["state"], full["optimizer"]["state"])


def test_fsdp2_refuses_an_algorithm_with_a_momentum_network(tmp_path, toy_env):
    config = write(tmp_path, "ema.toml", runner='distributed = "fsdp2"')
    config.write_text(config.read_text().replace('type = "fsdp_toy:ToyBlocks"', 'type = "fsdp_toy:ToyEMA"'))
    start = time.monotonic()
    results = srun(config, tmp_path / "w", toy_env, ranks=[1], timeout=60)  # refused before the rendezvous
    assert time.monotonic() - start < 45
    for result in results:
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.strip().splitlines() == [
            f"error: {config}: runner.distributed: 'fsdp2' cannot shard this model: ToyEMA copies parameters into its "
            "momentum (EMA) network outside the forward pass (momentum_update), which needs unsharded parameters; "
            "use distributed = 'ddp'"]


def test_sharded_and_full_checkpoints_are_not_mixed_up(tmp_path):
    """A run without fsdp2 (here: a single process) given an fsdp2 checkpoint gets one line,
    and so does reading its weights; an fsdp2 run given a full checkpoint gets one line too."""
    from selfsup_fsdp.runtime import FSDP2
    from selfsup_fsdp.shards import shard_meta

    plain = SimpleNamespace(model=torch.nn.Linear(2, 2))
    state = {"meta": {**shard_meta("shards/iter_4"), "runtime": "fsdp2"}, "state_dict": {}, "optimizer": {}}
    path = tmp_path / "latest.pth"
    with pytest.raises(CheckpointError) as info:
        ActiveRuntime(None).load_state(plain, state, path)
    assert str(info.value) == (
        f"checkpoint {path} holds FSDP2 shards (shards/iter_4); resume it with [runner] distributed = 'fsdp2' on "
        f"several processes, or consolidate it with python -m torch.distributed.checkpoint.format_utils dcp_to_torch "
        f"{tmp_path / 'shards/iter_4'} weights.pth")
    full = {"meta": {}, "state_dict": {}, "optimizer": {}}
    assert ActiveRuntime(None).load_state(plain, full, path) is full  # the trainer loads it
    with pytest.raises(CheckpointError, match=r"^checkpoint .*latest\.pth holds full weights, not FSDP2 shards; "
                                              r"resume it with \[runner\] distributed = 'ddp'$"):
        ActiveRuntime("fsdp2", FSDP2).load_state(plain, full, path)
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:  # export, eval, init_cfg Pretrained
        read_state_dict(path)
    assert str(info.value) == (
        f"{path}: holds FSDP2 shards (shards/iter_4), not weights; consolidate them first: python -m "
        f"torch.distributed.checkpoint.format_utils dcp_to_torch {tmp_path / 'shards/iter_4'} weights.pth")
