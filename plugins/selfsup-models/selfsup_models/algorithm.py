"""What every algorithm shares: the ``forward(img, mode=...)`` contract, feature extraction,
and the momentum (EMA) target networks of BYOL, MoCo, MoCo v3, DenseCL ...

An algorithm is built from its config with its components already built::

    [model]
    type = "SimCLR"
    [model.backbone]   # -> backbone=ResNet(...)
    [model.neck]       # -> neck=NonLinearNeck(...)
    [model.head]       # -> head=ContrastiveHead(...)

The trainer calls ``model(mode="train", img=..., **batch)`` and sums the returned dict's
entries whose key contains ``"loss"``; evaluators call ``model(img, mode="extract")``.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from .init import BaseModule

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]


class BaseAlgorithm(BaseModule):
    """Base of the selfsup algorithms (MMSelfSup 0.x's ``BaseModel``).

    Args:
        backbone: the built backbone; returns a tuple of feature maps (``out_indices``).
        neck: the built neck, or ``None``.
        head: the built head, or ``None``.
        init_cfg: applied to the whole algorithm after the components' own initialisation.

    Subclasses implement :meth:`forward_train` and may override :meth:`forward_test`.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module | None = None, head: nn.Module | None = None,
                 init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.backbone = backbone
        self.neck = neck
        self.head = head

    def extract_feat(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The backbone's outputs for a batch of images ``(N, C, H, W)``."""
        return self.backbone(img)

    def forward_train(self, img: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """One training step's losses (keys containing ``"loss"`` are summed by the trainer)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward_train")

    def forward_test(self, img: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Test-time outputs; by default the backbone's last feature map as ``{"feat": ...}``."""
        return {"feat": self.extract_feat(img)[-1]}

    def forward(self, img: Any, mode: str = "train", **kwargs: Any) -> Any:
        """``mode="train"``: :meth:`forward_train`; ``"extract"``: :meth:`extract_feat`;
        ``"test"``: :meth:`forward_test`. Other keyword arguments come from the batch
        (``label``, ``idx``, ...)."""
        if mode == "train":
            return self.forward_train(img, **kwargs)
        if mode == "extract":
            return self.extract_feat(img)
        if mode == "test":
            return self.forward_test(img, **kwargs)
        raise ValueError(f"{type(self).__name__}.forward: unknown mode {mode!r}; use 'train', 'extract' or 'test'")


def check_views(owner: str, img: Any, count: int | None = None, *, at_least: int | None = None) -> list[torch.Tensor]:
    """``img`` as a list of view batches, checked: exactly ``count`` views or ``at_least`` views.

    Raises a one-line ``ValueError`` naming the algorithm and the dataset setting to fix.
    """
    views = list(img) if isinstance(img, (list, tuple)) else [img]
    if count is not None and len(views) != count:
        raise ValueError(f"{owner}: expects {count} views per sample, got {len(views)}; use a MultiViewDataset "
                         f"with num_views summing to {count}")
    if at_least is not None and len(views) < at_least:
        raise ValueError(f"{owner}: expects at least {at_least} views per sample, got {len(views)}; use a "
                         "MultiViewDataset with more views")
    return views


def resolution_groups(views: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """``[(start, end), ...]``: runs of consecutive views of one spatial size, so that a
    multi-crop algorithm (SwAV, DINO, iBOT) calls its backbone once per size;
    ``[224, 224, 96, 96]`` px views give ``[(0, 2), (2, 4)]``."""
    groups: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(views) + 1):
        if i == len(views) or views[i].shape[-2:] != views[start].shape[-2:]:
            groups.append((start, i))
            start = i
    return groups


def make_momentum_copy(online: nn.Module) -> nn.Module:
    """A copy of ``online`` to serve as its momentum (EMA) target: same weights, no gradients."""
    target = copy.deepcopy(online)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def momentum_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online`` for every parameter (in place,
    one fused call per list); buffers (BN running statistics) are the target's own."""
    target_params = list(target.parameters())
    online_params = [p.detach() for p in online.parameters()]
    if len(target_params) != len(online_params):
        raise ValueError("momentum_update_: target and online networks have different parameters")
    if momentum == 1.0:
        return
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online_params, alpha=1.0 - momentum)


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as float32 if it is float16/bfloat16 (as autocast leaves activations), else as
    it is (float32 and float64 kept). For similarities and losses that must not be rounded to
    half precision; use it inside ``torch.autocast(..., enabled=False)``."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


__all__ = ["BaseAlgorithm", "at_least_float32", "check_views", "make_momentum_copy", "momentum_update_",
           "resolution_groups"]
