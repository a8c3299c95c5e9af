"""The ``lr_config`` vocabulary: policy names and the keys each reads (no torch here, so the
config migrator can use it; :mod:`selfsup_core.engine.schedules` implements the policies)."""
from __future__ import annotations

#: Policy names (lower case) -> canonical name.
POLICIES = {
    "cosineannealing": "CosineAnnealing",
    "cosine": "CosineAnnealing",
    "stepfixcosineannealing": "StepFixCosineAnnealing",
    "step": "Step",
    "fixed": "Fixed",
    "constant": "Fixed",
    "poly": "Poly",
    "exp": "Exp",
}
#: Keys every policy reads.
COMMON_KEYS = ("policy", "by_epoch", "warmup", "warmup_iters", "warmup_ratio", "warmup_by_epoch")
#: Keys each canonical policy reads besides :data:`COMMON_KEYS`.
POLICY_KEYS = {
    "CosineAnnealing": ("min_lr", "min_lr_ratio"),
    "StepFixCosineAnnealing": ("min_lr", "min_lr_ratio"),
    "Step": ("step", "gamma", "min_lr"),
    "Fixed": (),
    "Poly": ("power", "min_lr"),
    "Exp": ("gamma",),
}
WARMUPS = ("linear", "constant", "exp")

__all__ = ["COMMON_KEYS", "POLICIES", "POLICY_KEYS", "WARMUPS"]
