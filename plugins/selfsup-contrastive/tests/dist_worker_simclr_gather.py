"""Run by test_simclr_gather_gradient.py as two gloo processes: the SimCLR algorithm's loss
and parameter gradient (averaged over processes, as DDP does) with ``gather_gradient``
"mmselfsup" and "global". Each rank saves them to ``OUT/rank{r}.pt``."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as torch_dist
from selfsup_core.engine import dist
from selfsup_models.heads import ContrastiveHead
from torch import nn

from selfsup_contrastive.simclr import SimCLR

PER_RANK = 2


def full_data() -> dict[str, torch.Tensor]:
    """The global batch: 4 images (2 per rank), two views of 3-d inputs, and a 3x3 weight."""
    g = torch.Generator().manual_seed(1)
    return {"view_1": torch.randn(4, 3, generator=g, dtype=torch.float64),
            "view_2": torch.randn(4, 3, generator=g, dtype=torch.float64),
            "weight": torch.randn(3, 3, generator=g, dtype=torch.float64)}


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3, bias=False, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.fc(x),)


class ListNeck(nn.Module):
    def forward(self, x: tuple[torch.Tensor]) -> list[torch.Tensor]:
        return [x[-1]]


def main(out: Path) -> None:
    torch_dist.init_process_group("gloo")
    rank = dist.get_rank()
    data = full_data()
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    results = {}
    for mode in ("mmselfsup", "global"):
        model = SimCLR(Linear(), ListNeck(), ContrastiveHead(temperature=0.5), gather_gradient=mode)
        with torch.no_grad():
            model.backbone.fc.weight.copy_(data["weight"])
        loss = model.forward_train(img=[data["view_1"][mine], data["view_2"][mine]])["loss"]
        loss.backward()
        grad = model.backbone.fc.weight.grad.clone()
        dist.all_reduce(grad, "mean")  # what DDP does
        results[f"{mode}_loss"] = dist.all_reduce(loss.detach().clone(), "mean")
        results[f"{mode}_grad"] = grad
    torch.save(results, out / f"rank{rank}.pt")
    torch_dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
