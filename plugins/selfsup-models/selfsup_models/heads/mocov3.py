"""MoCoV3Head: predictor + InfoNCE against the momentum encoder's keys of every process."""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from selfsup_core.api import dist
from torch import nn

from ..algorithm import at_least_float32
from ..init import BaseModule
from .latent import check_predictor

InitCfg = Union[dict, list[dict], None]


class MoCoV3Head(BaseModule):
    """The MoCo v3 loss for one direction (query view -> key view).

    ``q = normalize(predictor([base_out])[0])`` (this process's ``N`` queries),
    ``k = normalize(all_gather(momentum_out))`` (``N * world_size`` keys, no gradient),
    ``logits = q k^T / T``; query ``i`` of process ``r`` has its positive at key
    ``i + N * r``, and ``loss = 2 T * CE(logits, labels)`` (the paper's scaling).
    The algorithm makes it symmetric by calling the head for both view orders and summing.

    Args:
        predictor: a neck table (built by the core as a neck), usually a ``NonLinearNeck``.
        temperature: the softmax temperature ``T``.
        init_cfg: initialisation applied to the whole head after the predictor is built.

    ``forward(base_out (N, C), momentum_out (N, D)) -> {"loss": scalar}``.
    """

    __selfsup_arg_kinds__ = {"predictor": "necks"}

    def __init__(self, predictor: nn.Module, temperature: float = 1.0, init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg)
        if temperature <= 0:
            raise ValueError(f"MoCoV3Head: temperature must be > 0, got {temperature}")
        self.predictor = check_predictor(predictor, type(self).__name__)
        self.temperature = temperature
        self.init_weights()

    def forward(self, base_out: torch.Tensor, momentum_out: torch.Tensor) -> dict[str, torch.Tensor]:
        prediction = self.predictor([base_out])[0]
        with torch.autocast(device_type=prediction.device.type, enabled=False):  # float32 similarities
            query = F.normalize(at_least_float32(prediction), dim=1)
            keys = dist.all_gather(F.normalize(momentum_out.detach().to(query.dtype), dim=1))
            logits = query @ keys.T / self.temperature
        batch = logits.size(0)
        labels = torch.arange(batch, dtype=torch.long, device=logits.device) + batch * dist.get_rank()
        return {"loss": 2 * self.temperature * F.cross_entropy(logits, labels)}
