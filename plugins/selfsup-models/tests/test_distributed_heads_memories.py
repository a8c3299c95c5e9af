"""Two CPU processes (gloo): gathered memory updates, Sinkhorn, MoCo v3 and Barlow Twins
give what one process computes on the whole batch."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from selfsup_core.testing import run_ranks
from torch import nn

from selfsup_models.heads import sinkhorn
from selfsup_models.heads.latent import off_diagonal
from selfsup_models.memories import ODCMemory, SimpleMemory

WORKER = Path(__file__).with_name("dist_worker_heads_memories.py")


def _load_worker():
    spec = importlib.util.spec_from_file_location("selfsup_models_tests_dist_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


full_data = _load_worker().full_data


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    out = tmp_path_factory.mktemp("dist")
    run_ranks(WORKER, out, timeout=120)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_simple_memory_replicas_equal_single_process_update(ranks):
    data = full_data()
    single = SimpleMemory(length=6, feat_dim=3, momentum=0.5)
    single.update(data["idx"], data["feat"])
    for result in ranks:
        torch.testing.assert_close(result["simple_bank"], single.feature_bank)


def test_odc_memory_replicas_equal_single_process_update(ranks):
    data = full_data()
    single = ODCMemory(length=8, feat_dim=3, momentum=0.5, num_classes=2, min_cluster=1)
    single.init_memory(data["odc_feat"], data["odc_label"])
    ratio = single.update_samples_memory(data["idx"], data["feat"])
    for result in ranks:
        torch.testing.assert_close(result["odc_features"], single.feature_bank)
        assert torch.equal(result["odc_labels"], single.label_bank)
        torch.testing.assert_close(result["odc_ratio"], ratio)


def test_sinkhorn_sums_over_processes(ranks):
    full = sinkhorn(full_data()["scores"], epsilon=0.5, iterations=3)
    torch.testing.assert_close(torch.cat([r["sinkhorn"] for r in ranks]), full)


def test_mocov3_gathers_keys_and_offsets_labels(ranks):
    data = full_data()
    q, k = F.normalize(data["q"], dim=1), F.normalize(data["k"], dim=1)
    for rank, result in enumerate(ranks):
        logits = q[2 * rank : 2 * rank + 2] @ k.T / 0.5
        expected = 2 * 0.5 * F.cross_entropy(logits, torch.tensor([0, 1]) + 2 * rank)
        torch.testing.assert_close(result["mocov3"], expected)


def test_barlow_twins_sums_cross_correlation_over_processes(ranks):
    data = full_data()
    a = data["a"].clone().requires_grad_(True)
    bn = nn.BatchNorm1d(3, affine=False)
    # each process standardises its own half; c is summed over both halves / total batch
    corr = sum(bn(a[3 * r : 3 * r + 3]).T @ bn(data["b"][3 * r : 3 * r + 3]) for r in range(2)) / 6
    loss = (torch.diagonal(corr) - 1).pow(2).sum() + 0.1 * off_diagonal(corr).pow(2).sum()
    loss.backward()
    for rank, result in enumerate(ranks):
        torch.testing.assert_close(result["barlow"], loss.detach())
        torch.testing.assert_close(result["barlow_grad"], a.grad[3 * rank : 3 * rank + 3])
