"""The DINO projection head, split like SwAV's into a neck and a head.

The paper's "DINO head" is ``MLP (GELU) -> L2-normalised bottleneck -> weight-normalised
linear`` (ViT-S/16: 384-2048-2048-256-65536). Here :class:`DINONeck` is the MLP with the
normalised bottleneck (384-2048-2048-256) and :class:`DINOHead` the weight-normalised last
layer (256-65536) together with what turns its outputs into the loss: the teacher centre
(updated with ``center_momentum``), the student temperature and the teacher temperature with
its warm-up. :class:`iBOTHead` adds the patch-token centre, temperature and masked loss; iBOT
applies the same neck and last layer to the [CLS] and the patch tokens (a shared head).

The loss functions are module-level and pure (:func:`dino_loss`, :func:`ibot_patch_loss`,
:func:`updated_center`) so that tests can check them against a hand computation.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from selfsup_core.api import dist
from selfsup_models.init import BaseModule
from torch import nn

from .monitor import teacher_entropies
from .schedules import teacher_temperature

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]


# -- pure loss functions ----------------------------------------------------------------------------
def dino_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """DINO's multi-crop cross-entropy, averaged over the (teacher view, student view) pairs.

    Args:
        student: the student's logits, one ``(N, K)`` tensor per view (global views first).
        teacher: the teacher's logits of the global views, one ``(N, K)`` tensor each; teacher
            view ``q`` and student view ``q`` are the same crop, and that pair is skipped.
        center: ``(1, K)`` subtracted from the teacher's logits.
    Returns:
        ``mean over pairs (q, v), v != q, of mean_n sum_k -softmax((t_q - c) / teacher_temp)
        * log_softmax(s_v / student_temp)``.
    """
    log_probs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    targets = [F.softmax((t.float() - center) / teacher_temp, dim=-1).detach() for t in teacher]
    total = student[0].new_zeros((), dtype=torch.float32)
    pairs = 0
    for q, target in enumerate(targets):
        for v, log_prob in enumerate(log_probs):
            if v == q:
                continue
            total = total + torch.sum(-target * log_prob, dim=-1).mean()
            pairs += 1
    if pairs == 0:
        raise ValueError("dino_loss: no (teacher, student) pair of different views; give at least 2 views")
    return total / pairs


def ibot_patch_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                    masks: Sequence[torch.Tensor], center: torch.Tensor, student_temp: float,
                    teacher_temp: float) -> torch.Tensor:
    """iBOT's masked-patch self-distillation, averaged over the global views.

    Args:
        student: the student's patch logits of the (masked) global views, ``(N, L, K)`` each.
        teacher: the teacher's patch logits of the same, unmasked views, ``(N, L, K)`` each.
        masks: ``(N, L)`` per view, true/1 where the student saw the mask token.
        center: ``(1, 1, K)`` subtracted from the teacher's logits.
    Returns:
        ``mean over views of mean_n [sum_l m_nl * CE_nl / max(sum_l m_nl, 1)]`` with
        ``CE_nl = sum_k -softmax((t - c) / teacher_temp) * log_softmax(s / student_temp)``:
        each image's cross-entropy on its masked positions; an image without a mask adds 0.
    """
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t, m in zip(student, teacher, masks):
        target = F.softmax((t.float() - center) / teacher_temp, dim=-1).detach()
        ce = torch.sum(-target * F.log_softmax(s.float() / student_temp, dim=-1), dim=-1)
        m = m.flatten(1).to(ce.dtype)
        total = total + (torch.sum(ce * m, dim=-1) / m.sum(dim=-1).clamp(min=1.0)).mean()
    return total / len(student)


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> torch.Tensor:
    """``center * momentum + batch_mean * (1 - momentum)``; ``batch_mean`` is the mean teacher
    logit over the rows of ``teacher`` (``(M, K)``, or ``(M, L, K)`` patch logits: the mean over
    tokens, then rows) of every process."""
    rows = teacher.float()
    if rows.dim() == 3:
        rows = rows.mean(dim=1)
    batch = rows.sum(dim=0, keepdim=True)
    batch = dist.all_reduce(batch)
    batch = batch / (rows.shape[0] * dist.get_world_size())
    return center * momentum + batch.view_as(center) * (1.0 - momentum)


# -- modules ----------------------------------------------------------------------------------------
class WeightNormLinear(nn.Module):
    """``y = x @ (g * v / ||v||)^T`` without bias: ``weight_v (out, in)`` and ``weight_g (out, 1)``
    (``torch.nn.utils.weight_norm(nn.Linear(in, out, bias=False))``'s parameters), ``g`` starting
    at 1. ``norm_last_layer = True`` freezes ``g`` (``requires_grad = False``): every output
    unit's weight vector then has norm 1."""

    def __init__(self, in_features: int, out_features: int, norm_last_layer: bool = True) -> None:
        super().__init__()
        weight = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Linear's default, as DINO's last layer
        self.weight_v = nn.Parameter(weight)
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=not norm_last_layer)
        self.in_features, self.out_features = in_features, out_features

    def weight(self) -> torch.Tensor:
        """The effective ``(out, in)`` weight."""
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight().to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"norm_frozen={not self.weight_g.requires_grad}"


def backbone_embedding(x: Any) -> torch.Tensor:
    """The ``(N, C)`` image embedding of a backbone output: the class token of a ViT output
    (``[patch_map, cls_token]``), the global average of a feature map ``(N, C, H, W)``, a
    ``(N, C)`` tensor as it is. A tuple of outputs (``out_indices``) gives its last."""
    if isinstance(x, tuple):
        x = x[-1]
    if isinstance(x, list):
        x = x[-1]
    if x.dim() == 4:
        return x.mean(dim=(2, 3))
    if x.dim() == 3:
        return x[:, 0]
    return x


class DINONeck(BaseModule):
    """The MLP of the DINO head and its L2-normalised bottleneck.

    ``Linear(in, hid) -> GELU -> [Linear(hid, hid) -> GELU] * (num_layers - 2) ->
    Linear(hid, out)``, then ``x / ||x||``; with ``use_bn`` a BatchNorm1d after every hidden
    linear. Linear weights are truncated-normal (std 0.02), biases 0.

    Args:
        in_channels: the backbone's embedding size (384 for ViT-S, 2048 for ResNet-50).
        hid_channels: the hidden size (2048).
        out_channels: the bottleneck size (256).
        num_layers: linear layers (3; at least 1).
        use_bn: BatchNorm1d in the hidden layers (DINO's ``use_bn_in_head``).

    ``forward(backbone_output) -> [Tensor (N, out)]`` (the ViT class token, or the pooled
    ResNet map, see :func:`backbone_embedding`); :meth:`project` applies the MLP and
    normalisation to any ``(..., in)`` tensor, e.g. iBOT's patch tokens.
    """

    def __init__(self, in_channels: int, hid_channels: int = 2048, out_channels: int = 256, num_layers: int = 3,
                 use_bn: bool = False, init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg)
        if num_layers < 1:
            raise ValueError(f"DINONeck: num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hid_channels))
            if use_bn:
                layers.append(nn.BatchNorm1d(hid_channels))
            layers.append(nn.GELU())
            width = hid_channels
        layers.append(nn.Linear(width, out_channels))
        self.mlp = nn.Sequential(*layers)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.init_weights()

    def default_init(self) -> None:
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in)`` -> ``(..., out)``: the MLP, then L2 normalisation of the last dimension."""
        shape = x.shape
        y = self.mlp(x.reshape(-1, shape[-1]))
        return F.normalize(y, dim=-1, p=2).reshape(*shape[:-1], y.shape[-1])

    def forward(self, x: Any) -> list[torch.Tensor]:
        return [self.project(backbone_embedding(x))]


class DINOHead(BaseModule):
    """The weight-normalised last layer of the DINO head and DINO's loss.

    Args:
        in_channels: the bottleneck size (256).
        out_channels: the output dimension ``K`` (65536).
        norm_last_layer: freeze the weight norm of the last layer at 1 (DINO's default; false
            for ViT-S/16's best run).
        student_temp: the student's softmax temperature (0.1).
        teacher_temp: the teacher's temperature after the warm-up (0.07; 0.04 DINO's default).
        warmup_teacher_temp: the teacher's temperature at epoch 0 (0.04).
        warmup_teacher_temp_epochs: epochs of the linear warm-up (30; 0 = none).
        center_momentum: the EMA momentum of the centre (0.9).

    ``forward(x (..., in)) -> logits (..., K)``; :meth:`loss` computes the loss of one batch
    and updates the centre; ``center`` is a ``(1, K)`` buffer saved with the model.
    """

    def __init__(self, in_channels: int = 256, out_channels: int = 65536, norm_last_layer: bool = True,
                 student_temp: float = 0.1, teacher_temp: float = 0.07, warmup_teacher_temp: float = 0.04,
                 warmup_teacher_temp_epochs: int = 30, center_momentum: float = 0.9,
                 init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg)
        name = type(self).__name__
        for key, value in (("student_temp", student_temp), ("teacher_temp", teacher_temp),
                           ("warmup_teacher_temp", warmup_teacher_temp)):
            if not value > 0:
                raise ValueError(f"{name}: {key} must be > 0, got {value}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"{name}: center_momentum must be in [0, 1], got {center_momentum}")
        if warmup_teacher_temp_epochs < 0:
            raise ValueError(f"{name}: warmup_teacher_temp_epochs must be >= 0, got {warmup_teacher_temp_epochs}")
        self.last_layer = WeightNormLinear(in_channels, out_channels, norm_last_layer)
        self.student_temp = float(student_temp)
        self.teacher_temp = float(teacher_temp)
        self.warmup_teacher_temp = float(warmup_teacher_temp)
        self.warmup_teacher_temp_epochs = int(warmup_teacher_temp_epochs)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, out_channels))
        self.init_weights()

    def teacher_temp_at(self, epoch: int) -> float:
        """The teacher temperature of ``epoch`` (0-based), see :func:`teacher_temperature`."""
        return teacher_temperature(epoch, self.warmup_teacher_temp, self.teacher_temp, self.warmup_teacher_temp_epochs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(x)

    def loss(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        """``{"loss": dino_loss(...)}`` with the current centre and ``epoch``'s teacher
        temperature; then the centre moves towards the teacher's batch mean (all processes)."""
        loss = dino_loss(student, teacher, self.center, self.student_temp, self.teacher_temp_at(epoch))
        monitors = teacher_entropies(teacher, self.center, self.teacher_temp_at(epoch))
        self.center.copy_(updated_center(self.center, torch.cat([t.detach() for t in teacher]), self.center_momentum))
        return {"loss": loss, **monitors}


class iBOTHead(DINOHead):  # noqa: N801 - the method's own spelling
    """DINO's head with iBOT's patch objective (shared last layer for [CLS] and patches).

    Extra args:
        teacher_patch_temp: the teacher temperature of patch tokens after the warm-up (0.07).
        warmup_teacher_patch_temp: at epoch 0 (0.04); warmed up over ``warmup_teacher_temp_epochs``.
        lambda_cls, lambda_patch: the weights of the two losses (1 and 1).

    ``center_patch`` is a ``(1, 1, K)`` buffer, updated like ``center`` from the teacher's
    patch logits averaged over tokens.
    """

    def __init__(self, in_channels: int = 256, out_channels: int = 8192, norm_last_layer: bool = False,
                 student_temp: float = 0.1, teacher_temp: float = 0.07, warmup_teacher_temp: float = 0.04,
                 warmup_teacher_temp_epochs: int = 30, center_momentum: float = 0.9,
                 teacher_patch_temp: float = 0.07, warmup_teacher_patch_temp: float = 0.04,
                 lambda_cls: float = 1.0, lambda_patch: float = 1.0, init_cfg: InitCfg = None) -> None:
        super().__init__(in_channels, out_channels, norm_last_layer, student_temp, teacher_temp, warmup_teacher_temp,
                         warmup_teacher_temp_epochs, center_momentum, init_cfg)
        for key, value in (("teacher_patch_temp", teacher_patch_temp), ("warmup_teacher_patch_temp", warmup_teacher_patch_temp)):
            if not value > 0:
                raise ValueError(f"iBOTHead: {key} must be > 0, got {value}")
        self.teacher_patch_temp = float(teacher_patch_temp)
        self.warmup_teacher_patch_temp = float(warmup_teacher_patch_temp)
        self.lambda_cls = float(lambda_cls)
        self.lambda_patch = float(lambda_patch)
        self.register_buffer("center_patch", torch.zeros(1, 1, out_channels))

    def teacher_patch_temp_at(self, epoch: int) -> float:
        return teacher_temperature(epoch, self.warmup_teacher_patch_temp, self.teacher_patch_temp,
                                   self.warmup_teacher_temp_epochs)

    def ibot_loss(self, student_cls: Sequence[torch.Tensor], student_patch: Sequence[torch.Tensor],
                  teacher_cls: Sequence[torch.Tensor], teacher_patch: Sequence[torch.Tensor],
                  masks: Sequence[torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        """``{"loss_cls": lambda_cls * dino_loss, "loss_patch": lambda_patch * ibot_patch_loss}``
        (student [CLS] of every view, patches of the masked global views; the teacher's of the
        unmasked global views), and the [CLS] teacher's entropies (:func:`teacher_entropies`); then
        both centres are updated."""
        loss_cls = dino_loss(student_cls, teacher_cls, self.center, self.student_temp, self.teacher_temp_at(epoch))
        loss_patch = ibot_patch_loss(student_patch, teacher_patch, masks, self.center_patch, self.student_temp,
                                     self.teacher_patch_temp_at(epoch))
        monitors = teacher_entropies(teacher_cls, self.center, self.teacher_temp_at(epoch))
        self.center.copy_(updated_center(self.center, torch.cat([t.detach() for t in teacher_cls]), self.center_momentum))
        self.center_patch.copy_(updated_center(self.center_patch, torch.cat([t.detach() for t in teacher_patch]),
                                               self.center_momentum))
        return {"loss_cls": self.lambda_cls * loss_cls, "loss_patch": self.lambda_patch * loss_patch, **monitors}


__all__ = ["DINOHead", "DINONeck", "WeightNormLinear", "backbone_embedding", "dino_loss", "iBOTHead",
           "ibot_patch_loss", "updated_center"]
