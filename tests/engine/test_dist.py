"""selfsup_core.engine.dist: identity in one process; gathers (with gradients) across two
gloo processes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from selfsup_core.engine import dist


def test_single_process_helpers_are_identities():
    x = torch.arange(6.0).reshape(3, 2).requires_grad_()
    assert not dist.is_distributed() and dist.get_rank() == 0 and dist.get_world_size() == 1
    assert dist.all_gather(x) is x and dist.all_gather_with_grad(x) is x
    assert dist.all_reduce(x.detach().clone(), op="mean").tolist() == x.tolist()
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    assert dist.gather_in_dataset_order(torch.arange(5), 3).tolist() == [0, 1, 2]  # padding dropped


def _worker(rank: int, world_size: int, init_file: str, results: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        # each rank owns rows [rank * 2, rank * 2 + 2) of a (4, 3) matrix
        full = torch.arange(12.0).reshape(4, 3)
        mine = full[rank * 2 : rank * 2 + 2].clone().requires_grad_()
        gathered = dist.all_gather_with_grad(mine)
        weights = torch.arange(1.0, 5.0).unsqueeze(1)  # row i weighted by i + 1, same on every rank
        (gathered * weights).sum().backward()
        reduced = dist.all_reduce(torch.tensor([float(rank + 1)]), op="mean")
        results[rank] = {
            "gathered": gathered.detach().tolist(),
            "grad": mine.grad.tolist(),
            "no_grad_gather": dist.all_gather(torch.tensor([rank])).tolist(),
            "mean": reduced.item(),
            # a strided shard of 5 samples (rank 0: 0, 2, 4; rank 1: 1, 3 and the padding 0)
            "in_order": dist.gather_in_dataset_order(torch.tensor([[0, 2, 4], [1, 3, 0]][rank]) * 10, 5).tolist(),
        }
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_gather_with_gradients(tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), results), nprocs=2, join=True)
    full = torch.arange(12.0).reshape(4, 3).tolist()
    for rank in (0, 1):
        r = results[rank]
        assert r["gathered"] == full
        assert r["no_grad_gather"] == [0, 1]
        assert r["mean"] == 1.5
        assert r["in_order"] == [0, 10, 20, 30, 40]
        # both ranks' losses use this rank's rows with weights (rank*2+1, rank*2+2): the
        # gradient is summed over the 2 processes
        expected = [[2.0 * (rank * 2 + 1)] * 3, [2.0 * (rank * 2 + 2)] * 3]
        assert r["grad"] == expected


def test_run_ranks_starts_a_torchrun_like_job_and_reports_a_failing_rank(tmp_path):
    from selfsup_core.testing import run_ranks

    script = tmp_path / "rank.py"
    script.write_text("import os, sys, pathlib\n"
                      "keys = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')\n"
                      "env = ' '.join(os.environ[k] for k in keys)\n"
                      "pathlib.Path(sys.argv[1], 'rank' + os.environ['RANK']).write_text(env)\n"
                      "sys.exit(int(os.environ['RANK']) == int(sys.argv[2]))\n")
    run_ranks(script, tmp_path, -1, world_size=3)
    seen = [(tmp_path / f"rank{r}").read_text().split() for r in range(3)]
    assert [s[:4] for s in seen] == [[str(r), str(r), "3", "127.0.0.1"] for r in range(3)]
    assert len({s[4] for s in seen}) == 1  # one master port for the job
    with pytest.raises(AssertionError, match="rank 1 of rank.py exited with 1"):
        run_ranks(script, tmp_path, 1, world_size=2)


def test_a_distributed_cli_run_prints_one_summary_from_rank_0(write_config, tmp_path):
    from selfsup_core.testing import run_ranks

    config = write_config()
    script = tmp_path / "cli_rank.py"
    script.write_text("import os, sys\n"
                      f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
                      "sys.stdout = open(os.path.join(sys.argv[1], 'stdout' + os.environ['RANK']), 'w')\n"
                      "from selfsup_core.cli import main\n"
                      "sys.exit(main(sys.argv[2:]))\n")
    work = tmp_path / "work"
    run_ranks(script, tmp_path, config, "--work-dir", work, "--allow-import-paths", "--cfg-options",
              "log_config.plot=false", world_size=2)
    summary = (tmp_path / "stdout0").read_text().splitlines()
    assert summary[0].startswith("done: epoch 3, iteration 12 in ")
    assert summary[-2] == "  curves      not drawn: [log_config] plot = false"
    assert (tmp_path / "stdout1").read_text() == ""  # rank 1 trains silently
