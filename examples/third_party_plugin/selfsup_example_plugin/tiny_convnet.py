"""``TinyConvNet``: a small convolutional backbone for 28x28 and 32x32 images.

Meant for quick experiments on MNIST / Fashion-MNIST / CIFAR and for tests: with the default
widths it has about 93k parameters and runs comfortably on a CPU.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._weight_init import apply_init_cfg, check_init_cfg

NORM_TYPES = ("BN", "GN")


def build_norm(norm_cfg: dict[str, Any] | None, num_channels: int) -> nn.Module:
    """The normalisation layer ``norm_cfg`` describes, for ``num_channels`` channels.

    ``None`` or ``{type = "BN"}``: ``BatchNorm2d`` (optional ``eps``, ``momentum``).
    ``{type = "GN", num_groups = G}``: ``GroupNorm`` with ``G`` groups, which must divide
    ``num_channels`` (optional ``eps``). Any other type raises ``ValueError``.
    """
    cfg = dict(norm_cfg) if norm_cfg is not None else {"type": "BN"}
    kind = cfg.pop("type", None)
    if kind == "BN":
        allowed = {"eps", "momentum"}
    elif kind == "GN":
        allowed = {"num_groups", "eps"}
    else:
        raise ValueError(
            f"TinyConvNet: unsupported norm_cfg type {kind!r}; use {{type = \"BN\"}} (the default) "
            f"or {{type = \"GN\", num_groups = N}}"
        )
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(
            f"TinyConvNet: unknown norm_cfg key(s) {', '.join(unknown)} for type {kind!r}; "
            f"it takes {', '.join(sorted(allowed))}"
        )
    if kind == "BN":
        return nn.BatchNorm2d(num_channels, **cfg)
    groups = cfg.pop("num_groups", None)
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"TinyConvNet: norm_cfg type 'GN' needs num_groups, a positive integer (got {groups!r})")
    if num_channels % groups:
        raise ValueError(
            f"TinyConvNet: norm_cfg num_groups = {groups} does not divide a block's {num_channels} channels"
        )
    return nn.GroupNorm(groups, num_channels, **cfg)


class TinyConvNet(nn.Module):
    """Stacked conv3x3-norm-ReLU blocks followed by global average pooling.

    The first block keeps the resolution (stride 1); every later block halves it (stride 2).
    With the default widths a 28x28 input goes 28 -> 14 -> 7 before pooling.

    Args:
        in_channels: channels of the input images (1 for (Fashion-)MNIST, 3 for CIFAR).
        widths: output channels of each block, in order; one block per entry. The last one
            is the feature size, exposed as :attr:`out_channels`.
        norm_cfg: the normalisation layer after each convolution: ``None`` or
            ``{type = "BN"}`` for BatchNorm (default), ``{type = "GN", num_groups = N}`` for
            GroupNorm with ``N`` groups (must divide every width). Other types raise
            ``ValueError``.
        init_cfg: weight initialisation: ``None`` keeps PyTorch's defaults;
            ``{type = "Kaiming"}`` draws conv weights Kaiming-normal (fan_out, ReLU) and sets
            norm weights to 1 and biases to 0. Other types raise ``ValueError``.

    ``forward(x)`` takes ``(N, in_channels, H, W)`` images and returns ``(N, out_channels)``
    features.
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: list[int] = [32, 64, 128],  # noqa: B006 - read only, copied below
        norm_cfg: dict | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"TinyConvNet: in_channels must be a positive integer, got {in_channels!r}")
        widths = list(widths)
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"TinyConvNet: widths must be a non-empty list of positive integers, got {widths!r}")
        self.in_channels = in_channels
        self.widths = widths
        self.out_channels = widths[-1]
        self.norm_cfg = dict(norm_cfg) if norm_cfg is not None else {"type": "BN"}
        self.init_cfg = check_init_cfg(init_cfg, "TinyConvNet")

        blocks = []
        channels = in_channels
        for index, width in enumerate(widths):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(channels, width, kernel_size=3, stride=1 if index == 0 else 2, padding=1, bias=False),
                    build_norm(self.norm_cfg, width),
                    nn.ReLU(inplace=True),
                )
            )
            channels = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.init_weights()

    def init_weights(self) -> None:
        """Apply :attr:`init_cfg` (a no-op when it is ``None``)."""
        apply_init_cfg(self, self.init_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` images -> ``(N, out_channels)`` pooled features."""
        return torch.flatten(self.pool(self.layers(x)), 1)
