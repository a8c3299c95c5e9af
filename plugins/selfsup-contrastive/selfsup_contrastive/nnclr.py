"""NNCLR: nearest-neighbour contrastive learning of visual representations.

Dwibedi, Aytar, Tompson, Sermanet and Zisserman, "With a Little Help from My Friends:
Nearest-Neighbor Contrastive Learning of Visual Representations", ICCV 2021.

Two views of each image go through ``backbone -> neck`` (the projector, a 3-layer MLP
2048-2048-256 with batch norms in the paper); the projections ``z1, z2`` are L2-normalised.
The positive of view 1 is not ``z1`` itself but its nearest neighbour ``NN(z1)`` (cosine
similarity) in a support set ``Q`` of projections of earlier batches, a FIFO queue of
``queue_len`` entries (98,304 in the paper); no gradient flows through the neighbour. The
head's prediction MLP maps the other view's projection to ``p2 = h(z2)`` and the loss is a
softmax cross-entropy over the batch (the paper's eq. 2), with temperature ``tau`` (0.1)::

    L_12 = -1/N sum_i log( exp(NN(z1_i) . p2_i / tau) / sum_k exp(NN(z1_i) . p2_k / tau) )

and symmetrically ``L_21`` with ``NN(z2)`` against ``p1``; the loss is ``(L_12 + L_21) / 2``.
Under torch.distributed the predictions of every process are gathered (with gradients), so
``k`` runs over the global batch. After the step's loss is computed, the view-1 projections
of every process (gathered, rank order) are written into the queue from its pointer on,
wrapping around, as MoCo's queue is.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from selfsup_core.api import dist
from selfsup_models.algorithm import BaseAlgorithm, InitCfg, at_least_float32, check_views
from selfsup_models.heads.latent import check_predictor
from selfsup_models.init import BaseModule
from torch import nn


class SupportSet(nn.Module):
    """NNCLR's support set: a FIFO queue of ``size`` unit-norm projections of dimension ``dim``.

    Buffers (saved in every checkpoint): ``queue (size, dim)``, random unit vectors at first,
    and ``ptr (1,)``: the row the next projection is written to.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"NNCLR: queue_len and feat_dim must be >= 1, got {size} and {dim}")
        self.size = int(size)
        self.dim = int(dim)
        self.register_buffer("queue", F.normalize(torch.randn(self.size, self.dim), dim=1))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """For each row of ``z (N, dim)`` the queue entry with the highest cosine similarity
        ``(N, dim)`` (detached; float32 or above, autocast or not). Called every training step."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            query = F.normalize(at_least_float32(z.detach()), dim=1)
            queue = self.queue.to(query.dtype)
            index = (query @ F.normalize(queue, dim=1).T).argmax(dim=1)
            return queue[index]

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor) -> None:
        """Write the L2-normalised rows of ``z (B, dim)`` (already gathered from every process)
        from ``ptr`` on, wrapping around; ``ptr`` moves by ``B`` modulo ``size``."""
        batch = z.size(0)
        if batch > self.size:
            raise ValueError(f"NNCLR: a global batch of {batch} projections exceeds queue_len={self.size}; "
                             "raise model.queue_len")
        rows = (self.ptr + torch.arange(batch, device=z.device)) % self.size
        self.queue.index_copy_(0, rows, F.normalize(z.detach().float(), dim=1).to(self.queue.dtype))
        self.ptr.copy_((self.ptr + batch) % self.size)


def nnclr_loss(anchor: torch.Tensor, pred: torch.Tensor, temperature: float, rank: int = 0) -> torch.Tensor:
    """One direction of NNCLR's loss (the paper's eq. 2).

    Args:
        anchor: the nearest neighbours ``(N, D)`` of this process's view-a projections (no
            gradient); normalised here.
        pred: the predictions of the other view ``(N * world_size, D)`` of every process in
            rank order (this process's rows at ``rank * N``); normalised here.
        temperature: the softmax temperature ``tau``.
        rank: this process's rank.

    Returns the mean over this process's rows of
    ``-log softmax_k(anchor_i . pred_k / tau)[rank * N + i]`` (float32 or above).
    """
    with torch.autocast(device_type=anchor.device.type, enabled=False):
        anchor = F.normalize(at_least_float32(anchor.detach()), dim=1)
        pred = F.normalize(at_least_float32(pred), dim=1).to(anchor.dtype)
        logits = anchor @ pred.T / temperature
        labels = torch.arange(anchor.size(0), device=anchor.device) + rank * anchor.size(0)
        return F.cross_entropy(logits, labels)


class NNCLRHead(BaseModule):
    """NNCLR's prediction MLP and loss.

    Args:
        predictor: a neck table, the prediction MLP (the paper's 256-4096-256:
            ``NonLinearNeck`` with ``num_layers = 2``, ``with_avg_pool = false``).
        temperature: ``tau`` of the loss (0.1 in the paper).
        init_cfg: initialisation applied to the whole head after the predictor is built.

    ``forward(anchor (N, D), projection (N, D)) -> {"loss"}``: ``anchor`` is the nearest
    neighbour of one view's projection, ``projection`` the other view's; the predictions
    ``h(projection)`` of every process are gathered with their gradients.
    """

    __selfsup_arg_kinds__ = {"predictor": "necks"}

    def __init__(self, predictor: nn.Module, temperature: float = 0.1, init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg)
        if temperature <= 0:
            raise ValueError(f"NNCLRHead: temperature must be > 0, got {temperature}")
        self.predictor = check_predictor(predictor, type(self).__name__)
        self.temperature = float(temperature)
        self.init_weights()

    def forward(self, anchor: torch.Tensor, projection: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = self.predictor([projection])[0]
        pred_all = dist.all_gather_with_grad(pred)
        return {"loss": nnclr_loss(anchor, pred_all, self.temperature, dist.get_rank())}


class NNCLR(BaseAlgorithm):
    """NNCLR (see the module docstring).

    Args:
        backbone: the built backbone, e.g. ResNet-50.
        neck: the projector (``NonLinearNeck`` 2048-2048-256, ``num_layers = 3``).
        head: ``NNCLRHead`` (prediction MLP and temperature).
        queue_len: size of the support set (98,304 in the paper); the global batch must not
            exceed it.
        feat_dim: dimension of the projections (the neck's ``out_channels``).
        init_cfg: initialisation applied to the whole algorithm after its components'.

    Modules: ``backbone``, ``neck``, ``head``, ``support_set`` (:class:`SupportSet`, buffers
    only). ``forward_train(img=[view_1, view_2])`` returns ``{"loss"}``.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, queue_len: int = 98304,
                 feat_dim: int = 256, init_cfg: InitCfg = None) -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        if neck is None or head is None:
            raise ValueError("NNCLR: needs a [model.neck] (the projector, e.g. NonLinearNeck) and a "
                             "[model.head] (NNCLRHead)")
        linears = [m for m in neck.modules() if isinstance(m, nn.Linear)]
        if linears and linears[-1].out_features != feat_dim:
            raise ValueError(f"NNCLR: the neck's last layer gives {linears[-1].out_features}-d projections but "
                             f"model.feat_dim = {feat_dim}; make them equal")
        self.init_weights()
        self.support_set = SupportSet(queue_len, feat_dim)

    def forward_train(self, img: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        view_1, view_2 = check_views("NNCLR", img, 2)
        z = self.neck(self.backbone(torch.cat((view_1, view_2), dim=0)))[0]
        if z.size(1) != self.support_set.dim:
            raise ValueError(f"NNCLR: the neck gives {z.size(1)}-d projections but model.feat_dim = "
                             f"{self.support_set.dim}; make them equal")
        z_1, z_2 = z.chunk(2)
        nn_1, nn_2 = self.support_set.nearest(z_1), self.support_set.nearest(z_2)
        loss = 0.5 * (self.head(nn_1, z_2)["loss"] + self.head(nn_2, z_1)["loss"])
        self.support_set.enqueue(dist.all_gather(z_1.detach()))
        return {"loss": loss}


__all__ = ["NNCLR", "NNCLRHead", "SupportSet", "nnclr_loss"]
