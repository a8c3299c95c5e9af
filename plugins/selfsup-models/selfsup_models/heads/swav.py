"""SwAVHead: prototypes, Sinkhorn-Knopp codes and the swapped-prediction loss."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F
from selfsup_core.api import dist
from torch import nn

from ..init import BaseModule

InitCfg = Union[dict, list[dict], None]


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft equipartitioned assignments of samples to prototypes (Sinkhorn-Knopp, SwAV).

    Args:
        scores: ``(B, K)`` prototype scores of this process's ``B`` samples. When
            distributed, every process passes its own ``B`` samples (same ``B`` everywhere)
            and the sums below run over the global batch of ``B_total = B * world_size``
            samples through ``all_reduce``.
        epsilon: entropic regularisation; ``Q`` starts as ``exp(scores / epsilon)``.
        iterations: Sinkhorn iterations; each normalises the prototype (column) sums, then
            the sample (row) sums.

    Returns:
        ``Q`` of shape ``(B, K)`` without gradient, in the dtype of ``scores`` (float32 for
        float16/bfloat16 scores, which are computed in float32). What sums to what:

        - each **row** (one sample) sums to exactly 1 (the final step of every iteration
          divides each sample's row by its sum; ``Q`` is then scaled by ``B_total``), so a
          row is that sample's soft code;
        - each **column** (one prototype), summed over all ``B_total`` samples of all
          processes, equals exactly ``B_total / K`` just before that final per-sample
          normalisation, and approximately afterwards (the gap shrinks as ``iterations``
          grows): the batch is split equally among the prototypes.

        With ``iterations = 0``, ``Q = B_total * exp(scores/eps) / sum(exp(scores/eps))``
        (all entries of the global batch sum to ``B_total``).
    """
    scores = scores.detach()
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    # Subtracting the global maximum leaves Q unchanged after normalisation and avoids overflow.
    top = dist.all_reduce(scores.max().clone(), op="max")
    q = torch.exp((scores - top) / epsilon).t()  # (K, B)
    num_prototypes = q.size(0)
    total = q.size(1) * dist.get_world_size()
    q_sum = dist.all_reduce(q.sum().clone(), op="sum")
    q = q / q_sum
    tiny = torch.finfo(q.dtype).tiny
    for _ in range(iterations):
        rows = dist.all_reduce(q.sum(dim=1, keepdim=True), op="sum")  # per prototype, global
        q = q / rows.clamp_min(tiny) / num_prototypes
        q = q / q.sum(dim=0, keepdim=True).clamp_min(tiny) / total  # per sample (local)
    return (q * total).t()


class SwAVHead(BaseModule):
    """The SwAV loss: swapped prediction of Sinkhorn codes between crops.

    The input stacks the L2-normalised projections of every crop, crop-major: with
    ``num_crops = [2, 6]`` and ``B`` images it is ``(8B, feat_dim)``, rows ``[cB, (c+1)B)``
    holding crop ``c``. Prototypes (module ``prototypes``, a bias-free linear layer) are
    L2-normalised at each forward. For each crop ``a`` in ``crops_for_assign`` the codes
    ``q_a = sinkhorn(scores of crop a)`` are predicted from every other crop ``v`` by
    ``-mean_i sum_k q_a[i, k] log softmax(scores_v[i] / temperature)_k``; the loss averages
    over the other crops, then over ``crops_for_assign``.

    Queue: for small batches SwAV extends the codes' batch with the embeddings of earlier
    batches. A trainer hook (SwAV's) assigns ``head.queue``, a tensor
    ``(len(crops_for_assign), queue_length, feat_dim)`` on the model's device, starting at
    zeros (``None``, the default, means no queue). The head then pushes each batch's
    assigned-crop embeddings in at the front (oldest ones drop out) and, once the queue is
    full (its last row non-zero) or ``head.use_queue`` is true, scores the queue together
    with the batch before Sinkhorn. The hook owns saving and restoring ``queue`` and
    ``use_queue``.

    Args:
        feat_dim: dimension of the projections.
        sinkhorn_iterations: Sinkhorn-Knopp iterations.
        epsilon: Sinkhorn's entropic regularisation.
        temperature: softmax temperature of the predictions.
        crops_for_assign: indices of the crops whose codes are computed (usually the two
            large crops ``[0, 1]``).
        num_crops: crops per resolution group, e.g. ``[2, 6]``.
        num_prototypes: number of prototypes ``K``.
        init_cfg: initialisation on top of PyTorch's default.

    ``forward(x (sum(num_crops) * B, feat_dim)) -> {"loss": scalar}``.
    """

    def __init__(
        self,
        feat_dim: int,
        sinkhorn_iterations: int = 3,
        epsilon: float = 0.05,
        temperature: float = 0.1,
        crops_for_assign: Sequence[int] = (0, 1),
        num_crops: Sequence[int] = (2,),
        num_prototypes: int = 3000,
        init_cfg: InitCfg = None,
    ) -> None:
        super().__init__(init_cfg)
        self.total_crops = int(sum(num_crops))
        if num_prototypes <= 0:
            raise ValueError(f"SwAVHead: num_prototypes must be > 0, got {num_prototypes}")
        if self.total_crops < 2:
            raise ValueError(f"SwAVHead: num_crops must add up to at least 2 crops, got {list(num_crops)}")
        bad = [c for c in crops_for_assign if not 0 <= c < self.total_crops]
        if bad or not crops_for_assign:
            raise ValueError(
                f"SwAVHead: crops_for_assign {list(crops_for_assign)} must name crops 0..{self.total_crops - 1}"
            )
        self.sinkhorn_iterations = sinkhorn_iterations
        self.epsilon = epsilon
        self.temperature = temperature
        self.crops_for_assign = [int(c) for c in crops_for_assign]
        self.num_crops = [int(n) for n in num_crops]
        self.use_queue = False
        self.queue: torch.Tensor | None = None
        self.prototypes = nn.Linear(feat_dim, num_prototypes, bias=False)
        self.init_weights()

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """L2-normalise every prototype (row of ``prototypes.weight``) in place."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1, p=2))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.normalize_prototypes()
        if x.size(0) % self.total_crops:
            raise ValueError(
                f"SwAVHead: {x.size(0)} embeddings do not split into {self.total_crops} crops (num_crops {self.num_crops})"
            )
        batch = x.size(0) // self.total_crops
        scores = self.prototypes(x)
        embedding = x.detach()
        loss = x.new_zeros(())
        for i, crop in enumerate(self.crops_for_assign):
            with torch.no_grad():
                out = scores[batch * crop : batch * (crop + 1)].detach()
                if self.queue is not None:
                    if self.use_queue or not torch.all(self.queue[i, -1, :] == 0):
                        self.use_queue = True
                        out = torch.cat((self.queue[i] @ self.prototypes.weight.t(), out))
                    self.queue[i, batch:] = self.queue[i, :-batch].clone()
                    self.queue[i, :batch] = embedding[crop * batch : (crop + 1) * batch]
                codes = sinkhorn(out, self.epsilon, self.sinkhorn_iterations)[-batch:]
            subloss = x.new_zeros(())
            for view in range(self.total_crops):
                if view == crop:
                    continue
                log_prob = F.log_softmax(scores[batch * view : batch * (view + 1)] / self.temperature, dim=1)
                subloss = subloss - (codes * log_prob).sum(dim=1).mean()
            loss = loss + subloss / (self.total_crops - 1)
        return {"loss": loss / len(self.crops_for_assign)}
