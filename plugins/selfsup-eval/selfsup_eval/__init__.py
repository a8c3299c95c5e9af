"""selfsup-eval: evaluators for learned features (``selfsup.evaluators``) and the engine
that runs them.

``KNN`` (weighted kNN, the InstDisc protocol), ``LinearProbe`` (a linear classifier on frozen
features) and ``TSNE`` (a 2-d map of test features), with batched, distributed feature
extraction (:mod:`selfsup_eval.features`). The ``[evaluation]`` config section, online
evaluation during training and the ``eval``/``tsne`` commands are :mod:`selfsup_eval.evaluation`,
wired into the core by :mod:`selfsup_eval.plugin`. Other plugins' evaluators import the
context they receive from here (``from selfsup_eval import EvalContext``). Importing this
package does not import torch.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: names other plugins use, imported from selfsup_eval.evaluation on first use
_LAZY = ("EvalContext", "SPLITS")
__all__ = ["EvalContext", "SPLITS", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module 'selfsup_eval' has no attribute {name!r}")
