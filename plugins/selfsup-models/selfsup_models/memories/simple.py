"""SimpleMemory: the NPID memory bank of running-average, unit-norm features."""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from selfsup_core.api import dist

from ..init import BaseModule

InitCfg = Union[dict, list[dict], None]

# Seed of the bank's random start: every process draws the same bank without communicating.
BANK_SEED = 0


def last_occurrences(idx: torch.Tensor) -> torch.Tensor:
    """Positions in ``idx (M,)`` of the last occurrence of each distinct value (ascending values).

    Used to make an update with repeated indices deterministic (the last write wins on every
    device), so replicated banks stay identical across processes.
    """
    values, inverse = torch.unique(idx, return_inverse=True)
    positions = torch.arange(idx.numel(), device=idx.device)
    last = torch.full((values.numel(),), -1, dtype=torch.long, device=idx.device)
    return last.scatter_reduce(0, inverse, positions, reduce="amax", include_self=True)


def gather_updates(idx: torch.Tensor, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and features of every process (``all_gather``), one entry per distinct index."""
    idx = dist.all_gather(idx.reshape(-1).long().contiguous())
    feature = dist.all_gather(feature.contiguous())
    keep = last_occurrences(idx)
    return idx[keep], feature[keep]


class SimpleMemory(BaseModule):
    """A bank of one L2-normalised feature per dataset sample (NPID / InstDisc).

    The bank (buffer ``feature_bank``, ``(length, feat_dim)`` float32) starts as random unit
    vectors drawn from a fixed-seed generator, so every process holds the same bank, and it
    is saved in checkpoints with the model.

    Args:
        length: number of samples (the dataset length).
        feat_dim: feature dimension.
        momentum: weight of the new feature in an update:
            ``v <- normalize((1 - momentum) * v + momentum * normalize(f))`` (MMSelfSup's
            convention; NPID uses 0.5).
        init_cfg: accepted for uniformity (no learnable weights).
    """

    def __init__(self, length: int, feat_dim: int, momentum: float, init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg)
        if length <= 0 or feat_dim <= 0:
            raise ValueError(f"SimpleMemory: length and feat_dim must be > 0, got {length} and {feat_dim}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"SimpleMemory: momentum must be in [0, 1], got {momentum}")
        self.length = length
        self.feat_dim = feat_dim
        self.momentum = momentum
        generator = torch.Generator().manual_seed(BANK_SEED)
        self.register_buffer("feature_bank", F.normalize(torch.randn(length, feat_dim, generator=generator), dim=1))
        self.init_weights()

    @torch.no_grad()
    def update(self, idx: torch.Tensor, feature: torch.Tensor) -> None:
        """Mix this step's features into the bank, on every process alike.

        Args:
            idx: ``(N,)`` dataset indices of this process's batch.
            feature: ``(N, feat_dim)`` features (normalised here).

        The batches of all processes are gathered first, so every replica applies the same
        update; an index repeated in the gathered batch takes its last feature.
        """
        bank = self.feature_bank
        feature = F.normalize(feature.detach().to(device=bank.device, dtype=bank.dtype), dim=1)
        idx, feature = gather_updates(idx.to(bank.device), feature)
        mixed = (1 - self.momentum) * bank[idx] + self.momentum * feature
        bank[idx] = F.normalize(mixed, dim=1)

    def draw(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``num`` indices drawn uniformly with replacement (NPID's negatives), on the bank's device."""
        return torch.randint(self.length, (num,), generator=generator, device=self.feature_bank.device)
