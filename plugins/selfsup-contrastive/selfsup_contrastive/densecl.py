"""DenseCL: dense contrastive learning with a momentum encoder and two queues.

Wang, Zhang, Shen, Kong and Li, "Dense Contrastive Learning for Self-Supervised Visual
Pre-Training", CVPR 2021. MoCo v2 (a query encoder, a momentum key encoder, a queue of past
keys as negatives) plus a dense term: every location of the query view's dense projection is
matched to the key-view location whose *backbone* feature is most similar (argmax cosine) and
contrasted against a second queue of pooled dense keys. Loss
``(1 - loss_lambda) * global + loss_lambda * dense``; MMSelfSup 0.x trains the first
iterations with ``loss_lambda = 0`` (:class:`DenseCLHook`). MMSelfSup 0.x semantics
(``mmselfsup/models/algorithms/densecl.py``, ``mmselfsup/core/hooks/densecl_hook.py``).
"""
from __future__ import annotations

from typing import Any, Union

import torch
import torch.nn.functional as F
from selfsup_core.api import SelfSupError, dist
from torch import nn

from selfsup_models.algorithm import BaseAlgorithm, check_views, make_momentum_copy, momentum_update_
from selfsup_models.init import InitReport

from .moco import _shuffle_across_processes, _unshuffle_across_processes

InitCfg = Union[dict, list, None]


def dense_positive_logits(q_b: torch.Tensor, k_b: torch.Tensor, q_grid: torch.Tensor,
                          k_grid: torch.Tensor) -> torch.Tensor:
    """DenseCL's dense positives: ``(N * S,)`` similarities ``<q_grid[n, :, s], k_grid[n, :, j]>``
    with ``j = argmax_j <q_b[n, :, s], k_b[n, :, j]>``.

    Args:
        q_b, k_b: ``(N, C, S)`` unit-norm backbone features of the query and key views.
        q_grid, k_grid: ``(N, D, S)`` unit-norm dense projections of the two views.
    """
    with torch.no_grad():
        match = torch.bmm(q_b.transpose(1, 2), k_b).argmax(dim=2)  # (N, S): key location per query location
    matched = torch.gather(k_grid, 2, match.unsqueeze(1).expand(-1, k_grid.size(1), -1))  # (N, D, S)
    return (q_grid * matched).sum(dim=1).reshape(-1)


class DenseCL(BaseAlgorithm):
    """DenseCL: global (MoCo v2) and dense contrastive losses with two queues.

    Args:
        backbone: the query backbone (its single output is the dense feature map, e.g. ResNet
            ``out_indices = [4]``).
        neck: ``DenseCLNeck`` -> ``[global (N, D), dense (N, D, S), pooled dense (N, D)]``.
        head: ``ContrastiveHead`` (DenseCL's temperature 0.2), used for both terms.
        queue_len: keys kept in each queue (negatives per query).
        feat_dim: ``D``, the neck's output size.
        momentum: EMA coefficient of the key encoder, applied in every training step before
            the keys are computed: ``key = momentum * key + (1 - momentum) * query``.
        loss_lambda: weight of the dense term; the global term gets ``1 - loss_lambda``.
        init_cfg: applied to the query encoder and head after their own initialisation; the key
            encoder starts as a copy of the query encoder.

    Buffers (saved in checkpoints): ``queue``/``queue2`` ``(feat_dim, queue_len)`` unit-norm
    columns (global keys / pooled dense keys), ``queue_ptr``/``queue2_ptr`` the next column to
    overwrite. ``forward_train([im_q, im_k])`` returns ``{"loss_single", "loss_dense"}``,
    already weighted.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, queue_len: int = 65536,
                 feat_dim: int = 128, momentum: float = 0.999, loss_lambda: float = 0.5,
                 init_cfg: InitCfg = None) -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        for name, value in (("queue_len", queue_len), ("feat_dim", feat_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DenseCL: {name} must be a positive integer, got {value!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"DenseCL: momentum must be in [0, 1], got {momentum}")
        if not 0.0 <= loss_lambda <= 1.0:
            raise ValueError(f"DenseCL: loss_lambda must be in [0, 1], got {loss_lambda}")
        self.queue_len = queue_len
        self.feat_dim = feat_dim
        self.momentum = float(momentum)
        self.loss_lambda = float(loss_lambda)
        self.init_weights()
        self.encoder_k = make_momentum_copy(nn.Sequential(self.backbone, self.neck))
        self.register_buffer("queue", F.normalize(torch.randn(feat_dim, queue_len), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("queue2", F.normalize(torch.randn(feat_dim, queue_len), dim=0))
        self.register_buffer("queue2_ptr", torch.zeros(1, dtype=torch.long))

    def init_weights(self) -> InitReport:
        report = super().init_weights()
        if "encoder_k" in self._modules:  # re-initialised later: the key encoder follows
            with torch.no_grad():
                online = [*self.backbone.parameters(), *self.neck.parameters()]
                for key, query in zip(self.encoder_k.parameters(), online):
                    key.copy_(query)
        return report

    @torch.no_grad()
    def momentum_update_key_encoder(self) -> None:
        """``key = momentum * key + (1 - momentum) * query`` for the backbone and neck parameters."""
        momentum_update_(self.encoder_k[0], self.backbone, self.momentum)
        momentum_update_(self.encoder_k[1], self.neck, self.momentum)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
        """Write the keys of every process (``all_gather``) into ``queue`` from column ``ptr`` on,
        wrapping around at ``queue_len``, and advance ``ptr`` (in place, no host sync)."""
        keys = dist.all_gather(keys.to(queue.dtype))
        count = keys.size(0)
        if count > self.queue_len:
            raise ValueError(f"DenseCL: a global batch of {count} keys does not fit queue_len = {self.queue_len}; "
                             "raise model.queue_len")
        columns = (ptr + torch.arange(count, device=ptr.device)) % self.queue_len
        queue.index_copy_(1, columns, keys.t())
        ptr.add_(count).remainder_(self.queue_len)

    def _encode(self, backbone: nn.Module, neck: nn.Module,
                img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unit-norm global projection ``(N, D)``, dense projection ``(N, D, S)``, pooled dense
        projection ``(N, D)`` and backbone feature ``(N, C, S)`` of ``img``, in the queue's dtype."""
        feats = backbone(img)
        if len(feats) != 1:
            raise ValueError(f"DenseCL: the backbone must return one feature map, got {len(feats)}; set "
                             "model.backbone.out_indices to one stage (e.g. [4])")
        glob, grid, pooled = (t.to(self.queue.dtype) for t in neck(feats))
        backbone_feat = feats[0].to(self.queue.dtype).flatten(2)
        return (F.normalize(glob, dim=1), F.normalize(grid, dim=1), F.normalize(pooled, dim=1),
                F.normalize(backbone_feat, dim=1))

    @torch.no_grad()
    def _encode_keys(self, im_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_encode` with the key encoder; under torch.distributed with MoCo's shuffling BN
        (the global key batch permuted across processes, the outputs put back in order)."""
        if not dist.is_distributed():
            return self._encode(self.encoder_k[0], self.encoder_k[1], im_k)
        shuffled, perm = _shuffle_across_processes(im_k)
        keys = self._encode(self.encoder_k[0], self.encoder_k[1], shuffled)
        return tuple(_unshuffle_across_processes(t, perm) for t in keys)

    def forward_train(self, img: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The weighted global and dense losses of two views ``[im_q, im_k]`` and the queue updates."""
        im_q, im_k = check_views("DenseCL", img, 2)
        q, q_grid, _, q_b = self._encode(self.backbone, self.neck, im_q)
        with torch.no_grad():
            self.momentum_update_key_encoder()
            k, k_grid, k2, k_b = self._encode_keys(im_k)

        with torch.autocast(device_type=q.device.type, enabled=False):
            l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
            l_neg = q @ self.queue.clone()  # (N, K): a copy, as the queue changes in place below
            l_pos_dense = dense_positive_logits(q_b, k_b, q_grid, k_grid).unsqueeze(1)  # (N * S, 1)
            q_grid_rows = q_grid.transpose(1, 2).reshape(-1, q_grid.size(1))  # (N * S, D)
            l_neg_dense = q_grid_rows @ self.queue2.clone()  # (N * S, K)
            loss_single = self.head(l_pos, l_neg)["loss"]
            loss_dense = self.head(l_pos_dense, l_neg_dense)["loss"]

        self._dequeue_and_enqueue(self.queue, self.queue_ptr, k)
        self._dequeue_and_enqueue(self.queue2, self.queue2_ptr, k2)
        return {"loss_single": loss_single * (1 - self.loss_lambda), "loss_dense": loss_dense * self.loss_lambda}


class DenseCLHook:
    """DenseCL's warm-up of the dense term: ``loss_lambda = 0`` for the first ``start_iters``
    iterations, then the algorithm's configured value (MMSelfSup 0.x ``DenseCLHook``).

    Args:
        start_iters: iterations (global, 0-based) trained with the global loss only.

    State (saved in checkpoints): the configured ``loss_lambda`` it restores.
    """

    def __init__(self, start_iters: int = 1000) -> None:
        if isinstance(start_iters, bool) or not isinstance(start_iters, int) or start_iters < 0:
            raise ValueError(f"DenseCLHook: start_iters must be an integer >= 0, got {start_iters!r}")
        self.start_iters = start_iters
        self.loss_lambda: float | None = None

    def selfsup_before_run(self, runner: Any) -> None:
        model = runner.model
        if not isinstance(getattr(model, "loss_lambda", None), float):
            raise SelfSupError(f"DenseCLHook: the algorithm {type(model).__name__} has no loss_lambda; remove the "
                               "DenseCLHook from [[hooks]]")
        if self.loss_lambda is None:
            self.loss_lambda = model.loss_lambda

    def selfsup_before_iter(self, runner: Any) -> None:
        runner.model.loss_lambda = self.loss_lambda if runner.iter >= self.start_iters else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"loss_lambda": self.loss_lambda}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_lambda = state["loss_lambda"]


__all__ = ["DenseCL", "DenseCLHook", "dense_positive_logits"]
