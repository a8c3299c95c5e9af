"""MoCo v1 and v2: momentum contrast with a queue of negative keys.

He, Fan, Wu, Xie and Girshick, "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020 (v1: ``LinearNeck``, temperature 0.07); Chen, Fan, Girshick and He,
"Improved Baselines with Momentum Contrastive Learning", 2020 (v2: ``MoCoV2Neck`` MLP,
temperature 0.2, blur augmentation, cosine lr).

A query encoder (backbone + neck, trained) embeds one view; a key encoder, an exponential
moving average of it (``momentum`` 0.999, updated at every training step inside
``forward_train``, not by the MomentumUpdate hook), embeds the other view. The InfoNCE loss
contrasts each query with its own key (positive) and with ``queue_len`` keys of earlier
batches kept in a FIFO queue (negatives). The queue and its pointer are registered buffers,
so they are part of the model's state dict and of every checkpoint.

Shuffling BN: under torch.distributed the key batch is gathered from every process, shuffled
with one permutation (drawn on rank 0 and broadcast), each process encodes its slice, and the
keys are gathered and put back in order, so a query and its key never share BatchNorm
statistics (as in the paper). On one process that trick is emulated with split BN, as in the
official MoCo CIFAR demo: with ``bn_splits = S > 1`` the key batch is shuffled and the key
encoder runs on ``S`` chunks, each normalised with its own statistics (like ``S`` GPUs);
``bn_splits = 1`` encodes the keys as one batch (a shuffle alone would change nothing there).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from selfsup_core.api import dist
from selfsup_models.algorithm import BaseAlgorithm, InitCfg, at_least_float32, check_views, make_momentum_copy, momentum_update_
from selfsup_models.init import InitReport
from torch import nn


def moco_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``pos (N, 1) = <q_i, k_i>`` and ``neg (N, K) = q queue`` for unit-norm queries ``q (N, C)``,
    keys ``k (N, C)`` and a queue ``(C, K)`` of earlier keys (no gradient through ``k`` or the queue).

    Never below float32, autocast or not (float64 inputs stay float64): bf16 would round
    similarities near 1 to steps of 1/256, which dividing by the temperature (0.07-0.2)
    magnifies to 0.02-0.06 in the logits."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        q = at_least_float32(q)
        pos = (q * k.detach().to(q.dtype)).sum(dim=1, keepdim=True)
        neg = q @ queue.detach().to(q.dtype)
    return pos, neg


class MoCo(BaseAlgorithm):
    """MoCo v1/v2 (MMSelfSup 0.x ``MoCo``).

    Args:
        backbone: the built backbone (``[model.backbone]``).
        neck: ``LinearNeck`` (v1: ``in_channels -> feat_dim``) or ``MoCoV2Neck`` (v2:
            ``in_channels -> 2048 -> feat_dim``).
        head: ``ContrastiveHead`` (``temperature`` 0.07 for v1, 0.2 for v2); receives
            ``pos (N, 1)`` and ``neg (N, queue_len)`` similarity logits.
        queue_len: number of negative keys kept (65536 for ImageNet); at most this many keys
            are enqueued per step (the global batch must not exceed it).
        feat_dim: dimension of the keys (the neck's ``out_channels``).
        momentum: EMA momentum of the key encoder, ``key = m * key + (1 - m) * query``,
            applied before every step's keys are computed.
        bn_splits: on one process, the number of chunks the shuffled key batch is encoded in
            (split BN, emulating shuffling BN over that many GPUs); ``1`` disables it. Ignored
            under torch.distributed, where the real cross-GPU shuffle is used.
        init_cfg: initialisation applied to the query encoder; the key encoder is then
            copied from it.

    Buffers: ``queue (feat_dim, queue_len)`` of unit-norm keys (random unit vectors at first),
    ``queue_ptr (1,)``: the column the next key is written to. Modules: ``backbone`` and
    ``neck`` (query encoder), ``encoder_k`` (``Sequential(backbone, neck)`` copy, no
    gradients).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, queue_len: int = 65536,
                 feat_dim: int = 128, momentum: float = 0.999, bn_splits: int = 1, init_cfg: InitCfg = None) -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        if neck is None or head is None:
            raise ValueError("MoCo: needs a [model.neck] (LinearNeck or MoCoV2Neck) and a [model.head] (ContrastiveHead)")
        if queue_len < 1 or feat_dim < 1:
            raise ValueError(f"MoCo: queue_len and feat_dim must be >= 1, got {queue_len} and {feat_dim}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"MoCo: momentum must be in [0, 1], got {momentum}")
        if bn_splits < 1:
            raise ValueError(f"MoCo: bn_splits must be >= 1, got {bn_splits}")
        self.queue_len = int(queue_len)
        self.feat_dim = int(feat_dim)
        self.momentum = float(momentum)
        self.bn_splits = int(bn_splits)
        self.init_weights()
        self.encoder_k = make_momentum_copy(nn.Sequential(self.backbone, self.neck))
        self.register_buffer("queue", F.normalize(torch.randn(self.feat_dim, self.queue_len), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def init_weights(self) -> InitReport:
        report = super().init_weights()
        if "encoder_k" in self._modules:  # re-initialised later: the key encoder follows
            with torch.no_grad():
                for key, query in zip(self.encoder_k.parameters(), self.encoder_q().parameters()):
                    key.copy_(query)
        return report

    def encoder_q(self) -> nn.Sequential:
        """The query encoder, ``Sequential(backbone, neck)`` (a view; not a registered module)."""
        return nn.Sequential(self.backbone, self.neck)

    @torch.no_grad()
    def momentum_update_key_encoder(self) -> None:
        """``key = momentum * key + (1 - momentum) * query`` for every parameter."""
        momentum_update_(self.encoder_k, self.encoder_q(), self.momentum)

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Write the keys of every process (rank order) into the queue from ``queue_ptr`` on,
        wrapping around; the pointer moves by the global batch size (on the device, no sync)."""
        keys = dist.all_gather(keys)
        batch = keys.size(0)
        if batch > self.queue_len:
            raise ValueError(f"MoCo: a global batch of {batch} keys exceeds queue_len={self.queue_len}; "
                             "raise model.queue_len")
        columns = (self.queue_ptr + torch.arange(batch, device=keys.device)) % self.queue_len
        self.queue.index_copy_(1, columns, keys.T.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + batch) % self.queue_len)

    @torch.no_grad()
    def encode_keys(self, im_k: torch.Tensor) -> torch.Tensor:
        """Unit-norm keys of ``im_k`` from the key encoder, with shuffling BN (see the module doc)."""
        if dist.is_distributed():
            shuffled, order = _shuffle_across_processes(im_k)
            keys = F.normalize(self.encoder_k(shuffled)[0], dim=1)
            return _unshuffle_across_processes(keys, order)
        if self.bn_splits == 1:
            return F.normalize(self.encoder_k(im_k)[0], dim=1)
        perm = torch.randperm(im_k.size(0), device=im_k.device)
        chunks = [self.encoder_k(chunk)[0] for chunk in im_k[perm].chunk(self.bn_splits)]
        shuffled_keys = torch.cat(chunks)
        keys = torch.empty_like(shuffled_keys)
        keys[perm] = shuffled_keys
        return F.normalize(keys, dim=1)

    def forward_train(self, img: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        im_q, im_k = check_views("MoCo", img, 2)
        q = F.normalize(self.neck(self.backbone(im_q))[0], dim=1)
        self.momentum_update_key_encoder()
        k = self.encode_keys(im_k)
        # a copy of the queue: the enqueue below must not change what backward needs
        losses = self.head(*moco_logits(q, k, self.queue.clone()))
        self.dequeue_and_enqueue(k)
        return losses


def _shuffle_across_processes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's slice of the global batch under one random permutation (rank 0's,
    broadcast), and the permutation."""
    gathered = dist.all_gather(x)
    perm = torch.randperm(gathered.size(0), device=x.device)
    dist.broadcast(perm, 0)
    mine = perm.view(dist.get_world_size(), -1)[dist.get_rank()]
    return gathered[mine], perm


def _unshuffle_across_processes(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The outputs of :func:`_shuffle_across_processes`' slices back in this process's order."""
    gathered = dist.all_gather(x)
    restore = torch.argsort(perm).view(dist.get_world_size(), -1)[dist.get_rank()]
    return gathered[restore]


__all__ = ["MoCo", "moco_logits"]
