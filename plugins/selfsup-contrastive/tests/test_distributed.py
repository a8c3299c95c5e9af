"""Two CPU processes (gloo): SimCLR's loss and gradients with negatives gathered across
processes equal one process's on the whole batch; MoCo's shuffling BN returns each key in its
sample's place and every process enqueues the keys of all processes; NNCLR's loss and gradient
equal one process's and every process's support set gets the view-1 projections of all."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from selfsup_core.testing import run_ranks
from selfsup_models.heads import ContrastiveHead

from selfsup_contrastive.simclr import nt_xent_logits

WORKER = Path(__file__).with_name("dist_worker_contrastive.py")


def _worker_module():
    spec = importlib.util.spec_from_file_location("selfsup_contrastive_tests_dist_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    out = tmp_path_factory.mktemp("dist")
    run_ranks(WORKER, out, timeout=120)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_simclr_gathered_negatives_give_the_single_process_loss_and_gradient(ranks) -> None:
    data = _worker_module().full_data()
    weight = data["weight"].clone().requires_grad_(True)
    z = torch.cat((data["view_1"], data["view_2"])) @ weight.T      # all 4 images on one process
    loss = ContrastiveHead(temperature=0.5)(*nt_xent_logits(z, z))["loss"]
    loss.backward()
    for result in ranks:
        torch.testing.assert_close(result["simclr_loss"], loss.detach())
        torch.testing.assert_close(result["simclr_grad"], weight.grad)


def test_moco_shuffled_keys_come_back_in_order_and_queues_agree(ranks) -> None:
    data = _worker_module().full_data()
    expected = F.normalize(data["keys_in"], dim=1)                   # identity encoder
    for rank, result in enumerate(ranks):
        torch.testing.assert_close(result["moco_keys"], expected[rank * 2:(rank + 1) * 2])
        torch.testing.assert_close(result["queue"][:, :4], expected.T)  # both ranks' keys, rank order
        assert int(result["queue_ptr"]) == 4


def test_nnclr_gathered_predictions_and_support_set_match_one_process(ranks) -> None:
    worker = _worker_module()
    data = worker.full_data()
    model = worker.nnclr_model(data["weight"])                       # all 4 images on one process
    loss = model(img=[data["view_1"], data["view_2"]])["loss"]
    loss.backward()
    projections = F.normalize(data["view_1"] @ data["weight"].T, dim=1)
    for result in ranks:
        torch.testing.assert_close(result["nnclr_loss"], loss.detach())
        torch.testing.assert_close(result["nnclr_grad"], model.backbone.fc.weight.grad)
        torch.testing.assert_close(result["nnclr_queue"][:4], projections)   # both ranks' view 1, rank order
        torch.testing.assert_close(result["nnclr_queue"], model.support_set.queue)
        assert int(result["nnclr_ptr"]) == 4
