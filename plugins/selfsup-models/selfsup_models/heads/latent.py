"""Heads on pairs of latent vectors: BYOL/SimSiam prediction, ODC-style latent
classification, Barlow Twins cross-correlation."""
from __future__ import annotations

from typing import Any, Union

import torch
import torch.nn.functional as F
from selfsup_core.api import dist
from torch import nn

from ..init import BaseModule

InitCfg = Union[dict, list[dict], None]


def check_predictor(predictor: Any, owner: str) -> nn.Module:
    """``predictor`` if it is a built module; otherwise a ``ValueError`` saying how to write it."""
    if not isinstance(predictor, nn.Module):
        raise ValueError(
            f"{owner}: predictor must be a neck table with a type, e.g. "
            f"predictor = {{type = \"NonLinearNeck\", in_channels = 256, hid_channels = 4096, "
            f"out_channels = 256, with_avg_pool = false}}; got {type(predictor).__name__}"
        )
    return predictor


class LatentPredictHead(BaseModule):
    """Predict the target's latent from the online latent; normalised MSE (BYOL, SimSiam).

    ``loss = mean_i || p_i/|p_i| - t_i/|t_i| ||^2 = mean_i (2 - 2 cos(p_i, t_i))`` with
    ``p = predictor([input])[0]``; the target is detached. It ranges over [0, 4]. (MMSelfSup
    0.x reports ``-2 cos`` or ``-cos`` depending on the release; the gradients equal this
    loss's up to that constant factor and shift.)

    Args:
        predictor: a neck table (built by the core as a neck), usually a ``NonLinearNeck``
            with ``with_avg_pool = false``.
        init_cfg: initialisation applied to the whole head after the predictor is built.

    ``forward(input (N, C), target (N, D)) -> {"loss": scalar}``.
    """

    __selfsup_arg_kinds__ = {"predictor": "necks"}

    def __init__(self, predictor: nn.Module, init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg)
        self.predictor = check_predictor(predictor, type(self).__name__)
        self.init_weights()

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: A002
        pred = self.predictor([input])[0]
        pred_norm = F.normalize(pred, dim=1)
        target_norm = F.normalize(target.detach(), dim=1)
        loss = 2 - 2 * (pred_norm * target_norm).sum(dim=1).mean()
        return {"loss": loss}


class LatentClsHead(BaseModule):
    """Classify the input latent into the class the same classifier gives the target latent.

    ``loss = CE(predictor(input), argmax predictor(target))``; the target branch carries no
    gradient.

    Args:
        in_channels: latent dimension ``C``.
        num_classes: number of classes (clusters).
        init_cfg: initialisation on top of the default (weights N(0, 0.01), bias 0).

    ``forward(input (N, C), target (N, C)) -> {"loss": scalar}``.
    """

    def __init__(self, in_channels: int, num_classes: int, init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg)
        self.predictor = nn.Linear(in_channels, num_classes)
        self.criterion = nn.CrossEntropyLoss()
        self.init_weights()

    def default_init(self) -> None:
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: A002
        pred = self.predictor(input)
        with torch.no_grad():
            label = self.predictor(target).argmax(dim=1)
        return {"loss": self.criterion(pred, label)}


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 as float32; float32 and float64 as they are."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The ``n*(n-1)`` off-diagonal entries of a square matrix, flattened."""
    n, m = matrix.shape
    if n != m:
        raise ValueError(f"off_diagonal needs a square matrix, got {n}x{m}")
    return matrix.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


class LatentCrossCorrelationHead(BaseModule):
    """The Barlow Twins loss.

    Both batches are standardised per feature by a batch norm without affine parameters
    (module ``bn``; its statistics are this process's batch), then
    ``c = bn(input)^T bn(target) / N_total`` (``D x D``) is summed over processes, so ``c`` is
    the cross-correlation over the global batch of ``N_total = N * world_size`` samples, and
    ``loss = sum_i (1 - c_ii)^2 + lambd * sum_{i != j} c_ij^2``.

    Args:
        in_channels: latent dimension ``D``.
        lambd: weight of the off-diagonal (redundancy-reduction) term.
        init_cfg: accepted for uniformity (no learnable weights).

    ``forward(input (N, D), target (N, D)) -> {"loss": scalar}``, computed in float32 even
    under autocast, in float64 when the head is (``.double()``). Each process's gradient is
    that of its own batch's contribution to ``c`` (DDP then averages the processes).
    """

    def __init__(self, in_channels: int, lambd: float = 0.0051, init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg)
        self.lambd = lambd
        self.bn = nn.BatchNorm1d(in_channels, affine=False)
        self.init_weights()

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: A002
        world_size = dist.get_world_size() if dist.is_distributed() else 1
        # float32 even under autocast: c sums N products per entry and its square is summed D^2 times
        with torch.autocast(device_type=input.device.type, enabled=False):
            # the dtype of the head's own bn (float64 after .double()), else at least float32
            stats = self.bn.running_mean
            dtype = stats.dtype if stats is not None else _at_least_float32(input).dtype
            input, target = input.to(dtype), target.to(dtype)
            corr = self.bn(input).T @ self.bn(target) / (input.size(0) * world_size)
        if world_size > 1:
            total = dist.all_reduce(corr.detach().clone(), op="sum")
            corr = corr + (total - corr.detach())  # value: the global sum; gradient: this process's part
        on_diag = (torch.diagonal(corr) - 1).pow(2).sum()
        off_diag = off_diagonal(corr).pow(2).sum()
        return {"loss": on_diag + self.lambd * off_diag}
