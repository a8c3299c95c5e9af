"""VICReg: Variance-Invariance-Covariance Regularization.

Bardes, Ponce and LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022. Two augmented views of each image go through the same
backbone and an MLP "expander" (projector); the loss pulls the two embeddings together
(invariance) while keeping every embedding dimension spread out over the batch (variance) and
the dimensions decorrelated (covariance). No negatives, no momentum encoder, no stop-gradient.

This implementation computes the variance and covariance terms on the local batch; it does not
gather embeddings across processes.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._weight_init import apply_init_cfg, check_init_cfg


def _off_diagonal_square_sum(z: torch.Tensor) -> torch.Tensor:
    """Sum of the squared off-diagonal entries of the covariance matrix of ``z`` (N, D)."""
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    off_diagonal = ~torch.eye(d, dtype=torch.bool, device=z.device)
    return cov[off_diagonal].pow(2).sum()


def vicreg_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
) -> dict[str, torch.Tensor]:
    """The VICReg loss of two batches of embeddings, as three weighted terms.

    Args:
        z_a: embeddings of the first views, shape ``(N, D)`` with ``N >= 2``.
        z_b: embeddings of the second views, same shape; row ``i`` is the same image as row
            ``i`` of ``z_a``.
        sim_coeff: weight of the invariance term (the paper's lambda).
        std_coeff: weight of the variance term (mu).
        cov_coeff: weight of the covariance term (nu).
        eps: added to the variance before the square root, for numerical stability.

    Returns:
        ``{"loss_invariance", "loss_variance", "loss_covariance"}``, scalar tensors already
        multiplied by their coefficients; their sum is the loss to minimise:

        * invariance: mean squared error between ``z_a`` and ``z_b`` over all elements;
        * variance: for each branch, the mean over dimensions of ``relu(1 - sqrt(var + eps))``
          where ``var`` is the unbiased (``N - 1``) variance over the batch; averaged over
          the two branches;
        * covariance: for each branch, the sum of the squared off-diagonal entries of the
          covariance matrix (centred, divided by ``N - 1``) divided by ``D``; summed over the
          two branches.

    The terms are computed in float32 (or float64 for float64 inputs), also under autocast.
    """
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(
            f"vicreg_loss: z_a and z_b must both have shape (N, D); got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    n, d = z_a.shape
    if n < 2:
        raise ValueError(f"vicreg_loss: the variance and covariance terms need a batch of at least 2, got {n}")
    dtype = torch.float64 if z_a.dtype == torch.float64 else torch.float32
    z_a, z_b = z_a.to(dtype), z_b.to(dtype)

    invariance = F.mse_loss(z_a, z_b)

    std_a = torch.sqrt(z_a.var(dim=0) + eps)
    std_b = torch.sqrt(z_b.var(dim=0) + eps)
    variance = (F.relu(1 - std_a).mean() + F.relu(1 - std_b).mean()) / 2

    covariance = (_off_diagonal_square_sum(z_a) + _off_diagonal_square_sum(z_b)) / d

    return {
        "loss_invariance": sim_coeff * invariance,
        "loss_variance": std_coeff * variance,
        "loss_covariance": cov_coeff * covariance,
    }


def build_projector(in_channels: int, dims: list[int]) -> nn.Sequential:
    """The VICReg expander: ``Linear-BN-ReLU`` for every entry of ``dims`` but the last, which
    is a plain ``Linear``. ``dims`` are the output sizes of the layers, in order."""
    layers: list[nn.Module] = []
    channels = in_channels
    for index, width in enumerate(dims):
        layers.append(nn.Linear(channels, width))
        if index < len(dims) - 1:
            layers += [nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        channels = width
    return nn.Sequential(*layers)


class VICReg(nn.Module):
    """The VICReg algorithm: backbone, MLP projector and :func:`vicreg_loss`.

    Args:
        backbone: the feature extractor, already built by selfsup from the config's
            ``[model.backbone]`` table. It must map images to ``(N, C)`` features and have
            an ``out_channels`` attribute giving ``C``.
        projector_dims: output sizes of the projector's linear layers, in order (the paper
            uses 8192-8192-8192 on a ResNet-50). All but the last are followed by BatchNorm
            and ReLU. The last one is the embedding dimension ``D`` the loss sees.
        sim_coeff: weight of the invariance term (lambda in the paper; 25 there).
        std_coeff: weight of the variance term (mu; 25 there).
        cov_coeff: weight of the covariance term (nu; 1 there).
        eps: added to the variance before the square root in the variance term.
        init_cfg: initialisation of the projector: ``None`` keeps PyTorch's defaults,
            ``{type = "Kaiming"}`` draws its linear weights Kaiming-normal. The backbone is
            initialised by its own ``init_cfg``.

    The trainer calls ``forward(views, mode="train")`` and sums the returned losses.
    """

    def __init__(
        self,
        backbone: nn.Module,
        projector_dims: list[int] = [512, 512, 512],  # noqa: B006 - read only, copied below
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        eps: float = 1e-4,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(
                f"VICReg: backbone must be an nn.Module (a [model.backbone] table with a type), "
                f"got {type(backbone).__name__}"
            )
        in_channels = getattr(backbone, "out_channels", None)
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(
                f"VICReg: the backbone {type(backbone).__name__} must have an integer 'out_channels' "
                f"attribute (its feature size), got {in_channels!r}"
            )
        projector_dims = list(projector_dims)
        if not projector_dims or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in projector_dims):
            raise ValueError(
                f"VICReg: projector_dims must be a non-empty list of positive integers, got {projector_dims!r}"
            )
        for name, value in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff), ("cov_coeff", cov_coeff)):
            if value < 0:
                raise ValueError(f"VICReg: {name} must be >= 0, got {value!r}")
        if eps <= 0:
            raise ValueError(f"VICReg: eps must be > 0, got {eps!r}")
        self.backbone = backbone
        self.projector = build_projector(in_channels, projector_dims)
        self.projector_dims = projector_dims
        self.sim_coeff = float(sim_coeff)
        self.std_coeff = float(std_coeff)
        self.cov_coeff = float(cov_coeff)
        self.eps = float(eps)
        self.init_cfg = check_init_cfg(init_cfg, "VICReg")
        apply_init_cfg(self.projector, self.init_cfg)

    def extract_feat(self, img: torch.Tensor) -> torch.Tensor:
        """Backbone features ``(N, out_channels)`` of a batch of images (no projector)."""
        return self.backbone(img)

    def forward_train(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weighted VICReg losses for two augmented views of the same batch.

        Args:
            views: exactly two tensors ``(N, C, H, W)``; ``views[0][i]`` and ``views[1][i]``
                are two augmentations of image ``i``. Each view goes through the backbone
                separately, so BatchNorm statistics are per view, as in the paper.

        Returns:
            ``{"loss_invariance", "loss_variance", "loss_covariance"}`` (see
            :func:`vicreg_loss`); the trainer sums them.
        """
        if not isinstance(views, (list, tuple)) or len(views) != 2:
            count = len(views) if isinstance(views, (list, tuple)) else type(views).__name__
            raise ValueError(f"VICReg.forward_train expects a list of 2 views, got {count}")
        z_a = self.projector(self.backbone(views[0]))
        z_b = self.projector(self.backbone(views[1]))
        return vicreg_loss(z_a, z_b, self.sim_coeff, self.std_coeff, self.cov_coeff, self.eps)

    def forward(self, img: Any, mode: str = "train") -> Any:
        """Dispatch as MMSelfSup algorithms do.

        ``mode="train"``: ``img`` is the list of two views; returns :meth:`forward_train`'s
        losses. ``mode="extract"``: ``img`` is a batch of images; returns
        :meth:`extract_feat`'s features.
        """
        if mode == "train":
            return self.forward_train(img)
        if mode == "extract":
            return self.extract_feat(img)
        raise ValueError(f"VICReg.forward: unknown mode {mode!r}; use 'train' or 'extract'")
