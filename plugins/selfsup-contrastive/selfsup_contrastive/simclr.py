"""SimCLR: contrastive learning of two augmented views against every other image of the batch.

Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020. Each image gives two views; backbone + MLP projector embed them;
the NT-Xent loss makes each embedding pick its partner view out of the ``2N - 1`` other
embeddings of the batch (cosine similarity, temperature ``T``).

Across processes the embeddings of every process are gathered *with their gradients*
(:func:`selfsup_core.engine.dist.all_gather_with_grad`), so the negatives of one sample are the
``2 * N_total - 2`` other embeddings of the global batch. Each process scores only its own
``2N`` rows against the gathered columns (the global loss is the mean over processes, which
DDP's gradient averaging gives exactly); MMSelfSup computes the same loss but builds the full
global similarity matrix on every process.

The *gradient* across processes is chosen by ``gather_gradient``:

* ``"mmselfsup"`` (the default; MMSelfSup 0.x's recipe): 0.x's ``GatherLayer`` hands each
  process back only the gradient of its own slice as that process's copy of the global loss
  sees it, and DDP then averages over the ``W`` processes, so the parameter gradient is
  ``1/W`` of the global-batch loss's gradient. With SGD that is an lr ``W`` times smaller;
  with LARS the trust ratio cancels the scale except on the parameters it excludes (biases,
  BN), which then move relatively ``W`` times less than under ``"global"``.
* ``"global"``: the exact gradient of the global-batch loss, as one process on the whole
  batch (and lightly's ``NTXentLoss(gather_distributed=True)``) computes it.

The loss value is the same in both; on one process they are identical.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from selfsup_core.api import dist
from selfsup_models.algorithm import BaseAlgorithm, InitCfg, at_least_float32, check_views
from torch import nn


def nt_xent_logits(z: torch.Tensor, z_all: torch.Tensor, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative cosine similarities of SimCLR's NT-Xent loss.

    Args:
        z: this process's embeddings ``(2N, D)``: rows ``0..N-1`` are the first views, rows
            ``N..2N-1`` the second views of the same images (row ``i`` pairs with ``i + N``).
        z_all: the embeddings of every process in rank order ``(2N * world_size, D)``
            (``z`` itself on one process); this process's rows sit at ``rank * 2N``.
        rank: this process's rank.

    Returns ``pos (2N, 1)`` and ``neg (2N, 2N * world_size - 2)``: for row ``i``, the
    similarity to its partner view and to every other embedding but itself and the partner
    (MMSelfSup's ``ContrastiveHead`` inputs). Embeddings are L2-normalised here, and the
    similarities are float32 under autocast too (bf16 would round them to steps of 1/256).
    """
    rows = z.size(0)
    if rows % 2 or z_all.size(0) % rows:
        raise ValueError(f"nt_xent_logits: expects 2N rows per process, got {rows} of {z_all.size(0)}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = F.normalize(at_least_float32(z), dim=1)
        z_all = F.normalize(at_least_float32(z_all), dim=1).to(z.dtype)
        sim = z @ z_all.T                                       # (2N, 2N * W)
    own, partner = _pair_columns(rows, rank, sim.device)
    pos = sim.gather(1, partner.unsqueeze(1))
    neg = sim.gather(1, _negative_columns(rows, z_all.size(0), own, partner))
    return pos, neg


def _pair_columns(rows: int, rank: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Column of each row itself and of its partner view in the gathered matrix."""
    half = rows // 2
    local = torch.arange(rows, device=device)
    partner = (local + half) % rows
    offset = rank * rows
    return local + offset, partner + offset


def _negative_columns(rows: int, columns: int, own: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """``(rows, columns - 2)`` column indices: every column but ``own[i]`` and ``partner[i]``,
    in increasing order (an index, so no data-dependent shape and no host sync)."""
    cols = torch.arange(columns - 2, device=own.device).expand(rows, -1)
    low = torch.minimum(own, partner).unsqueeze(1)
    high = torch.maximum(own, partner).unsqueeze(1)
    # skip the two excluded columns: shift by one past the lower, by two past the higher
    shifted = cols + (cols >= low).long()
    return shifted + (shifted >= high).long()


class SimCLR(BaseAlgorithm):
    """SimCLR (MMSelfSup 0.x ``SimCLR``): backbone -> neck (projector) -> NT-Xent head.

    Args:
        backbone: the built backbone (``[model.backbone]``), e.g. ResNet-50.
        neck: the projector, MMSelfSup's ``NonLinearNeck`` (``in_channels`` = backbone
            channels, ``hid_channels = 2048``, ``out_channels = 128``, ``num_layers = 2``).
        head: ``ContrastiveHead`` (``temperature = 0.1``); receives ``pos (2N, 1)`` and
            ``neg (2N, 2N_total - 2)`` similarity logits.
        gather_gradient: ``"mmselfsup"`` (default, MMSelfSup 0.x: with ``W`` processes the
            gradient is ``1/W`` of the global-batch loss's) or ``"global"`` (the exact
            global-batch gradient, as one process on the whole batch); see the module docstring.
            Only matters with more than one process.
        init_cfg: initialisation applied to the whole algorithm after its components'.

    ``forward_train(img=[view_1, view_2])`` returns ``{"loss": NT-Xent}``.
    """

    GATHER_GRADIENTS = ("mmselfsup", "global")

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, init_cfg: InitCfg = None,
                 gather_gradient: str = "mmselfsup") -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        if neck is None or head is None:
            raise ValueError("SimCLR: needs a [model.neck] (e.g. NonLinearNeck) and a [model.head] (ContrastiveHead)")
        if gather_gradient not in self.GATHER_GRADIENTS:
            raise ValueError(f"SimCLR: gather_gradient must be \"mmselfsup\" (0.x) or \"global\" (exact), "
                             f"got {gather_gradient!r}")
        self.gather_gradient = gather_gradient
        self.init_weights()

    def forward_train(self, img: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        view_1, view_2 = check_views("SimCLR", img, 2)
        z = self.neck(self.backbone(torch.cat((view_1, view_2), dim=0)))[0]    # (2N, D)
        world_size = dist.get_world_size()
        if self.gather_gradient == "mmselfsup" and world_size > 1 and z.requires_grad:
            z.register_hook(lambda grad: grad / world_size)  # 0.x: GatherLayer + DDP's mean = 1/W
        z_all = dist.all_gather_with_grad(z)
        pos, neg = nt_xent_logits(z, z_all, dist.get_rank())
        return self.head(pos, neg)


__all__ = ["SimCLR", "nt_xent_logits"]
