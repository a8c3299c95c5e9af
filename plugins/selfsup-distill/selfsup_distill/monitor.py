"""Collapse monitors of DINO and iBOT, logged next to the loss.

DINO can collapse in two ways (Caron et al. 2021, section 5.3 and Fig. 7): to the uniform
distribution, when centring dominates (the teacher's per-image entropy tends to ``ln K``), or
to one dimension, when sharpening dominates (the entropy of the teacher's batch-mean
distribution tends to 0). :func:`teacher_entropies` measures both on every batch; the heads
add them to their output dict (keys without "loss": logged, not optimised).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def teacher_entropies(teacher: Sequence[torch.Tensor], center: torch.Tensor, teacher_temp: float) -> dict[str, torch.Tensor]:
    """Entropies (nats) of the teacher targets ``softmax((t - center) / teacher_temp)``.

    Called by the heads' ``loss`` with the teacher logits of the global views (``(N, K)``
    each, or ``(N, L, K)`` patch logits) and the centre *before* its update.
    Returns ``{"teacher_entropy": mean over rows of H(p_n), "teacher_batch_entropy": H(mean_n
    p_n)}``: the first near ``ln K`` means collapse to uniform, the second near 0 collapse to
    one output; a healthy run keeps the first low and the second high.
    """
    probs = torch.cat([F.softmax((t.float() - center) / teacher_temp, dim=-1).reshape(-1, t.shape[-1])
                       for t in teacher])
    row = -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1).mean()
    mean = probs.mean(dim=0)
    batch = -(mean * torch.log(mean.clamp_min(1e-12))).sum()
    return {"teacher_entropy": row, "teacher_batch_entropy": batch}


__all__ = ["teacher_entropies"]
