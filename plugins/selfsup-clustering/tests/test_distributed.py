"""Distributed safety (gloo, CPU): feature extraction and clustering give the same labels on 1
and 2 processes, and Sinkhorn over 2 processes equals Sinkhorn over their joint batch."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from selfsup_core.testing import run_ranks

WORKER = Path(__file__).with_name("dist_worker.py")


def test_one_and_two_processes_give_the_same_features_labels_and_codes(fm_npz: Path, tmp_path: Path) -> None:
    run_ranks(WORKER, fm_npz, tmp_path)
    spec = importlib.util.spec_from_file_location("selfsup_clustering_dist_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    worker.run(str(fm_npz), tmp_path, 0, 1)  # one process, in this one (no process group)
    one = torch.load(tmp_path / "rank0_of1.pt", weights_only=True)
    two = [torch.load(tmp_path / f"rank{r}_of2.pt", weights_only=True) for r in range(2)]
    assert one["features"].shape == (66, 32)
    for part in two:  # every process holds all 66 features in dataset order, and the same labels
        assert torch.allclose(part["features"], one["features"], atol=1e-5)
        assert torch.equal(part["labels"], one["labels"])
    assert torch.bincount(one["labels"], minlength=5).gt(0).all()
    # Sinkhorn with the sums over both processes = Sinkhorn over the joint batch of 8
    joint = torch.cat([two[0]["codes"], two[1]["codes"]])
    assert torch.allclose(joint, one["codes"], atol=1e-6)
