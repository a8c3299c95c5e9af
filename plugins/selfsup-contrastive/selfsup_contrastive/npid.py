"""NPID: non-parametric instance discrimination with a memory bank.

Wu, Xiong, Yu and Lin, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", CVPR 2018 (InstDisc). Every training image is its own class. The memory bank
keeps one L2-normalised feature per image (``SimpleMemory``); a batch's normalised features
are scored against their own bank entry (the positive) and ``neg_num`` bank entries drawn
uniformly at random (the negatives), the NCE-style softmax of ``ContrastiveHead`` turns that
into a loss, and the bank entries of the batch are then refreshed with the new features
(momentum, renormalised). MMSelfSup 0.x semantics (``mmselfsup/models/algorithms/npid.py``).
"""
from __future__ import annotations

from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from selfsup_models.algorithm import BaseAlgorithm, check_views

InitCfg = Union[dict, list, None]


def draw_negatives(idx: torch.Tensor, length: int, neg_num: int, ensure_neg: bool) -> torch.Tensor:
    """``(N, neg_num)`` bank indices drawn uniformly with replacement from ``[0, length)``.

    With ``ensure_neg`` a sample's own index ``idx[i]`` is never drawn for row ``i``: indices
    are drawn from the ``length - 1`` others (draw from ``[0, length - 1)``, then shift every
    draw ``>= idx[i]`` up by one), which is the distribution MMSelfSup's redraw-until-different
    loop produces, without its host synchronisation.
    """
    n = idx.numel()
    if not ensure_neg:
        return torch.randint(length, (n, neg_num), device=idx.device)
    draws = torch.randint(length - 1, (n, neg_num), device=idx.device)
    return draws + (draws >= idx.view(-1, 1)).long()


def bank_logits(feat: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor,
                neg_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities of ``feat (N, D)`` with its bank entries ``bank[idx]`` (``(N, 1)``)
    and with ``bank[neg_idx]`` (``(N, K)``), in the bank's dtype (float32; also under autocast).

    Two equivalent ways, the one moving fewer floats taken: gather the ``N * K`` negative rows
    (``N * K * D`` floats) and multiply, or score ``feat`` against a snapshot of the whole bank
    and gather the ``N * (1 + K)`` logits (``N * length + length * D`` floats: cheaper for a
    large ``K``, e.g. 4096 negatives from a 60000-entry bank). Either way the bank itself is
    not saved for backward, so it may be updated in place afterwards.
    """
    n, d = feat.shape
    length, k = bank.size(0), neg_idx.size(1)
    with torch.autocast(device_type=feat.device.type, enabled=False):
        feat = feat.to(bank.dtype)
        if n * k * d <= n * length + length * d:
            pos = (bank[idx] * feat).sum(dim=1, keepdim=True)
            neg = torch.bmm(bank[neg_idx], feat.unsqueeze(2)).squeeze(2)
            return pos, neg
        logits = feat @ bank.clone().t()  # (N, length)
        return logits.gather(1, idx.view(-1, 1)), logits.gather(1, neg_idx)


class NPID(BaseAlgorithm):
    """NPID (InstDisc): instance discrimination against a memory bank.

    Args:
        backbone: the built backbone (e.g. ResNet).
        neck: the projection to the bank's ``feat_dim`` (MMSelfSup: ``LinearNeck`` with
            ``with_avg_pool = true``).
        head: ``ContrastiveHead`` (NPID's temperature 0.07).
        memory_bank: ``SimpleMemory`` with ``length`` = the number of training images and
            ``feat_dim`` = the neck's output size (NPID's bank momentum is 0.5).
        neg_num: negatives per sample, drawn uniformly (with replacement) from the bank.
        ensure_neg: never draw a sample's own index as one of its negatives.
        init_cfg: applied to the whole algorithm after the components' own initialisation.

    Training step (``forward_train(img, idx)``, one view per sample):
    ``f = normalize(neck(backbone(img))[0])``; ``pos_i = <bank[idx_i], f_i>``;
    ``neg_ik = <bank[j_ik], f_i>`` for ``neg_num`` drawn indices ``j_ik``; loss =
    ``head(pos, neg)`` (cross-entropy over ``[pos, neg] / T``); then
    ``bank[idx] <- normalize((1 - m) * bank[idx] + m * f)``. The bank is read before the
    update. Returns ``{"loss": ...}``.
    """

    __selfsup_arg_kinds__ = {"memory_bank": "memories"}

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, memory_bank: nn.Module,
                 neg_num: int = 65536, ensure_neg: bool = False, init_cfg: InitCfg = None) -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        if isinstance(neg_num, bool) or not isinstance(neg_num, int) or neg_num < 1:
            raise ValueError(f"NPID: neg_num must be a positive integer, got {neg_num!r}")
        bank = getattr(memory_bank, "feature_bank", None)
        if not isinstance(bank, torch.Tensor) or bank.dim() != 2:
            raise ValueError(f"NPID: memory_bank must be a SimpleMemory-like module with a (length, feat_dim) "
                             f"feature_bank, got {type(memory_bank).__name__}")
        if ensure_neg and bank.size(0) < 2:
            raise ValueError("NPID: ensure_neg needs a memory_bank with length >= 2")
        self.memory_bank = memory_bank
        self.neg_num = neg_num
        self.ensure_neg = bool(ensure_neg)
        self._length_checked = False
        self.init_weights()

    def _check_idx(self, idx: torch.Tensor) -> None:
        """Once: the batch's dataset indices fit the bank (one host sync in the first step)."""
        length = self.memory_bank.feature_bank.size(0)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= length):
            raise ValueError(f"NPID: sample index {int(idx.max())} does not fit memory_bank.length = {length}; set "
                             "model.memory_bank.length to the number of training images")
        self._length_checked = True

    def forward_train(self, img: Any, idx: torch.Tensor | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The NPID loss of one batch (one view per sample) and the bank update.

        Args:
            img: ``(N, C, H, W)`` images (or a one-element list of them).
            idx: ``(N,)`` dataset indices of the images (the dataset's ``idx``).
        """
        (img,) = check_views("NPID", img, 1)
        if idx is None:
            raise ValueError("NPID: forward_train needs the samples' dataset indices (idx); use a dataset that "
                             "returns 'idx' (OneViewDataset)")
        bank = self.memory_bank.feature_bank
        idx = torch.as_tensor(idx).to(device=bank.device, dtype=torch.long).view(-1)
        if not self._length_checked:
            self._check_idx(idx)

        feat = F.normalize(self.neck(self.backbone(img))[0].to(bank.dtype), dim=1)  # (N, D)
        neg_idx = draw_negatives(idx, bank.size(0), self.neg_num, self.ensure_neg)  # (N, K)
        pos, neg = bank_logits(feat, bank, idx, neg_idx)
        losses = self.head(pos, neg)

        self.memory_bank.update(idx, feat.detach())
        return losses


__all__ = ["NPID", "bank_logits", "draw_negatives"]
