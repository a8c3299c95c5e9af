"""Scaling out (README "Scaling out"): multi-node torchrun, Slurm, elastic restarts and the
refusals that keep a broken job from hanging (the fsdp2 runtime's tests are in
plugins/selfsup-fsdp/tests). Every multi-process run here is 2 gloo CPU processes on this
machine training a tiny MLP for 2 epochs of 2 iterations."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from selfsup_core.config import load_config
from selfsup_core.engine import slurm
from selfsup_core.engine.launch import per_process_batch
from selfsup_core.engine.trainer import Trainer
from selfsup_core.errors import ConfigError
from selfsup_core.testing import assert_bitwise_equal, assert_close_weights, fake_srun, free_port

CONFIG = """
seed = 3
deterministic = true
[model]
type = "scale_toy:ToyBlocks"
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
[runner]
max_epochs = 2
{runner}
[log_config]
progress = "none"
plot = false
"""
_LAUNCH_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "GROUP_RANK")


def write(folder: Path, name: str, batch: int = 4, runner: str = "", extra: str = "") -> Path:
    path = folder / name
    path.write_text(CONFIG.format(batch=batch, runner=runner) + extra, encoding="utf-8")
    return path


def clean_env(toy_env: dict) -> dict:
    env = {k: v for k, v in toy_env.items() if k not in _LAUNCH_KEYS and not k.startswith(("SLURM_", "TORCHELASTIC"))}
    return dict(env, OMP_NUM_THREADS="1", TORCH_CPP_LOG_LEVEL="ERROR")


def cli(config: Path, work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "selfsup_core.cli", str(config), "--allow-import-paths", "--work-dir", str(work),
            "--device", "cpu", *extra]


def srun(config: Path, work: Path, env: dict, *extra: str, world: int = 2, ranks=None, timeout: int = 120):
    """The ranks of a fake ``srun`` job running the CLI on ``config`` (see ``fake_srun``)."""
    return fake_srun(cli(config, work, *extra), env, world=world, ranks=ranks, timeout=timeout)


def weights(path: Path) -> dict:
    """Model and optimizer state of a checkpoint."""
    state = torch.load(path, weights_only=True)
    return {"model": state["state_dict"], "optimizer": state["optimizer"]}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    """The reference: one process on the full batch of 8 (in-process)."""
    import importlib

    from selfsup_core.import_paths import allowing

    folder = tmp_path_factory.mktemp("single")
    here = str(Path(__file__).resolve().parent)
    sys.path.insert(0, here)
    try:
        importlib.invalidate_caches()
        with allowing():
            Trainer(load_config(write(folder, "one.toml", batch=8)), work_dir=folder / "w").run()
    finally:
        sys.path.remove(here)
    return weights(folder / "w" / "latest.pth")["model"]


# -- Slurm ------------------------------------------------------------------------------------
def test_slurm_node_lists_expand_to_hosts_in_order():
    assert slurm.expand_nodelist("node[01-03,07],login1") == ["node01", "node02", "node03", "node07", "login1"]
    assert slurm.expand_nodelist("gpu-a[8-10]") == ["gpu-a8", "gpu-a9", "gpu-a10"]
    assert slurm.expand_nodelist("r[1-2]-n[01-02]") == ["r1-n01", "r1-n02", "r2-n01", "r2-n02"]
    assert slurm.expand_nodelist("single") == ["single"]
    for bad in ("node[01-03", "node[3-1]", "node[a-b]", ""):
        with pytest.raises(slurm.NodeListError):
            slurm.expand_nodelist(bad)


def test_slurm_variables_become_torch_env_variables():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "node[02-05]",
           "SLURM_JOB_ID": "123456"}
    assert slurm.torch_env(env) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node02",
                                    "MASTER_PORT": str(12000 + 123456 % 20000)}
    assert slurm.master_port("123456") == 15456 and slurm.master_port("77_3") == 12773  # array job 77, task 3
    step = dict(env, SLURM_STEP_NUM_TASKS="4", SLURM_STEP_NODELIST="node[04-05]", MASTER_PORT="29500")
    assert slurm.torch_env(step) == {"RANK": "5", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node04",
                                     "MASTER_PORT": "29500"}
    assert slurm.torch_env(dict(env, CUDA_VISIBLE_DEVICES="6"))["LOCAL_RANK"] == "0"  # --gpus-per-task=1
    assert slurm.torch_env(dict(env, CUDA_VISIBLE_DEVICES="0,1,2,3"))["LOCAL_RANK"] == "1"  # --gpus-per-node=4
    assert slurm.torch_env(dict(env, RANK="0")) == {}  # torchrun (inside srun) sets up the job itself
    assert slurm.torch_env({"SLURM_JOB_ID": "1"}) == {}  # the batch script, not an srun task


# -- multi-node torchrun and elastic restarts ---------------------------------------------------
@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, single) -> Path:
    """Two torchrun agents (--nnodes 2, one process each) meeting over c10d on this machine:
    the uninterrupted 2-process run. Returns its work dir."""
    folder = tmp_path_factory.mktemp("nodes")
    config = write(folder, "ddp.toml")
    env = clean_env(dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent)))
    port = free_port()
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
         "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}",
         "--rdzv-id", "scaling-test", *cli(config, folder / "w", "--deterministic")[1:]],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    outputs = [agent.communicate(timeout=180) for agent in agents]
    assert [a.returncode for a in agents] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    assert sum("x 2 processes" in err for _, err in outputs) == 1  # rank 0 (on whichever node) logs
    return folder / "w"


def test_two_torchrun_nodes_match_one_process_on_the_full_batch(two_nodes, single):
    state = torch.load(two_nodes / "latest.pth", weights_only=True)
    assert (state["meta"]["world_size"], state["meta"]["iter"]) == (2, 4)
    assert_close_weights(state["state_dict"], single)


def test_torchrun_restarts_a_killed_worker_and_ends_equal_to_the_uninterrupted_run(tmp_path, toy_env, two_nodes):
    """Rank 1 dies after iteration 3 (epoch 2 of 2); torchrun --max-restarts 1 starts both again,
    --resume auto continues from the epoch-1 checkpoint, and the end is bitwise the run above."""
    marker = tmp_path / "rank1-exited"
    config = write(tmp_path, "elastic.toml",
                   extra=f'[[hooks]]\ntype = "scale_toy:ExitOnce"\nat = 3\nrank = 1\nmarker = "{marker}"\n')
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts", "1",
         "--monitor-interval", "0.2", *cli(config, tmp_path / "w", "--deterministic", "--resume", "auto")[1:]],
        env=clean_env(toy_env), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-4000:]
    assert marker.exists()  # the worker was killed once
    assert "resumed from" in run.stderr and "at epoch 2, iteration 2" in run.stderr
    ended = torch.load(tmp_path / "w" / "latest.pth", weights_only=True)
    reference = torch.load(two_nodes / "latest.pth", weights_only=True)
    assert ended["meta"]["iter"] == 4
    assert_bitwise_equal(ended["state_dict"], reference["state_dict"])
    assert_bitwise_equal(ended["optimizer"], reference["optimizer"])


# -- refusals: one line, exit 2, no hang --------------------------------------------------------
def test_a_global_batch_the_world_size_does_not_divide_is_refused(tmp_path, toy_env, write_config):
    config = load_config(write_config())
    assert per_process_batch(config, 96, 32, 4, 2) == 12
    assert per_process_batch(config, None, 32, 3, 1) == 32  # samples_per_gpu is per process: always fits
    with pytest.raises(ConfigError, match=r"toy\.toml: data\.global_batch_size: 10 samples per optimizer step do not "
                                          r"split over 3 processes x 1 accumulation steps; use a multiple of 3 "
                                          r"\(e\.g\. 9 or 12\)"):
        per_process_batch(config, 10, 32, 3, 1)
    path = write(tmp_path, "odd.toml")
    path.write_text(path.read_text().replace("samples_per_gpu = 4", "global_batch_size = 10"))
    start = time.monotonic()
    result = srun(path, tmp_path / "w", clean_env(toy_env), world=3, ranks=[2], timeout=60)[0]  # its peers never start
    assert result.returncode == 2 and time.monotonic() - start < 60
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: data.global_batch_size: 10 samples per optimizer step do not split over 3 processes x 1 "
        "accumulation steps; use a multiple of 3 (e.g. 9 or 12), or set [data] samples_per_gpu (per process) instead"]


def test_a_rendezvous_that_never_completes_ends_after_dist_timeout(tmp_path, toy_env):
    config = write(tmp_path, "alone.toml", runner="dist_timeout = 2")
    start = time.monotonic()
    result = srun(config, tmp_path / "w", clean_env(toy_env), ranks=[0], timeout=60)[0]  # rank 1 never starts
    assert result.returncode == 2, result.stderr[-3000:]
    assert time.monotonic() - start < 45
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {config}: runner.dist_timeout: process 0 of 2 did not "
                                                   "meet the others at localhost:")
    assert "within 2 s" in lines[0] and lines[0].endswith("or raise [runner] dist_timeout")
    assert not (tmp_path / "w").exists()


def test_a_torchrun_node_that_never_joins_ends_after_torchrun_join_timeout(tmp_path, toy_env):
    """torchrun's own rendezvous (before any selfsup process starts) is bounded by
    --rdzv-conf join_timeout: it ends, with torchrun's RendezvousTimeoutError (exit 1), not ours."""
    config = write(tmp_path, "lonely.toml")
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", "0", "--nproc-per-node", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{free_port()}", "--rdzv-id", "lonely",
         "--rdzv-conf", "join_timeout=2", *cli(config, tmp_path / "w")[1:]],
        env=clean_env(toy_env), capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "RendezvousTimeoutError" in run.stderr
    assert time.monotonic() - start < 45
    assert not (tmp_path / "w").exists()
