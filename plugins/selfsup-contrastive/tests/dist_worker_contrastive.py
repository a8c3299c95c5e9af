"""Run by test_distributed.py as two gloo processes (torchrun's environment variables set):
SimCLR's NT-Xent with negatives gathered with gradients, MoCo's shuffling BN and queue, and
NNCLR's loss (predictions gathered with gradients) and support set (every rank's projections).
Each rank saves what it computed to ``OUT/rank{r}.pt``."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from selfsup_core.engine import dist
from selfsup_models.heads import ContrastiveHead
from torch import nn

from selfsup_contrastive.moco import MoCo
from selfsup_contrastive.nnclr import NNCLR, NNCLRHead
from selfsup_contrastive.simclr import nt_xent_logits

PER_RANK = 2


def full_data() -> dict[str, torch.Tensor]:
    """The global batch: 4 images (2 per rank), two views of 3-d inputs, and a 3x3 weight."""
    g = torch.Generator().manual_seed(0)
    return {"view_1": torch.randn(4, 3, generator=g, dtype=torch.float64),
            "view_2": torch.randn(4, 3, generator=g, dtype=torch.float64),
            "weight": torch.randn(3, 3, generator=g, dtype=torch.float64),
            "keys_in": torch.randn(4, 5, generator=g)}


class Linear(nn.Module):
    """A per-sample backbone ``x -> (x W^T,)`` (no BN: the key of a sample does not depend on
    the others, so shuffling must give back exactly the unshuffled keys)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(weight.size(1), weight.size(0), bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.fc(x),)


class ListNeck(nn.Module):
    def forward(self, x: tuple[torch.Tensor]) -> list[torch.Tensor]:
        return [x[-1]]


def nnclr_model(weight: torch.Tensor) -> NNCLR:
    """NNCLR with a linear backbone, identity projector and predictor, T = 0.5, and a support
    set of the six axis directions of R^3 (queue_len 8: two rows spare)."""
    model = NNCLR(Linear(weight), ListNeck(), NNCLRHead(ListNeck(), temperature=0.5), queue_len=8, feat_dim=3)
    model.double()
    axes = torch.cat([torch.eye(3), -torch.eye(3), torch.eye(3)[:2]]).double()
    model.support_set.queue.copy_(axes)
    return model


def main(out: Path) -> None:
    torch_dist.init_process_group("gloo")
    rank = dist.get_rank()
    data = full_data()
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)

    # SimCLR: this rank's rows against the gathered columns; DDP would average the gradients
    weight = data["weight"].clone().requires_grad_(True)
    z = torch.cat((data["view_1"][mine], data["view_2"][mine])) @ weight.T
    z_all = dist.all_gather_with_grad(F.normalize(z, dim=1))
    loss = ContrastiveHead(temperature=0.5)(*nt_xent_logits(z, z_all, rank))["loss"]
    loss.backward()
    grad = weight.grad.clone()
    dist.all_reduce(grad, "mean")
    mean_loss = dist.all_reduce(loss.detach().clone(), "mean")

    # MoCo: shuffled keys come back in this rank's order; the queue gets every rank's keys
    torch.manual_seed(rank)  # different local RNG states: the permutation must still be rank 0's
    model = MoCo(Linear(torch.eye(5)), ListNeck(), ContrastiveHead(), queue_len=6, feat_dim=5)
    keys = model.encode_keys(data["keys_in"][mine])
    model.dequeue_and_enqueue(keys)

    # NNCLR: this rank's anchors against every rank's predictions; the support set gets all view-1 projections
    nnclr = nnclr_model(data["weight"])
    nnclr_loss = nnclr(img=[data["view_1"][mine], data["view_2"][mine]])["loss"]
    nnclr_loss.backward()
    nnclr_grad = nnclr.backbone.fc.weight.grad.clone()
    dist.all_reduce(nnclr_grad, "mean")
    torch.save({"simclr_loss": mean_loss, "simclr_grad": grad, "moco_keys": keys, "queue": model.queue.clone(),
                "queue_ptr": model.queue_ptr.clone(),
                "nnclr_loss": dist.all_reduce(nnclr_loss.detach().clone(), "mean"), "nnclr_grad": nnclr_grad,
                "nnclr_queue": nnclr.support_set.queue.clone(), "nnclr_ptr": nnclr.support_set.ptr.clone()},
               out / f"rank{rank}.pt")
    torch_dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
