"""DINO: self-distillation with no labels (Caron et al., "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from selfsup_models.algorithm import BaseAlgorithm, check_views, make_momentum_copy, momentum_update_, resolution_groups
from torch import nn

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]


class DINO(BaseAlgorithm):
    """DINO: a student matches an EMA teacher's centred, sharpened outputs across multi-crops.

    The student is ``backbone -> neck (DINONeck) -> head.last_layer``; the teacher
    (``target_backbone``, ``target_neck``, ``target_last_layer``) is a copy that gets no
    gradient and follows the student after every optimizer step,
    ``teacher = m * teacher + (1 - m) * student``; the core's ``MomentumUpdate`` hook moves
    ``m`` from ``base_momentum`` (0.996) to 1 on a cosine over the run. The teacher sees the
    ``num_global_views`` global crops, the student every crop (each resolution in one backbone
    call); the loss is the head's (:func:`~selfsup_distill.heads.dino_loss`): cross-entropy
    between ``softmax((t_q - center) / teacher_temp(epoch))`` and ``log_softmax(s_v /
    student_temp)`` over every pair of different views ``q != v``, then the centre is updated.
    Both networks run in training mode (batch norms use batch statistics), as in DINO.

    ``epoch`` (0-based) chooses the teacher temperature; the ``DINOHook`` sets it at every
    epoch start, together with the weight-decay schedule, per-parameter gradient clipping and
    the frozen last layer.

    Args:
        backbone: a ``ResNet`` (``out_indices = [4]``) or a ``VisionTransformer``.
        neck: a ``DINONeck`` (MLP and L2-normalised bottleneck).
        head: a ``DINOHead`` (weight-normalised last layer, centre, temperatures).
        base_momentum: the teacher momentum at the first iteration (0.996).
        num_global_views: the leading views the teacher sees (2).
        init_cfg: initialisation of the whole algorithm, before the teacher copy is made.

    ``forward_train(img: list of view batches, global views first) -> {"loss"}``;
    ``mode = "extract"`` gives the student backbone's features.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, base_momentum: float = 0.996,
                 num_global_views: int = 2, init_cfg: InitCfg = None) -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        name = type(self).__name__
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"{name}: base_momentum must be in [0, 1], got {base_momentum}")
        if num_global_views < 1:
            raise ValueError(f"{name}: num_global_views must be >= 1, got {num_global_views}")
        if not hasattr(head, "last_layer") or not hasattr(neck, "project"):
            raise ValueError(f"{name}: needs neck.type = 'DINONeck' and head.type = 'DINOHead' (or 'iBOTHead'), "
                             f"got {type(neck).__name__} and {type(head).__name__}")
        self.base_momentum = float(base_momentum)
        self.momentum = float(base_momentum)
        self.num_global_views = int(num_global_views)
        self.epoch = 0
        self.init_weights()
        self.target_backbone = make_momentum_copy(self.backbone)
        self.target_neck = make_momentum_copy(self.neck)
        self.target_last_layer = make_momentum_copy(self.head.last_layer)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``teacher = momentum * teacher + (1 - momentum) * student`` (backbone, neck, last layer)."""
        momentum_update_(nn.ModuleList([self.target_backbone, self.target_neck, self.target_last_layer]),
                         nn.ModuleList([self.backbone, self.neck, self.head.last_layer]), self.momentum)

    def _views(self, img: Any) -> list[torch.Tensor]:
        views = check_views(type(self).__name__, img, at_least=2)
        if len(views) < self.num_global_views:
            raise ValueError(f"{type(self).__name__}: num_global_views = {self.num_global_views} but the batch has "
                             f"{len(views)} views; set data.train.num_views to at least that many")
        return views

    def forward_train(self, img: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        views = self._views(img)
        g = self.num_global_views
        with torch.no_grad():
            emb = self.target_neck(self.target_backbone(torch.cat(views[:g])))[0]
            teacher = list(self.target_last_layer(emb).chunk(g))
        student: list[torch.Tensor] = []
        for start, end in resolution_groups(views):
            emb = self.neck(self.backbone(torch.cat(views[start:end])))[0]
            student += list(self.head(emb).chunk(end - start))
        return self.head.loss(student, teacher, self.epoch)


__all__ = ["DINO"]
