"""One process of the two-process (gloo) check in test_distributed_heads_memories.py.

Run as a script with torchrun's variables set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT); argument: the output folder. Every process builds the same full data from a
fixed seed, takes its half, runs the distributed code paths and saves what it got to
``OUT/rank{r}.pt``.
"""
from __future__ import annotations

import sys

import torch
from selfsup_core.engine import dist

from selfsup_models.heads import LatentCrossCorrelationHead, MoCoV3Head, sinkhorn
from selfsup_models.memories import ODCMemory, SimpleMemory
from selfsup_models.necks import LinearNeck


def full_data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "idx": torch.tensor([0, 3, 5, 3]),  # index 3 twice (DistributedSampler padding)
        "feat": torch.randn(4, 3, generator=g),
        "scores": torch.randn(6, 4, generator=g) * 0.3,
        "q": torch.randn(4, 3, generator=g),
        "k": torch.randn(4, 3, generator=g),
        "a": torch.randn(6, 3, generator=g),
        "b": torch.randn(6, 3, generator=g),
        "odc_feat": torch.randn(8, 3, generator=g),
        "odc_label": torch.tensor([0, 1, 0, 1, 0, 1, 0, 1]),
    }


def half(t: torch.Tensor, rank: int) -> torch.Tensor:
    n = t.size(0) // 2
    return t[rank * n : (rank + 1) * n]


def main(out: str) -> None:
    info = dist.init_from_env("cpu")
    rank = info.rank
    data = full_data()
    result: dict[str, torch.Tensor] = {}

    memory = SimpleMemory(length=6, feat_dim=3, momentum=0.5)
    memory.update(half(data["idx"], rank), half(data["feat"], rank))
    result["simple_bank"] = memory.feature_bank.clone()

    odc = ODCMemory(length=8, feat_dim=3, momentum=0.5, num_classes=2, min_cluster=1)
    odc.init_memory(data["odc_feat"], data["odc_label"])
    result["odc_ratio"] = odc.update_samples_memory(half(data["idx"], rank), half(data["feat"], rank))
    result["odc_features"] = odc.feature_bank.clone()
    result["odc_labels"] = odc.label_bank.clone()

    result["sinkhorn"] = sinkhorn(half(data["scores"], rank), epsilon=0.5, iterations=3)

    predictor = LinearNeck(3, 3, with_avg_pool=False)
    with torch.no_grad():
        predictor.fc.weight.copy_(torch.eye(3))
        predictor.fc.bias.zero_()
    result["mocov3"] = MoCoV3Head(predictor, temperature=0.5)(half(data["q"], rank), half(data["k"], rank))["loss"]

    a = half(data["a"], rank).clone().requires_grad_(True)
    loss = LatentCrossCorrelationHead(3, lambd=0.1)(a, half(data["b"], rank))["loss"]
    loss.backward()
    result["barlow"] = loss.detach()
    result["barlow_grad"] = a.grad

    torch.save(result, f"{out}/rank{rank}.pt")
    dist.destroy(wait=True)  # waits for every rank's file first


if __name__ == "__main__":
    main(sys.argv[1])
